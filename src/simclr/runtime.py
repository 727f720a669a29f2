"""Device, precision, seeding and DDP set-up from torchrun's environment variables (done once per process)."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError

Log = Callable[..., None]  # where progress lines go: print, or a no-op on processes other than rank 0


@dataclass
class Dist:
    """This process's place in the job (a single process has rank 0 of world 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device, else MPS, else CPU. Errors name the fix."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: invalid value {name!r}; allowed values: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' was asked for but is not available; use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: invalid value {name!r}; allowed values: auto, cpu, cuda, cuda:N, mps")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 autocast on CPU (2.6x fp32 with channels_last on a 2-core Zen 4, benchmarks/RESULTS.md) and on
    CUDA GPUs that support it; else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cpu":
        return "bf16"
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


# glibc's mallopt parameters (malloc.h) and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}
_KEEP = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}


def reuse_freed_memory(enable: bool = True) -> bool:
    """CPU training: let glibc keep freed memory in the process for the next step instead of returning it.

    PyTorch's CPU tensors come from malloc. glibc serves every block above its mmap threshold (32 MiB at most)
    with a fresh ``mmap`` and unmaps it on ``free``, so each large activation of every step (67 MB for a
    ResNet-18 stage at 512 bf16 views of 32 px) is new memory whose pages the kernel faults in and zeroes on first
    touch; element-wise operations then run far below the memory bandwidth. With ``enable``, no block is mmapped
    and the heap is trimmed only when 2 GiB (mallopt's largest value) sit free at its top, so the memory of a step
    is reused by the next, as a GPU's caching allocator does, and the resident set stays at its peak
    (benchmarks/RESULTS.md, "Reusing freed memory", measures both). ``enable=False`` restores glibc's defaults (its
    dynamic mmap threshold, which only concerns blocks under 32 MiB, stays where it is).

    Process-wide; forked DataLoader workers inherit it. Returns False where it cannot apply (no glibc).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not Linux/glibc (macOS, Windows, musl)
        return False
    values = _KEEP if enable else _GLIBC_DEFAULTS
    return all(mallopt(param, value) == 1 for param, value in values.items())


def configure_device(device: torch.device, reuse_memory: bool = True) -> None:
    """Process-wide speed settings, each measured in benchmarks/RESULTS.md: on CUDA, cuDNN times its convolution
    algorithms once per shape and keeps the fastest (steps have fixed shapes); on the CPU, freed memory is reused
    (:func:`reuse_freed_memory`, ``train.reuse_memory``)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu" and reuse_memory:
        reuse_freed_memory(True)


def autocast(device: torch.device, precision: str):
    """``nullcontext()`` for fp32, else a bf16 autocast context for the device type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_for(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order: a function of (seed, epoch) only, never of the rank or process count."""
    return (seed * 1_000_003 + epoch) % (2**63)


def init_distributed(device_name: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (``RANK``/``WORLD_SIZE`` set): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return Dist(device=resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

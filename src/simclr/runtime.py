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
    owns_group: bool = False  # this call created the process group (one the caller made stays the caller's)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0, torchrun: bool = False) -> torch.device:
    """``auto`` -> the local CUDA device, else MPS, else CPU. Errors name the fix.

    A CUDA device is made the current one (``torch.cuda.set_device``), so that kernels, cuDNN handles and NCCL
    land on it and not on cuda:0. Under torchrun (``torchrun=True``) each process takes GPU ``LOCAL_RANK``, and an
    explicit ``cuda:N`` is refused: every rank would get the same GPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return _use_cuda(torch.device("cuda", local_rank % torch.cuda.device_count()))
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
        count = torch.cuda.device_count()
        if dev.index is not None and torchrun:
            raise ConfigError(f"train.device: {name!r} under torchrun; each process takes the GPU of its LOCAL_RANK, "
                              "so use --device cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"train.device: {name!r} but this machine has {count} CUDA GPU(s) (cuda:0 to "
                              f"cuda:{count - 1}); use one of those, or --device cuda")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % count)
        return _use_cuda(dev)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' was asked for but is not available; use --device cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: invalid value {name!r}; allowed values: auto, cpu, cuda, cuda:N, mps")
    return dev


def _use_cuda(dev: torch.device) -> torch.device:
    torch.cuda.set_device(dev)
    return dev


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


def configure_device(device: torch.device, reuse_memory: bool = True, deterministic: bool = False) -> None:
    """Process-wide speed settings, each measured in benchmarks/RESULTS.md: on CUDA, cuDNN times its convolution
    algorithms once per shape and keeps the fastest (steps have fixed shapes); on the CPU, freed memory is reused
    (:func:`reuse_freed_memory`, ``train.reuse_memory``) and denormal floats are flushed to zero: as the network
    trains, tiny values make later steps slower (benchmarks/cpu_step_drift.py; RESULTS.md, "Where the loop's time
    goes"). Threads inherit the setting when they are created, so this runs before the first parallel kernel where
    it can.

    ``deterministic`` (``train.deterministic``) trades that speed for runs that repeat bitwise on CUDA (the CPU
    path already does): :func:`use_deterministic`.
    """
    if deterministic:
        use_deterministic()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        if reuse_memory:
            reuse_freed_memory(True)


def use_deterministic() -> None:
    """Deterministic kernels: ``torch.use_deterministic_algorithms`` (cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG``, set
    here unless given), cuDNN without autotuning and in its deterministic mode.

    ``warn_only=True``: a few backward kernels have no deterministic variant on CUDA and would otherwise stop
    training; torch warns about each one instead (ResNet's adaptive average pooling to 1x1 is one, and it writes
    each input gradient once, so it repeats anyway). benchmarks/gpu_checks.py checks that a resumed CUDA run
    repeats bitwise with this setting.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def autocast(device: torch.device, precision: str):
    """``nullcontext()`` for fp32 and fp64, else a bf16 or fp16 autocast context for the device type (the choice
    between them: :mod:`simclr.precision`)."""
    if precision in ("fp32", "fp64"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def launched_rank() -> int:
    """This process's global rank as torchrun set it (``RANK``), 0 outside torchrun; readable before and after the
    process group exists."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    return int(os.environ.get("RANK", "0"))
def seed_for(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order: a function of (seed, epoch) only, never of the rank or process count."""
    return (seed * 1_000_003 + epoch) % (2**63)


def init_distributed(device_name: str = "auto") -> Dist:
    """Join the process group when launched by torchrun (``RANK``/``WORLD_SIZE`` set): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return Dist(device=resolve_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, torchrun=True)  # also the current CUDA device
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_group=owns)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def local_main_first(rt: Dist):
    """Run the body on each machine's local rank 0 first, then on the other processes.

    For first-run data preparation (download, extraction, decoding into the cache): one process per machine does
    it while the others wait at a barrier, then they read what it left. If the first process fails, the others
    are released all the same and meet the same error themselves.
    """
    first = rt.local_rank == 0
    if rt.distributed and not first:
        barrier()
    try:
        yield
    finally:
        if rt.distributed and first:
            barrier()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

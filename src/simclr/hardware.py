"""What this machine has room for: CPU cores for this process, and host and device memory for the images.

Loading a dataset that does not fit ends in the kernel's OOM killer (or a CUDA out-of-memory error mid-run) with no
message, so the data path asks here first and turns "does not fit" into a :class:`~simclr.errors.DataError` that
names the way out (streaming, fewer or smaller images). Every check counts the processes of a torchrun job on this
machine (``LOCAL_WORLD_SIZE``), each of which holds its own copy.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .errors import DataError


def cpu_count() -> int:
    """Cores for this process's decode pool: its share of the machine's cores when torchrun starts several
    processes on it (``LOCAL_WORLD_SIZE``), so that they do not oversubscribe the cores together."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // local_processes())


def local_processes() -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


# ----------------------------------------------------------------------------------------------------------------
# Memory


def free_host_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_STREAM_HINT = ("set data.stream=true (--set data.stream=true) so that each step's files are decoded as it runs, or "
                "use fewer or smaller images (data.limit, data.cache_size)")


def check_host_memory(nbytes: int, what: str) -> None:
    """Raise DataError when ``nbytes`` of ``what`` (times the processes of this job on this machine, each of which
    holds its own copy) exceed the host's available memory."""
    free = free_host_memory()
    copies = local_processes()
    need = nbytes * copies
    if free is not None and need > free:
        each = f" ({copies} processes on this machine hold a copy each)" if copies > 1 else ""
        raise DataError(f"{what} take {need / 2**30:.1f} GiB of memory{each}, but only {free / 2**30:.1f} GiB are "
                        f"available; {_STREAM_HINT}")


def image_bytes(n: int, size: int) -> int:
    """Bytes of ``n`` uint8 images of 3 x size x size."""
    return n * 3 * size * size


# Share of a GPU's free memory the device-resident images may take: the rest is for the model and activations.
DEVICE_DATA_SHARE = 0.5


def check_device_memory(nbytes: int, device: torch.device, what: str = "the pretraining images") -> None:
    """Raise DataError when ``nbytes`` of device-resident images would take more than :data:`DEVICE_DATA_SHARE` of
    the free memory of CUDA ``device`` (times the processes that share it); nothing to check on other devices."""
    if device.type != "cuda":
        return
    free, _total = torch.cuda.mem_get_info(device)
    sharing = max(1, -(-local_processes() // max(torch.cuda.device_count(), 1)))  # processes per GPU
    need = nbytes * sharing
    if need > DEVICE_DATA_SHARE * free:
        each = f" ({sharing} processes share this GPU)" if sharing > 1 else ""
        raise DataError(f"{what} take {need / 2**30:.1f} GiB on {device}{each}, more than "
                        f"{DEVICE_DATA_SHARE:.0%} of its {free / 2**30:.1f} GiB free; {_STREAM_HINT}")


def to_device_checked(images: Tensor, device: torch.device) -> Tensor:
    """``images`` on ``device`` (non-blocking) after :func:`check_device_memory`."""
    check_device_memory(images.numel() * images.element_size(), device)
    return images.to(device, non_blocking=True)

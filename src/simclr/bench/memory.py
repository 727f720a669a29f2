"""Peak memory of the timed work of one pipeline, in MB.

On CUDA, ``torch.cuda.max_memory_allocated`` after a reset (every live tensor: the device-resident dataset, weights,
gradients, optimizer state, activations). On the CPU, the process's peak resident set during the timed steps
(``VmHWM`` of /proc/self/status, reset through ``/proc/self/clear_refs`` after the warm-up) minus the resident set
before the pipeline was built (before its model, optimizer and loader): weights, gradients, optimizer state,
activations and allocator slack. DataLoader workers are other processes and are not counted. Where the reset is
refused, the lifetime peak ``ru_maxrss`` is reported and ``memory_method`` says so.
"""

from __future__ import annotations

import gc
import re
import resource

import torch

from ..runtime import synchronize


def rss_kb() -> int:
    """Resident set size of this process in KiB (0 where /proc is not available)."""
    return _proc_status_kb("VmRSS") or 0


def rss_base() -> int:
    gc.collect()  # tensors of the previous pipeline go back to the allocator before the baseline is read
    return rss_kb()


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


class PeakMemory:
    """Peak memory of the work between :meth:`start` and :meth:`stop`, in MB (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "none"
        self.base_kb = 0

    def start(self, base_kb: int | None = None) -> None:
        """Reset the peak; on the CPU the result is relative to ``base_kb`` (default: the resident set now)."""
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        self.base_kb = rss_kb() if base_kb is None else base_kb
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # Linux: reset VmHWM to the current resident set
            self.method = "VmHWM during the timed steps - VmRSS before the pipeline was built"
        except OSError:
            self.method = "ru_maxrss (lifetime peak of the process; no reset possible)"

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.method.startswith("VmHWM"):
            hwm = _proc_status_kb("VmHWM")
            return None if hwm is None else max(0, hwm - self.base_kb) / 1024
        if self.method.startswith("ru_maxrss"):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return None

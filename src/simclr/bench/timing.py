"""Timing one pipeline: warm-up steps, then timed steps with the peak memory beside them -> a :class:`Measurement`.

Every throughput counts SOURCE images per second: one source image is two views through the encoder. Step
timings exclude warm-up steps and wait for the device before the clock stops; epoch timings include everything an
epoch pays (worker start-up, the per-step loss read-out of the real training loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..runtime import synchronize
from ..train import simclr_loss
from .memory import PeakMemory


@dataclass
class Measurement:
    """One timed pipeline: throughput in source images per second and the peak memory of the timed work."""

    images_per_s: float
    seconds: float
    images: int
    steps: int
    step_ms: float | None = None
    peak_memory_mb: float | None = None
    memory_method: str | None = None
    extra: dict = field(default_factory=dict)


def timed(device: torch.device, warmup: int, steps: int, step: Callable[[int], None],
          base_kb: int | None = None) -> tuple[float, float | None, str | None]:
    """Run ``step(i)`` for ``warmup`` untimed then ``steps`` timed iterations -> (seconds, peak MB, method).

    ``base_kb``: resident set before the pipeline was built (CPU peak memory is reported relative to it).
    """
    for i in range(warmup):
        step(i)
    synchronize(device)
    mem = PeakMemory(device)
    mem.start(base_kb)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize(device)
    seconds = time.perf_counter() - t0
    return seconds, mem.stop(), mem.method


def measure(images: int, steps: int, seconds: float, peak: float | None, method: str | None, **extra) -> Measurement:
    """A :class:`Measurement` of ``images`` source images in ``steps`` steps and ``seconds``; ``extra``: settings."""
    return Measurement(
        images_per_s=images / max(seconds, 1e-9),
        seconds=seconds,
        images=images,
        steps=steps,
        step_ms=1000 * seconds / max(steps, 1),
        peak_memory_mb=peak,
        memory_method=method,
        extra=extra,
    )


def views_step(model: nn.Module, optimizer: torch.optim.Optimizer, v0: Tensor, v1: Tensor, device: torch.device,
               precision: str, channels_last: bool, temperature: float) -> Tensor:
    """One SimCLR optimisation step on two views (the loss of the training loop); returns the loss without reading
    it (no host sync)."""
    loss = simclr_loss(model, v0, v1, device, precision, channels_last, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

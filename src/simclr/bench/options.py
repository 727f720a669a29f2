"""What ``simclr bench`` measures: the parts it can run and the options of a run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PARTS = ("augment", "step", "epoch", "ablation")


@dataclass
class BenchOptions:
    """What to measure; the model, batch, precision, device and augmentation come from the :class:`Config`."""

    steps: int = 3  # timed training steps (after the warm-up)
    rounds: int = 1  # the step comparison this many times, ours and the peers alternating (see bench_step_rounds)
    isolate: bool | None = None  # each pipeline in a fresh process; None: on the CPU only (see run_pipeline)
    warmup: int = 1  # untimed steps (or augmentation batches) first
    aug_images: int = 4096  # source images through each augmentation pipeline
    epoch_images: int | None = None  # images in the timed epoch; default 2 batches on CPU, 50,000 elsewhere
    workers: int = 2  # DataLoader workers of the per-image baseline (and of the streaming path)
    compile: bool = False  # also time our step with torch.compile
    parts: tuple[str, ...] = ("augment", "step", "epoch")
    baseline: bool = True  # also time the peers' pipeline (the ratios need it)
    stream: bool = False  # also time an epoch of the streaming path (cfg.data.name must be an image folder)
    real_data: bool = False  # use cfg.data (loaded through simclr.data) instead of random uint8 images


def epoch_images(opts: BenchOptions, device: torch.device, available: int, batch: int) -> int:
    """Images in the timed epoch: ``opts.epoch_images`` (default 2 batches on the CPU, 50,000 elsewhere), at most
    ``available``, a whole number of batches."""
    n = opts.epoch_images or (2 * batch if device.type == "cpu" else 50_000)
    return max(batch, min(n, available) // batch * batch)

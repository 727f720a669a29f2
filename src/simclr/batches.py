"""The batches of a pretraining epoch: the data order, this process's rows of each global batch, and their views."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from . import augment
from .config import Config
from .runtime import Dist, seed_for


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Data order for an epoch: a function of (seed, epoch) only, never of the rank or the process count."""
    g = torch.Generator().manual_seed(seed_for(seed, epoch))
    return torch.randperm(n, generator=g)


def process_rows(batch_size: int, rt: Dist) -> tuple[int, int]:
    """This process's rows ``[lo, hi)`` of a global batch of ``batch_size`` (``batch_size / world_size`` each)."""
    b = batch_size // rt.world_size
    return rt.rank * b, (rt.rank + 1) * b


def step_rows(order: torch.Tensor, step: int, batch_size: int, rows: tuple[int, int]) -> torch.Tensor:
    """Dataset indices of rows ``[lo, hi)`` of global batch ``step`` of the epoch order ``order``."""
    lo, hi = rows
    return order[step * batch_size : (step + 1) * batch_size][lo:hi]


def small_crop_size(cfg: Config, view_size: int) -> int:
    """Side (px) of the multi-crop small crops while the views are ``view_size`` px; 0 without multi-crop."""
    a = cfg.augment
    return max(4, round(a.small_size * view_size / cfg.model.image_size)) if a.small_crops else 0


def device_batches(images: torch.Tensor, cfg: Config, epoch: int, start: int, rt: Dist,
                   size: Callable[[], int] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Two views per image of each global batch from device-resident uint8 ``images`` [N,3,S,S], steps ``start...``,
    then ``augment.small_crops`` small crops (multi-crop) when configured.

    Each process takes its ``batch_size / world_size`` rows of every global batch; the data order and the
    augmentation parameters depend only on (seed, epoch, step), so the views do not depend on the process count.
    ``size``: asked before each batch for the side of its views (progressive resizing); default model.image_size.
    The small crops keep their ratio to the views: ``augment.small_size`` at model.image_size, half that at half.
    """
    B = cfg.train.batch_size
    rows = process_rows(B, rt)
    perm = epoch_permutation(len(images), cfg.train.seed, epoch).to(images.device)
    for it in range(start, len(images) // B):  # drop the last partial batch: NT-Xent wants full batches
        idx = step_rows(perm, it, B, rows)
        with torch.no_grad():
            out = size() if size is not None else cfg.model.image_size
            views = augment.simclr_views(images[idx], cfg.augment, out, cfg.train.seed, epoch, it,
                                         global_batch=B, offset=rows[0], small_size=small_crop_size(cfg, out))
        yield views  # outside no_grad: a suspended generator would leave grad mode off for the caller

"""Streaming SimCLR batches for image folders too large for memory.

DataLoader workers decode the files of a step and crop them; the main process finishes the augmentation batched
on the device. The views are those of the device-resident path (:func:`simclr.batches.device_batches`) for the same
images: the same epoch order (:func:`simclr.batches.epoch_permutation`), the same augmentation parameters
(:func:`simclr.augment.batch_generator` of (seed, epoch, step), drawn for the GLOBAL batch, this process's rows),
the same decoder and resize rule as :mod:`simclr.data`. Only the hand-over differs: workers run
:func:`simclr.augment.apply_geometric` on the CPU and pass uint8 crops (rounded to the nearest grey level, at most
half a level away from the float crop; a quarter of the bytes to copy), which the main process copies to the
device (pinned, non-blocking) and gives to :func:`simclr.augment.apply_photometric`.

One DataLoader item is one whole step (``batch_size=None`` over step indices), so a worker decodes and crops a
batch with one set of parameters and the main process does no per-image work.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from . import augment
from .batches import epoch_permutation, process_rows, step_rows
from .config import AugmentConfig, Config
from .data import read_image  # the decoder of load_split: the same pixels on both paths
from .errors import DataError
from .runtime import Dist


class StepDataset(torch.utils.data.Dataset):
    """Item ``step``: this process's rows of global batch ``step``, decoded and cropped, for both views.

    Returns ``(crops0, params0, crops1, params1)``: uint8 crops ``[b, 3, out, out]`` and the parameter
    dictionaries of those rows (CPU tensors, as :func:`simclr.augment.sample_params` returns them).
    """

    def __init__(
        self,
        paths: list[str],
        order: Tensor,
        batch: int,
        rows: tuple[int, int],
        size: int,
        out_size: int,
        aug: AugmentConfig,
        seed: int,
        epoch: int,
        strict: bool = False,
    ):
        self.paths, self.order, self.batch, self.rows = paths, order, batch, rows
        self.size, self.out_size, self.aug = size, out_size, aug
        self.seed, self.epoch, self.strict = seed, epoch, strict
        self._warned = False

    def __len__(self) -> int:
        return len(self.order) // self.batch

    def _decode(self, i: int) -> np.ndarray:
        path = self.paths[i]
        try:
            return read_image(path, self.size)
        except Exception as e:  # any decoder failure means an unreadable file
            if self.strict:
                raise DataError(f"unreadable image file {path} ({type(e).__name__}: {e}) and data.strict is on") from None
            if not self._warned:  # once per worker: the pre-scan of load_split does not run on this path
                print(f"warning: unreadable image file {path} ({type(e).__name__}); using a black image "
                      "(further unreadable files in this worker are replaced silently)", file=sys.stderr)
                self._warned = True
            return np.zeros((self.size, self.size, 3), dtype=np.uint8)

    def __getitem__(self, step: int) -> tuple[Tensor, dict[str, Tensor], Tensor, dict[str, Tensor]]:
        idx = step_rows(self.order, step, self.batch, self.rows).tolist()
        images = torch.from_numpy(np.stack([self._decode(i) for i in idx])).permute(0, 3, 1, 2).contiguous()
        out: list = []
        for p in augment.view_params(self.batch, self.rows, self.size, self.out_size, self.aug, self.seed, self.epoch, step):
            crops = augment.apply_geometric(images, p, self.out_size)
            out += [crops.mul_(255.0).round_().to(torch.uint8), p]
        return tuple(out)


def stream_batches(
    paths: list[str],
    cfg: Config,
    epoch: int,
    start: int,
    rt: Dist,
    size: int,
    workers: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Two views of this process's rows of each global batch of an epoch, from image files, steps ``start...``.

    Yields what :func:`simclr.batches.device_batches` yields for the images ``load_split`` would decode from
    ``paths`` (up to the uint8 rounding of the crops, see the module docstring).

    Args:
        paths: image files; their order is the dataset order (index ``i`` is image ``i``).
        cfg: batch size, seed, view size, augmentation, ``data.workers`` and ``data.strict``.
        epoch: epoch index (data order and augmentation parameters depend on it).
        start: first step (resume mid-epoch).
        rt: this process's rank, world size and device.
        size: side S the images are decoded at (:func:`simclr.data.list_images` gives it).
        workers: DataLoader workers (default ``cfg.data.workers``; 0 decodes in this process).

    Yields:
        (view0, view1): float32 [b, 3, out, out] each, normalised, on ``rt.device``; b = batch / world size.
    """
    B = cfg.train.batch_size
    steps = len(paths) // B  # the last partial batch is dropped, as on the device path
    if start >= steps:
        return
    workers = cfg.data.workers if workers is None else workers
    dataset = StepDataset(
        paths, epoch_permutation(len(paths), cfg.train.seed, epoch), B, process_rows(B, rt),
        size, cfg.model.image_size, cfg.augment, cfg.train.seed, epoch, cfg.data.strict,
    )
    device = rt.device
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # an item is already a whole step
        sampler=range(start, steps),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,  # one set of workers for the whole epoch
        prefetch_factor=4 if workers > 0 else None,
    )
    for crops0, p0, crops1, p1 in loader:
        views = []
        for crops, p in ((crops0, p0), (crops1, p1)):
            x = crops.to(device, non_blocking=True).float().div_(255.0)
            with torch.no_grad():
                views.append(augment.apply_photometric(x, p, cfg.augment))
        yield views[0], views[1]

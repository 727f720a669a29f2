"""The peers' pipeline, as dkobak/simclr-cifar10, the PyTorch Lightning / UvA tutorial and most SimCLR repositories
write it: a torchvision per-image transform on PIL images in a DataLoader with worker processes, and the same model
in fp32, eager, contiguous format, with ``torch.optim.SGD`` as constructed by default, under torch's and glibc's
defaults. Theirs, not ours: this module is the baseline every ratio of ``simclr bench`` divides by.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .. import augment
from ..config import AugmentConfig, Config
from ..models import build_model
from ..optim import scaled_lr
from ..runtime import synchronize
from .memory import PeakMemory, rss_base
from .options import BenchOptions, epoch_images
from .timing import Measurement, measure, timed, views_step


def torchvision_pipeline(cfg: AugmentConfig, out_size: int):
    """The per-image SimCLR transform as the peers write it with ``torchvision.transforms`` (PIL in, tensor out)."""
    from torchvision import transforms as T

    s = cfg.jitter_strength
    ops = [
        T.RandomResizedCrop(out_size, scale=cfg.scale, ratio=cfg.ratio),
        T.RandomHorizontalFlip(p=cfg.hflip),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5))], p=cfg.jitter_p),
        T.RandomGrayscale(p=cfg.gray_p),
    ]
    if cfg.blur_p > 0:
        k = augment.blur_kernel_size(out_size)
        ops.append(T.RandomApply([T.GaussianBlur(k, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    ops += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(ops)


class PairDataset(torch.utils.data.Dataset):
    """Images held as uint8 HWC arrays (as torchvision's CIFAR10 holds them); an item is two views of one image."""

    def __init__(self, images: Tensor, transform):
        self.array = images.permute(0, 2, 3, 1).contiguous().numpy()  # [N, H, W, 3]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        img = Image.fromarray(self.array[i])
        return self.transform(img), self.transform(img)


def peer_loader(images: Tensor, cfg: AugmentConfig, out_size: int, batch: int, workers: int, device: torch.device):
    """A shuffling DataLoader over ``images`` (uint8 [N,3,S,S], CPU) with the torchvision per-image transform."""
    return torch.utils.data.DataLoader(
        PairDataset(images, torchvision_pipeline(cfg, out_size)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def _cycle(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


def _peer_model(cfg: Config, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = build_model(cfg.model).to(device)
    lr = scaled_lr(cfg.optim, cfg.train.batch_size)
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


# ----------------------------------------------------------------------------------------------- timed
# Each returns a Measurement; run_pipeline runs it in a process of its own.


def augment_peers(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size = cfg.train.batch_size, cfg.model.image_size
    n_batches = max(1, min(opts.aug_images, len(pool)) // B)
    base = rss_base()
    loader = peer_loader(pool[: (n_batches + opts.warmup) * B], cfg.augment, size, B, opts.workers, device)
    it = _cycle(lambda: iter(loader))

    def peers(i: int) -> None:
        v0, v1 = next(it)
        v0.to(device, non_blocking=True), v1.to(device, non_blocking=True)

    sec, peak, method = timed(device, opts.warmup, n_batches, peers, base)
    return measure(n_batches * B, n_batches, sec, peak, method, workers=opts.workers, pid=os.getpid())


def step_peers(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.temperature
    base = rss_base()
    model, optimizer = _peer_model(cfg, device)
    model.train()
    loader = peer_loader(pool, cfg.augment, size, B, opts.workers, device)
    it = _cycle(lambda: iter(loader))

    def peers(i: int) -> None:
        v0, v1 = next(it)
        v0, v1 = v0.to(device, non_blocking=True), v1.to(device, non_blocking=True)
        views_step(model, optimizer, v0, v1, device, "fp32", False, temp)

    sec, peak, method = timed(device, opts.warmup, opts.steps, peers, base)
    return measure(opts.steps * B, opts.steps, sec, peak, method, precision="fp32", channels_last=False,
                   optimizer="SGD default", workers=opts.workers, pid=os.getpid())


def epoch_peers(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.temperature
    n = epoch_images(opts, device, len(pool), B)
    steps = n // B
    base = rss_base()
    model, optimizer = _peer_model(cfg, device)
    model.train()
    warm = peer_loader(pool[: max(1, opts.warmup) * B], cfg.augment, size, B, 0, device)
    for v0, v1 in warm:
        views_step(model, optimizer, v0.to(device), v1.to(device), device, "fp32", False, temp)
    synchronize(device)
    mem = PeakMemory(device)
    mem.start(base)
    t0 = time.perf_counter()
    total = 0.0
    for v0, v1 in peer_loader(pool[:n], cfg.augment, size, B, opts.workers, device):  # a new loader per epoch
        v0, v1 = v0.to(device, non_blocking=True), v1.to(device, non_blocking=True)
        total += views_step(model, optimizer, v0, v1, device, "fp32", False, temp).item()
    synchronize(device)
    sec = time.perf_counter() - t0
    return measure(steps * B, steps, sec, mem.stop(), mem.method, loss=total / max(steps, 1), workers=opts.workers,
                   pid=os.getpid())

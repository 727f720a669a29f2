"""Features of images from a frozen encoder: eval mode, no gradient, fixed preprocessing."""

from __future__ import annotations

import torch
from torch import nn

from .. import augment
from ..runtime import autocast


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 256,
) -> torch.Tensor:
    """Features of uint8 ``images`` [N,3,S,S] from a frozen ``encoder`` in eval mode -> float32 [N, F] on the CPU.

    The encoder's train/eval mode is restored afterwards; no gradient is recorded and no BatchNorm statistic moves.
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device, non_blocking=True)
            x = augment.eval_transform(x, image_size, mean, std).contiguous(memory_format=torch.channels_last)
            if precision == "fp64":  # a float64 run's encoder (pretraining's kNN monitor)
                x = x.double()
            with autocast(device, precision):
                out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)

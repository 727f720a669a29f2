"""Weighted kNN classification on frozen features (Wu et al. 2018): the pretraining monitor and the ``knn`` protocol."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AugmentConfig
from ..data import ImageData
from .features import extract_features


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018): cosine similarity, the top-k neighbours vote with weight ``exp(sim / t)``.

    Args: train_features [N, D], train_labels [N] int64, query_features [M, D]; ``device``: where the
    similarities are computed (default: that of ``train_features``). Returns predictions [M] int64 on the CPU.
    """
    device = device or train_features.device
    bank = F.normalize(train_features.to(device).float(), dim=1)
    train_labels = train_labels.to(device)
    k = min(k, len(bank))
    preds = []
    for i in range(0, len(query_features), chunk):
        q = F.normalize(query_features[i : i + chunk].to(device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # [m, k]
        weights = (sim / t).exp()
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype, device=device)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.int64)


def knn_accuracy(
    encoder: nn.Module,
    bank: ImageData,
    queries: ImageData,
    image_size: int,
    aug: AugmentConfig,
    device: torch.device,
    precision: str,
    k: int = 200,
    t: float = 0.1,
    batch_size: int = 256,
) -> float:
    """kNN accuracy of ``queries`` against a labeled ``bank`` with features from the frozen encoder."""
    fb = extract_features(encoder, bank.images, image_size, aug.mean, aug.std, device, precision, batch_size)
    fq = extract_features(encoder, queries.images, image_size, aug.mean, aug.std, device, precision, batch_size)
    num_classes = max(len(bank.classes), int(bank.labels.max()) + 1)
    pred = knn_predict(fb, bank.labels, fq, num_classes, k, t, device=device)
    return float((pred == queries.labels).float().mean())

"""Classifier heads on frozen features (linear probe, MLP) and the keep-the-best training loop all heads share."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..optim import lr_at
from ..runtime import Log

LINEAR_BATCH_SIZE = 1000  # linear probe on features (dkobak/simclr-cifar10)
MLP_BATCH_SIZE = 64  # the seed notebook project's head: Keras-sized batches


class FeatureHead(nn.Module):
    """Standardise features with training-set statistics, then ``D -> hidden... -> C`` (a linear layer when
    ``hidden`` is empty; ReLU between layers). Input ``[B, D]`` features, output ``[B, C]`` logits."""

    def __init__(self, in_dim: int, hidden: Sequence[int], num_classes: int,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim) if mean is None else mean.detach().clone().float())
        self.register_buffer("std", torch.ones(in_dim) if std is None else std.detach().clone().float())
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@dataclass
class HeadResult:
    """A trained head and its history (one value per epoch run); ``best_epoch`` is the epoch kept (1-based)."""

    model: nn.Module
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    epochs_run: int = 0
    val_accuracy: float | None = None


@torch.no_grad()
def _loss_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch]).float()
        loss += float(F.cross_entropy(logits, y[i : i + batch], reduction="sum"))
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    n = max(len(x), 1)
    return loss / n, correct / n


def fit_keep_best(
    model: nn.Module,
    epochs: int,
    train_epoch: Callable[[int], tuple[float, float]],
    validate: Callable[[], tuple[float, float]],
    *,
    select: str = "val_acc",
    patience: int | None = None,
    name: str = "head",
    log: Log | None = None,
    log_every: int = 1,
) -> HeadResult:
    """Train ``model`` epoch by epoch and keep the weights of its best epoch on the validation split.

    Args:
        model: trained in place; on return it holds the best epoch's weights and is in eval mode.
        epochs: maximum number of epochs.
        train_epoch: ``train_epoch(epoch)`` runs one epoch (model in train mode) -> (train loss, train accuracy).
        validate: -> (validation loss, validation accuracy) of the current weights.
        select: ``val_acc`` (highest validation accuracy) or ``val_loss`` (lowest validation loss).
        patience: stop after this many epochs without a better validation score (None: never).
        name: the head's name in progress lines.
        log: progress lines (None: quiet); one every ``log_every`` epochs and after the last.

    Returns:
        The model with its per-epoch history; ``best_epoch`` is 0 when no epoch ran.
    """
    hist: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    best_score, best_state, best_epoch, bad = -math.inf, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(epochs):
        model.train()
        train_loss, train_acc = train_epoch(epoch)
        val_loss, val_acc = validate()
        for key, value in zip(hist, (train_loss, train_acc, val_loss, val_acc)):
            hist[key].append(value)
        score = val_acc if select == "val_acc" else -val_loss
        if score > best_score:
            best_score, best_state, best_epoch, bad = score, copy.deepcopy(model.state_dict()), epoch + 1, 0
        else:
            bad += 1
        if log is not None and ((epoch + 1) % log_every == 0 or epoch + 1 == epochs):
            log(f"  {name} epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"val acc {val_acc:.4f}")
        if patience is not None and bad >= patience:
            if log is not None:
                log(f"  {name}: early stop after epoch {epoch + 1} (no better validation loss for {patience} epochs)")
            break
    model.load_state_dict(best_state)
    model.eval()
    return HeadResult(model, hist, best_epoch, len(hist["val_acc"]), hist["val_acc"][best_epoch - 1] if best_epoch else None)


def train_head(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    *,
    hidden: Sequence[int] = (),
    epochs: int = 100,
    lr: float = 0.01,
    batch_size: int = LINEAR_BATCH_SIZE,
    schedule: str = "cosine",
    select: str = "val_acc",
    patience: int | None = None,
    seed: int = 0,
    log: Log | None = None,
    name: str = "head",
    device: torch.device | None = None,
) -> HeadResult:
    """Train a :class:`FeatureHead` with Adam on frozen features; keep the epoch best on the validation split.

    Args:
        x_train: [N, D] training features; y_train: [N] int64 labels. x_val / y_val likewise (M >= 1).
        num_classes: C.
        hidden: hidden widths (empty: linear probe).
        epochs: maximum number of epochs; lr: peak Adam learning rate; batch_size: images per step.
        schedule: ``cosine`` (per step, to 0) or ``constant``.
        select, patience: see :func:`fit_keep_best`.
        seed: seeds the initialisation and the batch order.
        device: where the head trains (default: that of ``x_train``); the returned head is on the CPU.
    """
    if len(x_val) == 0:
        raise ConfigError(f"{name}: the validation split is empty; model selection needs data.n_val > 0")
    device = device or x_train.device
    x_train, y_train, x_val, y_val = (t.to(device) for t in (x_train, y_train, x_val, y_val))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = x_train.mean(0), x_train.std(0, unbiased=False)
        # Near-constant features (few labels, dead units) must not be blown up by a tiny standard deviation.
        std = std.clamp_min(max(0.1 * float(std.mean()), 1e-6))
        model = FeatureHead(x_train.shape[1], hidden, num_classes, mean, std).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(x_train)
    bs = max(1, min(batch_size, n))
    steps = math.ceil(n / bs)
    total = max(1, steps * epochs)
    g = torch.Generator().manual_seed(seed)

    def train_epoch(epoch: int) -> tuple[float, float]:
        perm = torch.randperm(n, generator=g).to(device)
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = lr_at(epoch * steps + i, total, 0, lr, "cosine")
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)  # read once per epoch, not per step (no device sync)
            correct += (logits.detach().argmax(1) == y_train[idx]).sum()
        return float(loss_sum) / n, int(correct) / n

    res = fit_keep_best(model, epochs, train_epoch, lambda: _loss_acc(model, x_val, y_val), select=select,
                        patience=patience, name=name, log=log, log_every=1 if epochs <= 30 else 10)
    res.model.cpu()
    return res

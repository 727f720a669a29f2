"""Evaluation of a frozen encoder: features, kNN, linear probe, MLP head and fine-tuning -> metrics and plots.

Every protocol selects its model on the labeled validation split, never on the test set:

- ``knn``: weighted kNN on L2-normalised features (Wu et al. 2018; k=200, T=0.1 as in lightly and solo-learn).
- ``linear``: the standard linear probe on precomputed frozen features, standardised with training-set
  statistics; Adam (lr 0.01), cosine schedule, batch 1000, the epoch with the best validation accuracy kept.
  This is the recipe of dkobak/simclr-cifar10 (Böhm, Berens & Kobak 2022), which matches the SimCLR paper's
  L-BFGS / SGD probes on CIFAR-10 in seconds on a GPU.
- ``mlp``: the notebook project's head D -> 128 -> 64 -> C trained with Adam on frozen features of
  ``data.n_train_labels`` labeled images, early stopping on validation loss (patience 3), best head kept.
- ``finetune``: the whole network (encoder + linear layer) trained on N labels with crop + flip augmentation,
  Nesterov SGD with a cosine schedule, the epoch with the best validation accuracy kept.

For the first three the encoder is frozen (no gradient) and in eval mode while features are extracted, so
neither its weights nor its BatchNorm statistics change. ``evaluate_run`` writes ``RUN/eval/<protocol>/``:
``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``, ``curves.png`` (trained heads),
``tsne_train.png``, ``tsne_test.png`` and the trained weights (``head.safetensors`` / ``model.safetensors``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment
from .checkpoint import load_weights, save_weights
from .config import PROTOCOLS, AugmentConfig, Config, OptimConfig, load_config, read_config
from .data import ImageData, load_split, make_splits
from .errors import CheckpointError, ConfigError, DataError
from .models import Backbone, build_backbone
from .optim import Schedule, build_optimizer, lr_at
from .rundir import (
    LABEL_EFFICIENCY,
    atomic_write,
    read_label_efficiency,
    read_run_json,
    write_json,
    write_label_efficiency,
)
from .runtime import autocast, configure_device, resolve_device, resolve_precision

LINEAR_BATCH_SIZE = 1000  # linear probe on features (dkobak/simclr-cifar10)
MLP_BATCH_SIZE = 64  # notebook head; Keras-sized batches
FINETUNE_WEIGHT_DECAY = 5e-4
FINETUNE_SCALE = (0.35, 1.0)  # random resized crop area for fine-tuning (plus flips; no colour distortion)

Log = Callable[..., None]


# ----------------------------------------------------------------------------- features


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
            with autocast(device, precision):
                out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018): cosine similarity, the top-k neighbours vote with weight ``exp(sim / t)``.

    Args: train_features [N, D], train_labels [N] int64, query_features [M, D]. Returns predictions [M] int64.
    """
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, len(bank))
    preds = []
    for i in range(0, len(query_features), chunk):
        q = F.normalize(query_features[i : i + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # [m, k]
        weights = (sim / t).exp()
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


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
    pred = knn_predict(fb, bank.labels, fq, num_classes, k, t)
    return float((pred == queries.labels).float().mean())


# ----------------------------------------------------------------------------- the trained encoder


def load_encoder(run_dir: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """The encoder a run learned, frozen and in eval mode, ready for inference.

    The returned :class:`~simclr.models.Backbone` carries its preprocessing: ``image_size`` (px), ``mean`` and
    ``std`` (per channel) and ``preprocess(images)`` mapping uint8 ``[N,3,H,W]`` to the normalised float32
    ``[N,3,image_size,image_size]`` it expects (bilinear resize, scale to [0, 1], normalise)::

        enc = simclr.load_encoder("runs/quickstart")
        with torch.no_grad():
            features = enc(enc.preprocess(images))  # [N, enc.out_dim]

    Args:
        run_dir: a run directory holding ``config.yaml`` and ``backbone.safetensors``.
        device: where to put the encoder.

    Raises:
        CheckpointError: not a run directory, pretraining unfinished, or weights that do not match the config.
    """
    run_dir = Path(run_dir).expanduser()
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml); pass the --out folder of "
                              "`simclr pretrain` or `simclr run`")
    return _encoder_from(run_dir, read_config(cfg_path), torch.device(device))


def _encoder_from(run_dir: Path, cfg: Config, device: torch.device) -> Backbone:
    weights = run_dir / "backbone.safetensors"
    if not weights.is_file():
        hint = (f"pretraining has not finished (the file is written at the end); continue it with "
                f"`simclr pretrain --config {run_dir / 'config.yaml'} --resume`" if (run_dir / "checkpoints" / "last.pt").is_file()
                else "it is written when `simclr pretrain` finishes; pass a finished run directory")
        raise CheckpointError(f"{run_dir} has no backbone.safetensors: {hint}")
    encoder = build_backbone(cfg.model)
    load_weights(encoder, weights)
    encoder.eval().requires_grad_(False).to(device)
    encoder.image_size = cfg.model.image_size
    encoder.mean = tuple(cfg.augment.mean)
    encoder.std = tuple(cfg.augment.std)
    encoder.preprocess = functools.partial(augment.eval_transform, out_size=cfg.model.image_size,
                                           mean=encoder.mean, std=encoder.std)
    return encoder


# ----------------------------------------------------------------------------- data for evaluation


@dataclass
class EvalData:
    """Labeled images for evaluation: ``train`` (the labeled pool, seeded order), ``val`` (model selection), ``test``."""

    train: ImageData
    val: ImageData
    test: ImageData
    classes: list[str]

    @property
    def num_classes(self) -> int:
        top = max([int(d.labels.max()) for d in (self.train, self.val, self.test) if len(d)] or [0])
        return max(len(self.classes), top + 1)


def load_eval_data(cfg: Config, log: Log = print) -> EvalData:
    """Labeled train / validation images (``data.make_splits``, the same seed as pretraining) and the test split.

    Raises:
        DataError: the data has no labels (a flat folder) or no test split.
    """
    seed = cfg.train.seed
    labeled = load_split(cfg.data, "train", cfg.model.image_size, seed=seed, log=log)
    splits = make_splits(labeled, cfg.data, seed)
    if len(splits["labeled_train"]) == 0:
        raise DataError(f"{cfg.data.name}: no labeled images; evaluation needs class folders "
                        "(ROOT/<class>/* or ROOT/train/<class>/* + ROOT/test/<class>/*)")
    test = load_split(cfg.data, "test", cfg.model.image_size, seed=seed, log=log)
    if len(test) == 0:
        raise DataError(f"{cfg.data.name}: the test split is empty; evaluation reports test metrics")
    return EvalData(labeled.subset(splits["labeled_train"]), labeled.subset(splits["labeled_val"]), test,
                    list(labeled.classes))


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded order of ``range(len(labels))`` whose every prefix is as class-balanced as possible.

    Classes take turns (in a seeded random order within each class), so the first N indices hold about
    N / C images of each of the C classes: a label budget of 100 sees every class.
    """
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    perm = torch.randperm(len(labels), generator=g)
    y = labels[perm]
    rank = torch.zeros(len(y), dtype=torch.int64)  # position of each image within its class
    for c in y.unique():
        m = y == c
        rank[m] = torch.arange(int(m.sum()))
    return perm[torch.sort(rank, stable=True).indices]


def label_budget(protocol: str, cfg: Config, available: int, n: int | None, explicit: bool) -> int:
    """Labeled training images a protocol uses: ``n`` if given, else all (knn, linear) or
    ``data.n_train_labels`` (mlp, finetune: the notebook's 6,500), clamped to what is available."""
    if n is not None:
        if n > available:
            raise ConfigError(f"--labels {n}: only {available} labeled training images are available "
                              f"(after holding out the validation split); use at most {available} or 'all'")
        if n < 1:
            raise ConfigError(f"--labels {n}: label counts must be >= 1")
        return n
    if protocol in ("mlp", "finetune") and not explicit:
        return min(cfg.data.n_train_labels, available)
    return available


# ----------------------------------------------------------------------------- metrics


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           class_names: Sequence[str]) -> dict:
    """Accuracy, weighted and macro F1, per-class accuracy (recall) and the confusion matrix (scikit-learn).

    Args:
        y_true, y_pred: [N] integer class indices.
        class_names: C names; classes without test images get ``None`` per-class accuracy.

    Returns:
        ``{"accuracy", "f1_weighted", "f1_macro", "per_class_accuracy": {name: acc | None},
        "confusion_matrix": [[int]] (rows true, columns predicted)}``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    top = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    class_names = [str(c) for c in class_names] + [str(i) for i in range(len(class_names), top)]
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    per_class = {str(name): (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(class_names)}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
    }


# ----------------------------------------------------------------------------- heads on frozen features


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


def train_head(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
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
) -> HeadResult:
    """Train a :class:`FeatureHead` with Adam on frozen features; keep the epoch best on the validation split.

    Args:
        x_train: [N, D] training features; y_train: [N] int64 labels. x_val / y_val likewise (M >= 1).
        num_classes: C.
        hidden: hidden widths (empty: linear probe).
        epochs: maximum number of epochs; lr: peak Adam learning rate; batch_size: images per step.
        schedule: ``cosine`` (per step, to 0) or ``constant``.
        select: ``val_acc`` (highest validation accuracy) or ``val_loss`` (lowest validation loss).
        patience: stop after this many epochs without a better validation score (None: never).
        seed: seeds the initialisation and the batch order.
    """
    if len(x_val) == 0:
        raise ConfigError(f"{name}: the validation split is empty; model selection needs data.n_val > 0")
    device = x_train.device
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
    hist: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    best_score, best_state, best_epoch, bad = -math.inf, copy.deepcopy(model.state_dict()), 0, 0
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g).to(device)
        loss_sum, correct = 0.0, 0
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, 0, lr, "cosine")
            logits = model(x_train[idx])
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == y_train[idx]).sum())
        val_loss, val_acc = _loss_acc(model, x_val, y_val)
        for key, value in (("train_loss", loss_sum / n), ("train_acc", correct / n), ("val_loss", val_loss), ("val_acc", val_acc)):
            hist[key].append(value)
        score = val_acc if select == "val_acc" else -val_loss
        if score > best_score:
            best_score, best_state, best_epoch, bad = score, copy.deepcopy(model.state_dict()), epoch + 1, 0
        else:
            bad += 1
        if log is not None and (epochs <= 30 or (epoch + 1) % 10 == 0 or epoch + 1 == epochs):
            log(f"  {name} epoch {epoch + 1}/{epochs}: train loss {loss_sum / n:.4f}, val loss {val_loss:.4f}, "
                f"val acc {val_acc:.4f}")
        if patience is not None and bad >= patience:
            if log is not None:
                log(f"  {name}: early stop after epoch {epoch + 1} (no better validation loss for {patience} epochs)")
            break
    model.load_state_dict(best_state)
    model.eval()
    return HeadResult(model, hist, best_epoch, len(hist["val_acc"]), hist["val_acc"][best_epoch - 1] if best_epoch else None)


# ----------------------------------------------------------------------------- fine-tuning


class Classifier(nn.Module):
    """Encoder + linear layer: ``[B,3,H,W] -> [B, C]`` logits."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def finetune(
    encoder: Backbone,
    train: ImageData,
    val: ImageData,
    num_classes: int,
    cfg: Config,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    precision: str,
    log: Log | None = None,
) -> HeadResult:
    """Fine-tune a copy of ``encoder`` with a new linear layer on labeled images (the input encoder is untouched).

    Random resized crops (area ``FINETUNE_SCALE``) and flips drawn per sample, Nesterov SGD (lr
    ``eval.finetune_lr``, momentum 0.9, weight decay 5e-4 except on BN and biases), cosine schedule over
    ``eval.finetune_epochs``, batch ``eval.batch_size``; BatchNorm in train mode, as in fine-tuning in
    Chen et al. 2020. The epoch with the best validation accuracy is kept.
    """
    if len(val) == 0:
        raise ConfigError("finetune: the validation split is empty; model selection needs data.n_val > 0")
    model = Classifier(copy.deepcopy(encoder), num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model.fc.reset_parameters()
    model.requires_grad_(True).to(device).to(memory_format=torch.channels_last)
    aug = dataclasses.replace(cfg.augment, scale=FINETUNE_SCALE, hflip=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                              mean=tuple(mean), std=tuple(std))
    images = train.images.to(device)
    labels = train.labels.to(device)
    n, bs = len(images), min(cfg.eval.batch_size, len(images))
    if n < 2:
        raise ConfigError(f"finetune: {n} labeled training image(s); BatchNorm training needs at least 2")
    steps = max(1, n // bs)  # the last partial batch is dropped (a batch of 1 breaks BatchNorm)
    epochs = cfg.eval.finetune_epochs
    ocfg = OptimConfig(name="sgd", lr=cfg.eval.finetune_lr, scale_lr=False, momentum=0.9, nesterov=True,
                       weight_decay=FINETUNE_WEIGHT_DECAY, warmup_epochs=0.0, schedule="cosine")
    opt = build_optimizer(ocfg, model, bs)
    sched = Schedule(opt, ocfg, bs, steps, max(epochs, 1))
    hist: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    best_acc, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)).to(device)
        loss_sum, correct, seen = 0.0, 0, 0
        for it in range(steps):
            idx = perm[it * bs : (it + 1) * bs]
            params = augment.sample_params(len(idx), images.shape[-1], image_size, aug,
                                           augment.batch_generator(cfg.train.seed + 99_991, epoch, it))
            with torch.no_grad():
                x = augment.apply_params(images[idx], params, image_size, aug).contiguous(memory_format=torch.channels_last)
            sched(step)
            with autocast(device, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == labels[idx]).sum())
            seen += len(idx)
        val_logits = extract_features(model, val.images, image_size, mean, std, device, precision, cfg.eval.batch_size)
        val_loss = float(F.cross_entropy(val_logits, val.labels))
        val_acc = float((val_logits.argmax(1) == val.labels).float().mean())
        for key, value in (("train_loss", loss_sum / seen), ("train_acc", correct / seen), ("val_loss", val_loss), ("val_acc", val_acc)):
            hist[key].append(value)
        if val_acc > best_acc:
            best_acc, best_state, best_epoch = val_acc, copy.deepcopy(model.state_dict()), epoch + 1
        if log is not None:
            log(f"  finetune epoch {epoch + 1}/{epochs}: train loss {loss_sum / seen:.4f}, val loss {val_loss:.4f}, "
                f"val acc {val_acc:.4f}")
    model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    return HeadResult(model, hist, best_epoch, len(hist["val_acc"]), best_acc if best_epoch else None)


# ----------------------------------------------------------------------------- one protocol


@dataclass
class _Features:
    """Frozen features of the evaluation images (float32, CPU)."""

    train: torch.Tensor  # [N_pool, D] the whole labeled pool, in EvalData.train order
    val: torch.Tensor  # [N_val, D]
    test: torch.Tensor  # [N_test, D]


@dataclass
class _Context:
    encoder: Backbone
    cfg: Config
    data: EvalData
    order: torch.Tensor  # balanced seeded order of data.train
    device: torch.device
    precision: str
    image_size: int
    mean: tuple
    std: tuple
    log: Log
    feats: _Features | None = None

    def features(self) -> _Features:
        if self.feats is None:
            t0 = time.perf_counter()
            d = self.data
            self.log(f"extracting frozen features: {len(d.train)} train / {len(d.val)} val / {len(d.test)} test images "
                     f"on {self.device} ({self.precision})")
            f = functools.partial(extract_features, self.encoder, image_size=self.image_size, mean=self.mean,
                                  std=self.std, device=self.device, precision=self.precision,
                                  batch_size=self.cfg.eval.batch_size)
            self.feats = _Features(f(d.train.images), f(d.val.images), f(d.test.images))
            self.log(f"features done in {time.perf_counter() - t0:.1f} s ({self.feats.train.shape[1]} dimensions)")
        return self.feats


def _run_protocol(ctx: _Context, protocol: str, n_labels: int) -> dict:
    """Train / fit ``protocol`` on ``n_labels`` labeled images; returns everything needed for the outputs."""
    cfg, data = ctx.cfg, ctx.data
    idx = ctx.order[:n_labels]
    y_train, y_val = data.train.labels[idx], data.val.labels
    C = data.num_classes
    ev = cfg.eval
    out: dict = {"n_train": int(n_labels), "history": None, "head": None, "head_epochs": None, "best_epoch": None,
                 "val_accuracy": None, "train_features": None, "test_features": None}
    if protocol == "finetune":
        res = finetune(ctx.encoder, data.train.subset(idx), data.val, C, cfg, ctx.image_size, ctx.mean, ctx.std,
                       ctx.device, ctx.precision, ctx.log)
        test_logits = extract_features(res.model, data.test.images, ctx.image_size, ctx.mean, ctx.std, ctx.device,
                                      ctx.precision, ev.batch_size)
        out["pred"] = test_logits.argmax(1)
        fx = functools.partial(extract_features, res.model.encoder, image_size=ctx.image_size, mean=ctx.mean,
                               std=ctx.std, device=ctx.device, precision=ctx.precision, batch_size=ev.batch_size)
        # features only for the t-SNE plots (the first tsne_points of the training images are enough)
        out["train_features"] = fx(data.train.images[idx[: max(ev.tsne_points, 0)]])
        out["test_features"] = fx(data.test.images) if ev.tsne_points > 0 else None
        out.update(history=res.history, head=res.model, head_epochs=res.epochs_run, best_epoch=res.best_epoch,
                   val_accuracy=res.val_accuracy)
        return out
    feats = ctx.features()
    x_train = feats.train[idx]
    out["train_features"], out["test_features"] = x_train, feats.test
    if protocol == "knn":
        k = ev.knn_k
        out["pred"] = knn_predict(x_train, y_train, feats.test, C, k, ev.knn_t)
        if len(y_val):
            out["val_accuracy"] = float((knn_predict(x_train, y_train, feats.val, C, k, ev.knn_t) == y_val).float().mean())
        return out
    if protocol == "linear":
        res = train_head(x_train, y_train, feats.val, y_val, C, (), ev.linear_epochs, ev.linear_lr,
                         LINEAR_BATCH_SIZE, "cosine", "val_acc", None, cfg.train.seed, ctx.log, "linear")
    elif protocol == "mlp":
        res = train_head(x_train, y_train, feats.val, y_val, C, ev.mlp_hidden, ev.mlp_epochs, ev.mlp_lr,
                         MLP_BATCH_SIZE, "constant", "val_loss", ev.patience, cfg.train.seed, ctx.log, "mlp")
    else:
        raise ConfigError(f"--protocol {protocol!r}: unknown protocol; allowed values: {', '.join(PROTOCOLS)}")
    with torch.no_grad():
        out["pred"] = res.model(feats.test).argmax(1)
    out.update(history=res.history, head=res.model, head_epochs=res.epochs_run, best_epoch=res.best_epoch,
               val_accuracy=res.val_accuracy)
    return out


def _settings(protocol: str, cfg: Config) -> dict:
    ev = cfg.eval
    if protocol == "knn":
        return {"k": ev.knn_k, "temperature": ev.knn_t, "similarity": "cosine"}
    if protocol == "linear":
        return {"optimizer": "adam", "lr": ev.linear_lr, "schedule": "cosine", "epochs": ev.linear_epochs,
                "batch_size": LINEAR_BATCH_SIZE, "selection": "best validation accuracy", "standardised": True}
    if protocol == "mlp":
        return {"hidden": list(ev.mlp_hidden), "optimizer": "adam", "lr": ev.mlp_lr, "epochs": ev.mlp_epochs,
                "batch_size": MLP_BATCH_SIZE, "patience": ev.patience, "selection": "best validation loss",
                "standardised": True}
    return {"optimizer": "sgd-nesterov", "lr": ev.finetune_lr, "schedule": "cosine", "epochs": ev.finetune_epochs,
            "batch_size": ev.batch_size, "weight_decay": FINETUNE_WEIGHT_DECAY, "crop_scale": list(FINETUNE_SCALE),
            "selection": "best validation accuracy"}


def _write_outputs(ctx: _Context, out_dir: Path, protocol: str, res: dict, method: str, wall: float,
                   tsne_cache: dict) -> dict:
    """metrics.json, predictions.csv, plots and weights of one protocol in ``out_dir``; returns the metrics."""
    from . import plots

    data, cfg = ctx.data, ctx.cfg
    out_dir.mkdir(parents=True, exist_ok=True)
    y_test = data.test.labels.numpy()
    pred = res["pred"].numpy()
    metrics = {"protocol": protocol, "method": method}
    metrics.update(classification_metrics(y_test, pred, data.classes))
    metrics.update({
        "val_accuracy": res["val_accuracy"],
        "n_train": res["n_train"],
        "n_val": len(data.val),
        "n_test": len(data.test),
        "head_epochs": res["head_epochs"],
        "best_epoch": res["best_epoch"],
        "wall_time_s": wall,
        "classes": list(data.classes),
        "settings": _settings(protocol, cfg),
        "image_size": ctx.image_size,
        "device": str(ctx.device),
        "precision": ctx.precision,
        "seed": cfg.train.seed,
        "data": cfg.data.name,
    })
    write_json(out_dir / "metrics.json", metrics)

    names = list(data.classes)

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    paths = data.test.paths
    with open(out_dir / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "true", "predicted", "true_class", "predicted_class"] + (["path"] if paths else []))
        for i, (t, p) in enumerate(zip(y_test.tolist(), pred.tolist())):
            w.writerow([i, t, p, name(t), name(p)] + ([paths[i]] if paths else []))

    plots.plot_confusion(np.asarray(metrics["confusion_matrix"]), names, out_dir / "confusion_matrix.png",
                         title=f"{method}, {protocol}: test confusion matrix")
    if res["history"]:
        plots.plot_curves(res["history"], out_dir / "curves.png", title=f"{method}, {protocol} head")
    if res["head"] is not None:
        meta = {"protocol": protocol, "classes": json.dumps(names), "format": "simclr-head-1"}
        save_weights(res["head"], out_dir / ("model.safetensors" if protocol == "finetune" else "head.safetensors"), meta)
    if cfg.eval.tsne_points > 0:
        # The training set of every protocol is a prefix of the class-balanced order, so its first tsne_points
        # images are a class-balanced sample of it, and the same sample for every protocol with at least that
        # many labels: frozen features are embedded once per encoder and the picture copied.
        m = min(res["n_train"], cfg.eval.tsne_points)
        for split, feats, labels, key in (
            ("train", res["train_features"][:m], data.train.labels[ctx.order[:m]], ("train", m)),
            ("test", res["test_features"], data.test.labels, ("test",)),
        ):
            target = out_dir / f"tsne_{split}.png"
            cached = tsne_cache.get(key) if protocol != "finetune" else None
            if cached is not None and cached.is_file():
                if cached.resolve() != target.resolve():
                    shutil.copyfile(cached, target)
                continue
            t0 = time.perf_counter()
            plots.plot_tsne(feats.numpy(), labels.numpy(), names, target, seed=cfg.train.seed,
                            max_points=cfg.eval.tsne_points,
                            title=f"{method}: t-SNE of {'labeled training' if split == 'train' else 'test'} features")
            ctx.log(f"  t-SNE of {split} features: {time.perf_counter() - t0:.1f} s")
            if protocol != "finetune":
                tsne_cache[key] = target
    return metrics


# ----------------------------------------------------------------------------- evaluate a run


def _parse_protocols(protocols: str | Sequence[str]) -> list[str]:
    items = [p.strip() for p in (protocols.split(",") if isinstance(protocols, str) else protocols) if p.strip()]
    if items == ["all"]:
        return list(PROTOCOLS)
    for p in items:
        if p not in PROTOCOLS:
            raise ConfigError(f"--protocol {p!r}: unknown protocol; allowed values: {', '.join(PROTOCOLS)} (or a "
                              "comma-separated list, or all)")
    if not items:
        raise ConfigError(f"--protocol: give at least one of {', '.join(PROTOCOLS)}")
    return list(dict.fromkeys(items))


def evaluate_encoder(
    encoder: Backbone,
    cfg: Config,
    protocols: str | Sequence[str],
    out_dir: str | Path,
    labels: Sequence[int | None] | None = None,
    method: str | None = None,
    data: EvalData | None = None,
    sweep: bool | None = None,
    strict_labels: bool = True,
    log: Log = print,
) -> dict[str, dict]:
    """Evaluate a frozen ``encoder`` under each protocol and write ``out_dir/<protocol>/``.

    Args:
        encoder: a Backbone (its ``image_size``/``mean``/``std`` attributes, if present, set the preprocessing;
            otherwise ``cfg.model.image_size`` and ``cfg.augment``). It is never modified.
        cfg: the configuration (data, eval settings, device, precision, seed).
        protocols: names from ``knn, linear, mlp, finetune`` (list or comma-separated).
        out_dir: the ``eval`` folder of the run.
        labels: None (each protocol's default), ``[N]`` (N labeled training images) or several values: a
            label-efficiency sweep written to ``out_dir/label_efficiency/``. ``None`` inside the list means all.
        method: the label in metrics.json and the report (default ``cfg.name``).
        data: preloaded evaluation data (default: :func:`load_eval_data`).
        sweep: force (True) or forbid (False) a label-efficiency sweep; default: a sweep when ``labels`` has
            several values.
        strict_labels: a label count above the available labeled images is an error (True) or means all (False).

    Returns:
        ``{protocol: metrics}``; for a sweep ``{"label_efficiency": {"<protocol>": [[n, accuracy], ...]}}``.
    """
    protocols = _parse_protocols(protocols)
    out_dir = Path(out_dir)
    method = method or cfg.name
    device = resolve_device(cfg.train.device)
    configure_device(device, cfg.train.reuse_memory)
    precision = resolve_precision(cfg.train.precision, device)
    data = data if data is not None else load_eval_data(cfg, log)
    encoder = encoder.to(device)
    ctx = _Context(encoder, cfg, data, balanced_order(data.train.labels, cfg.train.seed), device, precision,
                   getattr(encoder, "image_size", cfg.model.image_size), tuple(getattr(encoder, "mean", cfg.augment.mean)),
                   tuple(getattr(encoder, "std", cfg.augment.std)), log)
    available = len(data.train)
    labels = list(labels) if labels else []
    if not strict_labels:
        too_many = [n for n in labels if n is not None and n > available]
        if too_many:
            log(f"warning: label counts {too_many} exceed the {available} labeled training images; using all of them")
            labels = [n if n is None or n <= available else None for n in labels]
    if sweep or (sweep is None and len(labels) > 1):
        return {LABEL_EFFICIENCY: _sweep(ctx, protocols, labels or [None], out_dir, method)}
    results: dict[str, dict] = {}
    tsne_cache: dict = {}
    for protocol in protocols:
        n = label_budget(protocol, cfg, available, labels[0] if labels else None, bool(labels))
        t0 = time.perf_counter()
        log(f"[{method}] {protocol}: {n} labeled training images, {len(data.val)} validation, {len(data.test)} test")
        res = _run_protocol(ctx, protocol, n)
        wall = time.perf_counter() - t0
        metrics = _write_outputs(ctx, out_dir / protocol, protocol, res, method, wall, tsne_cache)
        results[protocol] = metrics
        log(f"[{method}] {protocol}: test accuracy {metrics['accuracy']:.4f}, F1 (weighted) {metrics['f1_weighted']:.4f}"
            f" ({time.perf_counter() - t0:.1f} s) -> {out_dir / protocol}")
    return results


def _sweep(ctx: _Context, protocols: list[str], labels: list[int | None], out_dir: Path, method: str) -> dict:
    """Label-efficiency sweep: test accuracy of each protocol for each label count (no per-point plots)."""
    from . import plots

    available = len(ctx.data.train)
    counts = sorted({label_budget(protocols[0], ctx.cfg, available, available if n is None else n, True) for n in labels})
    folder = out_dir / LABEL_EFFICIENCY
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{LABEL_EFFICIENCY}.json"
    curves = read_label_efficiency(json_path)
    details = []
    details_path = folder / "sweep.jsonl"
    for protocol in protocols:
        key = f"{method} ({protocol})"
        points = []
        for n in counts:
            t0 = time.perf_counter()
            res = _run_protocol(ctx, protocol, n)
            m = classification_metrics(ctx.data.test.labels.numpy(), res["pred"].numpy(), ctx.data.classes)
            acc = m["accuracy"]
            points.append([n, acc])
            details.append({"method": method, "protocol": protocol, "n_labels": n, "accuracy": acc,
                            "f1_weighted": m["f1_weighted"], "f1_macro": m["f1_macro"], "val_accuracy": res["val_accuracy"],
                            "head_epochs": res["head_epochs"], "wall_time_s": time.perf_counter() - t0})
            ctx.log(f"[{method}] {protocol} with {n} labels: test accuracy {acc:.4f}")
        curves[key] = points
    write_label_efficiency(json_path, curves)
    with open(details_path, "a") as fh:
        for d in details:
            fh.write(json.dumps(d) + "\n")
    plots.plot_label_efficiency(curves, folder / f"{LABEL_EFFICIENCY}.png")
    ctx.log(f"label-efficiency sweep written to {folder}")
    return curves


def run_config(run_dir: str | Path, config: str | None = None, overrides: dict | None = None) -> Config:
    """The run's resolved config (``RUN/config.yaml``), then an optional YAML and dotted-key overrides."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found; pass the --out folder of `simclr pretrain` or `simclr run`")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml); pass the --out folder of "
                              "`simclr pretrain` or `simclr run`")
    return load_config(config, overrides, base=read_config(cfg_path))


def evaluate_run(
    run_dir: str | Path,
    protocols: str | Sequence[str],
    cfg: Config | None = None,
    overrides: dict | None = None,
    labels: Sequence[int | None] | None = None,
    out_dir: str | Path | None = None,
    method: str | None = None,
    log: Log = print,
    **kwargs,
) -> dict[str, dict]:
    """Evaluate the encoder of ``run_dir`` and write ``RUN/eval/<protocol>/`` (see the module docstring).

    Args:
        run_dir: a finished run directory (``config.yaml`` + ``backbone.safetensors``).
        protocols: ``knn``, ``linear``, ``mlp``, ``finetune`` (list or comma-separated).
        cfg: the config to use; default: the run's ``config.yaml`` with ``overrides`` applied.
        overrides: dotted-key overrides (``{"eval.mlp_epochs": 5, "train.device": "cpu"}``).
        labels: see :func:`evaluate_encoder`.
        out_dir: default ``RUN/eval``.
        method: label in the report (default: ``run.json``'s method, else ``cfg.name``).
        kwargs: ``sweep``, ``strict_labels``, ``data`` of :func:`evaluate_encoder`.

    Returns:
        ``{protocol: metrics}`` as written to ``metrics.json``.
    """
    run_dir = Path(run_dir).expanduser()
    cfg = cfg if cfg is not None else run_config(run_dir, None, overrides)
    if method is None:
        method = (read_run_json(run_dir) or {}).get("method")
    encoder = _encoder_from(run_dir, cfg, resolve_device(cfg.train.device))
    return evaluate_encoder(encoder, cfg, protocols, Path(out_dir) if out_dir else run_dir / "eval", labels,
                            method or cfg.name, log=log, **kwargs)


# ----------------------------------------------------------------------------- embeddings for users


def embed(run_dir: str | Path, data: str, out: str | Path, split: str = "all", overrides: dict | None = None,
          log: Log = print) -> Path:
    """Write one feature vector per image of ``data`` with the run's frozen encoder.

    Args:
        run_dir: a finished run directory.
        data: an image folder or a dataset name (cifar10, ...); overrides the run's ``data.name``.
        out: ``.npz`` (features [N, D] float32, labels [N], index [N], split [N], paths [N] when known, classes)
            or ``.parquet`` (needs pyarrow; one row per image: index, split, path, label, features).
        split: ``all`` (train and, when there is one, test), ``train`` or ``test``.
        overrides: dotted-key overrides (device, precision, batch size, limit, ...).

    Returns:
        The path written.
    """
    out = Path(out)
    if out.suffix not in (".npz", ".parquet"):
        raise ConfigError(f"--out {out}: the file name must end in .npz (NumPy) or .parquet")
    if split not in ("all", "train", "test"):
        raise ConfigError(f"--split {split!r}: allowed values: all, train, test")
    ov = dict(overrides or {})
    ov["data.name"] = data
    cfg = run_config(run_dir, None, ov)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    encoder = _encoder_from(Path(run_dir).expanduser(), cfg, device)
    parts: list[tuple[str, ImageData]] = []
    for name in (("train", "test") if split == "all" else (split,)):
        try:
            parts.append((name, load_split(cfg.data, name, cfg.model.image_size, seed=cfg.train.seed, log=log)))
        except DataError:
            if split != "all" or name == "train":
                raise
            # a flat folder has no test split: "all" is then the train split alone
    feats, labels, index, splits, paths, classes = [], [], [], [], [], []
    for name, d in parts:
        t0 = time.perf_counter()
        feats.append(extract_features(encoder, d.images, encoder.image_size, encoder.mean, encoder.std, device,
                                      precision, cfg.eval.batch_size).numpy())
        log(f"embedded {len(d)} {name} images in {time.perf_counter() - t0:.1f} s")
        labels.append(d.labels.numpy())
        index.append(np.arange(len(d)))
        splits += [name] * len(d)
        paths += list(d.paths) if d.paths else [""] * len(d)
        classes = classes or list(d.classes)
    F_ = np.concatenate(feats).astype(np.float32)
    arrays = {"features": F_, "labels": np.concatenate(labels), "index": np.concatenate(index),
              "split": np.asarray(splits), "paths": np.asarray(paths), "classes": np.asarray(classes)}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        atomic_write(out, lambda f: np.savez(f, **arrays))
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow); or use a .npz "
                              "file name") from None
        table = pa.table({"index": arrays["index"], "split": arrays["split"], "path": arrays["paths"],
                          "label": arrays["labels"], "features": list(F_)})
        atomic_write(out, lambda f: pq.write_table(table, f))
    log(f"wrote {len(F_)} feature vectors of dimension {F_.shape[1]} to {out}")
    return out

"""The evaluation protocols (knn, linear, mlp, finetune): one registry, each run on N labeled images -> a result.

Every protocol selects its model on the labeled validation split, never on the test set. For knn, linear and mlp
the encoder is frozen (no gradient) and in eval mode while features are extracted once per encoder, so neither
its weights nor its BatchNorm statistics change.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import PROTOCOLS, Config, EvalConfig
from ..errors import ConfigError
from ..models import Backbone
from ..runtime import Log
from ..splits import EvalData
from .features import extract_features
from .finetune import FINETUNE_SCALE, FINETUNE_WEIGHT_DECAY, finetune
from .heads import LINEAR_BATCH_SIZE, MLP_BATCH_SIZE, HeadResult, train_head
from .knn import knn_predict


@dataclass
class ProtocolResult:
    """What a protocol produced from ``n_train`` labeled images; :mod:`simclr.evaluate.outputs` writes it."""

    n_train: int
    pred: torch.Tensor  # [N_test] int64 predicted classes of the test images
    val_accuracy: float | None = None
    history: dict[str, list[float]] | None = None  # per-epoch curves of a trained head
    head: nn.Module | None = None  # the trained head (or fine-tuned classifier)
    head_epochs: int | None = None
    best_epoch: int | None = None
    train_features: torch.Tensor | None = None  # [n, D] features of the training images (for the t-SNE plot)
    test_features: torch.Tensor | None = None  # [N_test, D]


@dataclass
class FrozenFeatures:
    """Frozen features of the evaluation images (float32, CPU)."""

    train: torch.Tensor  # [N_pool, D] the whole labeled pool, in EvalData.train order
    val: torch.Tensor  # [N_val, D]
    test: torch.Tensor  # [N_test, D]


@dataclass
class EvalContext:
    """One encoder under evaluation: its data, preprocessing and device, and its frozen features once computed."""

    encoder: Backbone
    cfg: Config
    data: EvalData
    order: torch.Tensor  # balanced seeded order of data.train: the first N are the N labeled images used
    device: torch.device
    precision: str
    image_size: int
    mean: tuple
    std: tuple
    log: Log
    feats: FrozenFeatures | None = None

    def extract(self, encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``encoder``'s outputs for uint8 ``images`` with this context's preprocessing -> float32 [N, D] (CPU)."""
        return extract_features(encoder, images, self.image_size, self.mean, self.std, self.device, self.precision,
                                self.cfg.eval.batch_size)

    def features(self) -> FrozenFeatures:
        if self.feats is None:
            t0 = time.perf_counter()
            d = self.data
            self.log(f"extracting frozen features: {len(d.train)} train / {len(d.val)} val / {len(d.test)} test images "
                     f"on {self.device} ({self.precision})")
            f = functools.partial(self.extract, self.encoder)
            self.feats = FrozenFeatures(f(d.train.images), f(d.val.images), f(d.test.images))
            self.log(f"features done in {time.perf_counter() - t0:.1f} s ({self.feats.train.shape[1]} dimensions)")
        return self.feats


def _knn(ctx: EvalContext, idx: torch.Tensor, seed: int) -> ProtocolResult:
    del seed  # deterministic given the features: nothing to seed
    feats, ev = ctx.features(), ctx.cfg.eval
    x_train, y_train, y_val = feats.train[idx], ctx.data.train.labels[idx], ctx.data.val.labels
    C = ctx.data.num_classes
    res = ProtocolResult(len(idx), knn_predict(x_train, y_train, feats.test, C, ev.knn_k, ev.knn_t, device=ctx.device),
                         train_features=x_train, test_features=feats.test)
    if len(y_val):
        val_pred = knn_predict(x_train, y_train, feats.val, C, ev.knn_k, ev.knn_t, device=ctx.device)
        res.val_accuracy = float((val_pred == y_val).float().mean())
    return res


def _head_result(n: int, pred: torch.Tensor, res: HeadResult, **features: torch.Tensor | None) -> ProtocolResult:
    return ProtocolResult(n, pred, res.val_accuracy, res.history, res.model, res.epochs_run, res.best_epoch, **features)


def _feature_head(ctx: EvalContext, idx: torch.Tensor, seed: int, name: str, **settings) -> ProtocolResult:
    feats = ctx.features()
    x_train = feats.train[idx]
    res = train_head(x_train, ctx.data.train.labels[idx], feats.val, ctx.data.val.labels, ctx.data.num_classes,
                     seed=seed, log=ctx.log, name=name, device=ctx.device, **settings)
    with torch.no_grad():
        pred = res.model(feats.test).argmax(1)
    return _head_result(len(idx), pred, res, train_features=x_train, test_features=feats.test)


def _linear(ctx: EvalContext, idx: torch.Tensor, seed: int) -> ProtocolResult:
    ev = ctx.cfg.eval
    return _feature_head(ctx, idx, seed, "linear", hidden=(), epochs=ev.linear_epochs, lr=ev.linear_lr,
                         batch_size=LINEAR_BATCH_SIZE, schedule="cosine", select="val_acc", patience=None)


def _mlp(ctx: EvalContext, idx: torch.Tensor, seed: int) -> ProtocolResult:
    ev = ctx.cfg.eval
    return _feature_head(ctx, idx, seed, "mlp", hidden=ev.mlp_hidden, epochs=ev.mlp_epochs, lr=ev.mlp_lr,
                         batch_size=MLP_BATCH_SIZE, schedule="constant", select="val_loss", patience=ev.patience)


def _finetune(ctx: EvalContext, idx: torch.Tensor, seed: int) -> ProtocolResult:
    data, ev = ctx.data, ctx.cfg.eval
    res = finetune(ctx.encoder, data.train.subset(idx), data.val, data.num_classes, ctx.cfg, ctx.image_size,
                   ctx.mean, ctx.std, ctx.device, ctx.precision, ctx.log, seed=seed)
    pred = ctx.extract(res.model, data.test.images).argmax(1)
    # features only for the t-SNE plots (the first tsne_points of the training images are enough)
    train_features = ctx.extract(res.model.encoder, data.train.images[idx[: max(ev.tsne_points, 0)]])
    test_features = ctx.extract(res.model.encoder, data.test.images) if ev.tsne_points > 0 else None
    return _head_result(len(idx), pred, res, train_features=train_features, test_features=test_features)


@dataclass(frozen=True)
class Protocol:
    """A registry entry: how to run the protocol, the settings it reports, its default label budget."""

    run: Callable[[EvalContext, torch.Tensor, int], ProtocolResult]  # (context, indices into the balanced order, seed)
    settings: Callable[[EvalConfig], dict]  # what metrics.json records under "settings"
    all_labels: bool  # default budget: every labeled image (True) or data.n_train_labels (False)
    frozen: bool = True  # trains on frozen features (False: fine-tunes a copy of the encoder)
    seeded: bool = True  # the seed changes the result (initialisation, batch order), so eval.seeds repeats it


PROTOCOL_REGISTRY: dict[str, Protocol] = {
    "knn": Protocol(_knn, lambda ev: {"k": ev.knn_k, "temperature": ev.knn_t, "similarity": "cosine"}, True,
                    seeded=False),
    "linear": Protocol(_linear, lambda ev: {
        "optimizer": "adam", "lr": ev.linear_lr, "schedule": "cosine", "epochs": ev.linear_epochs,
        "batch_size": LINEAR_BATCH_SIZE, "selection": "best validation accuracy", "standardised": True}, True),
    "mlp": Protocol(_mlp, lambda ev: {
        "hidden": list(ev.mlp_hidden), "optimizer": "adam", "lr": ev.mlp_lr, "epochs": ev.mlp_epochs,
        "batch_size": MLP_BATCH_SIZE, "patience": ev.patience, "selection": "best validation loss",
        "standardised": True}, False),
    "finetune": Protocol(_finetune, lambda ev: {
        "optimizer": "sgd-nesterov", "lr": ev.finetune_lr, "schedule": "cosine", "epochs": ev.finetune_epochs,
        "batch_size": ev.batch_size, "weight_decay": FINETUNE_WEIGHT_DECAY, "crop_scale": list(FINETUNE_SCALE),
        "selection": "best validation accuracy"}, False, frozen=False),
}
# config.PROTOCOLS names them for config validation (config cannot import this module); they must agree.
assert tuple(PROTOCOL_REGISTRY) == PROTOCOLS, "config.PROTOCOLS and PROTOCOL_REGISTRY disagree"


def run_protocol(ctx: EvalContext, protocol: str, n_labels: int, seed: int | None = None) -> ProtocolResult:
    """Train / fit ``protocol`` on the first ``n_labels`` images of the balanced order.

    ``seed`` seeds a trained head (default ``train.seed``); the labeled images stay the same for every seed.
    """
    if protocol not in PROTOCOL_REGISTRY:
        raise ConfigError(f"--protocol {protocol!r}: unknown protocol; allowed values: {', '.join(PROTOCOL_REGISTRY)}")
    return PROTOCOL_REGISTRY[protocol].run(ctx, ctx.order[:n_labels], ctx.cfg.train.seed if seed is None else seed)


def parse_protocols(protocols: str | Sequence[str]) -> list[str]:
    """Protocol names from a list or a comma-separated string (``all``: every protocol), unique, in order."""
    items = [p.strip() for p in (protocols.split(",") if isinstance(protocols, str) else protocols) if p.strip()]
    if items == ["all"]:
        return list(PROTOCOL_REGISTRY)
    for p in items:
        if p not in PROTOCOL_REGISTRY:
            raise ConfigError(f"--protocol {p!r}: unknown protocol; allowed values: {', '.join(PROTOCOL_REGISTRY)} (or a "
                              "comma-separated list, or all)")
    if not items:
        raise ConfigError(f"--protocol: give at least one of {', '.join(PROTOCOL_REGISTRY)}")
    return list(dict.fromkeys(items))


def label_budget(protocol: str, cfg: Config, available: int, n: int | None, explicit: bool) -> int:
    """Labeled training images a protocol uses: ``n`` if given, else all (knn, linear) or
    ``data.n_train_labels`` (mlp, finetune: the seed notebook project's 6,500), clamped to what is available."""
    if n is not None:
        if n > available:
            raise ConfigError(f"--labels {n}: only {available} labeled training images are available "
                              f"(after holding out the validation split); use at most {available} or 'all'")
        if n < 1:
            raise ConfigError(f"--labels {n}: label counts must be >= 1")
        return n
    if not PROTOCOL_REGISTRY[protocol].all_labels and not explicit:
        return min(cfg.data.n_train_labels, available)
    return available

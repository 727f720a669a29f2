"""What a protocol's result becomes: test metrics, ``metrics.json``, ``predictions.csv``, plots and head weights.

``RUN/eval/<protocol>/`` holds ``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``, ``curves.png``
(trained heads), ``tsne_train.png``, ``tsne_test.png`` and the trained weights (``head.safetensors``, or
``model.safetensors`` for fine-tuning).

Every test figure of metrics.json has its 95 % bootstrap interval under ``intervals`` (how it was made:
``bootstrap``; :mod:`simclr.stats`), and with ``eval.seeds`` > 1 a trained head's per-seed rows, mean and standard
deviation under ``seed_runs``. ``predictions.csv`` keeps every test image's true and predicted class, so that
``simclr compare`` can pair two runs image by image (:func:`read_predictions`).
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import stats
from ..checkpoint import save_weights
from ..rundir import write_json
from ..splits import EvalData
from .protocols import PROTOCOL_REGISTRY, EvalContext, ProtocolResult

PREDICTION_COLUMNS = ("index", "true", "predicted", "true_class", "predicted_class")  # then "path" for folders


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


def scores_on_test(data: EvalData, res: ProtocolResult) -> dict:
    """The headline figures of one fitted protocol: test accuracy and F1s, validation accuracy, epochs."""
    m = classification_metrics(data.test.labels.numpy(), res.pred.numpy(), data.classes)
    return {**{k: m[k] for k in stats.METRICS}, "val_accuracy": res.val_accuracy, "head_epochs": res.head_epochs,
            "best_epoch": res.best_epoch}


def intervals_on_test(data: EvalData, res: ProtocolResult, resamples: int, seed: int) -> dict[str, list[float]]:
    """95 % bootstrap intervals of :data:`simclr.stats.METRICS` on the test images (:func:`simclr.stats.bootstrap_interval`)."""
    return stats.bootstrap_interval(data.test.labels.numpy(), res.pred.numpy(), resamples, seed, len(data.classes))


def write_outputs(ctx: EvalContext, out_dir: Path, protocol: str, res: ProtocolResult, method: str, wall: float,
                  tsne_cache: dict, seed_runs: dict | None = None) -> dict:
    """metrics.json, predictions.csv, plots and weights of one protocol in ``out_dir``; returns the metrics.

    ``tsne_cache`` maps a t-SNE picture's content to the file that already shows it, shared between the protocols
    of one encoder (see :func:`_write_tsne`). ``seed_runs``: the repeats over ``eval.seeds`` (stored as is).
    """
    from .. import plots  # matplotlib: only when there is something to draw

    data, cfg = ctx.data, ctx.cfg
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(data.classes)
    metrics = {"protocol": protocol, "method": method}
    metrics.update(classification_metrics(data.test.labels.numpy(), res.pred.numpy(), data.classes))
    metrics["intervals"] = intervals_on_test(data, res, cfg.eval.bootstrap, cfg.train.seed)
    metrics["bootstrap"] = stats.bootstrap_settings(cfg.eval.bootstrap, cfg.train.seed)
    if seed_runs is not None:
        metrics["seed_runs"] = seed_runs
    metrics.update({
        "val_accuracy": res.val_accuracy,
        "n_train": res.n_train,
        "n_val": len(data.val),
        "n_test": len(data.test),
        "head_epochs": res.head_epochs,
        "best_epoch": res.best_epoch,
        "wall_time_s": wall,
        "classes": names,
        "settings": PROTOCOL_REGISTRY[protocol].settings(cfg.eval),
        "image_size": ctx.image_size,
        "device": str(ctx.device),
        "precision": ctx.precision,
        "seed": cfg.train.seed,
        "data": cfg.data.name,
        "data_limit": cfg.data.limit,  # with "data" and the labels in predictions.csv: which test images these are
    })
    write_json(out_dir / "metrics.json", metrics)
    _write_predictions(out_dir / "predictions.csv", data.test.labels.tolist(), res.pred.tolist(), names, data.test.paths)
    plots.plot_confusion(np.asarray(metrics["confusion_matrix"]), names, out_dir / "confusion_matrix.png",
                         title=f"{method}, {protocol}: test confusion matrix")
    if res.history:
        plots.plot_curves(res.history, out_dir / "curves.png", title=f"{method}, {protocol} head")
    if res.head is not None:
        meta = {"protocol": protocol, "classes": json.dumps(names), "format": "simclr-head-1"}
        save_weights(res.head, out_dir / ("model.safetensors" if protocol == "finetune" else "head.safetensors"), meta)
    if cfg.eval.tsne_points > 0:
        _write_tsne(ctx, out_dir, res, method, PROTOCOL_REGISTRY[protocol].frozen, tsne_cache)
    return metrics


def _write_predictions(path: Path, y_true: list[int], y_pred: list[int], names: list[str], paths: list[str] | None) -> None:
    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(PREDICTION_COLUMNS) + (["path"] if paths else []))
        for i, (t, p) in enumerate(zip(y_true, y_pred)):
            w.writerow([i, t, p, name(t), name(p)] + ([paths[i]] if paths else []))


def read_predictions(path: str | Path) -> dict[str, np.ndarray | list[str] | None]:
    """A ``predictions.csv`` back: ``{"true": [N] int64, "predicted": [N] int64, "path": [N] str or None}``."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"true": np.array([int(r["true"]) for r in rows], dtype=np.int64),
            "predicted": np.array([int(r["predicted"]) for r in rows], dtype=np.int64),
            "path": [r["path"] for r in rows] if rows and "path" in rows[0] else None}


def _write_tsne(ctx: EvalContext, out_dir: Path, res: ProtocolResult, method: str, frozen: bool, tsne_cache: dict) -> None:
    """``tsne_train.png`` and ``tsne_test.png``; frozen features are embedded once per encoder and the picture copied.

    The training set of every protocol is a prefix of the class-balanced order, so its first ``tsne_points``
    images are a class-balanced sample of it, and the same sample for every protocol with at least that many
    labels. A fine-tuned encoder has features of its own: never cached.
    """
    from .. import plots

    cfg, data = ctx.cfg, ctx.data
    m = min(res.n_train, cfg.eval.tsne_points)
    for part, feats, labels, key in (
        ("train", res.train_features[:m], data.train.labels[ctx.order[:m]], ("train", m)),
        ("test", res.test_features, data.test.labels, ("test",)),
    ):
        target = out_dir / f"tsne_{part}.png"
        cached = tsne_cache.get(key) if frozen else None
        if cached is not None and cached.is_file():
            if cached.resolve() != target.resolve():
                shutil.copyfile(cached, target)
            continue
        t0 = time.perf_counter()
        plots.plot_tsne(feats.numpy(), labels.numpy(), list(data.classes), target, seed=cfg.train.seed,
                        max_points=cfg.eval.tsne_points,
                        title=f"{method}: t-SNE of {'labeled training' if part == 'train' else 'test'} features")
        ctx.log(f"  t-SNE of {part} features: {time.perf_counter() - t0:.1f} s")
        if frozen:
            tsne_cache[key] = target

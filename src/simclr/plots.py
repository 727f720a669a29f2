"""Plots: arrays and metrics in, PNG files out.

Every function is pure (no global pyplot state: figures are built with
:class:`matplotlib.figure.Figure` and rendered by the Agg canvas), creates the parent folder of
``path`` and returns the :class:`~pathlib.Path` it wrote.

Accuracies are fractions in [0, 1]; values above 1 are read as percentages, so either works.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, PercentFormatter

__all__ = [
    "plot_confusion",
    "plot_curves",
    "plot_knn",
    "plot_label_efficiency",
    "plot_loss",
    "plot_tsne",
]

DPI = 110
_UNLABELED_COLOR = "#9e9e9e"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def _percent(values: Sequence[float]) -> np.ndarray:
    """Accuracies as percentages (fractions are scaled by 100)."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size and finite.max() <= 1.0:
        arr = arr * 100.0
    return arr


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _marker(n: int) -> str | None:
    # Markers help read short curves; on long ones they only add noise.
    return "o" if n <= 30 else None


def _class_colors(n: int) -> list:
    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(x) for x in np.linspace(0.05, 0.95, n)]


def plot_loss(
    epochs: Sequence[int], losses: Sequence[float], path: str | os.PathLike, title: str = "Contrastive loss"
) -> Path:
    """Training loss per epoch.

    Args:
        epochs: epoch numbers, length E.
        losses: mean loss of each epoch, length E (non-finite values leave a gap).
        path: PNG file to write.
        title: figure title.

    Returns:
        The path written.
    """
    if len(epochs) != len(losses):
        raise ValueError(f"plot_loss: {len(epochs)} epochs but {len(losses)} losses")
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    if len(epochs):
        ax.plot(list(epochs), np.asarray(losses, dtype=float), marker=_marker(len(epochs)), color="C0")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    else:
        _no_data(ax)
    ax.set_title(title)
    return _save(fig, path)


def plot_knn(epochs: Sequence[int], accs: Sequence[float], path: str | os.PathLike) -> Path:
    """kNN monitor accuracy during pretraining.

    Args:
        epochs: epochs at which the monitor ran, length K.
        accs: kNN accuracies (fractions or percentages), length K.
        path: PNG file to write.

    Returns:
        The path written.
    """
    if len(epochs) != len(accs):
        raise ValueError(f"plot_knn: {len(epochs)} epochs but {len(accs)} accuracies")
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    if len(epochs):
        pct = _percent(accs)
        ax.plot(list(epochs), pct, marker=_marker(len(epochs)), color="C2")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
        ax.set_xlabel("epoch")
        ax.set_ylabel("kNN accuracy")
        ax.grid(alpha=0.3)
        ax.margins(y=0.15)  # room for the label of the last value
        last = pct[-1]
        if np.isfinite(last):
            ax.annotate(f"{last:.1f} %", (list(epochs)[-1], last), textcoords="offset points",
                        xytext=(0, 8), ha="center", fontsize=9)
    else:
        _no_data(ax)
    ax.set_title("kNN accuracy during pretraining")
    return _save(fig, path)


def plot_curves(history: dict[str, Sequence[float]], path: str | os.PathLike, title: str = "") -> Path:
    """Training curves of a classification head: one panel for loss, one for accuracy.

    Args:
        history: any subset of ``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``; each a list with
            one value per epoch (epochs are numbered from 1). Other keys are ignored.
        path: PNG file to write.
        title: figure title.

    Returns:
        The path written.
    """
    groups = [
        ("loss", [k for k in ("train_loss", "val_loss") if history.get(k)]),
        ("accuracy", [k for k in ("train_acc", "val_acc") if history.get(k)]),
    ]
    groups = [(name, keys) for name, keys in groups if keys]
    fig = _figure(10.0 if len(groups) > 1 else 6.4, 4.0)
    if not groups:
        _no_data(fig.add_subplot())
    for i, (name, keys) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for key in keys:
            values = np.asarray(history[key], dtype=float)
            if name == "accuracy":
                values = _percent(values)
            x = np.arange(1, len(values) + 1)
            style = "-" if key.startswith("train") else "--"
            ax.plot(x, values, style, marker=_marker(len(values)), label=key.split("_")[0])
        if name == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Confusion matrix with counts in the cells.

    Args:
        cm: integer counts [C, C]; rows are true classes, columns predicted classes.
        class_names: C names, shown on both axes.
        path: PNG file to write.
        title: figure title.

    Returns:
        The path written.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"plot_confusion: expected a square matrix, got shape {cm.shape}")
    c = cm.shape[0]
    names = [str(n) for n in class_names][:c] + [str(i) for i in range(len(class_names), c)]
    side = min(max(4.5, 0.55 * c + 2.0), 24.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    label_size = 9 if c <= 20 else max(4, int(180 / c))
    ax.set_xticks(range(c), names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center",
                  fontsize=label_size)
    ax.set_yticks(range(c), names, fontsize=label_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # Counts are readable up to about 30 classes; beyond that the colours carry the information.
    if 0 < c <= 30:
        vmax = cm.max() if cm.size else 0
        size = 9 if c <= 12 else 7 if c <= 20 else 5
        for i in range(c):
            for j in range(c):
                value = cm[i, j]
                text = f"{value:d}" if np.issubdtype(cm.dtype, np.integer) else f"{value:.2g}"
                color = "white" if vmax and value > 0.5 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=size)
    ax.set_title(title or "Confusion matrix")
    return _save(fig, path)


def _stratified_subsample(labels: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_points`` rows, keeping each class's share (every class keeps one)."""
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        quota = max(1, int(math.floor(max_points * len(members) / n)))
        chosen.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    idx = np.concatenate(chosen)
    if len(idx) > max_points:
        idx = rng.choice(idx, size=max_points, replace=False)
    elif len(idx) < max_points:
        rest = np.setdiff1d(np.arange(n), idx)
        idx = np.concatenate([idx, rng.choice(rest, size=max_points - len(idx), replace=False)])
    return np.sort(idx)


def plot_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    seed: int = 0,
    max_points: int = 2000,
) -> Path:
    """2-D t-SNE (van der Maaten & Hinton 2008) of features, coloured by class.

    Args:
        features: [N, D] feature vectors (e.g. frozen encoder outputs).
        labels: [N] integer class indices; -1 marks unlabeled points (drawn in grey).
        class_names: names indexed by label.
        path: PNG file to write.
        title: figure title.
        seed: seeds the subsample, the PCA and the t-SNE.
        max_points: at most this many points are embedded (class shares kept).

    Returns:
        The path written.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"plot_tsne: features {x.shape} and labels {y.shape} do not match ([N, D] and [N])")
    if not np.isfinite(x).all():
        raise ValueError("plot_tsne: features contain NaN or infinite values")
    idx = _stratified_subsample(y, max_points, seed)
    x, y = x[idx], y[idx]
    n = len(x)

    fig = _figure(7.5, 6.0)
    ax = fig.add_subplot()
    if n < 4:
        _no_data(ax, f"too few points for t-SNE ({n})")
    else:
        # PCA to 50 dimensions first: the usual t-SNE practice, faster and less noisy on 512-d features.
        if x.shape[1] > 50 and n > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
        # On small inputs OpenMP threads only add spin-wait overhead (seconds on a busy machine).
        with threadpool_limits(limits=1 if n <= 500 else None, user_api="openmp"):
            emb = tsne.fit_transform(x)
        classes = [c for c in np.unique(y) if c >= 0]
        colors = _class_colors(len(classes))
        point_size = 6 if n > 1000 else 12 if n > 200 else 24
        if (y < 0).any():
            m = y < 0
            ax.scatter(emb[m, 0], emb[m, 1], s=point_size, c=_UNLABELED_COLOR, alpha=0.6, label="unlabeled",
                       linewidths=0)
        for color, cls in zip(colors, classes):
            m = y == cls
            name = str(class_names[cls]) if cls < len(class_names) else str(cls)
            ax.scatter(emb[m, 0], emb[m, 1], s=point_size, color=color, alpha=0.8, label=name, linewidths=0)
        n_legend = len(classes) + int((y < 0).any())
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9 if n_legend <= 20 else 5,
                  ncol=1 if n_legend <= 25 else 2, markerscale=3 if point_size < 12 else 1.5, frameon=False)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title or f"t-SNE ({n} points)")
    return _save(fig, path)


def plot_label_efficiency(results: dict[str, Sequence[tuple[int, float]]], path: str | os.PathLike) -> Path:
    """Test accuracy against the number of labeled training images, one line per method.

    Args:
        results: ``{method: [(n_labels, accuracy), ...]}``; accuracy as a fraction or a percentage.
        path: PNG file to write.

    Returns:
        The path written.
    """
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    ticks: set[int] = set()
    for i, (method, points) in enumerate(results.items()):
        pts = sorted((int(n), float(a)) for n, a in points if int(n) > 0)
        if not pts:
            continue
        ns = [p[0] for p in pts]
        ticks.update(ns)
        ax.plot(ns, _percent([p[1] for p in pts]), marker="o", color=f"C{i % 10}", label=str(method))
    if ticks:
        ax.set_xscale("log")
        # Tick exactly at the label counts that were measured: they are the meaningful values.
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:,}" for t in sorted(ticks)], rotation=30 if len(ticks) > 5 else 0)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
        ax.set_xlabel("labeled training images")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    else:
        _no_data(ax)
    ax.set_title("Label efficiency")
    return _save(fig, path)

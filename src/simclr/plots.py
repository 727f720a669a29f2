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
    "plot_neighbors",
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


def _epoch_axis(ax, epochs: Sequence[int]) -> None:
    """Whole-number epoch ticks; a single epoch gets one epoch of room either side (not 1.9 to 2.1)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = [float(e) for e in epochs]
    if values and min(values) == max(values):
        ax.set_xlim(values[0] - 1, values[0] + 1)


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
        _epoch_axis(ax, epochs)
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
        _epoch_axis(ax, epochs)
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


_MATCH = (44, 160, 44)  # green: the neighbour's class is the query's
_MISMATCH = (214, 39, 40)  # red
_NEUTRAL = (190, 190, 190)  # no labels to compare
_QUERY = (40, 40, 40)


def _tile(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 ``[3, S, S]`` -> ``[side, side, 3]``: whole-pixel enlargement for small images (no blur), else resampled."""
    from PIL import Image

    hwc = np.ascontiguousarray(np.transpose(np.asarray(image, dtype=np.uint8), (1, 2, 0)))
    if hwc.shape[0] == side and hwc.shape[1] == side:
        return hwc
    up = hwc.shape[0] < side
    resample = Image.Resampling.NEAREST if up else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(hwc).resize((side, side), resample))


def plot_neighbors(
    queries: np.ndarray,
    neighbors: np.ndarray,
    path: str | os.PathLike,
    match: np.ndarray | None = None,
    query_names: Sequence[str] | None = None,
    neighbor_names: Sequence[Sequence[str]] | None = None,
    title: str = "Nearest neighbours",
) -> Path:
    """Each query (left, dark frame) and its nearest neighbours in order, one row per query.

    Args:
        queries: uint8 ``[Q, 3, S, S]``.
        neighbors: uint8 ``[Q, k, 3, S, S]``, most similar first.
        path: PNG file to write.
        match: bool ``[Q, k]``: frame each neighbour green (its class is the query's) or red; None: grey frames.
        query_names: one label per row (class name or file name), shown left of the row.
        neighbor_names: ``[Q][k]`` labels shown under each neighbour (only when ``match`` is None).
        title: figure title.

    Returns:
        The path written.
    """
    queries, neighbors = np.asarray(queries), np.asarray(neighbors)
    if queries.ndim != 4 or neighbors.ndim != 5 or len(queries) != len(neighbors):
        raise ValueError(f"plot_neighbors: queries [Q,3,S,S] and neighbours [Q,k,3,S,S] expected, got "
                         f"{queries.shape} and {neighbors.shape}")
    Q, k = neighbors.shape[:2]
    if match is not None and np.asarray(match).shape != (Q, k):
        raise ValueError(f"plot_neighbors: match must be [{Q}, {k}], got {np.asarray(match).shape}")
    S = queries.shape[-1]
    side = 64 if S <= 64 else min(S, 128)
    b = max(3, side // 10)  # frame width (px)
    cell = side + 2 * b
    gap = cell // 3  # between the query column and its neighbours
    canvas = np.full((max(Q, 1) * cell, (1 + k) * cell + gap, 3), 255, dtype=np.uint8)
    for r in range(Q):
        y = r * cell
        canvas[y : y + cell, 0:cell] = _QUERY
        canvas[y + b : y + b + side, b : b + side] = _tile(queries[r], side)
        for j in range(k):
            x = (1 + j) * cell + gap
            color = _NEUTRAL if match is None else (_MATCH if match[r][j] else _MISMATCH)
            canvas[y + 1 : y + cell - 1, x + 1 : x + cell - 1] = color
            canvas[y + b : y + b + side, x + b : x + b + side] = _tile(neighbors[r, j], side)
    label_w = 1.3 if query_names else 0.2
    scale = 1.0 / DPI
    fig = _figure(canvas.shape[1] * scale + label_w, canvas.shape[0] * scale + 0.7)
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([cell / 2] + [(1 + j) * cell + gap + cell / 2 for j in range(k)])
    ax.set_xticklabels(["query"] + [str(j + 1) for j in range(k)], fontsize=8)
    ax.xaxis.set_ticks_position("top")
    ax.tick_params(length=0)
    if query_names:
        ax.set_yticks([r * cell + cell / 2 for r in range(Q)])
        ax.set_yticklabels([str(n)[:18] for n in query_names], fontsize=8)
    else:
        ax.set_yticks([])
    if neighbor_names is not None and match is None:
        for r in range(Q):
            for j in range(k):
                name = str(neighbor_names[r][j])[:10]
                if name:
                    ax.text((1 + j) * cell + gap + cell / 2, r * cell + cell - 1, name, ha="center", va="bottom",
                            fontsize=6, color="white", bbox=dict(facecolor="black", alpha=0.5, pad=0.5, lw=0))
    for spine in ax.spines.values():
        spine.set_visible(False)
    if match is not None:
        m = np.asarray(match)
        title += f"\n{int(m.sum())} of {m.size} neighbours share the query's class (green; red: another class)"
    ax.set_title(title, fontsize=9)
    return _save(fig, path)

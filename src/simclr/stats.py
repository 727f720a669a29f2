"""Error bars for test-set figures: bootstrap intervals, paired differences, McNemar's test, and their one format.

Everything here works on stored per-image predictions (``[N]`` integer class indices of the test images), so an
interval costs no model evaluation. The bootstrap resamples the test images with replacement (Efron & Tibshirani
1993): ``resamples`` index matrices ``[B, N]`` drawn in chunks from one seeded generator, every metric computed for a
whole chunk at once with ``np.bincount``; the 95 % interval is the 2.5th and 97.5th percentile of the resampled
values (the percentile interval). A paired comparison of two classifiers uses the same resampled images for both.

The one written form of an interval, used by the log, ``simclr evaluate``, ``simclr compare``, the report and the
benchmark tables, is :func:`format_interval`: ``44.0 % [43.0, 45.0]`` (a percentile interval need not be symmetric,
so it is never written as ``±``). ``±`` is kept for the spread over seeds: ``44.1 % ± 0.3 (3 seeds)``, the sample
standard deviation (:func:`format_spread`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from .errors import ConfigError

LEVEL = 0.95  # two-sided coverage of every interval
METRICS = ("accuracy", "f1_weighted", "f1_macro")  # the test-set figures that carry an interval
CHUNK_ELEMENTS = 1 << 21  # index-matrix elements per chunk (B x N): about 8 MB of int32 per array in flight
EXACT_BELOW = 25  # McNemar: exact binomial test below this many discordant images, chi-square at or above


def check_resamples(resamples: int, name: str = "resamples") -> None:
    """Raise ConfigError (naming ``name``, the flag or key it came from) unless ``resamples`` is a whole number >= 1."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ConfigError(f"{name}: invalid value {resamples!r}; the bootstrap needs a whole number of resamples >= 1")


def resample_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap index matrices: ``resamples`` rows of ``n`` indices drawn with replacement, in ``[B, n]`` chunks.

    The rows depend only on ``(n, resamples, seed)``, so the same seed gives the same interval, and two classifiers
    scored on the same rows are paired.
    """
    check_resamples(resamples)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, resamples, per_chunk):
        yield rng.integers(0, n, size=(min(per_chunk, resamples - start), n), dtype=np.int32)


def score_rows(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Accuracy and weighted / macro F1 of each resample ``idx[b]`` of the test images, vectorised.

    Args:
        y_true, y_pred: ``[N]`` class indices in ``[0, num_classes)``.
        idx: ``[B, M]`` indices into them (``np.arange(N)[None]`` scores the set itself).
        num_classes: C; macro F1 is averaged over all C classes, a class with neither true nor predicted images
            counting 0, as :func:`simclr.evaluate.outputs.classification_metrics` (scikit-learn with
            ``labels=range(C), zero_division=0``) does, except that a class present in the whole set that a
            resample happens to miss is left out of that resample's average (its F1 is undefined there, not 0).

    Returns:
        ``{metric: [B] float64}`` for each of :data:`METRICS`.
    """
    B, M = idx.shape
    t, p = y_true[idx], y_pred[idx]  # [B, M]
    correct = t == p
    offset = (np.arange(B, dtype=np.int64) * num_classes)[:, None]  # row b counts into bins [b*C, (b+1)*C)
    t_keys = (t + offset).ravel()

    def count(keys: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(keys, weights=weights, minlength=B * num_classes).reshape(B, num_classes)

    support, predicted = count(t_keys), count((p + offset).ravel())
    hits = count(t_keys, correct.ravel().astype(np.float64))
    denom = support + predicted
    f1 = np.divide(2 * hits, denom, out=np.zeros((B, num_classes)), where=denom > 0)  # [B, C]
    in_set = (np.bincount(y_true, minlength=num_classes) + np.bincount(y_pred, minlength=num_classes)) > 0
    missed = ((denom == 0) & in_set).sum(axis=1)  # classes of the set that this resample has no image of
    return {"accuracy": correct.mean(axis=1), "f1_weighted": (f1 * support).sum(axis=1) / M,
            "f1_macro": f1.sum(axis=1) / (num_classes - missed)}


def _prepare(y_true, preds, num_classes: int | None) -> tuple[np.ndarray, list[np.ndarray], int]:
    """int64 arrays of the labels and of each prediction set, and C (at least every index seen + 1)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    preds = [np.asarray(p, dtype=np.int64) for p in preds]
    if any(p.shape != y_true.shape for p in preds):
        raise ValueError(f"predictions of shapes {[p.shape for p in preds]} for {y_true.shape} labels")
    C = max([num_classes or 0] + [int(a.max(initial=-1)) + 1 for a in (y_true, *preds)])
    return y_true, preds, C


def _replicates(y_true: np.ndarray, preds: Sequence[np.ndarray], resamples: int, seed: int,
                C: int) -> list[dict[str, np.ndarray]]:
    """:func:`score_rows` of each of ``preds`` on the same ``resamples`` bootstrap resamples."""
    chunks: list[list[dict[str, np.ndarray]]] = [[] for _ in preds]
    for idx in resample_indices(len(y_true), resamples, seed):
        for out, p in zip(chunks, preds):
            out.append(score_rows(y_true, p, idx, C))
    return [{k: np.concatenate([c[k] for c in out]) for k in METRICS} for out in chunks]


def _percentiles(values: np.ndarray, level: float) -> list[float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap_interval(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, resamples: int = 1000,
                       seed: int = 0, num_classes: int | None = None, level: float = LEVEL) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of the test accuracy and F1 scores of stored predictions.

    Args:
        y_true, y_pred: ``[N]`` true and predicted class indices of the test images.
        resamples: bootstrap resamples B (>= 1; 1,000 gives the interval's ends to about 0.1 point at N = 10,000).
        seed: seeds the resampling (the same seed gives the same interval).
        num_classes: C (default: the largest index + 1).
        level: two-sided coverage.

    Returns:
        ``{"accuracy": [low, high], "f1_weighted": [...], "f1_macro": [...]}`` as fractions.

    Raises:
        ConfigError: ``resamples`` is not a whole number >= 1.
    """
    y_true, preds, C = _prepare(y_true, [y_pred], num_classes)
    reps = _replicates(y_true, preds, resamples, seed, C)[0]
    return {k: _percentiles(v, level) for k, v in reps.items()}


def paired_difference(y_true: Sequence[int] | np.ndarray, pred_a: Sequence[int] | np.ndarray,
                      pred_b: Sequence[int] | np.ndarray, resamples: int = 1000, seed: int = 0,
                      num_classes: int | None = None, level: float = LEVEL) -> dict[str, dict]:
    """A's score minus B's on the same test images, with a paired percentile bootstrap interval.

    Both classifiers are scored on the same resampled images, so what the two get right or wrong together cancels
    and the interval is much narrower than the two separate intervals suggest.

    Args:
        y_true: ``[N]`` true class indices; pred_a, pred_b: ``[N]`` predictions of A and B for the same images.
        resamples, seed, num_classes, level: as for :func:`bootstrap_interval`.

    Returns:
        ``{metric: {"a", "b", "difference", "interval": [low, high]}}`` (fractions) for each of :data:`METRICS`.
    """
    y_true, preds, C = _prepare(y_true, [pred_a, pred_b], num_classes)
    everything = np.arange(len(y_true))[None]
    points = [score_rows(y_true, p, everything, C) for p in preds]
    rep_a, rep_b = _replicates(y_true, preds, resamples, seed, C)
    return {k: {"a": float(points[0][k][0]), "b": float(points[1][k][0]),
                "difference": float(points[0][k][0] - points[1][k][0]),
                "interval": _percentiles(rep_a[k] - rep_b[k], level)} for k in METRICS}


def mcnemar(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> dict:
    """McNemar's test of equal accuracy of two classifiers on the same images (McNemar 1947).

    Only the discordant images count: ``a_only`` that A gets right and B wrong, ``b_only`` the reverse. Under
    equal accuracy each discordant image goes either way with probability 1/2. Below :data:`EXACT_BELOW`
    discordant images the two-sided exact binomial p-value is used, else the chi-square statistic with
    continuity correction ``(|a_only - b_only| - 1)^2 / (a_only + b_only)`` on 1 degree of freedom.

    Returns:
        ``{"a_only", "b_only", "p_value", "test"}``; p = 1 when there is no discordant image.
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    if n < EXACT_BELOW:
        # Exact: P(X <= min) under Binomial(n, 1/2), doubled; integers throughout, so no rounding below 1.
        tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1))
        p, test = min(1.0, 2 * tail / 2**n), "exact binomial"
    else:
        chi2 = (abs(a_only - b_only) - 1) ** 2 / n
        p, test = math.erfc(math.sqrt(chi2 / 2)), "chi-square with continuity correction"  # chi2(1) survival
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p), "test": test}


def bootstrap_settings(resamples: int, seed: int, level: float = LEVEL) -> dict:
    """What metrics.json records beside its intervals (``"bootstrap"``): enough to say how they were made."""
    return {"method": "percentile bootstrap over the test images", "level": level, "resamples": resamples, "seed": seed}


def describe_bootstrap(settings: Mapping, n: int | None = None) -> str:
    """The sentence that names the interval method once (report, summaries), from :func:`bootstrap_settings`."""
    images = f"the {n:,} test images" if n else "the test images"
    return (f"[low, high]: {100 * settings['level']:.0f} % percentile bootstrap interval over {images} "
            f"({settings['resamples']:,} resamples, seed {settings['seed']})")


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator; None for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def seed_summary(rows: Sequence[Mapping], keys: Sequence[str] = METRICS) -> dict:
    """``{"seeds", "rows", "mean", "std"}`` over per-seed rows (each with ``"seed"`` and the ``keys``)."""
    spread = {k: mean_std([r[k] for r in rows]) for k in keys}
    return {"seeds": [r["seed"] for r in rows], "rows": list(rows), "mean": {k: m for k, (m, _) in spread.items()},
            "std": {k: s for k, (_, s) in spread.items()}}


def format_interval(value: float, interval: Sequence[float] | None = None, signed: bool = False) -> str:
    """THE written form of a figure and its interval (fractions in, percent out): ``44.0 % [43.0, 45.0]``.

    ``signed`` writes a difference (percentage points) as ``+0.7 % [-0.2, 1.6]``; without an interval (an older
    metrics.json) the figure alone: ``44.0 %``.
    """
    text = f"{100 * value:+.1f} %" if signed else f"{100 * value:.1f} %"
    if interval is None:
        return text
    return f"{text} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def format_spread(mean: float, std: float | None, n: int) -> str:
    """Mean ± sample standard deviation over ``n`` seeds: ``44.1 % ± 0.3 (3 seeds)``."""
    spread = f" ± {100 * std:.1f}" if std is not None else ""
    return f"{100 * mean:.1f} %{spread} ({n} seed{'s' if n != 1 else ''})"


def format_metric(metrics: Mapping, key: str = "accuracy") -> str:
    """One test figure of a protocol's metrics.json with its interval, and its spread over seeds when there is one.

    ``format_metric(m, "f1_macro")`` -> ``43.1 % [42.2, 44.0]``, or with ``eval.seeds: 3``
    ``54.0 % [53.0, 55.0]; 54.1 % ± 0.3 (3 seeds)``.
    """
    text = format_interval(metrics[key], (metrics.get("intervals") or {}).get(key))
    seeds = metrics.get("seed_runs") or {}
    if seeds.get("mean"):
        text += "; " + format_spread(seeds["mean"][key], seeds["std"][key], len(seeds["seeds"]))
    return text

"""Numbers and text as the report shows them: accuracies and F1 in percent (test figures with their 95 % interval),
durations in s / min / h, and a dash for anything missing. Values come from files, so any of them may be absent,
text or not finite."""

from __future__ import annotations

import math
from typing import Any

from ..stats import format_metric

DASH = "—"


def num(x: Any) -> float | None:
    """``x`` as a float, or None for None, booleans and what does not convert."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def fmt_int(x: Any) -> str:
    """A count with thousands separators (``50,000``); other values as they are, a dash when missing."""
    v = num(x)
    if v is None:
        return DASH if x is None or x == "" else str(x)
    return f"{int(v):,}" if math.isfinite(v) and v == int(v) else str(x)


def fmt_acc(x: Any) -> str:
    """Accuracies are fractions in [0, 1]; values above 1 are taken as percentages already. One decimal, as
    :func:`simclr.stats.format_interval` writes test figures."""
    v = num(x)
    if v is None:
        return DASH
    if not math.isfinite(v):
        return str(v)
    return f"{v * 100 if v <= 1.0 else v:.1f} %"


def fmt_test(metrics: dict, key: str) -> str:
    """A test figure of a protocol's metrics.json (accuracy, f1_weighted, f1_macro) in the one written form of the
    project, with its 95 % interval and seed spread where recorded (:func:`simclr.stats.format_metric`)."""
    v = num(metrics.get(key))
    if v is None:
        return DASH
    return format_metric({**metrics, key: v}, key) if math.isfinite(v) else str(v)


def fmt_time(x: Any) -> str:
    """Seconds as ``4.2 s``, ``41 s``, ``3 min 05 s`` or ``1 h 00 min``; a dash when missing or negative."""
    v = num(x)
    if v is None or not math.isfinite(v) or v < 0:
        return DASH
    s = round(v)
    if v < 60:
        return f"{v:.1f} s" if v < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def fmt_text(x: Any) -> str:
    """Text as it is, a dash when missing or empty."""
    return DASH if x is None or x == "" else str(x)

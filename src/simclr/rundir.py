"""The run directory: its file names, the one atomic write, and run.json / metrics.jsonl / label-efficiency I/O.

A run directory (``simclr pretrain``, ``simclr run`` or a baseline) holds::

    config.yaml                       the resolved config (written by :func:`simclr.config.save_config`)
    run.json                          what ran: kind, method, backbone, batch size, epochs, wall time, ...
    metrics.jsonl                     one JSON object per finished pretraining epoch
    checkpoints/last.pt               the resumable state (:mod:`simclr.checkpoint`)
    backbone.safetensors              the encoder; projection_head.safetensors the projection head
    plots/  tb/                       pretraining plots and TensorBoard events
    eval/<protocol>/                  metrics.json, predictions.csv, plots, trained weights
    eval/label_efficiency/            label_efficiency.json and .png, sweep.jsonl

Every file that must never be seen half-written goes through :func:`atomic_write`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import CheckpointError

CONFIG = "config.yaml"
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
CHECKPOINT = Path("checkpoints") / "last.pt"
BACKBONE = "backbone.safetensors"
PROJECTION_HEAD = "projection_head.safetensors"
SKIPPED_FILES = "skipped_files.txt"
PLOTS = "plots"
EVAL = "eval"
LABEL_EFFICIENCY = "label_efficiency"


def label_efficiency_json(eval_dir: str | os.PathLike) -> Path:
    """``EVAL/label_efficiency/label_efficiency.json`` of an evaluation folder (``RUN/eval``)."""
    return Path(eval_dir) / LABEL_EFFICIENCY / f"{LABEL_EFFICIENCY}.json"


def temporary_name(path: Path) -> Path:
    """Where :func:`atomic_write` stages ``path`` (a hidden file next to it, one per process)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_temporaries(path: Path) -> None:
    """Delete what :func:`atomic_write` staged for ``path`` in processes killed while writing."""
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file atomically: ``write(f)`` into a temporary file in the same folder, fsync, rename.

    Readers see the old file or the new one, never a part. If anything fails (full disk, kill), the previous
    file at ``path`` is untouched, the temporary is removed and the error (``OSError`` for I/O) propagates.

    Args:
        path: the file to write; missing parent folders are created.
        write: writes the content to the binary file object it is given (``torch.save``, ``np.savez``, ...).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """:func:`atomic_write` of ``data`` for a run-directory file; an I/O failure is a CheckpointError (exit 5)
    that says the previous file is intact and how to continue."""
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise CheckpointError(
            f"could not write {path} ({e.strerror or e}); the previous file there is intact. "
            "Free disk space (or fix the permissions) and continue with --resume"
        ) from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON with a final newline, atomically."""
    atomic_write_bytes((json.dumps(obj, indent=2) + "\n").encode(), path)


def write_run_json(run_dir: str | os.PathLike, info: dict) -> None:
    """``RUN/run.json``: what made the run (kind, method, backbone, ...); :mod:`simclr.report` reads it."""
    write_json(Path(run_dir) / RUN_JSON, info)


def read_run_json(run_dir: str | os.PathLike) -> dict | None:
    """``RUN/run.json`` as a dict; None when it is missing, unreadable or not an object."""
    try:
        info = json.loads((Path(run_dir) / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def write_metrics(run_dir: str | os.PathLike, lines: list[dict]) -> None:
    """``RUN/metrics.jsonl`` holding exactly ``lines`` (each finished epoch once, also after a resume)."""
    atomic_write_bytes("".join(json.dumps(m) + "\n" for m in lines).encode(), Path(run_dir) / METRICS)


def parse_label_efficiency(data: Any) -> dict[str, list[tuple[int, float]]]:
    """Label-efficiency curves ``{method: [(n_labels, accuracy), ...]}`` (sorted by n) from parsed JSON.

    Accepts ``{method: [[n, acc], ...]}`` (what :func:`write_label_efficiency` writes),
    ``{method: [{"n_labels": n, "accuracy": a}, ...]}``, ``{"results": ...}`` or
    ``[{"method": m, "n_labels": n, "accuracy": a}, ...]``; malformed points are dropped.
    """

    def point(item: Any) -> tuple[int, float] | None:
        if isinstance(item, (list, tuple)) and len(item) >= 2:
            n, a = item[0], item[1]
        elif isinstance(item, dict):
            n = next((item[k] for k in ("n_labels", "labels", "n", "n_train") if k in item), None)
            a = next((item[k] for k in ("accuracy", "acc", "test_accuracy") if k in item), None)
        else:
            return None
        try:
            return int(n), float(a)
        except (TypeError, ValueError):
            return None

    out: dict[str, list[tuple[int, float]]] = {}
    if isinstance(data, dict) and "results" in data:
        return parse_label_efficiency(data["results"])
    if isinstance(data, dict):
        for method, items in data.items():
            if isinstance(items, list):
                pts = [p for p in map(point, items) if p is not None]
                if pts:
                    out[str(method)] = sorted(pts)
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict):
                p = point(item)
                if p is not None:
                    out.setdefault(str(item.get("method", "SimCLR")), []).append(p)
        out = {k: sorted(v) for k, v in out.items()}
    return out


def read_label_efficiency(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """The curves of a ``label_efficiency.json`` (see :func:`parse_label_efficiency`); empty if missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return parse_label_efficiency(data)


def write_label_efficiency(path: str | os.PathLike, curves: dict[str, list]) -> None:
    """``{method: [[n_labels, accuracy], ...]}`` to a ``label_efficiency.json``, atomically."""
    write_json(path, {k: [list(p) for p in v] for k, v in curves.items()})

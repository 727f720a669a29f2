"""Reading a run directory for the report: every file it may hold, and the facts they say about the run.

A run directory may be partial (pretraining still running, no evaluation yet, a crashed run): a missing or broken
file becomes a warning, never an error, so the report shows what is there and says what is missing. Layout read
(see the project spec)::

    RUN/config.yaml                       resolved config (+ ``command``, ``kind``)
    RUN/run.json                          kind, method, backbone, batch_size, proj_dim, epochs, ...
    RUN/metrics.jsonl                     one JSON object per epoch: epoch, step, loss, lr, ...
    RUN/plots/*.png                       loss.png, knn.png, augment_preview.png
    RUN/eval/<protocol>/metrics.json      accuracy, f1_weighted, f1_macro, per_class_accuracy, ...
    RUN/eval/<protocol>/*.png             confusion_matrix.png, curves.png, tsne_train.png, tsne_test.png
    RUN/eval/label_efficiency/            label_efficiency.png, label_efficiency.json
    RUN/eval/neighbors/                   neighbors.png, neighbors.json (nearest training images of test queries)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..config import PROTOCOLS
from ..errors import DataError
from ..rundir import LABEL_EFFICIENCY, METRICS, RUN_JSON, parse_label_efficiency

PROTOCOL_ORDER = PROTOCOLS  # the order of config.PROTOCOLS (the protocol registry's names)
NEIGHBORS = "neighbors"


def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        warnings.append(f"{path.name}: unreadable ({e.__class__.__name__}: {e})")
        return None


def _read_metrics(path: Path, warnings: list[str]) -> list[dict]:
    """Epoch records; a resumed run logs an epoch again, the last record of each epoch wins."""
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict] = {}
    bad = 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        warnings.append(f"metrics.jsonl: unreadable ({e})")
        return []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(rec, dict):
            bad += 1
            continue
        by_epoch[rec.get("epoch", f"line{i}")] = rec
    if bad:
        warnings.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")

    def key(rec: dict) -> tuple:
        e = rec.get("epoch")
        return (0, e) if isinstance(e, (int, float)) else (1, 0)

    return sorted(by_epoch.values(), key=key)


def _pngs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.png")) if p.is_file()}


def collect_run(run_dir: str | os.PathLike) -> dict:
    """Read everything a run directory holds; missing or broken files become warnings, not errors.

    Args:
        run_dir: a run directory (see the module docstring for its layout).

    Returns:
        ``{"dir": Path, "name": str, "config": dict, "run": dict, "metrics": list[dict] (one per epoch,
        sorted), "plots": {stem: Path}, "evals": {protocol: {"metrics": dict, "images": {stem: Path}}},
        "label_efficiency": {"results": {method: [(n_labels, accuracy)]}, "images": {stem: Path}} | None,
        "neighbors": {stem: Path}, "warnings": list[str]}``.

    Raises:
        DataError: ``run_dir`` does not exist or is not a directory.
    """
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"run directory not found: {root} (expected a folder written by `simclr pretrain` "
                        "or `simclr evaluate`)")
    warnings: list[str] = []

    config: dict = {}
    cfg_path = root / "config.yaml"
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                config = loaded
            elif loaded is not None:
                warnings.append("config.yaml: not a mapping, ignored")
        except (OSError, yaml.YAMLError) as e:
            warnings.append(f"config.yaml: unreadable ({e.__class__.__name__})")
    else:
        warnings.append("config.yaml missing")

    run = _read_json(root / RUN_JSON, warnings)
    if run is None and not (root / "run.json").exists():
        warnings.append("run.json missing (run still starting, or interrupted before it was written)")
    run = run if isinstance(run, dict) else {}

    evals: dict[str, dict] = {}
    label_eff = None
    neighbors: dict[str, Path] = {}
    eval_root = root / "eval"
    if eval_root.is_dir():
        for d in sorted(p for p in eval_root.iterdir() if p.is_dir()):
            images = _pngs(d)
            if d.name == NEIGHBORS:
                neighbors = images
                continue
            if d.name == LABEL_EFFICIENCY:
                data = _read_json(d / f"{LABEL_EFFICIENCY}.json", warnings)
                label_eff = {"results": parse_label_efficiency(data) if data is not None else {},
                             "images": images}
                continue
            m = _read_json(d / "metrics.json", warnings)
            if m is None and not images:
                continue
            evals[d.name] = {"metrics": m if isinstance(m, dict) else {}, "images": images}

    def order(name: str) -> tuple:
        return (PROTOCOL_ORDER.index(name), "") if name in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), name)

    return {
        "dir": root.resolve(),
        "name": root.resolve().name,
        "config": config,
        "run": run,
        "metrics": _read_metrics(root / METRICS, warnings),
        "plots": _pngs(root / "plots"),
        "evals": {k: evals[k] for k in sorted(evals, key=order)},
        "label_efficiency": label_eff,
        "neighbors": neighbors,
        "warnings": warnings,
    }


# ----------------------------------------------------------------------------- what the files say


def get(d: Any, *keys: str) -> Any:
    """``d[k0][k1]...``, or None where a level is missing or not a mapping."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def first(*values: Any) -> Any:
    """The first value that is neither None nor empty text (None when there is none)."""
    return next((v for v in values if v is not None and v != ""), None)


def run_method(run: dict) -> str:
    """The method's name: run.json's, else the config's name, else the directory's."""
    return str(first(get(run, "run", "method"), get(run, "config", "name"), run["name"]))


def knn_result(run: dict) -> tuple[Any, bool]:
    """(accuracy, from_monitor): eval/knn on the test split if evaluated, else the last monitor value."""
    acc = get(run["evals"].get("knn", {}), "metrics", "accuracy")
    if acc is not None:
        return acc, False
    for rec in reversed(run["metrics"]):
        if rec.get("knn_accuracy") is not None:
            return rec["knn_accuracy"], True
    return None, False


def run_facts(run: dict) -> dict[str, Any]:
    """The settings of a collected run (:func:`collect_run`): run.json's values, else the config's, unformatted.

    Returns:
        ``{"kind", "method", "batch_size", "backbone", "proj_dim", "epochs", "optimizer", "wall_time_s", "data",
        "finished"}``; None where neither file says.
    """
    r, c = run["run"], run["config"]
    kind = first(get(run, "run", "kind"), get(run, "config", "kind"))
    epochs = first(r.get("epochs"), 0 if kind == "supervised" else get(c, "train", "epochs"))
    proj = r.get("proj_dim") if "proj_dim" in r else (None if kind == "supervised" else get(c, "model", "proj_dim"))
    return {
        "kind": kind,
        "method": run_method(run),
        # a key present in run.json wins even when null (a random-init baseline has no batch size or optimizer)
        "batch_size": r["batch_size"] if "batch_size" in r else get(c, "train", "batch_size"),
        "backbone": first(r.get("backbone"), get(c, "model", "backbone")),
        "proj_dim": proj,
        "epochs": epochs,
        "optimizer": r["optimizer"] if "optimizer" in r else get(c, "optim", "name"),
        "wall_time_s": r.get("wall_time_s"),
        "data": first(r.get("data"), get(c, "data", "name")),
        "finished": r.get("finished"),
    }

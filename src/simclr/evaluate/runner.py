"""Evaluate a frozen encoder, or a run directory's, under several protocols (or a label sweep) -> ``RUN/eval/``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import Config
from ..models import Backbone
from ..neighbors import write_eval_neighbors
from ..rundir import (
    EVAL,
    LABEL_EFFICIENCY,
    label_efficiency_json,
    read_label_efficiency,
    read_run_json,
    write_label_efficiency,
)
from ..runtime import Log, configure_device, resolve_device, resolve_precision
from ..splits import EvalData, balanced_order, load_eval_data
from .encoder import encoder_from_run, run_config
from .outputs import classification_metrics, write_outputs
from .protocols import EvalContext, label_budget, parse_protocols, run_protocol


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
    protocols = parse_protocols(protocols)
    out_dir = Path(out_dir)
    method = method or cfg.name
    device = resolve_device(cfg.train.device)
    configure_device(device, cfg.train.reuse_memory)
    precision = resolve_precision(cfg.train.precision, device)
    data = data if data is not None else load_eval_data(cfg, log)
    encoder = encoder.to(device)
    ctx = EvalContext(encoder, cfg, data, balanced_order(data.train.labels, cfg.train.seed), device, precision,
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
        res = run_protocol(ctx, protocol, n)
        wall = time.perf_counter() - t0
        metrics = write_outputs(ctx, out_dir / protocol, protocol, res, method, wall, tsne_cache)
        results[protocol] = metrics
        log(f"[{method}] {protocol}: test accuracy {metrics['accuracy']:.4f}, F1 (weighted) {metrics['f1_weighted']:.4f}"
            f" ({time.perf_counter() - t0:.1f} s) -> {out_dir / protocol}")
    write_eval_neighbors(ctx.features().train, ctx.features().test, data, out_dir / "neighbors", method, device)
    return results


def _sweep(ctx: EvalContext, protocols: list[str], labels: list[int | None], out_dir: Path, method: str) -> dict:
    """Label-efficiency sweep: test accuracy of each protocol for each label count (no per-point plots)."""
    from .. import plots  # matplotlib: only when there is something to draw

    available = len(ctx.data.train)
    counts = sorted({label_budget(protocols[0], ctx.cfg, available, available if n is None else n, True) for n in labels})
    json_path = label_efficiency_json(out_dir)
    folder = json_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    curves = read_label_efficiency(json_path)
    details = []
    details_path = folder / "sweep.jsonl"
    for protocol in protocols:
        key = f"{method} ({protocol})"
        points = []
        for n in counts:
            t0 = time.perf_counter()
            res = run_protocol(ctx, protocol, n)
            m = classification_metrics(ctx.data.test.labels.numpy(), res.pred.numpy(), ctx.data.classes)
            acc = m["accuracy"]
            points.append([n, acc])
            details.append({"method": method, "protocol": protocol, "n_labels": n, "accuracy": acc,
                            "f1_weighted": m["f1_weighted"], "f1_macro": m["f1_macro"], "val_accuracy": res.val_accuracy,
                            "head_epochs": res.head_epochs, "wall_time_s": time.perf_counter() - t0})
            ctx.log(f"[{method}] {protocol} with {n} labels: test accuracy {acc:.4f}")
        curves[key] = points
    write_label_efficiency(json_path, curves)
    with open(details_path, "a") as fh:
        for d in details:
            fh.write(json.dumps(d) + "\n")
    plots.plot_label_efficiency(curves, folder / f"{LABEL_EFFICIENCY}.png")
    ctx.log(f"label-efficiency sweep written to {folder}")
    return curves




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
    encoder = encoder_from_run(run_dir, cfg, resolve_device(cfg.train.device))
    return evaluate_encoder(encoder, cfg, protocols, Path(out_dir) if out_dir else run_dir / EVAL, labels,
                            method or cfg.name, log=log, **kwargs)

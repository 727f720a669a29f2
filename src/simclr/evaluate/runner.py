"""Evaluate a frozen encoder, or a run directory's, under several protocols (or a label sweep) -> ``RUN/eval/``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from .. import stats
from ..config import Config
from ..models import Backbone
from ..precision import choose_precision
from ..rundir import (
    EVAL,
    LABEL_EFFICIENCY,
    label_efficiency_json,
    read_label_efficiency,
    read_run_json,
    write_label_efficiency,
)
from ..runtime import Log, configure_device, resolve_device
from ..splits import EvalData, balanced_order, load_eval_data
from .encoder import encoder_from_run, run_config
from .neighbors import write_eval_neighbors
from .outputs import intervals_on_test, scores_on_test, write_outputs
from .protocols import (
    PROTOCOL_REGISTRY,
    EvalContext,
    ProtocolResult,
    label_budget,
    parse_protocols,
    run_protocol,
)

# metrics.json's seed_runs for a protocol without a seed when eval.seeds > 1
UNSEEDED_NOTE = "{protocol} has no seed: the same frozen features give the same predictions, so it ran once"


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
        ``{protocol: metrics}`` (with 95 % intervals, and ``seed_runs`` when ``eval.seeds`` > 1: see
        :mod:`simclr.evaluate.outputs`); for a sweep ``{"label_efficiency": {"<protocol>": [[n, accuracy], ...]}}``.
    """
    protocols = parse_protocols(protocols)
    out_dir = Path(out_dir)
    method = method or cfg.name
    device = resolve_device(cfg.train.device)
    configure_device(device, cfg.train.reuse_memory)
    data = data if data is not None else load_eval_data(cfg, log)
    encoder = encoder.to(device)
    precision = choose_precision(cfg.train.precision, device, encoder, getattr(encoder, "image_size", cfg.model.image_size),
                                 log=log).name
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
        seed_runs = _seed_runs(ctx, protocol, n, res, wall, method)
        metrics = write_outputs(ctx, out_dir / protocol, protocol, res, method, wall, tsne_cache, seed_runs)
        results[protocol] = metrics
        log(f"[{method}] {protocol}: test accuracy {stats.format_metric(metrics)}, F1 (weighted) "
            f"{stats.format_metric(metrics, 'f1_weighted')} ({time.perf_counter() - t0:.1f} s) -> {out_dir / protocol}")
    write_eval_neighbors(ctx.features().train, ctx.features().test, data, out_dir / "neighbors", method, device)
    return results


def _seed_runs(ctx: EvalContext, protocol: str, n: int, first: ProtocolResult, wall: float, method: str) -> dict | None:
    """``eval.seeds`` > 1: the protocol again with seeds ``train.seed + 1, ...`` on the same features and labeled
    images -> :func:`simclr.stats.seed_summary` (``first`` is the ``train.seed`` run); None for one seed."""
    seeds = ctx.cfg.eval.seeds
    if seeds == 1:
        return None
    if not PROTOCOL_REGISTRY[protocol].seeded:
        note = UNSEEDED_NOTE.format(protocol=protocol)
        ctx.log(f"[{method}] {protocol}: eval.seeds={seeds}, but {note}")
        return {"note": note}
    base = ctx.cfg.train.seed
    rows = [{"seed": base, **scores_on_test(ctx.data, first), "wall_time_s": wall}]
    for seed in range(base + 1, base + seeds):
        t0 = time.perf_counter()
        res = run_protocol(ctx, protocol, n, seed)
        rows.append({"seed": seed, **scores_on_test(ctx.data, res), "wall_time_s": time.perf_counter() - t0})
        ctx.log(f"[{method}] {protocol} with seed {seed}: test accuracy {stats.format_interval(rows[-1]['accuracy'])}")
    return stats.seed_summary(rows)


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
            scores = scores_on_test(ctx.data, res)
            intervals = intervals_on_test(ctx.data, res, ctx.cfg.eval.bootstrap, ctx.cfg.train.seed)
            points.append([n, scores["accuracy"]])
            details.append({"method": method, "protocol": protocol, "n_labels": n, **scores, "intervals": intervals,
                            "bootstrap": stats.bootstrap_settings(ctx.cfg.eval.bootstrap, ctx.cfg.train.seed),
                            "wall_time_s": time.perf_counter() - t0})
            ctx.log(f"[{method}] {protocol} with {n} labels: test accuracy "
                    f"{stats.format_interval(scores['accuracy'], intervals['accuracy'])}")
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

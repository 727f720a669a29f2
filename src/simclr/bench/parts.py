"""The parts of ``simclr bench``: augmentation, training steps (in alternating rounds), an epoch of the real training
loop, and the ablation of our defaults; each times our pipeline and, for the ratio, the peers' (:mod:`.peers`)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import Config
from .isolation import run_pipeline
from .options import BenchOptions, epoch_images
from .ours import ablation_variant, augment_ours, epoch_ours, step_ours
from .peers import augment_peers, epoch_peers, step_peers
from .timing import Measurement, measure


def bench_augment(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, log=print) -> dict:
    """Two views per source image: batched on the device (ours) vs torchvision per-image in a DataLoader."""
    out = {"ours": run_pipeline(augment_ours, pool, cfg, opts, device, isolate=opts.isolate)}
    log(f"augment  ours      {out['ours'].images_per_s:10,.0f} img/s")
    if opts.baseline:
        out["baseline"] = run_pipeline(augment_peers, pool, cfg, opts, device, isolate=opts.isolate)
        out["speedup"] = out["ours"].images_per_s / out["baseline"].images_per_s
        log(f"augment  baseline  {out['baseline'].images_per_s:10,.0f} img/s   ours x{out['speedup']:.2f}")
    return out


def bench_step(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str, log=print) -> dict:
    """Training steps, data included: ours (device batches + bf16 + channels_last + fused SGD) vs the peers."""
    out: dict = {}
    variants = [("ours", False)] + ([("ours_compiled", True)] if opts.compile else [])
    for name, compiled in variants:
        try:
            out[name] = run_pipeline(step_ours, pool, cfg, opts, device, precision, compiled, isolate=opts.isolate)
        except Exception as e:  # torch.compile needs a working compiler toolchain; report, do not abort the run
            if not compiled:
                raise
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            log(f"step     {name}: failed ({out[name]['error'][:200]})")
            continue
        log(f"step     {name:<9} {out[name].images_per_s:10,.1f} img/s  {out[name].step_ms:9,.0f} ms/step"
            f"  peak {out[name].peak_memory_mb or 0:,.0f} MB")
    if opts.baseline:
        out["baseline"] = run_pipeline(step_peers, pool, cfg, opts, device, isolate=opts.isolate)
        log(f"step     baseline  {out['baseline'].images_per_s:10,.1f} img/s  {out['baseline'].step_ms:9,.0f} ms/step"
            f"  peak {out['baseline'].peak_memory_mb or 0:,.0f} MB")
        for name, _ in variants:
            if isinstance(out[name], Measurement):
                out[f"speedup_{name}" if name != "ours" else "speedup"] = out[name].images_per_s / out["baseline"].images_per_s
        log(f"step     ours x{out['speedup']:.2f}")
    return out


def bench_step_rounds(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
                      log=print) -> dict:
    """:func:`bench_step` ``opts.rounds`` times (ours, the peers, ours, the peers, ...), merged.

    On a machine shared with other jobs the load drifts within minutes; alternating puts both pipelines under the
    same conditions. Each round builds and warms its pipelines afresh. The merged throughput is all timed images
    over all timed seconds, the peak memory the largest of the rounds, and ``*_per_round`` keeps every round's
    figure so the spread is visible.
    """
    runs = []
    for r in range(opts.rounds):
        if opts.rounds > 1:
            log(f"step     round {r + 1} of {opts.rounds}")
        runs.append(bench_step(pool, cfg, opts, device, precision, log))
    if len(runs) == 1:
        return runs[0]
    out: dict = {}
    for name, first in runs[0].items():
        if isinstance(first, Measurement):
            ms = [run[name] for run in runs if isinstance(run.get(name), Measurement)]
            peaks = [m.peak_memory_mb for m in ms if m.peak_memory_mb is not None]
            out[name] = measure(sum(m.images for m in ms), sum(m.steps for m in ms), sum(m.seconds for m in ms),
                                max(peaks) if peaks else None, first.memory_method, **first.extra,
                                images_per_s_per_round=[m.images_per_s for m in ms])
        elif not name.startswith("speedup"):
            out[name] = first  # e.g. the error of a variant that failed
    for name in [k for k in runs[0] if k.startswith("speedup")]:
        variant = "ours" if name == "speedup" else name.removeprefix("speedup_")
        if isinstance(out.get(variant), Measurement) and isinstance(out.get("baseline"), Measurement):
            out[name] = out[variant].images_per_s / out["baseline"].images_per_s
            out[f"{name}_per_round"] = [run[name] for run in runs if name in run]
    if "speedup" in out:
        per = out["speedup_per_round"]
        log(f"step     ours x{out['speedup']:.2f} over {len(runs)} rounds (rounds: {', '.join(f'x{x:.2f}' for x in per)})")
    return out


def bench_epoch(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
                paths: list[str] | None = None, log=print) -> dict:
    """One epoch over ``epoch_images`` images through the real training loop (``train.train_one_epoch``)."""
    B = cfg.train.batch_size
    n = epoch_images(opts, device, len(pool), B)
    out: dict = {}
    runs = [("ours", None)] + ([("stream", paths)] if opts.stream and paths is not None else [])
    for name, files in runs:
        out[name] = run_pipeline(epoch_ours, pool, cfg, opts, device, precision, files, isolate=opts.isolate)
        log(f"epoch    {name:<9} {out[name].images_per_s:10,.1f} img/s  {out[name].seconds:9,.1f} s/epoch of {n} images")
    if opts.baseline:
        out["baseline"] = run_pipeline(epoch_peers, pool, cfg, opts, device, isolate=opts.isolate)
        out["speedup"] = out["ours"].images_per_s / out["baseline"].images_per_s
        log(f"epoch    baseline  {out['baseline'].images_per_s:10,.1f} img/s  {out['baseline'].seconds:9,.1f} s/epoch"
            f"   ours x{out['speedup']:.2f}")
    return out


def bench_ablation(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str = "fp32",
                   log=print) -> dict:
    """Model-only steps on fixed views, one setting changed at a time: which defaults are fastest on this device.

    ``precision`` is the run's choice (:mod:`simclr.precision`): its rows are measured on top of fp32's; bf16 or fp16
    rows appear only where that precision was chosen, since an emulated one (bf16 on an AVX2 CPU) takes minutes.
    """
    # (name, channels_last, optimizer implementation, torch.compile, cudnn.benchmark, CPU memory reuse)
    cpu = device.type == "cpu"
    variants = [("fp32", False, "foreach", False, False, False)]
    if cpu:
        variants.append(("fp32+reuse_memory", False, "foreach", False, False, True))
    variants.append(("fp32+channels_last", True, "foreach", False, False, False))
    p = precision if precision in ("bf16", "fp16") else "fp32"
    if p != "fp32":
        variants += [(p, False, "foreach", False, False, False), (f"{p}+channels_last", True, "foreach", False, False, False)]
    variants.append((f"{p}+channels_last+fused_sgd", True, "fused", False, False, False))
    default = f"{p}+channels_last+fused_sgd+" + ("reuse_memory" if cpu else "cudnn_benchmark")
    variants.append((default, True, "fused", False, not cpu, cpu))
    if opts.compile:
        variants.append((default + "+compile", True, "fused", True, not cpu, cpu))
    out: dict = {}
    for variant in variants:
        name, compiled = variant[0], variant[3]
        try:
            out[name] = run_pipeline(ablation_variant, pool, cfg, opts, device, variant, isolate=opts.isolate)
        except Exception as e:  # e.g. torch.compile without a compiler toolchain: report, do not abort the run
            if not compiled:
                raise
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            log(f"ablation {name}: failed ({out[name]['error'][:200]})")
            continue
        log(f"ablation {name:<48} {out[name].images_per_s:10,.1f} img/s  peak {out[name].peak_memory_mb or 0:,.0f} MB")
    return out

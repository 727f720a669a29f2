"""``simclr run``: pretrain, evaluate, run the baselines and write the report, in one call.

The output folder ``cfg.out`` is the SimCLR run directory; baselines go to ``OUT/baselines/<name>/`` (each a
run directory) and the report to ``OUT/report/``, so ``simclr report OUT OUT/baselines/*`` rebuilds it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .baselines import random_baseline, supervised
from .budget import Deadline, parse_duration
from .config import Config
from .errors import SimCLRError
from .evaluate import EvalData, evaluate_run, load_eval_data
from .rundir import EVAL, label_efficiency_json, read_label_efficiency, write_json, write_label_efficiency
from .runtime import Log


def _flush_print(*args, **kwargs) -> None:
    print(*args, **kwargs, flush=True)


def _quiet(*args, **kwargs) -> None:
    pass


@dataclass
class PipelineResult:
    """What ``simclr run`` produced: the report files, the run directories and each stage's duration."""

    report_md: Path
    report_html: Path
    run_dirs: list[Path]
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    failures: list[tuple[str, SimCLRError]] = field(default_factory=list)  # (baseline, error) that were skipped


def run_experiment(cfg: Config, resume: bool = False, command: str | None = None, log: Log = _flush_print) -> PipelineResult | None:
    """Pretrain as configured, evaluate (``eval.protocols``; a label sweep when ``eval.labels`` is set), run
    ``eval.baselines`` under the same protocols, and write ``OUT/report/report.{md,html}``.

    A baseline that cannot run (for example ImageNet weights offline) is skipped with its error recorded in
    ``failures``, so the hours of pretraining still end in a report; the caller decides the exit code.

    Under torchrun every process pretrains; the evaluation, the baselines and the report then run once, on rank 0,
    and the other processes return None after pretraining (they would write the same files again).
    """
    from .report import write_report
    from .runtime import launched_rank
    from .train import pretrain

    main_process = launched_rank() == 0
    if not main_process:
        log = _quiet
    started = time.perf_counter()
    out = Path(cfg.out)
    stages: dict[str, float] = {}
    steps = 3 + len(cfg.eval.baselines)
    step = [0]

    def stage(name: str, text: str) -> float:
        step[0] += 1
        log(f"\n[{step[0]}/{steps}] {text}")
        return time.perf_counter()

    data = None
    deadline = None
    if cfg.train.total_budget is not None:  # the evaluation's size must be known before pretraining is planned
        data = load_eval_data(cfg, log)
        deadline = evaluation_deadline(cfg, data, time.perf_counter() - started)
    length = f"budget {cfg.train.budget}" if cfg.train.budget is not None else f"{cfg.train.epochs} epochs"
    if cfg.train.total_budget is not None:
        length = (f"budget {cfg.train.budget}, " if cfg.train.budget is not None else "") + \
            f"the whole run within {cfg.train.total_budget}"
    t = stage("pretrain", f"pretraining SimCLR ({length}) -> {out}")
    pretrain(cfg, resume=resume, command=command, log=log, deadline=deadline)
    stages["pretrain"] = time.perf_counter() - t
    if not main_process:
        return None

    t = stage("evaluate", f"evaluating the frozen encoder: {', '.join(cfg.eval.protocols)}")
    data = data or load_eval_data(cfg, log)  # loaded once, shared by the SimCLR run and the baselines
    _evaluate(out, cfg, data, None, log)
    stages["evaluate"] = time.perf_counter() - t

    run_dirs = [out]
    failures: list[tuple[str, SimCLRError]] = []
    for name in cfg.eval.baselines:
        bdir = out / "baselines" / name
        t = stage(f"baseline_{name}", f"baseline {name} -> {bdir}")
        try:
            _baseline(name, cfg, bdir, data, command, log)
            run_dirs.append(bdir)
        except SimCLRError as e:
            log(f"warning: baseline {name} skipped: {e}")
            failures.append((name, e))
            if (bdir / "eval").is_dir():
                run_dirs.append(bdir)
        stages[f"baseline_{name}"] = time.perf_counter() - t

    if cfg.eval.labels:
        _merge_label_efficiency(out, run_dirs[1:])

    t = stage("report", "writing the report")
    md, html = write_report(run_dirs, out / "report")
    stages["report"] = time.perf_counter() - t
    stages["total"] = time.perf_counter() - started
    write_json(out / "pipeline.json", {"stages_s": stages, "run_dirs": [str(d) for d in run_dirs],
                                       "skipped_baselines": [n for n, _ in failures]})
    log("\ntime per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))
    log(f"report: {html.resolve()}")
    return PipelineResult(md, html, run_dirs, stages, failures)


# What the evaluation of one encoder costs beside its forwards (t-SNE maps of 2 x 2,000 points, kNN, the heads on
# features) and the report: 36 s per encoder, under 1 s for the report, for the quickstart on the slowest CPU
# measured (fp32 AMD EPYC Zen 3, 2 cores; benchmarks/RESULTS.md, "The shipped recipe at 6 and 30 minutes"), rounded
# up to leave a margin.
EVAL_FIXED_S = 40.0
REPORT_S = 10.0


def evaluation_deadline(cfg: Config, data: EvalData, spent_s: float) -> Deadline:
    """The :class:`Deadline` of a ``simclr run`` under ``train.total_budget`` that has spent ``spent_s`` so far: one
    forward per labeled image for each encoder evaluated (SimCLR's, then the random baseline's), plus the rest."""
    encoders = 1 + ("random" in cfg.eval.baselines)
    images = len(data.train) + len(data.val) + len(data.test)
    total_s = parse_duration(cfg.train.total_budget, "train.total_budget")
    return Deadline(total_s=total_s, at_s=total_s - spent_s, images=encoders * images,
                    fixed_s=encoders * EVAL_FIXED_S + REPORT_S)


def _evaluate(run_dir: Path, cfg: Config, data: EvalData, method: str | None, log: Log) -> None:
    evaluate_run(run_dir, cfg.eval.protocols, cfg=cfg, method=method, log=log, data=data)
    if cfg.eval.labels:
        evaluate_run(run_dir, cfg.eval.protocols, cfg=cfg, labels=cfg.eval.labels, method=method, log=log,
                     data=data, sweep=True, strict_labels=False)


def _baseline(name: str, cfg: Config, bdir: Path, data: EvalData, command: str | None, log: Log) -> None:
    kwargs = {"data": data, "strict_labels": False}
    if name == "random":
        random_baseline(cfg, bdir, cfg.eval.protocols, command=command, log=log, **kwargs)
        if cfg.eval.labels:
            random_baseline(cfg, bdir, cfg.eval.protocols, labels=cfg.eval.labels, command=command, log=log,
                            sweep=True, **kwargs)
        return
    scfg = _with_out(cfg, bdir)
    if name == "imagenet":
        weights = cfg.eval.imagenet_weights
        protocols = [p for p in cfg.eval.protocols if p != "finetune"] or ["knn"]
        # ImageNet features want larger inputs: the images are loaded again at that size (the cache keeps both)
        kwargs.pop("data")
    else:  # scratch
        weights, protocols = "none", ["finetune"]
    supervised(scfg, weights, protocols, command=command, log=log, **kwargs)
    if cfg.eval.labels:
        supervised(scfg, weights, protocols, labels=cfg.eval.labels, command=command, log=log, sweep=True, **kwargs)


def _with_out(cfg: Config, out: Path) -> Config:
    import copy

    new = copy.deepcopy(cfg)
    new.out = str(out)
    return new


def _merge_label_efficiency(main: Path, others: list[Path]) -> None:
    """Put the baselines' label-efficiency curves next to SimCLR's in ``OUT/eval/label_efficiency``."""
    from . import plots

    path = label_efficiency_json(main / EVAL)
    curves = read_label_efficiency(path)
    for d in others:
        curves.update(read_label_efficiency(label_efficiency_json(d / EVAL)))
    if curves:
        write_label_efficiency(path, curves)
        plots.plot_label_efficiency(curves, path.with_suffix(".png"))

"""What the report says, laid out as plain data: the results table, the neighbours pictures and one section per run.

The templates (``templates/report.md``, ``templates/report.html``) render the same :class:`Report`, so the
Markdown and the HTML always say the same thing; every text shown is decided here, every piece of markup there.
Pictures a run lacks but its metrics allow (the loss and kNN curves, the label-efficiency plot) are drawn here.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .. import plots
from ..config import LOSSES
from ..rundir import LABEL_EFFICIENCY
from ..stats import describe_bootstrap
from .collect import NEIGHBORS, first, knn_result, run_facts, run_method
from .format import DASH, fmt_acc, fmt_int, fmt_test, fmt_text, fmt_time, num

# What a reader compares comes first (a phone shows about four columns); the settings behind it follow.
COLUMNS = (
    "Method",
    "Protocol",
    "Test accuracy",
    "Test F1 (weighted)",
    "kNN accuracy",
    "Backbone",
    "Batch size",
    "Projection dim",
    "Pretraining epochs",
    "Head epochs",
    "Optimizer",
    "Wall time",
)
_NUMERIC = {"Batch size", "Projection dim", "Pretraining epochs", "Head epochs", "Test accuracy",
            "Test F1 (weighted)", "kNN accuracy", "Wall time"}

_PROTOCOL_TITLES = {"knn": "kNN", "linear": "Linear probe", "mlp": "MLP head", "finetune": "Fine-tuning",
                    LABEL_EFFICIENCY: "Label efficiency"}
_PLOT_CAPTIONS = {"loss": "Contrastive loss", "knn": "kNN accuracy during pretraining",
                  "augment_preview": "Augmentation preview (original, view 1, view 2)"}
_EVAL_CAPTIONS = {"confusion_matrix": "Confusion matrix (test)", "curves": "Training curves",
                  "tsne_train": "t-SNE (train features)", "tsne_test": "t-SNE (test features)",
                  LABEL_EFFICIENCY: "Accuracy against number of labels"}
MONITOR_MARK = "†"
NOTES = ("Test accuracy and F1 are on the test split; heads are selected on the validation split.",
         f"kNN accuracy: the kNN evaluation on the test split; {MONITOR_MARK} marks the last kNN monitor "
         "value during pretraining (validation split) when no kNN evaluation was run.",
         "Wall time: pretraining + evaluation of that protocol.")
NEIGHBORS_TEXT = ("Ten test images (one per class) and the eight training images each encoder places nearest "
                  "(cosine similarity of frozen features), most similar first; green: same class as the query, "
                  "red: another class.")
REPORT_FOLDER = "_report"  # images/ subfolder of the pictures that belong to no single run


@dataclass
class Figure:
    """A picture with its caption.

    Attributes:
        caption: what it shows.
        source: the PNG (in the run directory, or drawn into the report's images folder).
        path: where the report keeps its copy, relative to the report's ``images/``: ``<run slug>/<name>.png``.
    """

    caption: str
    source: Path
    path: str


@dataclass
class Table:
    """Rows of formatted cells; ``numeric`` columns align right; ``links[i]`` is the anchor row i's first cell
    links to (None: no links)."""

    headers: list[str]
    rows: list[list[str]]
    numeric: set[int]
    links: list[str] | None = None


@dataclass
class Details:
    """A table folded away under a one-line summary."""

    summary: str
    table: Table


@dataclass
class Evaluation:
    """One protocol's results: ``facts`` is empty when its metrics.json is missing or unreadable."""

    title: str
    facts: list[tuple[str, str]]
    per_class: Details | None
    figures: list[Figure]


@dataclass
class LabelEfficiency:
    """Accuracy against the number of labels: a table (methods x label counts) and the curve."""

    table: Table | None
    figures: list[Figure]


@dataclass
class RunSection:
    """Everything about one run: its settings, command, reading warnings, pretraining plots and evaluations."""

    anchor: str
    title: str
    facts: list[tuple[str, str]]
    command: str | None
    warnings: list[str]
    pretraining: list[Figure]
    evaluations: list[Evaluation]
    label_efficiency: LabelEfficiency | None


@dataclass
class Report:
    """The whole report; ``results`` is None when no runs were given."""

    summary: str
    results: Table | None = None
    best: str | None = None
    notes: tuple[str, ...] = NOTES
    neighbors_text: str = NEIGHBORS_TEXT
    neighbors: list[Figure] = field(default_factory=list)
    runs: list[RunSection] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        """Every picture of the report, in the order shown."""
        out = list(self.neighbors)
        for run in self.runs:
            out += run.pretraining
            for ev in run.evaluations:
                out += ev.figures
            if run.label_efficiency:
                out += run.label_efficiency.figures
        return out


# ----------------------------------------------------------------------------- the results table


def _rows(run: dict) -> list[dict[str, str]]:
    """Table rows of one run: one per evaluated protocol, or a single pretraining-only row."""
    f = run_facts(run)
    knn_acc, from_monitor = knn_result(run)
    knn_text = fmt_acc(knn_acc) + (f" {MONITOR_MARK}" if from_monitor and knn_acc is not None else "")
    suffix = " (unfinished)" if f["finished"] is False else ""
    pre_time = fmt_time(f["wall_time_s"])
    rows = []
    evaluated = [(p, e) for p, e in run["evals"].items() if e["metrics"]] or [(None, {"metrics": {}})]
    for protocol, ev in evaluated:
        m = ev["metrics"]
        eval_time = fmt_time(m.get("wall_time_s"))
        if eval_time == DASH:
            wall = pre_time
        elif f["kind"] in ("supervised", "baseline") and (pre_time == DASH or not f["wall_time_s"]):
            wall = eval_time
        else:
            wall = f"{pre_time} + {eval_time}"
        rows.append({
            "Method": str(first(m.get("method"), f["method"])) + suffix,
            "Protocol": fmt_text(first(m.get("protocol"), protocol)),
            "Batch size": fmt_int(f["batch_size"]),
            "Backbone": fmt_text(f["backbone"]),
            "Projection dim": fmt_int(f["proj_dim"]),
            "Pretraining epochs": fmt_int(f["epochs"]),
            "Head epochs": fmt_int(m.get("head_epochs")),
            "Optimizer": fmt_text(f["optimizer"]),
            "Test accuracy": fmt_test(m, "accuracy"),
            "Test F1 (weighted)": fmt_test(m, "f1_weighted"),
            "kNN accuracy": knn_text,
            "Wall time": wall,
        })
    return rows


def _interval_note(runs: list[dict]) -> tuple[str, ...]:
    """The interval method, named once (from the first metrics.json that records one); seeds' spread if any."""
    evals = [ev["metrics"] for run in runs for ev in run["evals"].values() if ev["metrics"]]
    boot = next((m for m in evals if isinstance(m.get("bootstrap"), dict)), None)
    if boot is None:
        return ()
    note = describe_bootstrap(boot["bootstrap"], num(boot.get("n_test")) and int(boot["n_test"])) + "."
    if any((m.get("seed_runs") or {}).get("mean") for m in evals):
        note += " '± s (N seeds)': mean and sample standard deviation of the trained heads over N seeds."
    return (note,)


def _best(runs: list[dict]) -> str | None:
    """One line naming the best test accuracy: the table is wide, this is what a phone shows first."""
    best = None
    for run in runs:
        for protocol, ev in run["evals"].items():
            acc = num(ev["metrics"].get("accuracy"))
            if acc is not None and math.isfinite(acc) and (best is None or acc > best[0]):
                method = first(ev["metrics"].get("method"), run_method(run))
                best = (acc, f"{method}, {first(ev['metrics'].get('protocol'), protocol)}")
    return f"Best test accuracy: {fmt_acc(best[0])} ({best[1]})." if best else None


# ----------------------------------------------------------------------------- one run's section


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def _command(config: dict) -> str | None:
    cmd = config.get("command")
    if isinstance(cmd, list):
        return shlex.join(str(c) for c in cmd)
    return str(cmd) if cmd else None


def _run_section(run: dict, slug: str, images_dir: Path) -> RunSection:
    f = run_facts(run)
    metrics = run["metrics"]
    losses = [(r["epoch"], r["loss"]) for r in metrics if num(r.get("epoch")) is not None
              and num(r.get("loss")) is not None]
    knns = [(r["epoch"], r["knn_accuracy"]) for r in metrics if num(r.get("epoch")) is not None
            and num(r.get("knn_accuracy")) is not None]
    return RunSection(
        anchor=f"run-{slug}",
        title=f"{f['method']} — {run['name']}",
        facts=_facts(run, f, losses, knns),
        command=_command(run["config"]),
        warnings=run["warnings"],
        pretraining=_pretraining_figures(run, losses, knns, images_dir / slug, slug),
        evaluations=[_evaluation(protocol, ev, f["method"], slug) for protocol, ev in run["evals"].items()],
        label_efficiency=(_label_efficiency(run["label_efficiency"], images_dir / slug, slug)
                          if run["label_efficiency"] else None),
    )


def _facts(run: dict, f: dict, losses: list, knns: list) -> list[tuple[str, str]]:
    """What ran: the settings, what pretraining reached and where the run lives."""
    metrics = run["metrics"]
    status = {True: "finished", False: "unfinished"}.get(f["finished"], DASH)
    epochs_text = fmt_int(f["epochs"])
    if metrics and f["kind"] != "supervised":
        epochs_text += f" planned, {len(metrics)} logged"
    facts = [
        ("Kind", fmt_text(f["kind"])),
        ("Status", status),
        ("Data", fmt_text(f["data"])),
        ("Backbone", fmt_text(f["backbone"])),
        ("Batch size", fmt_int(f["batch_size"])),
        ("Projection dim", fmt_int(f["proj_dim"])),
        ("Pretraining epochs", epochs_text),
        ("Optimizer", fmt_text(f["optimizer"])),
        ("Wall time", fmt_time(f["wall_time_s"])),
    ]
    loss = run["run"].get("loss")
    if isinstance(loss, dict) and loss.get("name"):
        facts.append(("Loss", f"{LOSSES.get(loss['name'], fmt_text(loss['name']))}, temperature {loss.get('temperature')}"))
    facts += _budget_facts(run["run"]) + _precision_facts(run["run"])
    if losses:
        facts.append(("Final loss", f"{float(losses[-1][1]):.4f} (epoch {losses[-1][0]})"))
    if knns:
        facts.append(("Last kNN monitor", f"{fmt_acc(knns[-1][1])} (epoch {knns[-1][0]})"))
    speeds = [num(r.get("images_per_sec")) for r in metrics]
    speeds = [s for s in speeds if s is not None and math.isfinite(s)]
    if speeds:
        facts.append(("Throughput", f"{speeds[-1]:,.0f} images/s (last epoch)"))
    facts.append(("Directory", str(run["dir"])))
    return facts


def _precision_facts(r: dict) -> list[tuple[str, str]]:
    """The precision the run trained in and why, on which hardware (run.json "precision_choice"), and its multi-crop
    views (run.json "multicrop")."""
    facts = []
    choice = r.get("precision_choice")
    if isinstance(choice, dict) and choice.get("name"):
        auto = " (auto)" if choice.get("requested") == "auto" else ""
        facts.append(("Precision", f"{fmt_text(choice['name'])}{auto}: {fmt_text(choice.get('reason'))}"))
        facts.append(("Hardware", fmt_text(choice.get("hardware"))))
    elif r.get("precision"):
        facts.append(("Precision", fmt_text(r["precision"])))
    crops = r.get("multicrop")
    if isinstance(crops, dict) and crops.get("small_crops"):
        lo, hi = (crops.get("small_scale") or [None, None])[:2]
        facts.append(("Multi-crop", f"2 global views + {fmt_int(crops['small_crops'])} small crops of "
                      f"{fmt_int(crops.get('small_size'))} px (area {lo}-{hi} of the image) per image"))
    return facts


def _budget_facts(r: dict) -> list[tuple[str, str]]:
    """A budgeted run's plan beside what it took, and its progressive resizing (run.json "budget", "low_res")."""
    facts = []
    plan = r.get("budget")
    if isinstance(plan, dict) and num(plan.get("budget_s")) is not None:
        steps, total = num(plan.get("steps")), num(plan.get("total_steps"))
        speed = num(plan.get("images_per_s"))
        facts.append(("Budget", f"{fmt_time(plan['budget_s'])}: {fmt_int(total)} steps planned, {fmt_int(steps)} run; "
                      + (f"{speed:,.0f} images/s at the last plan, " if speed is not None else "")
                      + f"{fmt_int(plan.get('replans'))} re-plans"))
        if (num(plan.get("total_budget_s")) or 0) > 0:  # train.total_budget: the job's limit and what it kept back
            facts.append(("Total budget", f"{fmt_time(plan['total_budget_s'])} for the whole run; "
                          f"{fmt_time(num(plan.get('after_s')) or 0)} kept for the evaluation and report"))
    low = r.get("low_res")
    if isinstance(low, dict) and low.get("size"):
        facts.append(("Resolution", f"{fmt_int(low['size'])} px for {fmt_int(low.get('steps'))} steps, then "
                      f"{fmt_int(low.get('full_size'))} px for {fmt_int(low.get('full_size_steps'))} (progressive resizing)"))
    return facts


def _captioned(pngs: dict[str, Path], captions: dict[str, str], prefix: str, slug: str,
               order: list[str] | None = None) -> list[Figure]:
    """Figures of ``{stem: png}``: the known stems in the order of ``captions`` (or ``order``), then the others
    by name; a copy named ``<prefix><stem>.png`` in the run's image folder."""
    known = list(captions)
    stems = order if order is not None else sorted(pngs, key=lambda s: (known.index(s) if s in captions else 99, s))
    return [Figure(captions.get(s, s.replace("_", " ")), pngs[s], f"{slug}/{prefix}{s}.png") for s in stems]


def _pretraining_figures(run: dict, losses: list, knns: list, images: Path, slug: str) -> list[Figure]:
    """Pretraining plots: the run's own files, or drawn here from metrics.jsonl when they are missing."""
    pngs = dict(run["plots"])
    if "loss" not in pngs and losses:
        pngs["loss"] = plots.plot_loss([e for e, _ in losses], [float(v) for _, v in losses], images / "plots__loss.png")
    if "knn" not in pngs and knns:
        pngs["knn"] = plots.plot_knn([e for e, _ in knns], [float(v) for _, v in knns], images / "plots__knn.png")
    return _captioned(pngs, _PLOT_CAPTIONS, "plots__", slug)


def _evaluation(protocol: str, ev: dict, method: str, slug: str) -> Evaluation:
    """One protocol's section: test metrics, per-class accuracy and its pictures."""
    m = ev["metrics"]
    title = _PROTOCOL_TITLES.get(protocol, protocol)
    if m.get("method") and m.get("method") != method:
        title += f" ({m['method']})"
    facts, per_class = [], None
    if m:
        facts = [("Test accuracy", fmt_test(m, "accuracy")),
                 ("Test F1 (weighted)", fmt_test(m, "f1_weighted")),
                 ("Test F1 (macro)", fmt_test(m, "f1_macro")),
                 ("Images (train / val / test)",
                  " / ".join(fmt_int(m.get(k)) for k in ("n_train", "n_val", "n_test"))),
                 ("Head epochs", fmt_int(m.get("head_epochs"))),
                 ("Wall time", fmt_time(m.get("wall_time_s")))]
        accs = m.get("per_class_accuracy")
        if isinstance(accs, list):
            accs = {str(i): v for i, v in enumerate(accs)}
        if isinstance(accs, dict) and accs:
            rows = [[str(k), fmt_acc(v)] for k, v in accs.items()]
            per_class = Details(f"Per-class accuracy ({len(rows)} classes)", Table(["Class", "Accuracy"], rows, {1}))
    return Evaluation(f"Evaluation: {title}", facts, per_class,
                      _captioned(ev["images"], _EVAL_CAPTIONS, f"eval__{protocol}__", slug))


def _label_efficiency(le: dict, images: Path, slug: str) -> LabelEfficiency:
    """Accuracy against the number of labels: a table per method and the curve (drawn here if missing)."""
    results, table = le["results"], None
    if results:
        ns = sorted({n for pts in results.values() for n, _ in pts})
        rows = []
        for method, pts in results.items():
            d = dict(pts)
            rows.append([method] + [fmt_acc(d.get(n)) for n in ns])
        table = Table(["Method"] + [f"{n:,} labels" for n in ns], rows, set(range(1, len(ns) + 1)))
    imgs = dict(le["images"])
    if not imgs and results:
        imgs[LABEL_EFFICIENCY] = plots.plot_label_efficiency(results, images / f"eval__{LABEL_EFFICIENCY}__{LABEL_EFFICIENCY}.png")
    return LabelEfficiency(table, _captioned(imgs, _EVAL_CAPTIONS, f"eval__{LABEL_EFFICIENCY}__", slug, sorted(imgs)))


# ----------------------------------------------------------------------------- the whole report


def build_report(runs: list[dict], images_dir: Path) -> Report:
    """Lay out the report of collected runs (:func:`~simclr.report.collect.collect_run`), in their order.

    Args:
        runs: collected runs.
        images_dir: the report's ``images/`` folder; plots a run lacks are drawn into its subfolders.
    """
    taken: set[str] = set()
    slugs = [_slug(r["name"], taken) for r in runs]
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    report = Report(summary=f"{len(runs)} run(s), generated {now}.")
    if not runs:
        return report
    rows, links = [], []
    for run, slug in zip(runs, slugs):
        for row in _rows(run):
            rows.append([row[c] for c in COLUMNS])
            links.append(f"run-{slug}")
    report.results = Table(list(COLUMNS), rows, {i for i, c in enumerate(COLUMNS) if c in _NUMERIC}, links)
    report.best = _best(runs)
    report.notes = NOTES + _interval_note(runs)
    report.neighbors = [Figure(run_method(run), run["neighbors"][NEIGHBORS], f"{REPORT_FOLDER}/{slug}__{NEIGHBORS}.png")
                        for run, slug in zip(runs, slugs) if NEIGHBORS in run.get("neighbors", {})]
    report.runs = [_run_section(run, slug, images_dir) for run, slug in zip(runs, slugs)]
    return report

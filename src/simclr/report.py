"""Results report: a Markdown table plus a self-contained HTML page over one or more run directories.

A run directory may be partial (pretraining still running, no evaluation yet, a crashed run); the
report shows what is there and says what is missing. Layout read (see the project spec)::

    RUN/config.yaml                       resolved config (+ ``command``, ``kind``)
    RUN/run.json                          kind, method, backbone, batch_size, proj_dim, epochs, ...
    RUN/metrics.jsonl                     one JSON object per epoch: epoch, step, loss, lr, ...
    RUN/plots/*.png                       loss.png, knn.png, augment_preview.png
    RUN/eval/<protocol>/metrics.json      accuracy, f1_weighted, f1_macro, per_class_accuracy, ...
    RUN/eval/<protocol>/*.png             confusion_matrix.png, curves.png, tsne_train.png, tsne_test.png
    RUN/eval/label_efficiency/            label_efficiency.png, label_efficiency.json
    RUN/eval/neighbors/                   neighbors.png, neighbors.json (nearest training images of test queries)

``report.md`` links images copied into ``OUT/images/``; ``report.html`` embeds them (base64), has its
CSS inline and loads nothing from the network, so it can be mailed or opened on a phone.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from . import plots
from .config import PROTOCOLS
from .errors import DataError
from .rundir import LABEL_EFFICIENCY, METRICS, RUN_JSON, atomic_write, parse_label_efficiency

__all__ = ["COLUMNS", "collect_run", "write_report"]

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

PROTOCOL_ORDER = PROTOCOLS  # the order of config.PROTOCOLS (the protocol registry's names)
NEIGHBORS = "neighbors"
_PROTOCOL_TITLES = {"knn": "kNN", "linear": "Linear probe", "mlp": "MLP head", "finetune": "Fine-tuning",
                    LABEL_EFFICIENCY: "Label efficiency"}
_PLOT_CAPTIONS = {"loss": "Contrastive loss", "knn": "kNN accuracy during pretraining",
                  "augment_preview": "Augmentation preview (original, view 1, view 2)"}
_EVAL_CAPTIONS = {"confusion_matrix": "Confusion matrix (test)", "curves": "Training curves",
                  "tsne_train": "t-SNE (train features)", "tsne_test": "t-SNE (test features)",
                  LABEL_EFFICIENCY: "Accuracy against number of labels"}
DASH = "—"
MONITOR_MARK = "†"


# ----------------------------------------------------------------------------- reading


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


# ----------------------------------------------------------------------------- formatting


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None and v != ""), None)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _fmt_int(x: Any) -> str:
    v = _num(x)
    if v is None:
        return DASH if x is None or x == "" else str(x)
    return f"{int(v):,}" if math.isfinite(v) and v == int(v) else str(x)


def _fmt_acc(x: Any) -> str:
    """Accuracies are fractions in [0, 1]; values above 1 are taken as percentages already."""
    v = _num(x)
    if v is None:
        return DASH
    if not math.isfinite(v):
        return str(v)
    return f"{v * 100 if v <= 1.0 else v:.2f} %"


def _fmt_f1(x: Any) -> str:
    v = _num(x)
    if v is None:
        return DASH
    return f"{v:.3f}" if math.isfinite(v) else str(v)


def _fmt_time(x: Any) -> str:
    v = _num(x)
    if v is None or not math.isfinite(v) or v < 0:
        return DASH
    s = round(v)
    if v < 60:
        return f"{v:.1f} s" if v < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _text(x: Any) -> str:
    return DASH if x is None or x == "" else str(x)


def _method(run: dict) -> str:
    return str(_first(_get(run, "run", "method"), _get(run, "config", "name"), run["name"]))


def _kind(run: dict) -> str | None:
    return _first(_get(run, "run", "kind"), _get(run, "config", "kind"))


def _knn(run: dict) -> tuple[Any, bool]:
    """(accuracy, from_monitor): eval/knn on the test split if evaluated, else the last monitor value."""
    acc = _get(run["evals"].get("knn", {}), "metrics", "accuracy")
    if acc is not None:
        return acc, False
    for rec in reversed(run["metrics"]):
        if rec.get("knn_accuracy") is not None:
            return rec["knn_accuracy"], True
    return None, False


def _run_facts(run: dict) -> dict[str, Any]:
    r, c = run["run"], run["config"]
    kind = _kind(run)
    epochs = _first(r.get("epochs"), 0 if kind == "supervised" else _get(c, "train", "epochs"))
    proj = r.get("proj_dim") if "proj_dim" in r else (None if kind == "supervised" else _get(c, "model", "proj_dim"))
    return {
        "kind": kind,
        "method": _method(run),
        # a key present in run.json wins even when null (a random-init baseline has no batch size or optimizer)
        "batch_size": r["batch_size"] if "batch_size" in r else _get(c, "train", "batch_size"),
        "backbone": _first(r.get("backbone"), _get(c, "model", "backbone")),
        "proj_dim": proj,
        "epochs": epochs,
        "optimizer": r["optimizer"] if "optimizer" in r else _get(c, "optim", "name"),
        "wall_time_s": r.get("wall_time_s"),
        "data": _first(r.get("data"), _get(c, "data", "name")),
        "finished": r.get("finished"),
    }


def _rows(run: dict) -> list[dict[str, str]]:
    """Table rows of one run: one per evaluated protocol, or a single pretraining-only row."""
    f = _run_facts(run)
    knn_acc, from_monitor = _knn(run)
    knn_text = _fmt_acc(knn_acc) + (f" {MONITOR_MARK}" if from_monitor and knn_acc is not None else "")
    suffix = " (unfinished)" if f["finished"] is False else ""
    pre_time = _fmt_time(f["wall_time_s"])
    rows = []
    evaluated = [(p, e) for p, e in run["evals"].items() if e["metrics"]] or [(None, {"metrics": {}})]
    for protocol, ev in evaluated:
        m = ev["metrics"]
        eval_time = _fmt_time(m.get("wall_time_s"))
        if eval_time == DASH:
            wall = pre_time
        elif f["kind"] in ("supervised", "baseline") and (pre_time == DASH or not f["wall_time_s"]):
            wall = eval_time
        else:
            wall = f"{pre_time} + {eval_time}"
        rows.append({
            "Method": str(_first(m.get("method"), f["method"])) + suffix,
            "Protocol": _text(_first(m.get("protocol"), protocol)),
            "Batch size": _fmt_int(f["batch_size"]),
            "Backbone": _text(f["backbone"]),
            "Projection dim": _fmt_int(f["proj_dim"]),
            "Pretraining epochs": _fmt_int(f["epochs"]),
            "Head epochs": _fmt_int(m.get("head_epochs")),
            "Optimizer": _text(f["optimizer"]),
            "Test accuracy": _fmt_acc(m.get("accuracy")),
            "Test F1 (weighted)": _fmt_f1(m.get("f1_weighted")),
            "kNN accuracy": knn_text,
            "Wall time": wall,
        })
    return rows


# ----------------------------------------------------------------------------- document model
# A report is a list of blocks rendered twice (Markdown and HTML) so both always say the same thing:
#   ("h", level, text, anchor) ("p", text) ("code", text) ("kv", [(key, value)]) ("warn", [text])
#   ("table", headers, rows, numeric_columns) ("gallery", [(caption, source_path, relative_name)])
#   ("details", summary, [blocks])


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


def _run_blocks(run: dict, slug: str, images_dir: Path) -> list[tuple]:
    f = _run_facts(run)
    metrics = run["metrics"]
    losses = [(r["epoch"], r["loss"]) for r in metrics if _num(r.get("epoch")) is not None
              and _num(r.get("loss")) is not None]
    knns = [(r["epoch"], r["knn_accuracy"]) for r in metrics if _num(r.get("epoch")) is not None
            and _num(r.get("knn_accuracy")) is not None]
    blocks: list[tuple] = [("h", 2, f"{f['method']} — {run['name']}", f"run-{slug}")]
    blocks += _facts_blocks(run, f, losses, knns)
    blocks += _pretraining_blocks(run, losses, knns, images_dir / slug)
    if not run["evals"] and not run["label_efficiency"]:
        blocks.append(("p", "No evaluation results yet."))
    for protocol, ev in run["evals"].items():
        blocks += _eval_blocks(protocol, ev, f["method"])
    if run["label_efficiency"]:
        blocks += _label_efficiency_blocks(run["label_efficiency"], images_dir / slug)
    return blocks


def _facts_blocks(run: dict, f: dict, losses: list, knns: list) -> list[tuple]:
    """What ran: the facts table, the command and the warnings of reading the run."""
    metrics = run["metrics"]
    status = {True: "finished", False: "unfinished"}.get(f["finished"], DASH)
    epochs_text = _fmt_int(f["epochs"])
    if metrics and f["kind"] != "supervised":
        epochs_text += f" planned, {len(metrics)} logged"
    facts = [
        ("Kind", _text(f["kind"])),
        ("Status", status),
        ("Data", _text(f["data"])),
        ("Backbone", _text(f["backbone"])),
        ("Batch size", _fmt_int(f["batch_size"])),
        ("Projection dim", _fmt_int(f["proj_dim"])),
        ("Pretraining epochs", epochs_text),
        ("Optimizer", _text(f["optimizer"])),
        ("Wall time", _fmt_time(f["wall_time_s"])),
    ]
    facts += _budget_facts(run["run"])
    if losses:
        facts.append(("Final loss", f"{float(losses[-1][1]):.4f} (epoch {losses[-1][0]})"))
    if knns:
        facts.append(("Last kNN monitor", f"{_fmt_acc(knns[-1][1])} (epoch {knns[-1][0]})"))
    speeds = [_num(r.get("images_per_sec")) for r in metrics]
    speeds = [s for s in speeds if s is not None and math.isfinite(s)]
    if speeds:
        facts.append(("Throughput", f"{speeds[-1]:,.0f} images/s (last epoch)"))
    facts.append(("Directory", str(run["dir"])))
    blocks: list[tuple] = [("kv", facts)]
    cmd = _command(run["config"])
    if cmd:
        blocks += [("p", "Command:"), ("code", cmd)]
    if run["warnings"]:
        blocks.append(("warn", run["warnings"]))
    return blocks


def _budget_facts(r: dict) -> list[tuple[str, str]]:
    """A budgeted run's plan beside what it took, and its progressive resizing (run.json "budget", "low_res")."""
    facts = []
    plan = r.get("budget")
    if isinstance(plan, dict) and _num(plan.get("budget_s")) is not None:
        steps, total = _num(plan.get("steps")), _num(plan.get("total_steps"))
        speed = _num(plan.get("images_per_s"))
        facts.append(("Budget", f"{_fmt_time(plan['budget_s'])}: {_fmt_int(total)} steps planned, {_fmt_int(steps)} run; "
                      + (f"{speed:,.0f} images/s at the last plan, " if speed is not None else "")
                      + f"{_fmt_int(plan.get('replans'))} re-plans"))
    low = r.get("low_res")
    if isinstance(low, dict) and low.get("size"):
        facts.append(("Resolution", f"{_fmt_int(low['size'])} px for {_fmt_int(low.get('steps'))} steps, then "
                      f"{_fmt_int(low.get('full_size'))} px for {_fmt_int(low.get('full_size_steps'))} (progressive resizing)"))
    return facts


def _pretraining_blocks(run: dict, losses: list, knns: list, images: Path) -> list[tuple]:
    """Pretraining plots: the run's own files, or drawn here from metrics.jsonl when they are missing."""
    gallery = []
    pngs = dict(run["plots"])
    if "loss" not in pngs and losses:
        pngs["loss"] = plots.plot_loss([e for e, _ in losses], [float(v) for _, v in losses], images / "plots__loss.png")
    if "knn" not in pngs and knns:
        pngs["knn"] = plots.plot_knn([e for e, _ in knns], [float(v) for _, v in knns], images / "plots__knn.png")
    for stem in sorted(pngs, key=lambda s: (list(_PLOT_CAPTIONS).index(s) if s in _PLOT_CAPTIONS else 99, s)):
        gallery.append((_PLOT_CAPTIONS.get(stem, stem.replace("_", " ")), pngs[stem], f"plots__{stem}.png"))
    return [("h", 3, "Pretraining", None), ("gallery", gallery)] if gallery else []


def _eval_blocks(protocol: str, ev: dict, run_method: str) -> list[tuple]:
    """One protocol's section: test metrics, per-class accuracy and its pictures."""
    m = ev["metrics"]
    title = _PROTOCOL_TITLES.get(protocol, protocol)
    if m.get("method") and m.get("method") != run_method:
        title += f" ({m['method']})"
    blocks: list[tuple] = [("h", 3, f"Evaluation: {title}", None)]
    if m:
        kv = [("Test accuracy", _fmt_acc(m.get("accuracy"))),
              ("Test F1 (weighted)", _fmt_f1(m.get("f1_weighted"))),
              ("Test F1 (macro)", _fmt_f1(m.get("f1_macro"))),
              ("Images (train / val / test)",
               " / ".join(_fmt_int(m.get(k)) for k in ("n_train", "n_val", "n_test"))),
              ("Head epochs", _fmt_int(m.get("head_epochs"))),
              ("Wall time", _fmt_time(m.get("wall_time_s")))]
        blocks.append(("kv", kv))
        per_class = m.get("per_class_accuracy")
        if isinstance(per_class, list):
            per_class = {str(i): v for i, v in enumerate(per_class)}
        if isinstance(per_class, dict) and per_class:
            rows = [[str(k), _fmt_acc(v)] for k, v in per_class.items()]
            blocks.append(("details", f"Per-class accuracy ({len(rows)} classes)",
                           [("table", ["Class", "Accuracy"], rows, {1})]))
    else:
        blocks.append(("p", "metrics.json missing or unreadable."))
    imgs = ev["images"]
    ordered = sorted(imgs, key=lambda s: (list(_EVAL_CAPTIONS).index(s) if s in _EVAL_CAPTIONS else 99, s))
    gallery = [(_EVAL_CAPTIONS.get(s, s.replace("_", " ")), imgs[s], f"eval__{protocol}__{s}.png") for s in ordered]
    if gallery:
        blocks.append(("gallery", gallery))
    return blocks


def _label_efficiency_blocks(le: dict, images: Path) -> list[tuple]:
    """Accuracy against the number of labels: a table per method and the curve (drawn here if missing)."""
    blocks: list[tuple] = [("h", 3, "Label efficiency", None)]
    results = le["results"]
    if results:
        ns = sorted({n for pts in results.values() for n, _ in pts})
        rows = []
        for method, pts in results.items():
            d = dict(pts)
            rows.append([method] + [_fmt_acc(d.get(n)) for n in ns])
        blocks.append(("table", ["Method"] + [f"{n:,} labels" for n in ns], rows, set(range(1, len(ns) + 1))))
    imgs = dict(le["images"])
    if not imgs and results:
        imgs[LABEL_EFFICIENCY] = plots.plot_label_efficiency(results, images / f"eval__{LABEL_EFFICIENCY}__{LABEL_EFFICIENCY}.png")
    gallery = [(_EVAL_CAPTIONS.get(s, s.replace("_", " ")), p, f"eval__{LABEL_EFFICIENCY}__{s}.png")
               for s, p in sorted(imgs.items())]
    if gallery:
        blocks.append(("gallery", gallery))
    return blocks


def _best(runs: list[dict]) -> str | None:
    """One line naming the best test accuracy: the table is wide, this is what a phone shows first."""
    best = None
    for run in runs:
        for protocol, ev in run["evals"].items():
            acc = _num(ev["metrics"].get("accuracy"))
            if acc is not None and math.isfinite(acc) and (best is None or acc > best[0]):
                method = _first(ev["metrics"].get("method"), _method(run))
                best = (acc, f"{method}, {_first(ev['metrics'].get('protocol'), protocol)}")
    return f"Best test accuracy: {_fmt_acc(best[0])} ({best[1]})." if best else None


def _document(runs: list[dict], images_dir: Path) -> tuple[list[tuple], list[str]]:
    """Blocks of the whole report and the run slugs (in order)."""
    taken: set[str] = set()
    slugs = [_slug(r["name"], taken) for r in runs]
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    blocks: list[tuple] = [("h", 1, "SimCLR results", None),
                           ("p", f"{len(runs)} run(s), generated {now}.")]
    if not runs:
        blocks.append(("p", "No runs given."))
        return blocks, slugs
    rows, links = [], []
    for run, slug in zip(runs, slugs):
        for row in _rows(run):
            rows.append([row[c] for c in COLUMNS])
            links.append(f"run-{slug}")
    numeric = {i for i, c in enumerate(COLUMNS) if c in _NUMERIC}
    blocks.append(("h", 2, "Results", "results"))
    best = _best(runs)
    if best:
        blocks.append(("p", best))
    blocks.append(("table", list(COLUMNS), rows, numeric, links))
    notes = ["Test accuracy and F1 are on the test split; heads are selected on the validation split.",
             f"kNN accuracy: the kNN evaluation on the test split; {MONITOR_MARK} marks the last kNN monitor "
             "value during pretraining (validation split) when no kNN evaluation was run.",
             "Wall time: pretraining + evaluation of that protocol."]
    blocks.append(("notes", notes))
    pictures = [(_method(run), run["neighbors"][NEIGHBORS], f"{slug}__{NEIGHBORS}.png")
                for run, slug in zip(runs, slugs) if NEIGHBORS in run.get("neighbors", {})]
    if pictures:
        blocks += [("h", 2, "Nearest neighbours", NEIGHBORS),
                   ("p", "Ten test images (one per class) and the eight training images each encoder places nearest "
                         "(cosine similarity of frozen features), most similar first; green: same class as the query, "
                         "red: another class."),
                   ("gallery", pictures, "wide")]
    for run, slug in zip(runs, slugs):
        blocks += _run_blocks(run, slug, images_dir)
    return blocks, slugs


# ----------------------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    """Escape text for Markdown table cells and paragraphs (no raw HTML, no table breaks)."""
    text = html.escape(str(text), quote=False)
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _md_code(text: str) -> str:
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"`{text}`"


def _render_md(blocks: list[tuple], image_links: dict[tuple[str, str], str]) -> str:
    out: list[str] = []
    slug = None
    for b in blocks:
        kind = b[0]
        if kind == "h":
            if b[3] and b[3].startswith("run-"):
                slug = b[3][4:]
            out += [f"{'#' * b[1]} {_md(b[2])}", ""]
        elif kind == "p":
            out += [_md(b[1]), ""]
        elif kind == "code":
            out += [_md_code(b[1].replace("\n", " ")), ""]
        elif kind == "kv":
            out += [f"- **{_md(k)}:** {_md(v)}" for k, v in b[1]] + [""]
        elif kind in ("warn", "notes"):
            prefix = "⚠ " if kind == "warn" else ""
            out += [f"- {prefix}{_md(t)}" for t in b[1]] + [""]
        elif kind == "table":
            headers, rows, numeric = b[1], b[2], b[3]
            out.append("| " + " | ".join(_md(h) for h in headers) + " |")
            out.append("|" + "|".join("---:" if i in numeric else "---" for i in range(len(headers))) + "|")
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "gallery":
            for caption, _src, rel in b[1]:
                out += [f"![{_md(caption).replace('[', '(').replace(']', ')')}]({image_links[(slug, rel)]})",
                        f"*{_md(caption)}*", ""]
        elif kind == "details":
            out += [f"**{_md(b[1])}**", ""]
            out.append(_render_md(b[2], image_links))
    return "\n".join(out)


# ----------------------------------------------------------------------------- HTML

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;line-height:1.5;
 color:#1d1f21;background:#fff;margin:0 auto;padding:1rem;max-width:1200px;-webkit-text-size-adjust:100%}
h1{font-size:1.6rem;margin:.4rem 0}
h2{font-size:1.3rem;margin-top:2.2rem;padding-bottom:.2rem;border-bottom:2px solid #e3e3e3}
h3{font-size:1.08rem;margin:1.4rem 0 .5rem}
p{margin:.4rem 0 .8rem}
.table-wrap{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid #ddd;border-radius:6px;margin:.5rem 0}
table{border-collapse:collapse;font-size:.9rem;min-width:100%}
th,td{padding:.4rem .6rem;border-bottom:1px solid #eee;text-align:left;white-space:nowrap;vertical-align:top}
th{white-space:normal;min-width:4.5em;vertical-align:bottom}
th{background:#f4f5f7;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even) td{background:#fafbfc}
tr>:first-child{position:sticky;left:0;background:#fff;box-shadow:1px 0 0 #e3e3e3}
tr>th:first-child{background:#f4f5f7}
tbody tr:nth-child(even)>td:first-child{background:#fafbfc}
a{color:#0b5cad;text-decoration:none}
dl.kv{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.15rem 1rem;margin:.5rem 0 1rem}
dl.kv dt{color:#5a5f66}
dl.kv dd{margin:0;overflow-wrap:anywhere}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;background:#f3f4f6;
 padding:.15rem .35rem;border-radius:4px;overflow-wrap:anywhere;display:inline-block;max-width:100%}
.warn{background:#fff5e5;border-left:4px solid #e69500;padding:.4rem .8rem;margin:.6rem 0}
.warn ul,.notes{margin:.2rem 0;padding-left:1.2rem}
.notes{color:#5a5f66;font-size:.85rem}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,360px),1fr));gap:1rem;margin:.6rem 0;
 align-items:start}
.gallery.wide{grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr))}
figure{margin:0;border:1px solid #eee;border-radius:6px;padding:.4rem;background:#fff}
figure img{display:block;width:100%;height:auto}
figcaption{font-size:.85rem;color:#5a5f66;margin-top:.3rem}
img{max-width:100%;height:auto}
details{margin:.4rem 0 .8rem}
summary{cursor:pointer;color:#0b5cad}
@media (max-width:600px){body{padding:.6rem}h1{font-size:1.35rem}h2{font-size:1.15rem}
 th,td{padding:.3rem .45rem;font-size:.82rem}dl.kv{font-size:.9rem;gap:.1rem .7rem}}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _render_html(blocks: list[tuple]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            anchor = f' id="{_e(b[3])}"' if b[3] else ""
            out.append(f"<h{b[1]}{anchor}>{_e(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{_e(b[1])}</p>")
        elif kind == "code":
            out.append(f"<p><code>{_e(b[1])}</code></p>")
        elif kind == "kv":
            items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in b[1])
            out.append(f'<dl class="kv">{items}</dl>')
        elif kind == "warn":
            items = "".join(f"<li>{_e(t)}</li>" for t in b[1])
            out.append(f'<div class="warn"><strong>Incomplete run:</strong><ul>{items}</ul></div>')
        elif kind == "notes":
            out.append('<ul class="notes">' + "".join(f"<li>{_e(t)}</li>" for t in b[1]) + "</ul>")
        elif kind == "table":
            headers, rows, numeric = b[1], b[2], b[3]
            links = b[4] if len(b) > 4 else None
            cls = [' class="num"' if i in numeric else "" for i in range(len(headers))]
            head = "".join(f"<th{cls[i]}>{_e(h)}</th>" for i, h in enumerate(headers))
            body = []
            for r, row in enumerate(rows):
                cells = []
                for i, cell in enumerate(row):
                    content = _e(cell)
                    if i == 0 and links:
                        content = f'<a href="#{_e(links[r])}">{content}</a>'
                    cells.append(f"<td{cls[i]}>{content}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            out.append(f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                       f'<tbody>{"".join(body)}</tbody></table></div>')
        elif kind == "gallery":
            figs = []
            for caption, src, _rel in b[1]:
                figs.append(f'<figure><img src="{_data_uri(Path(src))}" alt="{_e(caption)}" loading="lazy">'
                            f"<figcaption>{_e(caption)}</figcaption></figure>")
            wide = " wide" if len(b) > 2 and b[2] == "wide" else ""
            out.append(f'<div class="gallery{wide}">' + "".join(figs) + "</div>")
        elif kind == "details":
            out.append(f"<details><summary>{_e(b[1])}</summary>{_render_html(b[2])}</details>")
    return "\n".join(out)


def _html_page(body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>SimCLR results</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


# ----------------------------------------------------------------------------- writing


def write_report(run_dirs: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` (images copied to ``out_dir/images/``) and a self-contained ``report.html``.

    The results table has one row per (run, evaluation protocol), in the order of ``run_dirs`` and
    then knn, linear, mlp, finetune; a run without evaluation gets one row. Each run then has a
    section with its settings, its pretraining plots and, per protocol, the metrics and plots.

    Args:
        run_dirs: run directories (complete or partial).
        out_dir: folder for the report; created if needed.

    Returns:
        ``(report.md path, report.html path)``.

    Raises:
        DataError: a run directory does not exist.
    """
    out_dir = Path(out_dir)
    runs = [collect_run(d) for d in run_dirs]
    images_dir = out_dir / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks, _slugs = _document(runs, images_dir)

    # Copy every image the Markdown refers to; the HTML reads the same files for embedding.
    links: dict[tuple[str, str], str] = {}
    slug = None

    def visit(items: list[tuple]) -> None:
        nonlocal slug
        for b in items:
            if b[0] == "h" and b[3] and b[3].startswith("run-"):
                slug = b[3][4:]
            elif b[0] == "gallery":
                for _caption, src, rel in b[1]:
                    dest = images_dir / (slug or "_report") / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if Path(src).resolve() != dest.resolve():
                        shutil.copyfile(src, dest)
                    links[(slug, rel)] = dest.relative_to(out_dir).as_posix()
            elif b[0] == "details":
                visit(b[2])

    visit(blocks)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md, page = _render_md(blocks, links).encode("utf-8"), _html_page(_render_html(blocks)).encode("utf-8")
    atomic_write(md_path, lambda f: f.write(md))
    atomic_write(html_path, lambda f: f.write(page))
    return md_path, html_path

"""Report over fake run directories: complete, partial, supervised baseline, hostile text."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from simclr import report
from simclr.errors import DataError
from simclr.rundir import parse_label_efficiency

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png(path: Path, color=(200, 80, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def eval_metrics(protocol: str, acc: float, **extra) -> dict:
    m = {"protocol": protocol, "accuracy": acc, "f1_weighted": acc - 0.001, "f1_macro": acc - 0.002,
         "per_class_accuracy": {"cat": acc, "dog": acc - 0.1}, "n_train": 6500, "n_val": 1500,
         "n_test": 10000, "head_epochs": None, "wall_time_s": 41.0}
    m.update(extra)
    return m


def make_full_run(root: Path, name="simclr_full", method="SimCLR") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "command": ["simclr", "pretrain", "--config", "cifar10_resnet18"], "kind": "simclr", "name": method,
        "data": {"name": "cifar10"}, "model": {"backbone": "resnet18", "proj_dim": 128},
        "optim": {"name": "sgd"}, "train": {"epochs": 100, "batch_size": 512}}))
    write_json(run / "run.json", {"kind": "simclr", "method": method, "backbone": "resnet18", "batch_size": 512,
                                  "proj_dim": 128, "epochs": 100, "optimizer": "sgd", "wall_time_s": 3600.0,
                                  "data": "cifar10", "finished": True})
    lines = [{"epoch": e, "step": 10 * e, "loss": 6.0 - 0.01 * e, "lr": 0.1, "images_per_sec": 900.0}
             | ({"knn_accuracy": 0.5 + e / 1000} if e % 10 == 0 else {}) for e in range(1, 101)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    for stem in ("loss", "knn", "augment_preview"):
        png(run / "plots" / f"{stem}.png")
    write_json(run / "eval/knn/metrics.json", eval_metrics("knn", 0.832))
    write_json(run / "eval/linear/metrics.json", eval_metrics("linear", 0.856, head_epochs=100))
    write_json(run / "eval/mlp/metrics.json", eval_metrics("mlp", 0.80, head_epochs=12))
    for proto in ("knn", "linear", "mlp"):
        for stem in ("confusion_matrix", "tsne_train", "tsne_test"):
            png(run / "eval" / proto / f"{stem}.png")
    png(run / "eval/mlp/curves.png")
    write_json(run / "eval/label_efficiency/label_efficiency.json",
               {"SimCLR": [[100, 0.4], [1000, 0.7]], "Random init": [[100, 0.2], [1000, 0.3]]})
    png(run / "eval/label_efficiency/label_efficiency.png")
    return run


def make_partial_run(root: Path) -> Path:
    """Pretraining interrupted: no run.json, no plots, no eval; a resumed epoch and a truncated line."""
    run = root / "partial"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "SimCLR-Adam", "kind": "simclr",
                                                     "optim": {"name": "adam"}, "train": {"batch_size": 256}}))
    recs = [{"epoch": 1, "step": 5, "loss": 9.0, "lr": 1e-3, "images_per_sec": 50.0},
            {"epoch": 2, "step": 10, "loss": 8.0, "lr": 1e-3, "images_per_sec": 50.0, "knn_accuracy": 0.31},
            {"epoch": 2, "step": 10, "loss": 7.5, "lr": 1e-3, "images_per_sec": 55.0, "knn_accuracy": 0.33}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + '\n{"epoch": 3, "lo')
    return run


def make_supervised_run(root: Path) -> Path:
    run = root / "baseline"
    write_json(run / "run.json", {"kind": "supervised", "method": "Random init", "backbone": "resnet18",
                                  "batch_size": 256, "proj_dim": None, "epochs": 0, "optimizer": "adam",
                                  "wall_time_s": None, "data": "cifar10", "finished": True})
    write_json(run / "eval/mlp/metrics.json", eval_metrics("mlp", 0.35, head_epochs=20, method="Random init"))
    return run


def md_table(md: str) -> list[dict[str, str]]:
    lines = md.split("## Results", 1)[1].strip().splitlines()
    lines = lines[next(i for i, ln in enumerate(lines) if ln.startswith("|")):]
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(dict(zip(lines[0].strip("| ").split(" | "), cells)))
    return rows


@pytest.fixture
def runs(tmp_path):
    return [make_full_run(tmp_path / "runs"), make_partial_run(tmp_path / "runs"),
            make_supervised_run(tmp_path / "runs")]


def test_report_files_and_table(tmp_path, runs):
    md_path, html_path = report.write_report(runs, tmp_path / "report")
    assert md_path == tmp_path / "report" / "report.md" and md_path.is_file()
    assert html_path == tmp_path / "report" / "report.html" and html_path.is_file()
    md = md_path.read_text()
    assert "Best test accuracy: 85.6 % (SimCLR, linear)." in md
    header = next(ln for ln in md.split("## Results", 1)[1].splitlines() if ln.startswith("|"))
    assert [h.strip() for h in header.strip("|").split("|")] == list(report.COLUMNS)

    rows = md_table(md)
    assert [(r["Method"], r["Protocol"]) for r in rows] == [
        ("SimCLR", "knn"), ("SimCLR", "linear"), ("SimCLR", "mlp"),
        ("SimCLR-Adam", "—"), ("Random init", "mlp")]
    linear = rows[1]
    assert linear == {"Method": "SimCLR", "Protocol": "linear", "Batch size": "512", "Backbone": "resnet18",
                      "Projection dim": "128", "Pretraining epochs": "100", "Head epochs": "100",
                      "Optimizer": "sgd", "Test accuracy": "85.6 %", "Test F1 (weighted)": "85.5 %",
                      "kNN accuracy": "83.2 %", "Wall time": "1 h 00 min + 41 s"}
    assert rows[0]["Head epochs"] == "—"
    partial = rows[3]
    # No kNN evaluation: the last monitor value (of the re-logged epoch 2) with its mark.
    assert partial["kNN accuracy"] == f"33.0 % {report.MONITOR_MARK}"
    assert partial["Batch size"] == "256" and partial["Optimizer"] == "adam"
    assert partial["Test accuracy"] == "—"
    baseline = rows[4]
    assert baseline["Projection dim"] == "—" and baseline["Pretraining epochs"] == "0"
    assert baseline["Test accuracy"] == "35.0 %" and baseline["Wall time"] == "41 s"


def test_markdown_images_are_copied_and_relative(tmp_path, runs):
    md_path, _ = report.write_report(runs, tmp_path / "out")
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    # full run: 3 plots + 3 protocols x 3 + curves + label efficiency; partial: loss + knn drawn from metrics
    assert len(links) == 3 + 9 + 1 + 1 + 2
    for link in links:
        assert not link.startswith(("/", "http")), link
        assert (tmp_path / "out" / link).read_bytes()[:8] == PNG_SIGNATURE
    assert "Per-class accuracy" in md and "1,000 labels" in md
    assert "simclr pretrain --config cifar10_resnet18" in md
    assert "metrics.jsonl: 1 unreadable line(s) skipped" in md


def test_html_self_contained(tmp_path, runs):
    md_path, html_path = report.write_report(runs, tmp_path / "out")
    page = html_path.read_text()
    assert '<meta name="viewport"' in page and "overflow-x:auto" in page and "max-width:100%" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page and "@import" not in page and "<script" not in page.lower()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == len(re.findall(r"!\[", md_path.read_text()))
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    # Method cells link to the run sections, which exist.
    for anchor in set(re.findall(r'href="#([^"]+)"', page)):
        assert f'id="{anchor}"' in page


def test_text_from_files_is_escaped(tmp_path):
    run = make_full_run(tmp_path / "runs", name="evil", method='<script>alert("x")</script> | a&b')
    md_path, html_path = report.write_report([run], tmp_path / "out")
    page = html_path.read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page and "a&amp;b" in page
    rows = md_table(md_path.read_text())
    assert len(rows) == 3 and all(len(r) == len(report.COLUMNS) for r in rows)
    assert "<script>" not in md_path.read_text()


def test_collect_run_partial_and_empty(tmp_path):
    info = report.collect_run(make_partial_run(tmp_path))
    assert [r["epoch"] for r in info["metrics"]] == [1, 2]
    assert info["metrics"][-1]["loss"] == 7.5
    assert info["run"] == {} and info["evals"] == {} and info["label_efficiency"] is None
    assert any("run.json" in w for w in info["warnings"])

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text(": not yaml : [")
    info = report.collect_run(empty)
    assert info["config"] == {} and info["metrics"] == [] and info["plots"] == {}
    md_path, html_path = report.write_report([empty], tmp_path / "out")
    rows = md_table(md_path.read_text())
    assert len(rows) == 1 and rows[0]["Method"] == "empty" and rows[0]["Test accuracy"] == "—"
    assert "No evaluation results yet." in html_path.read_text()


def test_collect_run_full(tmp_path):
    info = report.collect_run(make_full_run(tmp_path))
    assert list(info["evals"]) == ["knn", "linear", "mlp"]
    assert set(info["plots"]) == {"loss", "knn", "augment_preview"}
    assert info["label_efficiency"]["results"]["SimCLR"] == [(100, 0.4), (1000, 0.7)]
    assert info["config"]["train"]["epochs"] == 100 and info["warnings"] == []


@pytest.mark.parametrize("data", [
    {"SimCLR": [[1000, 0.7], [100, 0.4]]},
    {"SimCLR": [{"n_labels": 100, "accuracy": 0.4}, {"n_labels": 1000, "accuracy": 0.7}]},
    {"results": {"SimCLR": [[100, 0.4], [1000, 0.7]]}},
    [{"method": "SimCLR", "n_labels": 1000, "accuracy": 0.7}, {"method": "SimCLR", "n_labels": 100, "accuracy": 0.4}],
])
def test_label_efficiency_formats(data):
    assert parse_label_efficiency(data) == {"SimCLR": [(100, 0.4), (1000, 0.7)]}


def test_missing_run_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="run directory not found"):
        report.write_report([tmp_path / "nope"], tmp_path / "out")


def test_no_runs_and_rewrite(tmp_path, runs):
    md_path, html_path = report.write_report([], tmp_path / "out")
    assert "No runs given." in md_path.read_text() and html_path.is_file()
    # Writing again into the same folder (and with duplicate run names) works.
    report.write_report([runs[0], runs[0]], tmp_path / "out")
    assert len(md_table(md_path.read_text())) == 6


def test_unfinished_run_is_marked(tmp_path):
    run = make_full_run(tmp_path, name="running")
    meta = json.loads((run / "run.json").read_text())
    write_json(run / "run.json", meta | {"finished": False})
    md_path, _ = report.write_report([run], tmp_path / "out")
    assert {r["Method"] for r in md_table(md_path.read_text())} == {"SimCLR (unfinished)"}


def test_results_table_leads_with_method_protocol_accuracy_f1(tmp_path, runs):
    assert report.COLUMNS[:4] == ("Method", "Protocol", "Test accuracy", "Test F1 (weighted)")
    md, html_path = report.write_report(runs, tmp_path / "out")
    first = md_table(md.read_text())[0]
    assert list(first)[:4] == ["Method", "Protocol", "Test accuracy", "Test F1 (weighted)"]
    assert first["Test accuracy"] == "83.2 %" and first["Protocol"] == "knn"
    css = html_path.read_text()
    assert "align-items:start" in css  # gallery cards keep their own height


def test_test_figures_carry_their_interval_and_the_method_is_named_once(tmp_path):
    run = make_full_run(tmp_path / "runs")
    boot = {"method": "percentile bootstrap over the test images", "level": 0.95, "resamples": 1000, "seed": 0}
    write_json(run / "eval/linear/metrics.json", eval_metrics(
        "linear", 0.856, head_epochs=100, bootstrap=boot,
        intervals={"accuracy": [0.849, 0.863], "f1_weighted": [0.848, 0.862], "f1_macro": [0.847, 0.861]},
        seed_runs={"seeds": [0, 1, 2], "mean": {"accuracy": 0.854, "f1_weighted": 0.853, "f1_macro": 0.852},
                   "std": {"accuracy": 0.002, "f1_weighted": 0.002, "f1_macro": 0.002}}))
    md_path, html_path = report.write_report([run], tmp_path / "out")
    md = md_path.read_text()
    linear = next(r for r in md_table(md) if r["Protocol"] == "linear")
    assert linear["Test accuracy"] == "85.6 % [84.9, 86.3]; 85.4 % ± 0.2 (3 seeds)"
    assert linear["Test F1 (weighted)"].startswith("85.5 % [84.8, 86.2]")
    assert "**Test F1 (macro):** 85.4 % [84.7, 86.1]" in md
    assert md.count("percentile bootstrap interval over the 10,000 test images (1,000 resamples, seed 0)") == 1
    html = html_path.read_text()
    assert "85.6 % [84.9, 86.3]" in html and html.count("percentile bootstrap interval") == 1
    knn = next(r for r in md_table(md) if r["Protocol"] == "knn")
    assert knn["Test accuracy"] == "83.2 %"  # an older metrics.json without intervals: the figure alone

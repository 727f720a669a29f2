import json

import torch

from simclr.baselines import write_baseline_run
from simclr.cli import main
from simclr.config import load_config
from simclr.models import build_backbone

TINY_RUN = [
    "--image-size", "16", "--batch-size", "12", "--epochs", "1", "--device", "cpu",
    "--set", "model.proj_hidden=[32]", "--set", "model.proj_dim=16", "--set", "data.n_val=6",
    "--set", "train.knn_k=5", "--set", "eval.knn_k=5", "--set", "eval.mlp_epochs=3", "--set", "eval.tsne_points=40",
    "--set", "train.preview=false", "--set", "train.progress=false",
]


def test_run_end_to_end(tiny_folder, tmp_path, capsys):
    out = tmp_path / "qs"
    rc = main(["run", "--data", str(tiny_folder), "--out", str(out), *TINY_RUN])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for stage in ("[1/4] pretraining", "[2/4] evaluating", "[3/4] baseline random", "[4/4] writing the report"):
        assert stage in captured.out
    html = out / "report" / "report.html"
    assert html.is_file() and f"report: {html.resolve()}" in captured.out
    assert (out / "backbone.safetensors").is_file()
    for run in (out, out / "baselines" / "random"):
        for protocol in ("knn", "mlp"):
            m = json.loads((run / "eval" / protocol / "metrics.json").read_text())
            assert 0.0 <= m["accuracy"] <= 1.0
    assert json.loads((out / "baselines" / "random" / "run.json").read_text())["kind"] == "baseline"
    md = (out / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and ("Random init" in line or "simclr" in line)]
    assert sum("Random init" in r for r in rows) == 2 and sum("Random init" not in r for r in rows) >= 2
    stages = json.loads((out / "pipeline.json").read_text())["stages_s"]
    assert {"pretrain", "evaluate", "baseline_random", "report", "total"} <= set(stages)


def test_run_skips_an_unavailable_baseline_but_writes_the_report(tiny_folder, tmp_path, monkeypatch, capsys):
    """Offline ImageNet weights must not throw away the pretraining: report written, warning, exit code 5."""
    import simclr.train

    def fake_pretrain(cfg, resume=False, command=None, log=print, deadline=None):
        torch.manual_seed(0)
        return write_baseline_run(cfg.out, cfg, build_backbone(cfg.model), "simclr", cfg.name)

    def offline(*args, **kwargs):
        from simclr.errors import CheckpointError

        raise CheckpointError("ImageNet weights offline (test)")

    monkeypatch.setattr(simclr.train, "pretrain", fake_pretrain)
    monkeypatch.setattr("simclr.baselines.imagenet_state_dict", offline)
    out = tmp_path / "qs"
    rc = main(["run", "--data", str(tiny_folder), "--out", str(out), "--protocols", "knn", "--baselines", "imagenet",
               *TINY_RUN])
    captured = capsys.readouterr()
    assert rc == 5
    assert "baseline imagenet was skipped" in captured.err and "offline (test)" in captured.err
    assert (out / "report" / "report.html").is_file()
    assert (out / "eval" / "knn" / "metrics.json").is_file()


def test_report_renders_partial_runs(tiny_folder, tmp_path, capsys):
    cfg = load_config(None, {"data.name": str(tiny_folder), "model.image_size": 16})
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text("name: half done\ntrain:\n  epochs: 5\n")
    (partial / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 3, "loss": 5.0, "lr": 0.1}) + "\n")
    evaluated = write_baseline_run(tmp_path / "evaluated", cfg, build_backbone(cfg.model), "baseline", "Random init")
    (evaluated / "eval" / "knn").mkdir(parents=True)
    (evaluated / "eval" / "knn" / "metrics.json").write_text(json.dumps({"protocol": "knn", "accuracy": 0.5}))
    rc = main(["report", str(partial), str(evaluated), "--out", str(tmp_path / "rep")])
    assert rc == 0, capsys.readouterr().err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "half done" in md and "Random init" in md
    assert (tmp_path / "rep" / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "rep2")]) == 3

"""benchmarks/gpu.sh end to end on the CPU with tiny settings: every stage runs and the summary holds its figures.

The script is written for one GPU and a 6-minute budget; this checks its plumbing (the GPU checks that can run on a
CPU, pretraining with kNN per epoch, bench, test-set kNN of the last weights, summary) so it does not rot between the
rare sessions with a GPU, and that it stops at once, with exit code 3, when the CIFAR-10 folder is missing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # gpu.sh runs 8 Python processes: about a minute on 2 cores (`make test-fast` skips it)


def test_gpu_script_runs_every_stage_on_cpu(tmp_path):
    data = make_image_folder(tmp_path / "cifar", n_per_class=24, n_test_per_class=6, size=16)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "EPOCHS": "2",
        "KNN_EVERY": "1",
        "BUDGET_S": "480",
        "TTA_BUDGET": "4s",  # stage T (time to accuracy) for 4 s instead of 3 minutes
        "BENCH_S": "120",
        "CHECKS_S": "150",
        # the checks that need no GPU (the others report SKIP); deterministic resume runs its 18 steps
        "CHECK_ARGS": "--quick --batch-size 8 --image-size 8 --steps 1 --only api,deterministic,eval_on_device,memory",
        "SCRATCH": str(tmp_path / "scratch"),
        # --in-process: what the bench does on a GPU (the default there), and 40 s quicker here
        "BENCH_ARGS": "--in-process --batch-size 8 --image-size 8 --steps 1 --warmup 1 --aug-images 16 --workers 0 "
                      "--set model.proj_hidden=[16] --set model.proj_dim=8",
        "TRAIN_ARGS": "--batch-size 16 --image-size 8 --set model.proj_hidden=[16] --set model.proj_dim=8 "
                      "--set data.n_val=12 --set train.knn_k=5 --set eval.knn_k=5",
    }
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out), str(data)], env=env,
                          capture_output=True, text=True, timeout=600)
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + log[-3000:]
    assert {"env.txt", "log.txt", "checks.json", "bench.json", "metrics.jsonl", "knn_test.json", "timing.json",
            "summary.md", "summary.json"} <= {p.name for p in out.iterdir()}, log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    checks = {c["check"]: c["status"] for c in summary["checks"]}
    assert checks["api"] == "PASS" and checks["eval_on_device"] == "PASS", summary["checks"]
    assert checks["deterministic[train.deterministic=true]"] == "PASS", summary["checks"]
    # the checks come first, on the console and in the summary
    assert proc.stdout.index("CHECK api") < proc.stdout.index("stage 1")
    assert (out / "summary.md").read_text().index("Checks") < (out / "summary.md").read_text().index("s/epoch")
    assert "72 train and 18 test images found" in log
    assert {"augment", "step", "ablation"} <= set(summary["throughput"])
    p = summary["pretrain"]
    assert p["epochs_done"] == 2 and p["seconds_per_epoch_mean"] > 0 and p["checkpoint_seconds_mean"] > 0
    assert set(p["knn_val"]) == {"1", "2"} or set(p["knn_val"]) == {1, 2}
    assert 0.0 <= p["knn_test"] <= 1.0
    assert "s/epoch" in (out / "summary.md").read_text()
    tta = summary["time_to_accuracy"]  # stage T: the budgeted run and its test kNN
    assert tta["budget_s"] == 4 and tta["steps"] >= 5 and 0.0 <= tta["knn_test"] <= 1.0, tta


def test_gpu_script_without_data_stops_with_exit_code_3(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SCRATCH": str(tmp_path / "scratch")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out), str(tmp_path / "missing")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "no CIFAR-10 image folder" in proc.stdout and "mkdir -p data && cp -r ../shared/data/cifar10 data/" in proc.stdout
    assert not (out / "bench.json").exists()

"""``simclr run`` under torchrun (2 gloo processes): the data is prepared once, evaluation and the report run once
on rank 0, and the run directory equals a 1-process run's file for file.

``--epochs 0`` keeps the encoder at its seeded initial weights in both runs, so every output can be compared byte
for byte (training itself is compared with 1 process in test_ddp.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder

WORKER = Path(__file__).resolve().parent / "torchrun_worker.py"
ARGS = ["run", "--out", "run", "--image-size", "8", "--batch-size", "12", "--epochs", "0", "--device", "cpu",
        "--protocols", "knn,mlp", "--baselines", "random",
        "--set", "model.proj_hidden=[16]", "--set", "model.proj_dim=8", "--set", "data.n_val=6",
        "--set", "eval.knn_k=5", "--set", "eval.mlp_epochs=2", "--set", "eval.tsne_points=0",
        "--set", "eval.labels=[6,12]", "--set", "train.preview=false", "--set", "train.progress=false"]
# Files whose contents carry wall-clock times, the command line or the holder's pid (.lock) by design.
TIMED = {"pipeline.json", "run.json", "config.yaml", "metrics.json", "report.md", "report.html", ".lock"}


def _start(cwd: Path, data: Path, processes: int) -> subprocess.Popen:
    cwd.mkdir()
    env = {**os.environ, "SIMCLR_EVENTS": str(cwd / "events.txt"), "SIMCLR_CACHE": str(cwd / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc_per_node={processes}"]
    return subprocess.Popen([*launch, str(WORKER), *ARGS, "--data", str(data)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _events(proc: subprocess.Popen, cwd: Path) -> list[str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return (cwd / "events.txt").read_text().splitlines()


def _content(path: Path):
    """What a file holds: tensors and metadata of safetensors (the header's byte order may vary), JSON lines
    without their wall-clock times, else the bytes."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # bytes: exact, and fast
    if path.suffix == ".jsonl":
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")}
                for line in path.read_text().splitlines()]
    return path.read_bytes()


def _files(root: Path) -> dict[str, object]:
    return {str(p.relative_to(root)): _content(p) for p in sorted(root.rglob("*")) if p.is_file()
            and "tb" not in p.relative_to(root).parts}


@pytest.mark.slow
def test_run_under_torchrun_prepares_evaluates_and_reports_once(tmp_path):
    data = make_image_folder(tmp_path / "data", n_per_class=12, n_test_per_class=4)
    # both at once (one thread a process, so the outputs do not depend on the load): 26 s -> 19 s on 2 cores
    one, two = _start(tmp_path / "one", data, 1), _start(tmp_path / "two", data, 2)
    try:
        one_events, two_events = _events(one, tmp_path / "one"), _events(two, tmp_path / "two")
    finally:
        for proc in (one, two):
            if proc.poll() is None:
                proc.kill()

    # the empty cache is filled by rank 0 alone; rank 1 reads it (no decoding), and the pool is sized for 1 process
    train_decodes = [e for e in two_events if "_decode_all 36 files" in e]
    assert train_decodes and all(e.startswith("0 ") for e in train_decodes), two_events
    assert len(train_decodes) == 1, two_events
    # evaluation and the report: rank 0 only, as often as in 1 process
    assert sorted(e for e in two_events if "_decode_all" not in e) == sorted(e for e in one_events if "_decode_all" not in e)
    assert all(e.startswith("0 ") for e in two_events), two_events

    a, b = _files(tmp_path / "one" / "run"), _files(tmp_path / "two" / "run")
    assert set(a) == set(b)
    assert any(name.endswith("sweep.jsonl") for name in a) and any(name.endswith("predictions.csv") for name in a)
    differ = sorted(name for name in a if a[name] != b[name] and Path(name).name not in TIMED)
    assert differ == [], differ

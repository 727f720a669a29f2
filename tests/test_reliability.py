"""Reliability: runs survive kills, bad numbers, bad files and bad input; loaded files are trusted only as data."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from simclr.checkpoint import atomic_save, load_checkpoint, load_weights, save_weights
from simclr.cli import main
from simclr.config import load_config
from simclr.errors import CheckpointError, NonFiniteLossError
from simclr.models import ProjectionHead
from simclr.train import pretrain

TINY = ["--image-size", "8", "--batch-size", "12", "--set", "model.proj_hidden=[32]", "--set", "model.proj_dim=16",
        "--set", "train.knn_k=5", "--set", "data.n_val=6", "--set", "train.preview=false"]


def tiny_cfg(folder, out, **over):
    base = {"data.name": str(folder), "out": str(out), "model.image_size": 8, "model.proj_hidden": [32], "model.proj_dim": 16,
            "train.batch_size": 12, "train.epochs": 2, "train.knn_every": 0, "train.knn_k": 5, "data.n_val": 6,
            "train.progress": False, "train.preview": False, "optim.warmup_epochs": 0}
    base.update(over)
    return load_config(None, base)


def _cli(args, **kw):
    # as many threads as this process, which resumes some of these runs itself (the same kernels, the same sums)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "simclr", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow  # two training processes and a SIGKILL: about 20 s
def test_sigkill_and_resume_equals_uninterrupted_run(tiny_folder, tmp_path, capsys):
    args = ["pretrain", "--data", str(tiny_folder), "--precision", "fp32", "--epochs", "4", *TINY, "--set", "train.checkpoint_every=1"]
    straight = _cli([*args, "--out", str(tmp_path / "straight")])
    killed = _cli([*args, "--out", str(tmp_path / "killed")])
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 0.6))  # an arbitrary moment: mid-step, mid-checkpoint or between epochs
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    # in this process: the killed one's lock is the kernel's to release, and a fresh interpreter costs ~4 s
    assert main([*args, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    straight.communicate(timeout=180)
    assert straight.returncode == 0
    a = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    b = load_checkpoint(tmp_path / "killed/checkpoints/last.pt")
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"] if a["model"][k].is_floating_point())
    assert diff <= 1e-6, diff
    epochs = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]  # each epoch once
    lines_a = [json.loads(x) for x in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["loss"] for x in lines_a] == pytest.approx([x["loss"] for x in lines_b], abs=1e-6)


def test_resume_refuses_changed_model_or_data(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_folder, out, **{"train.epochs": 1}))
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(out), "--resume", *TINY, "--backbone", "resnet34", "--set", "augment.gray_p=0.5"])
    assert rc == 5
    err = capsys.readouterr().err
    assert "model.backbone: 'resnet18' -> 'resnet34'" in err and "augment.gray_p" in err


def test_resume_without_checkpoint_is_clear(tmp_path, tiny_folder, capsys):
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "none"), "--resume", *TINY])
    assert rc == 5 and "not found" in capsys.readouterr().err


def test_truncated_checkpoint_fails_clearly(tmp_path):
    p = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(1000)}}, p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a simclr checkpoint"):
        load_checkpoint(p)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    p = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
    assert not (tmp_path / "pwned").exists()


def test_weights_wrong_shape_and_not_safetensors(tmp_path):
    save_weights(ProjectionHead(8, [16], 4), tmp_path / "head.safetensors")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(ProjectionHead(8, [32], 4), tmp_path / "head.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_weights(ProjectionHead(8, [16], 4), tmp_path / "bad.safetensors")


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.zeros(3)}}, p)

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="No space left on device.*previous file there is intact"):
        atomic_save({"model": {"w": torch.ones(3)}}, p)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.zeros(3))
    assert [x.name for x in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def _nan_at(step_to_fail):
    from simclr import train

    real = train.nt_xent
    calls = {"n": 0}

    def fake(z0, z1, t, **kwargs):
        calls["n"] += 1
        loss = real(z0, z1, t, **kwargs)
        return loss * float("nan") if calls["n"] == step_to_fail else loss

    return fake


@pytest.mark.parametrize("sync_every", [0, 4])  # 0: the loss is read every step on the CPU; 4: only at the epoch end
def test_nonfinite_loss_stops_with_clear_error_and_good_checkpoint(tiny_folder, tmp_path, monkeypatch, sync_every):
    from simclr import train

    monkeypatch.setattr(train, "nt_xent", _nan_at(5))  # 3 steps per epoch: fails in epoch 2, step 2
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        pretrain(tiny_cfg(tiny_folder, out, **{"train.epochs": 3, "train.sync_every": sync_every}))
    msg = str(e.value)
    assert "epoch 2, step 2" in msg and "optim.lr" in msg and "train.temperature" in msg and "--precision fp32" in msg
    ck = load_checkpoint(out / "checkpoints/last.pt")
    assert ck["state"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    monkeypatch.undo()
    pretrain(tiny_cfg(tiny_folder, out, **{"train.epochs": 3}), resume=True)  # the last good checkpoint is usable
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_skip_nonfinite_tolerates_bad_steps(tiny_folder, tmp_path, monkeypatch):
    from simclr import train

    monkeypatch.setattr(train, "nt_xent", _nan_at(2))
    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_folder, out, **{"train.skip_nonfinite": 1}))
    assert load_checkpoint(out / "checkpoints/last.pt")["state"]["nonfinite_skipped"] == 1


def test_cli_exit_code_for_nonfinite(tiny_folder, tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "r"), *TINY, "--epochs", "1", "--lr", "1e30"])
    assert rc == 4
    assert "the loss became" in capsys.readouterr().err


def test_missing_data_path_is_exit_3(tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TINY])
    assert rc == 3
    assert str(tmp_path / "nope") in capsys.readouterr().err


@pytest.mark.parametrize("flag,value,key", [("--batch-size", "1", "train.batch_size"), ("--temperature", "0", "train.temperature"),
                                            ("--backbone", "resnet7", "model.backbone"), ("--epochs", "-1", "train.epochs")])
def test_bad_input_rejected_before_work(tmp_path, capsys, flag, value, key):
    rc = main(["pretrain", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), flag, value])
    assert rc == 2 and key in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_files_skipped_counted_and_listed(tiny_folder, tmp_path, capsys):
    bad = tiny_folder / "train" / "a"
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.png").write_text("not an image")
    good = (bad / "0000.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_folder, out, **{"train.epochs": 1}))
    assert "skipped 3 unreadable image file(s)" in capsys.readouterr().out
    listed = (out / "skipped_files.txt").read_text().split()
    assert sorted(p.rsplit("/", 1)[1] for p in listed) == ["text.png", "truncated.png", "zero.jpg"]
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "strict"), "--strict", *TINY])
    assert rc == 3 and "unreadable" in capsys.readouterr().err


def test_empty_folder_and_single_class_are_clear(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r1"), *TINY]) == 3
    assert "no images" in capsys.readouterr().err
    one = tmp_path / "one" / "only_class"
    one.mkdir(parents=True)
    (one / "x.png").write_bytes(_png())
    (one / "y.png").write_bytes(_png())
    from simclr.config import DataConfig
    from simclr.data import load_split, split_labels
    from simclr.errors import DataError

    data = load_split(DataConfig(name=str(tmp_path / "one")), "train", 16)
    with pytest.raises(DataError, match="2 classes"):  # a labeled protocol needs 2 classes...
        split_labels(data.labels, DataConfig(name=str(tmp_path / "one")), 0)
    # ...pretraining does not: the images are used without labels
    for i in range(10):
        (one / f"z{i}.png").write_bytes(_png())
    assert main(["pretrain", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "r2"), *TINY[:2], "--batch-size", "4", "--epochs", "1", *TINY[4:]]) == 0


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_loss_is_read_every_sync_every_steps_with_the_same_result(tiny_folder, tmp_path, monkeypatch):
    """GPUs: the loop reads the loss (a host-device synchronisation) every train.sync_every steps, not each step."""
    from simclr import train

    reads = []
    real = train._LossTally.settle
    monkeypatch.setattr(train._LossTally, "settle", lambda self, state: reads.append(state.global_step) or real(self, state))
    losses = {}
    for every in (1, 4):
        reads.clear()
        out = tmp_path / f"run{every}"
        pretrain(tiny_cfg(tiny_folder, out, **{"train.sync_every": every, "train.precision": "fp32"}))
        losses[every] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        if every == 4:  # 3 steps per epoch, 2 epochs: step 4 and the two epoch ends
            assert reads == [3, 4, 6]
        else:
            assert reads == [1, 2, 3, 3, 4, 5, 6, 6]  # each step, and the epoch end
    assert losses[1] == pytest.approx(losses[4], rel=1e-6)


def _wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished (or failed) before the test could use it: " + proc.stderr.read()[-2000:]
    assert path.exists(), f"{path} did not appear"


@pytest.mark.slow  # four processes: about 15 s
def test_one_writer_per_run_directory_and_sigkill_releases_the_lock(tiny_folder, tmp_path, capsys):
    """A second process on a run directory in use exits 2 naming the directory and the holder's pid, and writes
    nothing; once the holder is SIGKILLed, the kernel has released the lock and --resume succeeds."""
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(tiny_folder), "--precision", "fp32", *TINY, "--set", "train.checkpoint_every=1"]
    holder = _cli([*args, "--epochs", "500", "--out", str(run)])
    try:
        _wait_for(run / "checkpoints" / "last.pt", holder)
        before = (run / "metrics.jsonl").read_bytes()
        # a second --resume, and a fresh start into the same --out (at once: each spends ~4 s importing torch)
        seconds = [_cli([*args, "--epochs", "500", "--out", str(run), *extra]) for extra in (["--resume"], [])]
        for second in seconds:
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, (second.returncode, err)
            assert str(run) in err and f"pid {holder.pid}" in err, err
        assert holder.poll() is None  # the holder was not disturbed
        assert (run / "metrics.jsonl").read_bytes()[: len(before)] == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    epoch = load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"]
    assert main([*args, "--epochs", str(epoch + 1), "--out", str(run), "--resume"]) == 0  # in this process
    assert "resumed from" in capsys.readouterr().out
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, epoch + 2))  # each epoch once


@pytest.mark.slow  # a torchrun launch: about 8 s
def test_run_directory_lock_under_torchrun(tiny_folder, tmp_path):
    """Under torchrun rank 0 takes the lock; when it is held elsewhere every rank exits 2 (none hangs waiting)."""
    from simclr.runlock import RunLock

    run = tmp_path / "busy"
    with RunLock(run):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "simclr",
               "pretrain", "--data", str(tiny_folder), "--out", str(run), "--epochs", "1", *TINY]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    assert f"{run} is in use" in r.stderr and f"pid {os.getpid()}" in r.stderr, r.stderr[-3000:]
    assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()

import json

import pytest
import torch
from safetensors.torch import load_file

from simclr.batches import epoch_permutation
from simclr.cli import main
from simclr.config import load_config
from simclr.train import pretrain


def tiny_cfg(folder, out, **over):
    base = {
        "data.name": str(folder), "out": str(out), "model.image_size": 16, "model.proj_hidden": [32], "model.proj_dim": 16,
        "train.batch_size": 12, "train.epochs": 2, "train.knn_every": 1, "train.knn_k": 5, "data.n_val": 6,
        "optim.lr": 0.1, "optim.warmup_epochs": 0, "train.progress": False,
    }
    base.update(over)
    return load_config(None, base)


def test_pretrain_writes_run_directory(tiny_folder, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_folder, out))
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "backbone.safetensors", "projection_head.safetensors", "run.json", "plots/loss.png", "plots/knn.png", "plots/augment_preview.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for x in lines:
        assert {"epoch", "step", "loss", "lr", "images_per_sec", "knn_accuracy"} <= set(x)
    assert lines[-1]["step"] == 2 * (36 // 12)
    assert list((out / "tb").glob("events.out.tfevents*"))
    w = load_file(str(out / "backbone.safetensors"))
    assert "net.conv1.weight" in w
    info = json.loads((out / "run.json").read_text())
    assert info["finished"] and info["backbone"] == "resnet18"


def test_loss_falls(tiny_folder, tmp_path):
    out = tmp_path / "run"
    # 8 px: 8 s instead of 11 here; the 2-epoch means still fall by 0.36-0.50 (3 data seeds), the bound is 0.05
    pretrain(tiny_cfg(tiny_folder, out, **{"train.epochs": 8, "train.knn_every": 0, "optim.name": "adam", "optim.lr": 1e-3,
                                            "optim.scale_lr": False, "augment.scale": [0.6, 1.0], "augment.jitter_p": 0.0,
                                            "model.image_size": 8}))
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses


def test_decoupled_loss_from_the_command_line(tiny_folder, tmp_path, monkeypatch):
    """--loss dcl trains every step with the decoupled loss, and run.json and the report's facts say which loss."""
    import simclr.train as train
    from simclr import report

    calls = []
    original = train.nt_xent

    def spy(*a, decoupled=False, **k):
        calls.append(decoupled)
        return original(*a, decoupled=decoupled, **k)

    monkeypatch.setattr(train, "nt_xent", spy)
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--out", str(out), "--image-size", "8", "--batch-size", "12",
                 "--epochs", "1", "--loss", "dcl", "--temperature", "0.1", "--set", "train.knn_every=0",
                 "--set", "model.proj_hidden=[16]", "--set", "train.preview=false"]) == 0
    assert calls == [True] * 3  # 36 images, batch 12
    info = json.loads((out / "run.json").read_text())
    assert info["loss"] == {"name": "dcl", "temperature": 0.1}
    md = report.write_report([out], tmp_path / "report")[0].read_text()
    assert "**Loss:** decoupled contrastive (DCL: no positive in the denominator), temperature 0.1" in md


def test_existing_run_is_not_overwritten(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    pretrain(tiny_cfg(tiny_folder, out, **{"train.epochs": 1}))
    before = (out / "checkpoints/last.pt").read_bytes()
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(out), "--image-size", "16", "--batch-size", "12", "--epochs", "1"])
    assert rc == 2 and "--resume" in capsys.readouterr().err
    assert (out / "checkpoints/last.pt").read_bytes() == before


def test_epoch_order_depends_on_seed_and_epoch_only():
    a, b = epoch_permutation(100, 0, 3), epoch_permutation(100, 0, 3)
    assert torch.equal(a, b) and not torch.equal(a, epoch_permutation(100, 0, 4))
    assert sorted(a.tolist()) == list(range(100))


@pytest.mark.parametrize("module", [False, True])
def test_cli_and_python_m(tiny_folder, tmp_path, module):
    import subprocess
    import sys

    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tiny_folder), "--out", str(out), "--image-size", "8", "--batch-size", "12", "--epochs", "1", "--set", "train.knn_every=0", "--set", "model.proj_hidden=[16]"]
    if module:
        r = subprocess.run([sys.executable, "-m", "simclr", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    else:
        assert main(args) == 0
    assert (out / "backbone.safetensors").is_file()


def test_augment_preview_command(tiny_folder, tmp_path):
    from PIL import Image

    out = tmp_path / "preview.png"
    assert main(["augment-preview", "--data", str(tiny_folder), "--image-size", "16", "--output", str(out), "-n", "4"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 0

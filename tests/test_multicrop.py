"""Multi-crop (augment.small_crops): the small crops' views, the config checks, and a run that trains with them,
records them and resumes exactly. The loss itself is tested in test_loss.py and test_distributed_loss.py."""

import json

import pytest
import torch

from simclr import augment, report, train
from simclr.batches import small_crop_size
from simclr.checkpoint import load_checkpoint
from simclr.cli import main
from simclr.config import AugmentConfig, load_config
from simclr.errors import ConfigError
from simclr.precision import hardware
from simclr.train import pretrain

AUG = AugmentConfig(small_crops=3, small_size=8)


def _images(n: int, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))


def test_small_crops_come_after_the_unchanged_global_views():
    images = _images(6)
    plain = augment.simclr_views(images, AUG, 16, 1, 2, 3)
    views = augment.simclr_views(images, AUG, 16, 1, 2, 3, small_size=8)
    assert len(plain) == 2 and len(views) == 2 + 3
    for a, b in zip(plain, views[:2]):  # the global views do not depend on the small crops
        assert torch.equal(a, b)
    assert all(v.shape == (6, 3, 8, 8) for v in views[2:])
    assert not torch.equal(views[2], views[3])  # each crop its own parameters
    again = augment.simclr_views(images, AUG, 16, 1, 2, 3, small_size=8)
    assert all(torch.equal(a, b) for a, b in zip(views, again))


def test_a_process_gets_its_rows_of_the_small_crops():
    images = _images(8)
    full = augment.simclr_views(images, AUG, 16, 0, 1, 4, small_size=8)
    part = augment.simclr_views(images[4:], AUG, 16, 0, 1, 4, global_batch=8, offset=4, small_size=8)
    for a, b in zip(full, part):
        assert torch.equal(a[4:], b)


def test_small_crops_use_their_own_scale():
    p = augment.view_params(4096, (0, 4096), 32, 32, AugmentConfig(small_scale=(0.05, 0.1)), 0, 0, 0, small_crops=1)
    area = lambda q: (q["crop"][:, 2] * q["crop"][:, 3]).double().mean() / 32**2  # noqa: E731
    assert area(p[2]) < 0.12 < 0.3 < area(p[0])


def test_small_crop_size_follows_the_view_size():
    cfg = load_config(None, {"augment.small_crops": 2, "augment.small_size": 16, "model.image_size": 32})
    assert small_crop_size(cfg, 32) == 16 and small_crop_size(cfg, 16) == 8
    assert small_crop_size(load_config(None, {}), 32) == 0


@pytest.mark.parametrize(
    "over,words",
    [({"augment.small_crops": -1}, ["augment.small_crops", ">= 0"]),
     ({"augment.small_crops": 2, "augment.small_size": 32}, ["augment.small_size", "below the global views", "31"]),
     ({"augment.small_crops": 2, "augment.small_scale": [0.5, 0.1]}, ["augment.small_scale"]),
     ({"augment.small_crops": 2, "data.stream": True}, ["augment.small_crops", "data.stream: false"])],
)
def test_bad_multicrop_settings_are_config_errors(over, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, over)
    for w in words:
        assert w in str(e.value)


def test_cli_exits_2_before_any_work(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--out", str(out), "--set", "augment.small_crops=-2"]) == 2
    assert "augment.small_crops" in capsys.readouterr().err and not out.exists()


def _cfg(folder, out, **over):
    base = {"data.name": str(folder), "out": str(out), "model.image_size": 16, "model.proj_hidden": [16],
            "model.proj_dim": 8, "train.batch_size": 12, "train.epochs": 2, "train.knn_every": 0, "data.n_val": 0,
            "train.progress": False, "train.preview": False, "optim.warmup_epochs": 0, "train.precision": "fp32",
            "augment.small_crops": 2, "augment.small_size": 8, "train.low_res_size": 8, "train.low_res_fraction": 0.5}
    base.update(over)
    return load_config(None, base)


def test_a_multicrop_run_trains_records_its_views_and_resumes_exactly(tiny_folder, tmp_path, monkeypatch):
    seen: list[tuple] = []
    original = augment.simclr_views

    def spy(*a, **k):
        views = original(*a, **k)
        seen.append(tuple(v.shape[-1] for v in views))
        return views

    monkeypatch.setattr(augment, "simclr_views", spy)
    pretrain(_cfg(tiny_folder, tmp_path / "straight"))
    assert (8, 8, 4, 4) in seen and (16, 16, 8, 8) in seen  # low resolution, then full, small crops scaled along
    info = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert info["multicrop"] == {"small_crops": 2, "small_size": 8, "small_scale": [0.05, 0.4], "views_per_image": 4}
    losses = [json.loads(x)["loss"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < x < 20 for x in losses)
    md = report.write_report([tmp_path / "straight"], tmp_path / "report")[0].read_text()
    assert "2 global views + 2 small crops of 8 px (area 0.05-0.4 of the image)" in md
    assert "**Precision:** fp32: asked for (train.precision)" in md
    assert f"**Hardware:** {hardware(torch.device('cpu'))}" in md

    record = train._record_epoch

    def stop_after_epoch_1(run_dir, history, *a, **k):  # an interruption right after epoch 1's checkpoint
        record(run_dir, history, *a, **k)
        if len(history) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_record_epoch", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_cfg(tiny_folder, tmp_path / "split"))
    pretrain(_cfg(tiny_folder, tmp_path / "split"), resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()) <= 1e-6
    with pytest.raises(Exception, match="augment.small_crops"):  # resuming with other crops is refused
        pretrain(_cfg(tiny_folder, tmp_path / "split", **{"augment.small_crops": 3}), resume=True)

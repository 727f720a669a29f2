"""Speed changes do not change results: the streaming path gives the device path's views, bf16 follows fp32."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

import simclr.data
from simclr.batches import device_batches
from simclr.bench import views_step as _views_step
from simclr.config import load_config
from simclr.data import list_images, load_split
from simclr.loss import nt_xent
from simclr.models import build_model
from simclr.optim import build_optimizer
from simclr.runtime import Dist, autocast
from simclr.splits import pretraining_sets
from simclr.stream import stream_batches
from simclr.train import pretrain

# Crops cross the worker boundary as uint8: at most half a grey level (0.5 / 255 = 0.002 in [0, 1], 0.008 after
# normalisation) from the float crop the device path computes. Brightness, contrast and saturation (factors up to
# 1.4 each) and the hue rotation can amplify that: measured at most 0.043 (2.7 grey levels) on single pixels and a
# mean of at most 0.0035 per batch (0.2 grey levels), over 3 image sizes and 3 epochs. Everything else is the same
# arithmetic on the same parameters; a wrong crop, flip or colour parameter shows up as differences near 1.
VIEW_ATOL = 0.06  # normalised units; one grey level is about 0.016
VIEW_MEAN_ATOL = 0.006
# bf16 autocast vs fp32 (ResNet-18, 16 px, batch 24, 4 SGD steps):
# - the same weights and views give NT-Xent losses (about 3.9) within 1 % of each other at every step of a run.
#   bf16 keeps 8 significant bits, so each rounded activation is off by up to 2^-9 = 0.2 %; the loss sees a few such
#   roundings' worth (measured 0.21 % at most on AMD Zen 4 over 24 steps, 2 batch sizes, 2 seeds, 2 augmentation
#   implementations). The bound allows 5 roundings, since oneDNN's bf16 kernels (AVX512-BF16 on Zen 4, AMX on Xeon)
#   round in different orders; a layer that loses its fp32 accumulation or a loss left in bf16 at T=0.05 goes further;
# - a bf16 run and an fp32 run from the same initial weights over the same batches stay within 5 % at every step
#   (measured: at most 2.5 % in the first 4 steps). They drift apart step by step because each step's rounding moves
#   the next weights a little, which is why this bound is looser than the first.
STEP_RTOL = 0.01
RUN_RTOL = 0.05


def _cfg(folder, **over):
    base = {"data.name": str(folder), "model.image_size": 16, "model.proj_hidden": [32], "model.proj_dim": 16,
            "train.batch_size": 12, "augment.blur_p": 0.5, "data.n_val": 6, "train.progress": False}
    base.update(over)
    return load_config(None, base)


@pytest.mark.parametrize("image_size, world, rank, workers", [(16, 1, 0, 0), (12, 2, 1, 2)])
def test_stream_matches_device_path(tmp_path, image_size, world, rank, workers):
    folder = make_image_folder(tmp_path / "data", size=20)  # 20 px files: decoded with a resize to S
    cfg = _cfg(folder, **{"model.image_size": image_size})
    data = load_split(cfg.data, "train", image_size)
    rt = Dist(rank=rank, world_size=world)
    for epoch in (0, 3):
        dev = list(device_batches(data.images, cfg, epoch, 1, rt))
        streamed = list(stream_batches(data.paths, cfg, epoch, 1, rt, size=data.images.shape[-1], workers=workers))
        assert len(dev) == len(streamed) == len(data) // 12 - 1
        for (a0, a1), (s0, s1) in zip(dev, streamed):
            assert s0.shape == a0.shape == (12 // world, 3, image_size, image_size)
            for a, s in ((a0, s0), (a1, s1)):
                diff = (a - s).abs()
                assert diff.max() < VIEW_ATOL, float(diff.max())
                assert diff.mean() < VIEW_MEAN_ATOL, float(diff.mean())
            assert not torch.allclose(s0, s1)  # two different views


def test_list_images_matches_load_split(tmp_path):
    folder = make_image_folder(tmp_path / "data", size=20)
    cfg = _cfg(folder, **{"data.limit": 20})
    data = load_split(cfg.data, "train", 16, seed=3)
    paths, labels, classes, size = list_images(cfg.data, "train", 16, seed=3)
    assert paths == data.paths and torch.equal(labels, data.labels) and classes == data.classes
    assert size == data.images.shape[-1] == 16


def test_unreadable_file_is_replaced_not_fatal(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "data")
    paths, _, _, size = list_images(_cfg(folder).data, "train", 16)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    paths[0] = str(bad)
    cfg = _cfg(folder)
    batches = list(stream_batches(paths, cfg, 0, 0, Dist(), size=size, workers=0))
    assert len(batches) == len(paths) // 12 and all(torch.isfinite(v).all() for pair in batches for v in pair)
    assert "unreadable image file" in capsys.readouterr().err
    cfg.data.strict = True
    with pytest.raises(Exception, match="unreadable"):
        list(stream_batches(paths, cfg, 0, 0, Dist(), size=size, workers=0))


def test_pretrain_with_stream(tmp_path):
    folder = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    cfg = _cfg(folder, **{"out": str(out), "train.epochs": 1, "train.knn_every": 0, "data.stream": True, "data.workers": 0,
                          "optim.warmup_epochs": 0, "train.preview": False})
    pretrain(cfg)
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["epoch"] == 1 and np.isfinite(line["loss"])


def _loss(model, v0, v1, precision: str) -> float:
    views = torch.cat([v0, v1]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        _, z = model(views)
    return float(nt_xent(*z.float().chunk(2), 0.5))


def test_bf16_and_fp32_losses_agree(tmp_path):
    folder = make_image_folder(tmp_path / "data", n_per_class=8)
    # 8 px: on a CPU without native bf16 (AVX2) the emulated kernels made 16 px take 29 s (8 px: 11 s)
    cfg = _cfg(folder, **{"train.batch_size": 24, "optim.warmup_epochs": 0, "model.image_size": 8})
    data = load_split(cfg.data, "train", 8)
    batches = [next(device_batches(data.images, cfg, epoch, 0, Dist())) for epoch in range(4)]  # 4 different batches
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    # The precision itself: both losses from the same weights and views, at each step of an fp32 run.
    m = copy.deepcopy(model)
    opt = build_optimizer(cfg.optim, m, 24)
    for v0, v1 in batches:
        f, b = _loss(m, v0, v1, "fp32"), _loss(m, v0, v1, "bf16")
        assert abs(f - b) <= STEP_RTOL * f, (f, b)
        _views_step(m, opt, v0, v1, cpu, "fp32", True, 0.5)
    # Training: a bf16 run beside an fp32 run from the same weights over the same batches.
    losses = {}
    for precision in ("fp32", "bf16"):
        m = copy.deepcopy(model)
        opt = build_optimizer(cfg.optim, m, 24)
        losses[precision] = [float(_views_step(m, opt, v0, v1, cpu, precision, True, 0.5)) for v0, v1 in batches]
    for f, b in zip(losses["fp32"], losses["bf16"]):
        assert abs(f - b) <= RUN_RTOL * f, losses


def test_stream_folder_of_odd_images(tmp_path):
    """Grey and RGBA files come out as RGB crops of the right size on the streaming path too."""
    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        arr = rng.integers(0, 255, (18, 22, 4), dtype=np.uint8)
        mode = "RGBA" if i % 2 else "L"
        Image.fromarray(arr if mode == "RGBA" else arr[..., 0], mode).save(folder / f"{i}.png")
    cfg = _cfg(folder)
    paths, labels, _, size = list_images(cfg.data, "train", 16)
    assert size == 16 and (labels == -1).all()
    (v0, v1), = list(stream_batches(paths, cfg, 0, 0, Dist(), size=size, workers=0))
    assert v0.shape == v1.shape == (12, 3, 16, 16)


def test_stream_pretrain_decodes_only_monitor_and_preview(tmp_path, monkeypatch):
    """Streaming never decodes the pretraining split in the main process: only the kNN sets and the 8 preview files."""
    folder = make_image_folder(tmp_path / "data")  # 36 train images
    out = tmp_path / "run"
    decoded: list[str] = []
    real = simclr.data.decode._decode_all

    def counting(paths, size, workers):
        decoded.extend(paths)
        return real(paths, size, workers)

    monkeypatch.setattr(simclr.data.decode, "_decode_all", counting)
    # seed split: 12 labeled images held out (10 bank, 2 queries), 24 pretraining images in 2 steps
    cfg = _cfg(folder, **{"out": str(out), "train.epochs": 1, "data.stream": True, "data.workers": 0, "data.split": "seed",
                          "data.n_labeled": 12, "optim.warmup_epochs": 0, "train.preview": True})
    pretrain(cfg, log=lambda *a: None)
    pre, bank, queries = pretraining_sets(cfg, cfg.train.seed, lambda *a: None)
    assert len(pre) == 24 and len(bank) == 10 and len(queries) == 2
    decoded_pre = [p for p in decoded if p in set(pre.paths)]
    # one pretrain run, then the check's own pretraining_sets call: the monitor sets twice, the preview once
    assert len(decoded) == 2 * (10 + 2) + 8, len(decoded)
    assert len(decoded_pre) == 8 and sorted(set(decoded) - set(decoded_pre)) == sorted(bank.paths + queries.paths)
    assert not list((tmp_path / "cache").rglob("*.pt"))  # no uint8 cache of the split was written
    assert (out / "plots" / "augment_preview.png").is_file()
    assert "knn_accuracy" in json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("split", ["standard", "seed"])
def test_stream_picks_the_in_memory_split(tmp_path, split):
    """The same folder and seed give the same pretraining files and the same (pixel-equal) kNN sets on both paths."""
    folder = make_image_folder(tmp_path / "data", size=20)
    over = {"data.split": split, "data.n_labeled": 10, "data.limit": 30}
    quiet = lambda *a: None  # noqa: E731
    mem = pretraining_sets(_cfg(folder, **over), 5, quiet)
    streamed = pretraining_sets(_cfg(folder, **over, **{"data.stream": True}), 5, quiet)
    assert streamed[0].paths == mem[0].paths and streamed[0].size == mem[0].images.shape[-1] == 16
    assert len(mem[0]) == (30 if split == "standard" else 20)
    for a, b in zip(mem[1:], streamed[1:]):
        assert a.paths == b.paths and torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)


def test_stream_monitor_sets_are_capped(tmp_path, monkeypatch):
    """On the streaming path the kNN bank and queries are a seeded subset of at most the cap; in memory, all of them."""
    folder = make_image_folder(tmp_path / "data")  # standard split, n_val 6: 30 bank and 6 query images
    monkeypatch.setattr("simclr.splits.STREAM_KNN_BANK", 5)
    monkeypatch.setattr("simclr.splits.STREAM_KNN_QUERIES", 3)
    quiet = lambda *a: None  # noqa: E731
    _, mem_bank, mem_queries = pretraining_sets(_cfg(folder), 0, quiet)
    assert len(mem_bank) == 30 and len(mem_queries) == 6
    cfg = _cfg(folder, **{"data.stream": True})
    _, bank, queries = pretraining_sets(cfg, 0, quiet)
    assert len(bank) == 5 and len(queries) == 3
    assert set(bank.paths) <= set(mem_bank.paths) and set(queries.paths) <= set(mem_queries.paths)
    again = pretraining_sets(cfg, 0, quiet)
    assert again[1].paths == bank.paths and again[2].paths == queries.paths  # deterministic for a seed

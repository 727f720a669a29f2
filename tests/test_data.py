"""Tests for simclr.data: folder layouts, odd image modes, unreadable files, the cache, torchvision sources,
limit and splits. Everything is generated under tmp_path; nothing here reads ../shared or the network."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.cifar
from PIL import Image

from simclr.config import DataConfig
from simclr.data import ImageData, load_split, split_labels
from simclr.data import decode as decode_mod
from simclr.errors import DataError

RED, GREEN, BLUE = (220, 20, 30), (20, 200, 40), (30, 40, 210)


class Log(list):
    def __call__(self, msg: str) -> None:
        self.append(msg)

    def count(self, word: str) -> int:  # type: ignore[override]
        return sum(word in m for m in self)


def cfg_for(name, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(name=str(name), cache_dir=str(tmp_path / "cache"), **kw)


def solid(path: Path, color=RED, size=(20, 20), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, fmt)
    return path


def write_odd_files(folder: Path) -> dict[str, Path]:
    """One file per odd case; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"rgb": solid(folder / "a_rgb.png", RED)}
    out["gray"] = solid(folder / "b_gray.png", 77, mode="L")
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, *GREEN] + [0] * (256 * 3 - 6))
    pal.save(folder / "c_pal.png")
    out["pal"] = folder / "c_pal.png"
    out["rgba_clear"] = solid(folder / "d_clear.png", (0, 0, 0, 0), mode="RGBA")
    out["rgba_opaque"] = solid(folder / "e_opaque.png", (*BLUE, 255), mode="RGBA")
    out["cmyk"] = solid(folder / "f_cmyk.jpg", (0, 255, 255, 0), mode="CMYK")
    i16 = np.full((20, 20), 65535, np.uint16)
    i16[:, 10:] = 32896  # 32896 / 257 = 128
    Image.fromarray(i16).save(folder / "g_i16.png")
    out["i16"] = folder / "g_i16.png"
    out["upper"] = solid(folder / "h_upper.JPG", BLUE, fmt="JPEG")
    out["webp"] = solid(folder / "i_img.webp", GREEN, fmt="WEBP")
    out["bmp"] = solid(folder / "j_img.bmp", RED)
    # Wide image: red | green | blue thirds-ish; the center square is all green with a 2 px margin.
    wide = np.zeros((20, 48, 3), np.uint8)
    wide[:, :12], wide[:, 12:36], wide[:, 36:] = RED, GREEN, BLUE
    Image.fromarray(wide).save(folder / "k_wide.png")
    out["wide"] = folder / "k_wide.png"
    # Unreadable files
    (folder / "x_zero.png").write_bytes(b"")
    (folder / "y_text.jpg").write_text("this is not an image")
    good = (folder / "h_upper.JPG").read_bytes()
    (folder / "z_trunc.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return out


BAD = {"x_zero.png", "y_text.jpg", "z_trunc.jpg"}


def by_name(d: ImageData) -> dict[str, np.ndarray]:
    assert d.paths is not None
    return {Path(p).name: d.images[i].permute(1, 2, 0).numpy() for i, p in enumerate(d.paths)}


def test_imagedata_len_and_subset():
    d = ImageData(torch.arange(5 * 12, dtype=torch.uint8).view(5, 3, 2, 2), torch.tensor([0, 1, -1, 1, 0]),
                  ["a", "b"], [f"p{i}" for i in range(5)])
    assert len(d) == 5
    s = d.subset(torch.tensor([3, 0]))
    assert len(s) == 2 and s.paths == ["p3", "p0"] and s.labels.tolist() == [1, 0]
    assert torch.equal(s.images[0], d.images[3]) and s.images.is_contiguous()
    m = d.subset(d.labels >= 0)
    assert m.labels.tolist() == [0, 1, 1, 0] and m.classes == ["a", "b"]
    assert d.subset([1]).paths == ["p1"]


def test_split_layout_modes_and_unreadable(tmp_path):
    root = tmp_path / "imgs"
    write_odd_files(root / "train" / "cat")
    solid(root / "train" / "dog" / "0.png", BLUE)
    solid(root / "test" / "cat" / "0.png", RED)
    solid(root / "test" / "dog" / "0.png", GREEN)
    log = Log()
    d = load_split(cfg_for(root, tmp_path), "train", image_size=16, log=log)
    assert d.images.dtype == torch.uint8 and d.images.shape == (12, 3, 16, 16) and d.images.is_contiguous()
    assert d.labels.dtype == torch.long and d.classes == ["cat", "dog"]
    assert d.labels.tolist() == [0] * 11 + [1]
    assert {Path(p).name for p in d.skipped} == BAD
    assert log.count("skipped 3 unreadable") == 1 and log.count("ignored 1 file") == 1
    px = by_name(d)
    assert (px["a_rgb.png"] == RED).all()
    assert (px["b_gray.png"] == 77).all()
    assert (px["c_pal.png"] == GREEN).all()
    assert (px["d_clear.png"] == 255).all()  # transparent -> white background
    assert (px["e_opaque.png"] == BLUE).all()
    assert (px["g_i16.png"][:, :7] == 255).all() and (px["g_i16.png"][:, 9:] == 128).all()
    assert (px["j_img.bmp"] == RED).all()
    assert (px["k_wide.png"] == GREEN).all()  # shorter side resized, then center crop
    with Image.open(root / "train" / "cat" / "f_cmyk.jpg") as im:
        want = np.asarray(im.convert("RGB").resize((16, 16)), dtype=float)
    assert np.abs(px["f_cmyk.jpg"].astype(float) - want).max() <= 3
    assert np.abs(px["h_upper.JPG"].astype(float) - BLUE).max() <= 8  # JPEG
    assert np.abs(px["i_img.webp"].astype(float) - GREEN).max() <= 8  # lossy WebP

    t = load_split(cfg_for(root, tmp_path), "test", image_size=16, log=Log())
    assert t.labels.tolist() == [0, 1] and t.classes == ["cat", "dog"] and t.skipped == []
    u = load_split(cfg_for(root, tmp_path), "unlabeled", image_size=16, log=Log())
    assert len(u) == 12 and (u.labels == -1).all() and u.from_cache  # reuses the train entry
    assert torch.equal(u.images, d.images)


def test_strict_makes_unreadable_files_an_error(tmp_path):
    root = tmp_path / "imgs"
    solid(root / "a" / "0.png")
    solid(root / "b" / "0.png")
    (root / "a" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="strict"):
        load_split(cfg_for(root, tmp_path, strict=True, test_fraction=0.5), "train", 16, log=Log())
    # also when the result comes from the cache
    load_split(cfg_for(root, tmp_path, test_fraction=0.5), "train", 16, log=Log())
    with pytest.raises(DataError, match="bad.png"):
        load_split(cfg_for(root, tmp_path, strict=True, test_fraction=0.5), "train", 16, log=Log())


def test_size_from_first_image_or_cache_size(tmp_path):
    root = tmp_path / "flat"
    solid(root / "0.png", size=(12, 10))
    solid(root / "1.png", size=(40, 40))
    d = load_split(cfg_for(root, tmp_path), "train", image_size=32, log=Log())
    assert d.images.shape == (2, 3, 10, 10)
    d = load_split(cfg_for(root, tmp_path, cache_size=8), "train", image_size=32, log=Log())
    assert d.images.shape == (2, 3, 8, 8)


def test_class_folders_fixed_test_split(tmp_path):
    root = tmp_path / "classes"
    for c, n in (("ant", 10), ("bee", 5), ("cow", 1)):
        for i in range(n):
            solid(root / c / f"{i}.png", (i * 20, 0, 0))
    cfg = cfg_for(root, tmp_path, test_fraction=0.2)
    tr = load_split(cfg, "train", 8, seed=0, log=Log())
    te = load_split(cfg, "test", 8, seed=0, log=Log())
    te2 = load_split(cfg_for(root, tmp_path / "other", test_fraction=0.2), "test", 8, seed=7, log=Log())
    assert te.paths == te2.paths  # independent of the run seed and of the cache
    assert set(tr.paths).isdisjoint(te.paths) and len(tr) + len(te) == 16
    assert te.labels.bincount(minlength=3).tolist() == [2, 1, 0]
    assert tr.classes == te.classes == ["ant", "bee", "cow"]


def test_flat_folder_is_unlabeled(tmp_path):
    root = tmp_path / "flat"
    for i in range(3):
        solid(root / f"{i}.jpg", RED)
    d = load_split(cfg_for(root, tmp_path), "train", 16, log=Log())
    assert len(d) == 3 and (d.labels == -1).all() and d.classes == []
    assert len(load_split(cfg_for(root, tmp_path), "unlabeled", 16, log=Log())) == 3
    with pytest.raises(DataError, match="class folders"):
        load_split(cfg_for(root, tmp_path), "test", 16, log=Log())
    assert split_labels(d.labels, DataConfig(), 0)["labeled_train"].numel() == 0


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(cfg_for(tmp_path / "nope", tmp_path), "train", 16, log=Log())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_split(cfg_for(tmp_path / "empty", tmp_path), "train", 16, log=Log())
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_split(cfg_for(tmp_path / "texts", tmp_path), "train", 16, log=Log())
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="could be read"):
        load_split(cfg_for(only_bad, tmp_path), "train", 16, log=Log())
    with pytest.raises(ValueError):
        load_split(cfg_for(tmp_path, tmp_path), "val", 16, log=Log())


def test_cache_hit_and_invalidation(tmp_path):
    root = tmp_path / "flat"
    for i in range(4):
        solid(root / f"{i}.png", (i * 50, 10, 10))
    cfg = cfg_for(root, tmp_path)
    first = load_split(cfg, "train", 16, log=Log())
    log = Log()
    second = load_split(cfg, "train", 16, log=log)
    assert not first.from_cache and second.from_cache and log.count("from cache") == 1
    assert torch.equal(first.images, second.images) and first.paths == second.paths
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    solid(root / "2.png", (255, 255, 255))
    os.utime(root / "2.png", ns=(1, 10**18))  # a distinct mtime even on coarse filesystems
    third = load_split(cfg, "train", 16, log=Log())
    assert not third.from_cache and (third.images[2] == 255).all()
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # the stale entry was replaced

    # A damaged cache file is rebuilt, not fatal.
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(b"junk")
    log = Log()
    fourth = load_split(cfg, "train", 16, log=log)
    assert not fourth.from_cache and log.count("unreadable") == 1
    assert torch.equal(fourth.images, third.images)
    assert load_split(cfg, "train", 16, log=Log()).from_cache


def test_process_pool_matches_sequential(tmp_path, monkeypatch):
    root = tmp_path / "flat"
    for i in range(9):
        solid(root / f"{i}.png", (i * 25, 255 - i * 25, 7))
    (root / "4b.png").write_bytes(b"")
    seq = load_split(cfg_for(root, tmp_path / "a"), "train", 8, log=Log())
    monkeypatch.setattr(decode_mod, "POOL_MIN_FILES", 1)
    monkeypatch.setattr(decode_mod, "cpu_count", lambda: 2)
    log = Log()
    par = load_split(cfg_for(root, tmp_path / "b"), "train", 8, log=log)
    assert log.count("2 processes") == 1
    assert torch.equal(seq.images, par.images) and seq.paths == par.paths and seq.skipped == par.skipped
    assert [Path(p).name for p in par.skipped] == ["4b.png"]


def test_limit(tmp_path):
    root = tmp_path / "classes"
    for c in ("a", "b"):
        for i in range(15):
            solid(root / c / f"{i}.png", (i, 0, 0), size=(4, 4))
    full = load_split(cfg_for(root, tmp_path), "train", 4, log=Log())
    lim = load_split(cfg_for(root, tmp_path, limit=5), "train", 4, seed=1, log=Log())
    again = load_split(cfg_for(root, tmp_path, limit=5), "train", 4, seed=1, log=Log())
    other = load_split(cfg_for(root, tmp_path, limit=5), "train", 4, seed=2, log=Log())
    assert len(lim) == 5 and lim.paths == again.paths and lim.paths != other.paths
    assert set(lim.paths) <= set(full.paths)
    t1 = load_split(cfg_for(root, tmp_path, limit=3), "test", 4, seed=1, log=Log())
    t2 = load_split(cfg_for(root, tmp_path, limit=3), "test", 4, seed=2, log=Log())
    assert len(t1) == 3 and t1.paths == t2.paths
    assert len(load_split(cfg_for(root, tmp_path, limit=1000), "train", 4, log=Log())) == len(full)


# ----------------------------------------------------------------------------------------------------------
# torchvision sources, with generated files in the official layouts


def write_fake_cifar10(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train_x, train_y = [], []
    for b in range(1, 6):
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B
        y = [(2 * b) % 10, (2 * b + 1) % 10]
        with open(base / f"data_batch_{b}", "wb") as f:
            pickle.dump({"data": x, "labels": y}, f)
        train_x.append(x)
        train_y += y
    test_x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    test_y = [3, 1, 4]
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": test_x, "labels": test_y}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return np.concatenate(train_x), train_y, test_x, test_y


@pytest.fixture
def no_md5(monkeypatch):
    """The generated files cannot match torchvision's MD5 sums: patch the check (in the test only)."""
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)


def test_cifar10_from_official_pickles(tmp_path, no_md5):
    train_x, train_y, test_x, test_y = write_fake_cifar10(tmp_path / "data")
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), download=False)
    tr = load_split(cfg, "train", 32, log=Log())
    assert tr.images.shape == (10, 3, 32, 32) and tr.images.dtype == torch.uint8 and tr.images.is_contiguous()
    assert torch.equal(tr.images, torch.from_numpy(train_x).view(10, 3, 32, 32))
    assert tr.labels.tolist() == train_y and tr.classes[0] == "airplane" and tr.paths is None
    te = load_split(cfg, "test", 32, log=Log())
    assert torch.equal(te.images, torch.from_numpy(test_x).view(3, 3, 32, 32)) and te.labels.tolist() == test_y
    assert load_split(cfg, "train", 32, log=Log()).from_cache
    small = load_split(cfg, "train", 16, log=Log())
    assert small.images.shape == (10, 3, 16, 16)
    for i in (0, 9):  # same filter as PIL's antialiased bilinear resize
        pil = Image.fromarray(tr.images[i].permute(1, 2, 0).numpy()).resize((16, 16), Image.Resampling.BILINEAR)
        assert (small.images[i].permute(1, 2, 0).float() - torch.from_numpy(np.array(pil)).float()).abs().max() <= 1
    unl = load_split(cfg, "unlabeled", 32, log=Log())
    assert len(unl) == 10 and (unl.labels == -1).all()


def test_cifar10_missing_without_download(tmp_path):
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"), download=False)
    with pytest.raises(DataError) as e:
        load_split(cfg, "train", 32, log=Log())
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "cifar-10-python.tar.gz" in msg and "https://" in msg


def test_cifar100_download_failure_is_a_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    cfg = DataConfig(name="cifar100", root=str(tmp_path / "d"), cache_dir=str(tmp_path / "c"), download=True)
    with pytest.raises(DataError, match="cifar-100-python.tar.gz") as e:
        load_split(cfg, "test", 32, log=Log())
    assert "network is unreachable" in str(e.value) and str(tmp_path / "d") in str(e.value)


def test_stl10_binary_layout(tmp_path, no_md5):
    base = tmp_path / "data" / "stl10_binary"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    imgs = {k: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for k, n in (("train", 2), ("test", 2),
                                                                                  ("unlabeled", 3))}
    for k, x in imgs.items():
        x.transpose(0, 1, 3, 2).tofile(base / f"{k}_X.bin")  # the binary files are column-major
    np.array([1, 10], np.uint8).tofile(base / "train_y.bin")  # 1-based labels
    np.array([2, 3], np.uint8).tofile(base / "test_y.bin")
    cfg = DataConfig(name="stl10", root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"), download=False)
    tr = load_split(cfg, "train", 96, log=Log())
    assert torch.equal(tr.images, torch.from_numpy(imgs["train"])) and tr.labels.tolist() == [0, 9]
    assert tr.classes[2] == "car"
    un = load_split(cfg, "unlabeled", 32, log=Log())
    assert un.images.shape == (3, 3, 32, 32) and (un.labels == -1).all()


# ----------------------------------------------------------------------------------------------------------
# split_labels


def fake_data(n: int, n_classes: int = 10, unlabeled: int = 0) -> ImageData:
    labels = torch.cat([torch.arange(n) % n_classes, torch.full((unlabeled,), -1)])
    return ImageData(torch.zeros(n + unlabeled, 3, 2, 2, dtype=torch.uint8), labels,
                     [str(i) for i in range(n_classes)])


def test_standard_splits():
    d = fake_data(1000, unlabeled=50)
    s = split_labels(d.labels, DataConfig(split="standard", n_val=150), seed=3)
    assert torch.equal(s["pretrain"], torch.arange(1050))
    assert len(s["labeled_val"]) == 150 and len(s["labeled_train"]) == 850
    assert set(s["labeled_val"].tolist()).isdisjoint(s["labeled_train"].tolist())
    assert set(s["labeled_val"].tolist()) | set(s["labeled_train"].tolist()) == set(range(1000))
    again = split_labels(d.labels, DataConfig(split="standard", n_val=150), seed=3)
    other = split_labels(d.labels, DataConfig(split="standard", n_val=150), seed=4)
    assert all(torch.equal(s[k], again[k]) for k in s) and not torch.equal(s["labeled_val"], other["labeled_val"])
    assert all(v.dtype == torch.long for v in s.values())
    small = split_labels(fake_data(20).labels, DataConfig(n_val=1500), seed=0)
    assert len(small["labeled_val"]) == 4 and len(small["labeled_train"]) == 16  # n_val <= 20 % of labeled


def test_seed_splits():
    d = fake_data(1000)
    cfg = DataConfig(split="seed", n_labeled=250, n_val=50)
    s = split_labels(d.labels, cfg, seed=0)
    val, lab, pre = (set(s[k].tolist()) for k in ("labeled_val", "labeled_train", "pretrain"))
    assert len(val) == 50 and len(lab) == 200 and len(pre) == 750
    assert val.isdisjoint(lab) and pre.isdisjoint(val | lab) and pre | val | lab == set(range(1000))
    assert all(torch.equal(s[k], split_labels(d.labels, cfg, seed=0)[k]) for k in s)
    tiny = split_labels(fake_data(40).labels, DataConfig(split="seed", n_labeled=8000, n_val=1500), seed=0)
    assert len(tiny["pretrain"]) == 20 and len(tiny["labeled_val"]) == 4 and len(tiny["labeled_train"]) == 16


def test_splits_need_two_classes_and_handle_unlabeled():
    with pytest.raises(DataError, match="2 classes"):
        split_labels(fake_data(10, n_classes=1).labels, DataConfig(), seed=0)
    s = split_labels(fake_data(0, unlabeled=7).labels, DataConfig(split="seed"), seed=0)
    assert torch.equal(s["pretrain"], torch.arange(7)) and s["labeled_val"].numel() == 0

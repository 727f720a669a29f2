"""Tests for simclr.augment: parameters, determinism, DDP slicing, agreement with torchvision."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from simclr.augment import (
    apply_geometric,
    apply_params,
    apply_photometric,
    batch_generator,
    blur_kernel_size,
    eval_transform,
    sample_params,
    save_preview,
    simclr_views,
)
from simclr.config import AugmentConfig

KEYS = {
    "crop",
    "flip",
    "jitter",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "order",
    "gray",
    "blur",
    "sigma",
}


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency colour images (closer to photos than noise) as uint8 [n, 3, size, size]."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    freq = 1 + 2 * torch.rand(n, 3, 2, generator=g)
    phase = 6.28 * torch.rand(n, 3, 1, 1, generator=g)
    arg = freq[..., 0, None, None] * 3.0 * xx + freq[..., 1, None, None] * 2.0 * yy + phase
    return ((0.5 + 0.45 * torch.sin(arg)) * 255).round().to(torch.uint8)


def _identity_params(n: int, size: int) -> dict[str, torch.Tensor]:
    """Parameters that change nothing (full crop, every op off), to switch single ops on in tests."""
    return {
        "crop": torch.tensor([[0, 0, size, size]] * n, dtype=torch.int64),
        "flip": torch.zeros(n, dtype=torch.bool),
        "jitter": torch.zeros(n, dtype=torch.bool),
        "brightness": torch.ones(n),
        "contrast": torch.ones(n),
        "saturation": torch.ones(n),
        "hue": torch.zeros(n),
        "order": torch.arange(4).repeat(n, 1),
        "gray": torch.zeros(n, dtype=torch.bool),
        "blur": torch.zeros(n, dtype=torch.bool),
        "sigma": torch.ones(n),
    }


def _normalize(x01: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    return TF.normalize(x01, list(cfg.mean), list(cfg.std))


def _denormalize(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return x * std + mean


def _tv_jitter(x: torch.Tensor, params: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Reference: torchvision's ColorJitter ops on one float image, in the sample's order."""
    ops = [
        lambda y: TF.adjust_brightness(y, float(params["brightness"][k])),
        lambda y: TF.adjust_contrast(y, float(params["contrast"][k])),
        lambda y: TF.adjust_saturation(y, float(params["saturation"][k])),
        lambda y: TF.adjust_hue(y, float(params["hue"][k])),
    ]
    for op in params["order"][k].tolist():
        x = ops[op](x)
    return x


# ---------------------------------------------------------------------------------------------- parameters


def test_sample_params_shapes_dtypes_and_ranges():
    cfg = AugmentConfig(jitter_strength=1.0, blur_p=0.5, blur_sigma=(0.2, 1.5))
    n, size = 2000, 32
    p = sample_params(n, size, 32, cfg, torch.Generator().manual_seed(0))
    assert set(p) == KEYS
    for key, value in p.items():
        assert value.shape[0] == n, key
        assert value.device.type == "cpu", key
    assert p["crop"].shape == (n, 4) and p["crop"].dtype == torch.int64
    top, left, h, w = p["crop"].unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= size).all() and (left + w <= size).all()
    for key in ("flip", "jitter", "gray", "blur"):
        assert p[key].dtype == torch.bool
    for key in ("brightness", "contrast", "saturation"):
        assert p[key].dtype == torch.float32
        assert p[key].min() >= 0.2 - 1e-6 and p[key].max() <= 1.8 + 1e-6
        assert p[key].min() < 0.3 and p[key].max() > 1.7  # the whole range is used
    assert p["hue"].abs().max() <= 0.2 + 1e-6 and p["hue"].min() < -0.18 and p["hue"].max() > 0.18
    assert p["sigma"].min() >= 0.2 - 1e-6 and p["sigma"].max() <= 1.5 + 1e-6
    assert p["order"].shape == (n, 4)
    assert torch.equal(p["order"].sort(dim=1).values, torch.arange(4).expand(n, 4))


def test_factor_lower_bound_is_clamped_at_zero_and_hue_at_half_turn():
    p = sample_params(500, 16, 16, AugmentConfig(jitter_strength=3.0), torch.Generator().manual_seed(1))
    assert p["brightness"].min() >= 0.0 and p["brightness"].max() <= 3.4 + 1e-6
    assert p["hue"].abs().max() <= 0.5


def test_crop_boxes_respect_scale_and_ratio():
    cfg = AugmentConfig(scale=(0.2, 0.6), ratio=(0.5, 2.0))
    size = 40
    p = sample_params(3000, size, 32, cfg, torch.Generator().manual_seed(2))
    _, _, h, w = p["crop"].double().unbind(1)
    # Side lengths are rounded to whole pixels, hence the half-pixel slack.
    area = size * size
    assert ((w - 0.5) * (h - 0.5) <= 0.6 * area + 1e-9).all()
    assert ((w + 0.5) * (h + 0.5) >= 0.2 * area - 1e-9).all()
    assert ((w + 0.5) / (h - 0.5) >= 0.5).all() and ((w - 0.5) / (h + 0.5) <= 2.0).all()


@pytest.mark.parametrize(
    ("ratio", "expect_hw"),
    # ratio above / below 1: the fallback takes the nearest allowed ratio; 1 in range: the whole image
    [((2.0, 3.0), (8, 16)), ((0.25, 0.5), (16, 8)), ((0.5, 2.0), (16, 16))],
)
def test_crop_falls_back_to_centre_crop(ratio, expect_hw):
    size = 16
    # scale (1, 1) with a non-square ratio does not fit a square source, so the 10 tries fail
    # (for ratio (0.5, 2) only mostly; the tries that succeed give the whole image as well).
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=ratio)
    p = sample_params(50, size, 16, cfg, torch.Generator().manual_seed(3))
    h, w = expect_hw
    expected = torch.tensor([(size - h) // 2, (size - w) // 2, h, w])
    assert torch.equal(p["crop"], expected.expand(50, 4))


def test_crop_distribution_matches_torchvision():
    """Same box distribution as RandomResizedCrop.get_params, including its 10-try fallback."""
    size, n = 12, 3000
    cfg = AugmentConfig(scale=(0.3, 1.0), ratio=(0.4, 2.5))
    ours = sample_params(n, size, size, cfg, torch.Generator().manual_seed(4))["crop"].double()
    torch.manual_seed(4)
    dummy = torch.zeros(3, size, size)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(dummy, list(cfg.scale), list(cfg.ratio)) for _ in range(n)],
        dtype=torch.float64,
    )
    for col in range(4):  # top, left, height, width
        assert abs(ours[:, col].mean() - ref[:, col].mean()) < 0.25, col
        assert abs(ours[:, col].std() - ref[:, col].std()) < 0.25, col
    full = lambda c: ((c[:, 2] == size) & (c[:, 3] == size)).double().mean()  # noqa: E731
    assert abs(full(ours) - full(ref)) < 0.03


def test_probabilities_are_roughly_right():
    cfg = AugmentConfig(hflip=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.3)
    n = 20000
    p = sample_params(n, 32, 32, cfg, torch.Generator().manual_seed(5))
    tol = 0.02  # > 5 standard errors for n = 20000
    assert abs(p["flip"].double().mean() - 0.5) < tol
    assert abs(p["jitter"].double().mean() - 0.8) < tol
    assert abs(p["gray"].double().mean() - 0.2) < tol
    assert abs(p["blur"].double().mean() - 0.3) < tol
    for pos, op in itertools.product(range(4), range(4)):
        assert abs((p["order"][:, pos] == op).double().mean() - 0.25) < tol
    perms = {tuple(r) for r in p["order"].tolist()}
    assert len(perms) == 24
    # flags are drawn independently of each other
    both = (p["flip"] & p["gray"]).double().mean()
    assert abs(both - p["flip"].double().mean() * p["gray"].double().mean()) < tol
    off = sample_params(
        1000, 32, 32, AugmentConfig(hflip=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0), batch_generator(0, 0, 0)
    )
    assert not (off["flip"].any() or off["jitter"].any() or off["gray"].any() or off["blur"].any())


def test_per_sample_independence():
    """One batch of identical images: every row gets its own crop, factors and view."""
    cfg = AugmentConfig()
    p = sample_params(64, 32, 32, cfg, batch_generator(0, 0, 0))
    assert len({tuple(r) for r in p["crop"].tolist()}) > 50
    for key in ("brightness", "contrast", "saturation", "hue", "sigma"):
        assert p[key].unique().numel() == 64, key
    images = _images(1, 32).expand(16, 3, 32, 32).contiguous()
    v0, v1 = simclr_views(images, cfg, 32, seed=0, epoch=0, step=0)
    for v in (v0, v1):
        flat = v.flatten(1)
        dist = torch.cdist(flat, flat)
        assert (dist + torch.eye(16) * 1e9).min() > 1e-3  # no two rows equal
    assert not torch.allclose(v0, v1)


# ---------------------------------------------------------------------------------------- determinism, DDP


def test_batch_generator_is_deterministic_and_distinct():
    def draw(*args):
        return torch.rand(4, generator=batch_generator(*args))

    g = batch_generator(1, 2, 3)
    assert isinstance(g, torch.Generator) and g.device.type == "cpu"
    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    seen = [
        draw(*args)
        for args in [(1, 2, 3), (1, 2, 4), (1, 3, 3), (2, 2, 3), (0, 0, 0), (12, 3, 0), (1, 23, 0)]
    ]
    for a, b in itertools.combinations(seen, 2):
        assert not torch.equal(a, b)


def test_views_are_deterministic_from_seed_epoch_step():
    cfg = AugmentConfig(blur_p=0.5)
    images = _images(8, 32)
    a = simclr_views(images, cfg, 32, seed=3, epoch=1, step=7)
    b = simclr_views(images, cfg, 32, seed=3, epoch=1, step=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for other in [(4, 1, 7), (3, 2, 7), (3, 1, 8)]:
        c = simclr_views(images, cfg, 32, *other)
        assert not torch.allclose(a[0], c[0])


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_slices_equal_rows_of_the_global_batch(world):
    cfg = AugmentConfig(blur_p=0.5, jitter_strength=1.0)
    per_rank, size = 4, 16
    images = _images(world * per_rank, size, seed=6)
    full0, full1 = simclr_views(images, cfg, size, seed=0, epoch=2, step=5)
    for rank in range(world):
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        v0, v1 = simclr_views(
            images[rows],
            cfg,
            size,
            seed=0,
            epoch=2,
            step=5,
            global_batch=world * per_rank,
            offset=rank * per_rank,
        )
        torch.testing.assert_close(v0, full0[rows], atol=1e-6, rtol=0)
        torch.testing.assert_close(v1, full1[rows], atol=1e-6, rtol=0)


def test_bad_offset_and_non_square_are_rejected():
    with pytest.raises(ValueError):
        simclr_views(_images(4, 8), AugmentConfig(), 8, 0, 0, 0, global_batch=6, offset=4)
    with pytest.raises(ValueError):
        simclr_views(torch.zeros(2, 3, 8, 10, dtype=torch.uint8), AugmentConfig(), 8, 0, 0, 0)


# -------------------------------------------------------------------------------------- outputs and ranges


@pytest.mark.parametrize(("src", "out"), [(32, 32), (48, 24), (20, 28)])
def test_output_shapes_dtypes_and_ranges(src, out):
    cfg = AugmentConfig(blur_p=0.5, jitter_strength=1.0)
    images = _images(10, src, seed=7)
    with torch.no_grad():
        v0, v1 = simclr_views(images, cfg, out, seed=0, epoch=0, step=0)
    for v in (v0, v1):
        assert v.shape == (10, 3, out, out) and v.dtype == torch.float32
        assert torch.isfinite(v).all()
        x01 = _denormalize(v, cfg)
        assert x01.min() >= -1e-5 and x01.max() <= 1 + 1e-5
    p = sample_params(10, src, out, cfg, batch_generator(0, 0, 1))
    geo = apply_geometric(images, p, out)
    assert geo.shape == (10, 3, out, out) and geo.dtype == torch.float32
    assert geo.min() >= 0 and geo.max() <= 1
    ev = eval_transform(images, out, cfg.mean, cfg.std)
    assert ev.shape == (10, 3, out, out) and ev.dtype == torch.float32


def test_apply_params_is_photometric_of_geometric_and_input_is_untouched():
    cfg = AugmentConfig(blur_p=0.5)
    images = _images(12, 24, seed=8)
    before = images.clone()
    p = sample_params(12, 24, 16, cfg, batch_generator(1, 0, 0))
    geo = apply_geometric(images, p, 16)
    geo_before = geo.clone()
    out = apply_photometric(geo, p, cfg)
    assert torch.equal(geo, geo_before) and torch.equal(images, before)
    torch.testing.assert_close(apply_params(images, p, 16, cfg), out, atol=0, rtol=0)
    # only in-place-style ops (no jitter): the input must still be left alone
    q = _identity_params(12, 24)
    q["gray"][::2] = True
    q["blur"][1::3] = True
    x = geo_before.clone()
    apply_photometric(x, q, cfg)
    assert torch.equal(x, geo_before)


# ---------------------------------------------------------------------------------- agreement: torchvision


@pytest.mark.parametrize(
    ("key", "values", "tv"),
    [
        ("brightness", [0.0, 0.3, 1.0, 1.7, 2.5], TF.adjust_brightness),
        ("contrast", [0.0, 0.4, 1.0, 1.6, 2.5], TF.adjust_contrast),
        ("saturation", [0.0, 0.5, 1.0, 1.5, 3.0], TF.adjust_saturation),
        ("hue", [-0.5, -0.2, 0.05, 0.3, 0.5], TF.adjust_hue),
    ],
)
def test_single_colour_op_matches_torchvision(key, values, tv):
    cfg = AugmentConfig()
    n, size = len(values), 16
    images = _images(n, size, seed=9)
    images[0] = images[0, :1]  # a grey image (zero chroma everywhere)
    x01 = images.float() / 255
    p = _identity_params(n, size)
    p["jitter"][:] = True
    p[key] = torch.tensor(values, dtype=torch.float32)
    p["order"] = torch.stack(
        [torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    )
    out = apply_params(images, p, size, cfg)
    ref = torch.stack([tv(x01[k], values[k]) for k in range(n)])
    torch.testing.assert_close(out, _normalize(ref, cfg), atol=2e-5, rtol=0)


def test_random_order_gray_and_blur_match_torchvision_pipeline():
    cfg = AugmentConfig(jitter_strength=1.0, jitter_p=0.8, gray_p=0.3, blur_p=0.5, blur_sigma=(0.3, 2.0))
    n, size = 24, 20
    images = _smooth_images(n, size, seed=10)
    p = sample_params(n, size, size, cfg, batch_generator(5, 0, 0))
    p["crop"] = _identity_params(n, size)["crop"]
    p["flip"][:] = False
    out = apply_params(images, p, size, cfg)
    k = blur_kernel_size(size)
    refs = []
    for i in range(n):  # per-image reference, the way torchvision's transforms would run
        x = images[i].float() / 255
        if p["jitter"][i]:
            x = _tv_jitter(x, p, i)
        if p["gray"][i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if p["blur"][i]:
            s = float(p["sigma"][i])
            x = TF.gaussian_blur(x, [k, k], [s, s])
        refs.append(x)
    torch.testing.assert_close(out, _normalize(torch.stack(refs), cfg), atol=3e-5, rtol=0)
    assert p["jitter"].sum() >= 12 and p["gray"].any() and p["blur"].any()


def test_grayscale_and_blur_alone_match_torchvision():
    cfg = AugmentConfig()
    n, size = 4, 32
    images = _images(n, size, seed=11)
    x01 = images.float() / 255
    p = _identity_params(n, size)
    p["gray"][:] = True
    ref = TF.rgb_to_grayscale(x01, num_output_channels=3)
    torch.testing.assert_close(apply_params(images, p, size, cfg), _normalize(ref, cfg), atol=1e-5, rtol=0)
    p = _identity_params(n, size)
    p["blur"][:] = True
    p["sigma"] = torch.tensor([0.1, 0.7, 1.3, 2.0])
    k = blur_kernel_size(size)
    ref = torch.stack([TF.gaussian_blur(x01[i], [k, k], [float(p["sigma"][i])] * 2) for i in range(n)])
    torch.testing.assert_close(apply_params(images, p, size, cfg), _normalize(ref, cfg), atol=1e-5, rtol=0)


def test_blur_kernel_size():
    assert blur_kernel_size(32) == 3
    assert blur_kernel_size(96) == 9
    assert blur_kernel_size(224) == 23
    assert all(blur_kernel_size(s) % 2 == 1 for s in range(8, 300))


def test_identity_geometry_is_exact_and_flip_matches_hflip():
    size = 16
    images = _images(3, size, seed=12)
    p = _identity_params(3, size)
    torch.testing.assert_close(apply_geometric(images, p, size), images.float() / 255, atol=1e-6, rtol=0)
    p["flip"][1] = True
    out = apply_geometric(images, p, size)
    torch.testing.assert_close(out[1], TF.hflip(images[1].float() / 255), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0], images[0].float() / 255, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("src", "out"), [(32, 32), (24, 40), (48, 32)])
def test_enlarging_crops_match_torchvision_resized_crop(src, out):
    """Boxes smaller than the output: bilinear like TF.resized_crop (+ hflip), away from the crop border.

    Near the border we read the neighbouring source pixels where torchvision repeats the edge pixel,
    so the outermost ceil(out / (2 * side)) output pixels may differ.
    """
    n = 40
    images = _images(n, src, seed=13)
    cfg = AugmentConfig(scale=(0.05, min(1.0, (out / src) ** 2 * 0.7)))
    p = sample_params(n, src, out, cfg, batch_generator(2, 0, 0))
    keep = (p["crop"][:, 2] <= out) & (p["crop"][:, 3] <= out)
    assert keep.sum() >= n // 2
    got = apply_geometric(images, p, out)
    checked = 0
    for k in keep.nonzero().flatten().tolist():
        top, left, h, w = p["crop"][k].tolist()
        ref = TF.resized_crop(images[k].float() / 255, top, left, h, w, [out, out], antialias=True)
        if p["flip"][k]:
            ref = TF.hflip(ref)
        my, mx = math.ceil(out / (2 * h)), math.ceil(out / (2 * w))
        inner = (slice(None), slice(my, out - my), slice(mx, out - mx))
        torch.testing.assert_close(got[k][inner], ref[inner], atol=2e-5, rtol=0)
        checked += 1
    assert checked >= n // 2


def test_crops_match_torchvision_on_smooth_images_including_shrinking():
    """Whole images, also boxes larger than the output (antialiasing): close on photo-like content."""
    n, src, out = 40, 64, 24
    images = _smooth_images(n, src, seed=14)
    p = sample_params(n, src, out, AugmentConfig(scale=(0.02, 1.0)), batch_generator(3, 0, 0))
    assert (p["crop"][:, 3] > out).any() and (p["crop"][:, 3] < out).any()
    got = apply_geometric(images, p, out)
    for k in range(n):
        top, left, h, w = p["crop"][k].tolist()
        ref = TF.resized_crop(images[k].float() / 255, top, left, h, w, [out, out], antialias=True)
        if p["flip"][k]:
            ref = TF.hflip(ref)
        assert (got[k] - ref).abs().mean() < 0.01
        assert (got[k] - ref).abs().max() < 0.06


def test_eval_transform_matches_torchvision():
    cfg = AugmentConfig()
    images = _images(3, 40, seed=15)
    x01 = images.float() / 255
    ref = _normalize(TF.resize(x01, [24, 24], antialias=True), cfg)
    torch.testing.assert_close(eval_transform(images, 24, cfg.mean, cfg.std), ref, atol=1e-5, rtol=0)
    same = eval_transform(images, 40, cfg.mean, cfg.std)
    torch.testing.assert_close(same, _normalize(x01, cfg), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------- preview, GPU


def test_save_preview_writes_a_png_grid(tmp_path):
    cfg = AugmentConfig()
    images = _images(2, 16)
    path = save_preview(images, cfg, 16, tmp_path / "plots" / "augment_preview.png", seed=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.mode == "RGB"
        grid = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    # 2 rows x 3 columns of 16 px cells enlarged to 96 px, with a 4 px margin around every cell
    assert grid.shape == (3, 2 * 100 + 4, 3 * 100 + 4)
    for row in range(2):
        original = grid[:, 4 + row * 100 : 100 + row * 100 : 6, 4:100:6]  # first column, one px per source px
        assert (original.int() - images[row].int()).abs().max() <= 1
    views = grid[:, 4:100, 104:]
    assert not torch.equal(views[:, :, :96], views[:, :, 100:196])  # two different views


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_views_match_cpu_views():
    cfg = AugmentConfig(blur_p=0.5)
    images = _images(16, 32, seed=16)
    cpu = simclr_views(images, cfg, 32, seed=0, epoch=0, step=0)
    gpu = simclr_views(images.cuda(), cfg, 32, seed=0, epoch=0, step=0)
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=0)

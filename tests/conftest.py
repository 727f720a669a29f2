"""Shared fixtures: tiny generated datasets (tests never use the network or ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one core a worker, for the processes its tests start too
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
os.environ.setdefault("SIMCLR_CACHE", str(Path(__file__).resolve().parent / ".." / ".pytest_cache" / "simclr-cache"))


def make_image_folder(root: Path, n_per_class: int = 12, n_test_per_class: int = 4, size: int = 16, classes=("a", "b", "c"), seed: int = 0) -> Path:
    """``root/{train,test}/<class>/*.png``: each class a distinct colour tint plus noise, so features can separate them."""
    rng = np.random.default_rng(seed)
    tints = rng.uniform(40, 215, size=(len(classes), 3))
    for split, n in (("train", n_per_class), ("test", n_test_per_class)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(tints[c] + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own tensor cache and data root."""
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / "cache"))

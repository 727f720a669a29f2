"""runtime: process-wide speed settings (CPU memory reuse) do what they say and are applied by pretraining."""

import ctypes.util
import gc
import os

import pytest
import torch

from simclr import runtime, train
from simclr.config import load_config
from simclr.runtime import reuse_freed_memory

GLIBC = os.path.exists("/proc/self/statm") and (ctypes.util.find_library("c") or "").startswith("libc.so")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _alloc_touch_free() -> tuple[float, float]:
    """RSS (MiB) with a 64 MiB tensor alive, then after freeing it."""
    x = torch.ones(64 * 2**20 // 4)  # written, so every page is resident
    alive = _rss_mb()
    del x
    gc.collect()
    return alive, _rss_mb()


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt (Linux)")
def test_reuse_freed_memory_keeps_large_blocks_and_restores_glibc_defaults():
    try:
        assert reuse_freed_memory(True)
        alive, freed = _alloc_touch_free()
        assert freed > alive - 16, (alive, freed)  # kept in the process for the next step
    finally:
        assert reuse_freed_memory(False)
    alive, freed = _alloc_touch_free()
    assert freed < alive - 48, (alive, freed)  # glibc's default: a fresh mmap, returned on free


def test_pretraining_applies_the_device_settings(tiny_folder, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "configure_device", lambda device, reuse: calls.append((device.type, reuse)))
    over = {"data.name": str(tiny_folder), "model.image_size": 16, "model.proj_hidden": [16], "model.proj_dim": 8,
            "train.batch_size": 12, "train.epochs": 1, "train.knn_every": 0, "train.progress": False,
            "train.preview": False, "data.n_val": 6, "train.device": "cpu"}
    for reuse in (True, False):
        train.pretrain(load_config(None, {**over, "out": str(tmp_path / f"r{reuse}"), "train.reuse_memory": reuse}))
    assert calls == [("cpu", True), ("cpu", False)]


def test_configure_device_on_cpu_touches_only_the_allocator(monkeypatch):
    seen = []
    monkeypatch.setattr(runtime, "reuse_freed_memory", lambda enable=True: seen.append(enable) or True)
    before = torch.backends.cudnn.benchmark
    runtime.configure_device(torch.device("cpu"), reuse_memory=True)
    runtime.configure_device(torch.device("cpu"), reuse_memory=False)
    assert seen == [True] and torch.backends.cudnn.benchmark == before

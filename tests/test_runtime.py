"""runtime: process-wide speed settings (CPU memory reuse) do what they say and are applied by pretraining."""

import ctypes.util
import json
import os
import subprocess
import sys

import pytest
import torch

from simclr import runtime, train
from simclr.config import load_config

GLIBC = os.path.exists("/proc/self/statm") and (ctypes.util.find_library("c") or "").startswith("libc.so")


# Run in a fresh interpreter: earlier tests in this process leave freed memory in the heap (pretraining turns reuse
# on), and a block taken from that free memory would neither grow nor shrink the resident set.
_PROBE = """
import gc, json, os, torch
from simclr.runtime import reuse_freed_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def alloc_touch_free(mib):
    x = torch.ones(mib * 2**20 // 4)  # written, so every page is resident
    alive = rss_mb()
    del x
    gc.collect()
    return alive, rss_mb()

out = {"on": reuse_freed_memory(True)}
out["reuse"] = alloc_touch_free(64)
out["off"] = reuse_freed_memory(False)
# larger than the 64 MiB now free in the heap, so it cannot be served from there: glibc must map it afresh
out["default"] = alloc_touch_free(256)
print(json.dumps(out))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt (Linux)")
def test_reuse_freed_memory_keeps_large_blocks_and_restores_glibc_defaults():
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["on"] and out["off"]
    alive, freed = out["reuse"]
    assert freed > alive - 16, (alive, freed)  # kept in the process for the next step
    alive, freed = out["default"]
    assert freed < alive - 48, (alive, freed)  # glibc's default: a fresh mmap, returned on free


def test_pretraining_applies_the_device_settings(tiny_folder, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "configure_device", lambda device, reuse, deterministic=False: calls.append((device.type, reuse)))
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

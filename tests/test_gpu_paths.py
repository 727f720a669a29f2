"""The CUDA paths' promises that a CPU can check: no host-device copy or tensor from Python data inside a training
step, one parameter copy per view, device selection errors, the memory checks before decoding, the deterministic
setting. What only a GPU can show (the sync debug mode, SyncBatchNorm vs GlobalBatchNorm, bitwise resume on CUDA)
is run by benchmarks/gpu_checks.py from benchmarks/gpu.sh."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from simclr import augment
from simclr.cli import main
from simclr.config import AugmentConfig, load_config
from simclr.errors import ConfigError, DataError
from simclr.models import build_model
from simclr.optim import Schedule, build_optimizer
from simclr.runtime import Dist, configure_device, init_distributed, resolve_device
from simclr.train import TrainState, device_batches, pretrain, train_one_epoch


def _images(n: int = 24, size: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class _HostToDevice(TorchDispatchMode):
    """Counts the operations that read a CPU tensor and produce a tensor on another device (host-to-device copies)."""

    def __init__(self):
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outputs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        if any(t.device.type == "cpu" for t in inputs) and any(o.device.type != "cpu" for o in outputs):
            self.copies.append(str(func))
        return out


def test_views_take_one_host_to_device_copy_each():
    # The meta device stands in for a GPU: every operation runs (shapes only) and a copy from the CPU is visible.
    images = _images().to("meta")
    cfg = AugmentConfig(jitter_p=1.0, gray_p=0.5, blur_p=0.5)  # every photometric operation has rows
    with _HostToDevice() as mode:
        v0, v1 = augment.simclr_views(images, cfg, 16, seed=0, epoch=0, step=0)
    assert v0.device.type == "meta" and v0.shape == (24, 3, 16, 16)
    assert len(mode.copies) == 2, mode.copies  # one per view, not one per parameter tensor


def test_send_all_round_trips_every_dtype():
    tensors = [torch.arange(5, dtype=torch.int64).view(5, 1), torch.tensor([True, False, True]), torch.rand(2, 3),
               torch.empty(0, dtype=torch.int64), torch.rand(1, 3, 1, 1, dtype=torch.float64)]
    out = augment._send_all(tensors, torch.device("meta"))
    assert [(o.dtype, o.shape, o.device.type) for o in out] == [(t.dtype, t.shape, "meta") for t in tensors]


def test_training_step_creates_no_tensor_from_python_data(monkeypatch):
    cfg = load_config(None, {"model.image_size": 16, "model.proj_hidden": [16], "model.proj_dim": 8, "train.batch_size": 8,
                             "train.epochs": 2, "train.progress": False, "augment.jitter_p": 1.0, "augment.blur_p": 0.5})
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optim, model, 8)
    schedule = Schedule(optimizer, cfg.optim, 8, 3, 2)
    images, state, rt = _images(), TrainState(), Dist()

    def epoch() -> None:
        train_one_epoch(model, optimizer, schedule, device_batches(images, cfg, state.epoch, 0, rt), 3, cfg, state, rt,
                        "fp32", log=lambda *a: None)
        state.epoch, state.step_in_epoch = state.epoch + 1, 0

    epoch()  # first use fills the caches of constant tensors (normalisation)
    made: list[str] = []

    def spy(name):
        real = getattr(torch, name)

        def wrapper(*args, **kwargs):
            made.append(name)
            return real(*args, **kwargs)
        return wrapper

    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, spy(name))
    before = state.global_step
    epoch()
    assert state.global_step == before + 3
    assert made == [], made



@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as if the machine had 2 GPUs; returns the list of devices passed to torch.cuda.set_device."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    return current


def test_cuda_device_is_made_current(two_gpus):
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 1)]


def test_cuda_index_beyond_the_gpus_exits_2(two_gpus, tiny_folder, tmp_path, capsys):
    with pytest.raises(ConfigError, match="2 CUDA GPU"):
        resolve_device("cuda:2")
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--device", "cuda:5"])
    assert rc == 2 and "cuda:5" in capsys.readouterr().err
    assert two_gpus == []


def test_explicit_cuda_index_under_torchrun_exits_2(two_gpus, monkeypatch, tiny_folder, tmp_path, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        init_distributed("cuda:0")
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--device", "cuda:1"])
    assert rc == 2 and "torchrun" in capsys.readouterr().err
    assert two_gpus == [] and not torch.distributed.is_initialized()


@pytest.fixture
def restore_determinism():
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def test_train_deterministic_is_applied(restore_determinism, monkeypatch, tiny_folder, tmp_path):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    torch.use_deterministic_algorithms(False)
    cfg = load_config(None, {"data.name": str(tiny_folder), "out": str(tmp_path / "run"), "model.image_size": 16,
                             "model.proj_hidden": [16], "model.proj_dim": 8, "train.batch_size": 12, "train.epochs": 1,
                             "train.knn_every": 0, "train.progress": False, "train.preview": False,
                             "train.deterministic": True})
    pretrain(cfg, log=lambda *a: None)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_cudnn_autotuning_without_deterministic(restore_determinism):
    torch.use_deterministic_algorithms(False)
    configure_device(torch.device("cuda", 0), reuse_memory=False)  # settings only; no GPU needed
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


def test_decoding_more_than_free_memory_is_a_data_error(tiny_folder, tmp_path, monkeypatch, capsys):
    from simclr import data, hardware

    # 36 train images of 16 px are 27,648 bytes; with 20,000 bytes free they do not fit
    monkeypatch.setattr(hardware, "free_host_memory", lambda: 20_000)
    with pytest.raises(DataError, match="data.stream"):
        data.load_split(load_config(None, {"data.name": str(tiny_folder)}).data, "train", 16, log=lambda *a: None)
    rc = main(["pretrain", "--data", str(tiny_folder), "--out", str(tmp_path / "run"), "--image-size", "16"])
    assert rc == 3 and "data.stream" in capsys.readouterr().err
    # two processes of a torchrun job on this machine hold two copies
    monkeypatch.setattr(hardware, "free_host_memory", lambda: 40_000)
    cfg = load_config(None, {"data.name": str(tiny_folder)}).data
    data.load_split(cfg, "train", 16, log=lambda *a: None)  # fits once (and is now cached)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(DataError, match="2 processes"):
        data.load_split(cfg, "train", 16, log=lambda *a: None)  # the cache read is checked too


def test_device_resident_images_are_checked_against_free_gpu_memory(monkeypatch):
    from simclr import hardware

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1_000_000, 80_000_000_000))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    hardware.check_device_memory(400_000, torch.device("cuda", 0))  # 40 % of the free memory: fits
    with pytest.raises(DataError, match="data.stream"):
        hardware.check_device_memory(600_000, torch.device("cuda", 0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes on one GPU: two copies
    with pytest.raises(DataError, match="2 processes share"):
        hardware.check_device_memory(400_000, torch.device("cuda", 0))
    hardware.check_device_memory(10**15, torch.device("cpu"))  # the CPU path keeps the host copy: nothing to add


def test_decode_pool_takes_one_process_share_of_the_cores(monkeypatch):
    from simclr import hardware

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert hardware.cpu_count() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert hardware.cpu_count() == 4


def test_feature_head_reads_the_device_once_per_epoch_not_per_step(monkeypatch):
    from simclr.evaluate import train_head

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    reads = []

    def spy(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args):
            # reads in evaluate.py; torch's optimizers read their CPU step counters, which costs no device sync
            if sys._getframe(1).f_code.co_filename.endswith("evaluate.py"):
                reads.append(name)
            return real(self, *args)
        return read

    for name in ("__float__", "__int__", "__bool__", "item"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    counts = []
    for batch in (64, 8):  # 1 and 8 steps per epoch
        reads.clear()
        res = train_head(x, y, x[:16], y[:16], 3, epochs=3, batch_size=batch, device=torch.device("cpu"))
        counts.append(len(reads))
    assert counts[0] == counts[1], counts
    assert next(res.model.parameters()).device.type == "cpu"

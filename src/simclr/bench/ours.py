"""Our pipeline: the dataset lives on the device as uint8, :func:`simclr.augment.simclr_views` makes both views of a
batch there with per-sample parameters, the encoder runs under the run's precision (bf16 autocast where the device
has it) with channels_last tensors, the optimizer is torch's fused implementation where it has one, and the process
settings are those of ``simclr pretrain`` (:func:`our_settings`: freed memory reused on the CPU, cuDNN autotuning on
CUDA).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .. import augment
from ..config import Config
from ..models import build_model
from ..optim import build_optimizer
from ..runtime import reuse_freed_memory, synchronize
from .memory import PeakMemory, rss_base
from .options import BenchOptions, epoch_images
from .timing import Measurement, measure, timed, views_step


def _our_model(cfg: Config, device: torch.device, compiled: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model, cfg.train.batch_size)
    return (torch.compile(model) if compiled else model), optimizer


@contextlib.contextmanager
def our_settings(device: torch.device, reuse_memory: bool, cudnn_benchmark: bool | None = None) -> Iterator[None]:
    """The process-wide settings simclr trains with (:func:`simclr.runtime.configure_device`: cuDNN autotuning on
    CUDA, reuse of freed memory on the CPU) around one of our pipelines; torch's and glibc's defaults again after it,
    so the peers' pipelines always run with those."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" if cudnn_benchmark is None else cudnn_benchmark
    if device.type == "cpu" and reuse_memory:
        reuse_freed_memory(True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
        if device.type == "cpu":
            reuse_freed_memory(False)


def optimizer_name(opt: torch.optim.Optimizer) -> str:
    """E.g. ``SGD fused``: the class and the implementation torch runs."""
    impl = "fused" if opt.defaults.get("fused") else "foreach" if opt.defaults.get("foreach") else "per-tensor"
    return f"{type(opt).__name__} {impl}"


class _Rows:
    """Batch ``i`` of a fixed shuffled order of the pool, indices on the device (as device_batches indexes)."""

    def __init__(self, n_pool: int, batch: int, device: torch.device):
        self.perm = torch.randperm(n_pool, generator=torch.Generator().manual_seed(0)).to(device)
        self.batch, self.per_pass = batch, max(1, n_pool // batch)

    def __call__(self, i: int) -> Tensor:
        j = i % self.per_pass
        return self.perm[j * self.batch : (j + 1) * self.batch]


# ----------------------------------------------------------------------------------------------- timed
# Each returns a Measurement; run_pipeline runs it in a process of its own.


def augment_ours(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size = cfg.train.batch_size, cfg.model.image_size
    n_batches = max(1, min(opts.aug_images, len(pool)) // B)
    base = rss_base()
    images = pool.to(device)
    seed = cfg.train.seed
    rows = _Rows(len(images), B, device)

    def ours(i: int) -> None:
        with torch.no_grad():
            augment.simclr_views(images[rows(i)], cfg.augment, size, seed, 0, i)

    with our_settings(device, cfg.train.reuse_memory):
        sec, peak, method = timed(device, opts.warmup, n_batches, ours, base)
    return measure(n_batches * B, n_batches, sec, peak, method, pid=os.getpid())


def step_ours(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
              compiled: bool) -> Measurement:
    B, size, seed, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.seed, cfg.train.temperature
    base = rss_base()
    images = pool.to(device)
    rows = _Rows(len(images), B, device)
    model, optimizer = _our_model(cfg, device, compiled)
    model.train()

    def ours(i: int) -> None:
        with torch.no_grad():
            v0, v1 = augment.simclr_views(images[rows(i)], cfg.augment, size, seed, 0, i)
        views_step(model, optimizer, v0, v1, device, precision, cfg.train.channels_last, temp)

    warm = opts.warmup + (2 if compiled else 0)  # compilation happens in the first calls
    with our_settings(device, cfg.train.reuse_memory):
        sec, peak, method = timed(device, warm, opts.steps, ours, base)
    return measure(opts.steps * B, opts.steps, sec, peak, method, precision=precision,
                   channels_last=cfg.train.channels_last, optimizer=optimizer_name(optimizer), compiled=compiled,
                   reuse_memory=cfg.train.reuse_memory and device.type == "cpu", pid=os.getpid())


def epoch_ours(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
               paths: list[str] | None) -> Measurement:
    """An epoch through ``train.train_one_epoch``: device-resident batches, or streamed from ``paths``."""
    from ..batches import device_batches
    from ..optim import Schedule
    from ..runtime import Dist
    from ..train import TrainState, train_one_epoch

    B = cfg.train.batch_size
    n = epoch_images(opts, device, len(pool), B)
    steps = n // B
    ecfg = copy.deepcopy(cfg)
    ecfg.train.progress, ecfg.train.checkpoint_every, ecfg.train.epochs = False, 0, 1
    ecfg.data.workers = opts.workers
    rt = Dist(device=device)
    quiet = lambda *a, **k: None  # noqa: E731
    images = pool[:n].to(device) if paths is None else None
    with our_settings(device, cfg.train.reuse_memory):
        base = rss_base()
        model, optimizer = _our_model(ecfg, device, opts.compile)
        schedule = Schedule(optimizer, ecfg.optim, B, steps, 1)
        if opts.warmup:  # untimed warm-up steps on other batches
            warm = device_batches(pool[: (opts.warmup + 1) * B].to(device), ecfg, 1, 0, rt)
            train_one_epoch(model, optimizer, schedule, warm, opts.warmup, ecfg, TrainState(), rt, precision, log=quiet)
        if paths is None:
            batches = device_batches(images, ecfg, 0, 0, rt)
        else:
            from ..stream import stream_batches

            batches = stream_batches(paths[:n], ecfg, 0, 0, rt, size=pool.shape[-1])
        synchronize(device)
        mem = PeakMemory(device)
        mem.start(base)
        t0 = time.perf_counter()
        state = TrainState()
        train_one_epoch(model, optimizer, schedule, batches, steps, ecfg, state, rt, precision, log=quiet)
        synchronize(device)
        sec = time.perf_counter() - t0
    return measure(steps * B, steps, sec, mem.stop(), mem.method,
                   loss=state.epoch_loss_sum / max(state.epoch_loss_steps, 1), pid=os.getpid())


def ablation_variant(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, variant: tuple) -> Measurement:
    name, cl, impl, compiled, cudnn_bench, reuse = variant
    B, size, seed, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.seed, cfg.train.temperature
    precision = name.split("+")[0]
    with torch.no_grad():
        v0, v1 = augment.simclr_views(pool[:B].to(device), cfg.augment, size, seed, 0, 0)
    base = rss_base()
    model = build_model(cfg.model).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, model, B, impl=impl)
    net = torch.compile(model) if compiled else model
    warm = opts.warmup + (2 if compiled or cudnn_bench else 0)  # compilation / autotuning in the first calls
    with our_settings(device, reuse, cudnn_bench):
        sec, peak, method = timed(device, warm, opts.steps,
                                  lambda i: views_step(net, opt, v0, v1, device, precision, cl, temp), base)
    return measure(opts.steps * B, opts.steps, sec, peak, method, pid=os.getpid())

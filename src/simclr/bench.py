"""Throughput benchmarks behind ``simclr bench`` and ``benchmarks/``: our pipeline beside the peers' default.

Ours: the dataset lives on the device as uint8, :func:`simclr.augment.simclr_views` makes both views of a batch
there with per-sample parameters, the encoder runs under bf16 autocast (where the device has it) with
channels_last tensors, the optimizer is torch's fused implementation where it has one, and the process settings
are those of ``simclr pretrain`` (:func:`our_settings`: freed memory reused on the CPU, cuDNN autotuning on CUDA).
The peers' default (dkobak/simclr-cifar10, the PyTorch Lightning / UvA tutorial, most SimCLR repositories): a
torchvision per-image transform on PIL images in a DataLoader with worker processes, and the same model in fp32,
eager, contiguous format, with ``torch.optim.SGD`` as constructed by default, under torch's and glibc's defaults.

On the CPU every pipeline is timed in a fresh process of its own (:func:`run_pipeline`), as a user's run would
be: in a shared process the heap an earlier pipeline left behind changes the speed of the next.

Every throughput counts SOURCE images per second: one source image is two views through the encoder. Step
timings exclude warm-up steps and wait for the device before the clock stops; epoch timings include everything an
epoch pays (worker start-up, the per-step loss read-out of the real training loop).

Peak memory of the timed steps: on CUDA, ``torch.cuda.max_memory_allocated`` after a reset (every live tensor: the
device-resident dataset, weights, gradients, optimizer state, activations). On the CPU, the process's peak resident
set during the timed steps (``VmHWM`` of /proc/self/status, reset through ``/proc/self/clear_refs`` after the
warm-up) minus the resident set before the pipeline was built (before its model, optimizer and loader): weights,
gradients, optimizer state, activations and allocator slack. DataLoader workers are other processes and are not
counted. Where the reset is refused, the lifetime peak ``ru_maxrss`` is reported and ``memory_method`` says so.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import os
import platform
import re
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from . import augment
from .config import AugmentConfig, Config
from .models import build_model
from .optim import build_optimizer, scaled_lr
from .runtime import resolve_device, resolve_precision, reuse_freed_memory, synchronize
from .train import simclr_loss

PARTS = ("augment", "step", "epoch", "ablation")


@dataclass
class BenchOptions:
    """What to measure; the model, batch, precision, device and augmentation come from the :class:`Config`."""

    steps: int = 3  # timed training steps (after the warm-up)
    rounds: int = 1  # the step comparison this many times, ours and the peers alternating (see bench_step_rounds)
    isolate: bool | None = None  # each pipeline in a fresh process; None: on the CPU only (see run_pipeline)
    warmup: int = 1  # untimed steps (or augmentation batches) first
    aug_images: int = 4096  # source images through each augmentation pipeline
    epoch_images: int | None = None  # images in the timed epoch; default 2 batches on CPU, 50,000 elsewhere
    workers: int = 2  # DataLoader workers of the per-image baseline (and of the streaming path)
    compile: bool = False  # also time our step with torch.compile
    parts: tuple[str, ...] = ("augment", "step", "epoch")
    baseline: bool = True  # also time the peers' pipeline (the ratios need it)
    stream: bool = False  # also time an epoch of the streaming path (cfg.data.name must be an image folder)
    real_data: bool = False  # use cfg.data (loaded through simclr.data) instead of random uint8 images


@dataclass
class Measurement:
    """One timed pipeline: throughput in source images per second and the peak memory of the timed work."""

    images_per_s: float
    seconds: float
    images: int
    steps: int
    step_ms: float | None = None
    peak_memory_mb: float | None = None
    memory_method: str | None = None
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- machine


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: CPU model, cores, load, accelerator, library versions, date (UTC)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # a declared dependency; the report should not fail over it
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------------------------- memory


def rss_kb() -> int:
    """Resident set size of this process in KiB (0 where /proc is not available)."""
    return _proc_status_kb("VmRSS") or 0


def _rss_base() -> int:
    gc.collect()  # tensors of the previous pipeline go back to the allocator before the baseline is read
    return rss_kb()


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


class PeakMemory:
    """Peak memory of the work between :meth:`start` and :meth:`stop`, in MB (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "none"
        self.base_kb = 0

    def start(self, base_kb: int | None = None) -> None:
        """Reset the peak; on the CPU the result is relative to ``base_kb`` (default: the resident set now)."""
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        self.base_kb = rss_kb() if base_kb is None else base_kb
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # Linux: reset VmHWM to the current resident set
            self.method = "VmHWM during the timed steps - VmRSS before the pipeline was built"
        except OSError:
            self.method = "ru_maxrss (lifetime peak of the process; no reset possible)"

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.method.startswith("VmHWM"):
            hwm = _proc_status_kb("VmHWM")
            return None if hwm is None else max(0, hwm - self.base_kb) / 1024
        if self.method.startswith("ru_maxrss"):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return None


# ----------------------------------------------------------------------------------------------- the peers' pipeline


def torchvision_pipeline(cfg: AugmentConfig, out_size: int):
    """The per-image SimCLR transform as the peers write it with ``torchvision.transforms`` (PIL in, tensor out)."""
    from torchvision import transforms as T

    s = cfg.jitter_strength
    ops = [
        T.RandomResizedCrop(out_size, scale=cfg.scale, ratio=cfg.ratio),
        T.RandomHorizontalFlip(p=cfg.hflip),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5))], p=cfg.jitter_p),
        T.RandomGrayscale(p=cfg.gray_p),
    ]
    if cfg.blur_p > 0:
        k = augment.blur_kernel_size(out_size)
        ops.append(T.RandomApply([T.GaussianBlur(k, sigma=cfg.blur_sigma)], p=cfg.blur_p))
    ops += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(ops)


class PairDataset(torch.utils.data.Dataset):
    """Images held as uint8 HWC arrays (as torchvision's CIFAR10 holds them); an item is two views of one image."""

    def __init__(self, images: Tensor, transform):
        self.array = images.permute(0, 2, 3, 1).contiguous().numpy()  # [N, H, W, 3]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        img = Image.fromarray(self.array[i])
        return self.transform(img), self.transform(img)


def peer_loader(images: Tensor, cfg: AugmentConfig, out_size: int, batch: int, workers: int, device: torch.device):
    """A shuffling DataLoader over ``images`` (uint8 [N,3,S,S], CPU) with the torchvision per-image transform."""
    return torch.utils.data.DataLoader(
        PairDataset(images, torchvision_pipeline(cfg, out_size)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def _cycle(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


# ----------------------------------------------------------------------------------------------- helpers


def _timed(device: torch.device, warmup: int, steps: int, step: Callable[[int], None],
           base_kb: int | None = None) -> tuple[float, float | None, str | None]:
    """Run ``step(i)`` for ``warmup`` untimed then ``steps`` timed iterations -> (seconds, peak MB, method).

    ``base_kb``: resident set before the pipeline was built (CPU peak memory is reported relative to it).
    """
    for i in range(warmup):
        step(i)
    synchronize(device)
    mem = PeakMemory(device)
    mem.start(base_kb)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize(device)
    seconds = time.perf_counter() - t0
    return seconds, mem.stop(), mem.method


def _measure(images: int, steps: int, seconds: float, peak: float | None, method: str | None, **extra) -> Measurement:
    return Measurement(
        images_per_s=images / max(seconds, 1e-9),
        seconds=seconds,
        images=images,
        steps=steps,
        step_ms=1000 * seconds / max(steps, 1),
        peak_memory_mb=peak,
        memory_method=method,
        extra=extra,
    )


def _views_step(model: nn.Module, optimizer: torch.optim.Optimizer, v0: Tensor, v1: Tensor, device: torch.device,
                precision: str, channels_last: bool, temperature: float) -> Tensor:
    """One SimCLR optimisation step on two views (the loss of the training loop); returns the loss without reading
    it (no host sync)."""
    loss = simclr_loss(model, v0, v1, device, precision, channels_last, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _our_model(cfg: Config, device: torch.device, compiled: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, model, cfg.train.batch_size)
    return (torch.compile(model) if compiled else model), optimizer


def _peer_model(cfg: Config, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = build_model(cfg.model).to(device)
    lr = scaled_lr(cfg.optim, cfg.train.batch_size)
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


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


# ----------------------------------------------------------------------------------------------- fresh processes


class PipelineError(RuntimeError):
    """A pipeline failed in its own process (the message carries the child's exception)."""


def _child_main(conn, fn: Callable, args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which decides
        import traceback

        where = "".join(traceback.format_exception(e)[-3:-1]).rstrip()
        conn.send(("error", f"{type(e).__name__}: {e}\n{where}"))
    finally:
        conn.close()


def run_pipeline(fn: Callable, *args, isolate: bool = True):
    """``fn(*args)``, in a fresh process unless ``isolate`` is False.

    On the CPU a pipeline's speed depends on what ran before it in the same process: glibc serves large blocks
    from whatever free heap an earlier pipeline left (already faulted in) or maps them afresh, and no user's
    training run starts with another pipeline's heap. Each pipeline therefore runs in a process of its own
    (``spawn``: nothing inherited but the arguments), as a user's training run would. ``fn`` must be a module-level
    function; its result comes back pickled. :func:`run_bench` does this on the CPU; on a GPU the pipelines share
    the process, because CUDA's caching allocator holds the same blocks after the warm-up whatever ran before, and
    a fresh CUDA context per pipeline would cost seconds each.

    Raises:
        PipelineError: ``fn`` raised in the child (its exception and the end of its traceback), or the child died.
    """
    if not isolate:
        return fn(*args)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child, fn, args), daemon=False)  # DataLoader workers need children
    proc.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:
        proc.join()
        raise PipelineError(f"the benchmark process of {fn.__name__} died (exit code {proc.exitcode}); "
                            "out of memory? try a smaller --batch-size") from None
    finally:
        parent.close()
    proc.join()
    if status == "error":
        raise PipelineError(value)
    return value


# ----------------------------------------------------------------------------------------------- the pipelines
# Each returns a Measurement; run_pipeline runs it in a process of its own.


def _augment_ours(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size = cfg.train.batch_size, cfg.model.image_size
    n_batches = max(1, min(opts.aug_images, len(pool)) // B)
    base = _rss_base()
    images = pool.to(device)
    seed = cfg.train.seed
    rows = _Rows(len(images), B, device)

    def ours(i: int) -> None:
        with torch.no_grad():
            augment.simclr_views(images[rows(i)], cfg.augment, size, seed, 0, i)

    with our_settings(device, cfg.train.reuse_memory):
        sec, peak, method = _timed(device, opts.warmup, n_batches, ours, base)
    return _measure(n_batches * B, n_batches, sec, peak, method, pid=os.getpid())


def _augment_peers(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size = cfg.train.batch_size, cfg.model.image_size
    n_batches = max(1, min(opts.aug_images, len(pool)) // B)
    base = _rss_base()
    loader = peer_loader(pool[: (n_batches + opts.warmup) * B], cfg.augment, size, B, opts.workers, device)
    it = _cycle(lambda: iter(loader))

    def peers(i: int) -> None:
        v0, v1 = next(it)
        v0.to(device, non_blocking=True), v1.to(device, non_blocking=True)

    sec, peak, method = _timed(device, opts.warmup, n_batches, peers, base)
    return _measure(n_batches * B, n_batches, sec, peak, method, workers=opts.workers, pid=os.getpid())


def _step_ours(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
               compiled: bool) -> Measurement:
    B, size, seed, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.seed, cfg.train.temperature
    base = _rss_base()
    images = pool.to(device)
    rows = _Rows(len(images), B, device)
    model, optimizer = _our_model(cfg, device, compiled)
    model.train()

    def ours(i: int) -> None:
        with torch.no_grad():
            v0, v1 = augment.simclr_views(images[rows(i)], cfg.augment, size, seed, 0, i)
        _views_step(model, optimizer, v0, v1, device, precision, cfg.train.channels_last, temp)

    warm = opts.warmup + (2 if compiled else 0)  # compilation happens in the first calls
    with our_settings(device, cfg.train.reuse_memory):
        sec, peak, method = _timed(device, warm, opts.steps, ours, base)
    return _measure(opts.steps * B, opts.steps, sec, peak, method, precision=precision,
                    channels_last=cfg.train.channels_last, optimizer=optimizer_name(optimizer), compiled=compiled,
                    reuse_memory=cfg.train.reuse_memory and device.type == "cpu", pid=os.getpid())


def _step_peers(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.temperature
    base = _rss_base()
    model, optimizer = _peer_model(cfg, device)
    model.train()
    loader = peer_loader(pool, cfg.augment, size, B, opts.workers, device)
    it = _cycle(lambda: iter(loader))

    def peers(i: int) -> None:
        v0, v1 = next(it)
        v0, v1 = v0.to(device, non_blocking=True), v1.to(device, non_blocking=True)
        _views_step(model, optimizer, v0, v1, device, "fp32", False, temp)

    sec, peak, method = _timed(device, opts.warmup, opts.steps, peers, base)
    return _measure(opts.steps * B, opts.steps, sec, peak, method, precision="fp32", channels_last=False,
                    optimizer="SGD default", workers=opts.workers, pid=os.getpid())


def _epoch_ours(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
                paths: list[str] | None) -> Measurement:
    """An epoch through ``train.train_one_epoch``: device-resident batches, or streamed from ``paths``."""
    from .batches import device_batches
    from .optim import Schedule
    from .runtime import Dist
    from .train import TrainState, train_one_epoch

    B = cfg.train.batch_size
    n = _epoch_images(opts, device, len(pool), B)
    steps = n // B
    ecfg = copy.deepcopy(cfg)
    ecfg.train.progress, ecfg.train.checkpoint_every, ecfg.train.epochs = False, 0, 1
    ecfg.data.workers = opts.workers
    rt = Dist(device=device)
    quiet = lambda *a, **k: None  # noqa: E731
    images = pool[:n].to(device) if paths is None else None
    with our_settings(device, cfg.train.reuse_memory):
        base = _rss_base()
        model, optimizer = _our_model(ecfg, device, opts.compile)
        schedule = Schedule(optimizer, ecfg.optim, B, steps, 1)
        if opts.warmup:  # untimed warm-up steps on other batches
            warm = device_batches(pool[: (opts.warmup + 1) * B].to(device), ecfg, 1, 0, rt)
            train_one_epoch(model, optimizer, schedule, warm, opts.warmup, ecfg, TrainState(), rt, precision, log=quiet)
        if paths is None:
            batches = device_batches(images, ecfg, 0, 0, rt)
        else:
            from .stream import stream_batches

            batches = stream_batches(paths[:n], ecfg, 0, 0, rt, size=pool.shape[-1])
        synchronize(device)
        mem = PeakMemory(device)
        mem.start(base)
        t0 = time.perf_counter()
        state = TrainState()
        train_one_epoch(model, optimizer, schedule, batches, steps, ecfg, state, rt, precision, log=quiet)
        synchronize(device)
        sec = time.perf_counter() - t0
    return _measure(steps * B, steps, sec, mem.stop(), mem.method,
                    loss=state.epoch_loss_sum / max(state.epoch_loss_steps, 1), pid=os.getpid())


def _epoch_peers(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device) -> Measurement:
    B, size, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.temperature
    n = _epoch_images(opts, device, len(pool), B)
    steps = n // B
    base = _rss_base()
    model, optimizer = _peer_model(cfg, device)
    model.train()
    warm = peer_loader(pool[: max(1, opts.warmup) * B], cfg.augment, size, B, 0, device)
    for v0, v1 in warm:
        _views_step(model, optimizer, v0.to(device), v1.to(device), device, "fp32", False, temp)
    synchronize(device)
    mem = PeakMemory(device)
    mem.start(base)
    t0 = time.perf_counter()
    total = 0.0
    for v0, v1 in peer_loader(pool[:n], cfg.augment, size, B, opts.workers, device):  # a new loader per epoch
        v0, v1 = v0.to(device, non_blocking=True), v1.to(device, non_blocking=True)
        total += _views_step(model, optimizer, v0, v1, device, "fp32", False, temp).item()
    synchronize(device)
    sec = time.perf_counter() - t0
    return _measure(steps * B, steps, sec, mem.stop(), mem.method, loss=total / max(steps, 1), workers=opts.workers,
                    pid=os.getpid())


def _ablation_variant(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, variant: tuple) -> Measurement:
    name, cl, impl, compiled, cudnn_bench, reuse = variant
    B, size, seed, temp = cfg.train.batch_size, cfg.model.image_size, cfg.train.seed, cfg.train.temperature
    precision = "bf16" if name.startswith("bf16") else "fp32"
    with torch.no_grad():
        v0, v1 = augment.simclr_views(pool[:B].to(device), cfg.augment, size, seed, 0, 0)
    base = _rss_base()
    model = build_model(cfg.model).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optim, model, B, impl=impl)
    net = torch.compile(model) if compiled else model
    warm = opts.warmup + (2 if compiled or cudnn_bench else 0)  # compilation / autotuning in the first calls
    with our_settings(device, reuse, cudnn_bench):
        sec, peak, method = _timed(device, warm, opts.steps,
                                   lambda i: _views_step(net, opt, v0, v1, device, precision, cl, temp), base)
    return _measure(opts.steps * B, opts.steps, sec, peak, method, pid=os.getpid())


# ----------------------------------------------------------------------------------------------- the parts


def bench_augment(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, log=print) -> dict:
    """Two views per source image: batched on the device (ours) vs torchvision per-image in a DataLoader."""
    out = {"ours": run_pipeline(_augment_ours, pool, cfg, opts, device, isolate=opts.isolate)}
    log(f"augment  ours      {out['ours'].images_per_s:10,.0f} img/s")
    if opts.baseline:
        out["baseline"] = run_pipeline(_augment_peers, pool, cfg, opts, device, isolate=opts.isolate)
        out["speedup"] = out["ours"].images_per_s / out["baseline"].images_per_s
        log(f"augment  baseline  {out['baseline'].images_per_s:10,.0f} img/s   ours x{out['speedup']:.2f}")
    return out


def bench_step(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str, log=print) -> dict:
    """Training steps, data included: ours (device batches + bf16 + channels_last + fused SGD) vs the peers."""
    out: dict = {}
    variants = [("ours", False)] + ([("ours_compiled", True)] if opts.compile else [])
    for name, compiled in variants:
        try:
            out[name] = run_pipeline(_step_ours, pool, cfg, opts, device, precision, compiled, isolate=opts.isolate)
        except Exception as e:  # torch.compile needs a working compiler toolchain; report, do not abort the run
            if not compiled:
                raise
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            log(f"step     {name}: failed ({out[name]['error'][:200]})")
            continue
        log(f"step     {name:<9} {out[name].images_per_s:10,.1f} img/s  {out[name].step_ms:9,.0f} ms/step"
            f"  peak {out[name].peak_memory_mb or 0:,.0f} MB")
    if opts.baseline:
        out["baseline"] = run_pipeline(_step_peers, pool, cfg, opts, device, isolate=opts.isolate)
        log(f"step     baseline  {out['baseline'].images_per_s:10,.1f} img/s  {out['baseline'].step_ms:9,.0f} ms/step"
            f"  peak {out['baseline'].peak_memory_mb or 0:,.0f} MB")
        for name, _ in variants:
            if isinstance(out[name], Measurement):
                out[f"speedup_{name}" if name != "ours" else "speedup"] = out[name].images_per_s / out["baseline"].images_per_s
        log(f"step     ours x{out['speedup']:.2f}")
    return out


def bench_step_rounds(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
                      log=print) -> dict:
    """:func:`bench_step` ``opts.rounds`` times (ours, the peers, ours, the peers, ...), merged.

    On a machine shared with other jobs the load drifts within minutes; alternating puts both pipelines under the
    same conditions. Each round builds and warms its pipelines afresh. The merged throughput is all timed images
    over all timed seconds, the peak memory the largest of the rounds, and ``*_per_round`` keeps every round's
    figure so the spread is visible.
    """
    runs = []
    for r in range(opts.rounds):
        if opts.rounds > 1:
            log(f"step     round {r + 1} of {opts.rounds}")
        runs.append(bench_step(pool, cfg, opts, device, precision, log))
    if len(runs) == 1:
        return runs[0]
    out: dict = {}
    for name, first in runs[0].items():
        if isinstance(first, Measurement):
            ms = [run[name] for run in runs if isinstance(run.get(name), Measurement)]
            peaks = [m.peak_memory_mb for m in ms if m.peak_memory_mb is not None]
            out[name] = _measure(sum(m.images for m in ms), sum(m.steps for m in ms), sum(m.seconds for m in ms),
                                 max(peaks) if peaks else None, first.memory_method, **first.extra,
                                 images_per_s_per_round=[m.images_per_s for m in ms])
        elif not name.startswith("speedup"):
            out[name] = first  # e.g. the error of a variant that failed
    for name in [k for k in runs[0] if k.startswith("speedup")]:
        variant = "ours" if name == "speedup" else name.removeprefix("speedup_")
        if isinstance(out.get(variant), Measurement) and isinstance(out.get("baseline"), Measurement):
            out[name] = out[variant].images_per_s / out["baseline"].images_per_s
            out[f"{name}_per_round"] = [run[name] for run in runs if name in run]
    if "speedup" in out:
        per = out["speedup_per_round"]
        log(f"step     ours x{out['speedup']:.2f} over {len(runs)} rounds (rounds: {', '.join(f'x{x:.2f}' for x in per)})")
    return out


def bench_epoch(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, precision: str,
                paths: list[str] | None = None, log=print) -> dict:
    """One epoch over ``epoch_images`` images through the real training loop (``train.train_one_epoch``)."""
    B = cfg.train.batch_size
    n = _epoch_images(opts, device, len(pool), B)
    out: dict = {}
    runs = [("ours", None)] + ([("stream", paths)] if opts.stream and paths is not None else [])
    for name, files in runs:
        out[name] = run_pipeline(_epoch_ours, pool, cfg, opts, device, precision, files, isolate=opts.isolate)
        log(f"epoch    {name:<9} {out[name].images_per_s:10,.1f} img/s  {out[name].seconds:9,.1f} s/epoch of {n} images")
    if opts.baseline:
        out["baseline"] = run_pipeline(_epoch_peers, pool, cfg, opts, device, isolate=opts.isolate)
        out["speedup"] = out["ours"].images_per_s / out["baseline"].images_per_s
        log(f"epoch    baseline  {out['baseline'].images_per_s:10,.1f} img/s  {out['baseline'].seconds:9,.1f} s/epoch"
            f"   ours x{out['speedup']:.2f}")
    return out


def bench_ablation(pool: Tensor, cfg: Config, opts: BenchOptions, device: torch.device, log=print) -> dict:
    """Model-only steps on fixed views, one setting changed at a time: which defaults are fastest on this device."""
    bf16_ok = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    # (name, channels_last, optimizer implementation, torch.compile, cudnn.benchmark, CPU memory reuse)
    cpu = device.type == "cpu"
    variants = [("fp32", False, "foreach", False, False, False)]
    if cpu:
        variants.append(("fp32+reuse_memory", False, "foreach", False, False, True))
    variants.append(("fp32+channels_last", True, "foreach", False, False, False))
    if bf16_ok:
        variants += [("bf16", False, "foreach", False, False, False), ("bf16+channels_last", True, "foreach", False, False, False),
                     ("bf16+channels_last+fused_sgd", True, "fused", False, False, False)]
        default = "bf16+channels_last+fused_sgd+" + ("reuse_memory" if cpu else "cudnn_benchmark")
        variants.append((default, True, "fused", False, not cpu, cpu))
        if opts.compile:
            variants.append((default + "+compile", True, "fused", True, not cpu, cpu))
    out: dict = {}
    for variant in variants:
        name, compiled = variant[0], variant[3]
        try:
            out[name] = run_pipeline(_ablation_variant, pool, cfg, opts, device, variant, isolate=opts.isolate)
        except Exception as e:  # e.g. torch.compile without a compiler toolchain: report, do not abort the run
            if not compiled:
                raise
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            log(f"ablation {name}: failed ({out[name]['error'][:200]})")
            continue
        log(f"ablation {name:<48} {out[name].images_per_s:10,.1f} img/s  peak {out[name].peak_memory_mb or 0:,.0f} MB")
    return out


def _epoch_images(opts: BenchOptions, device: torch.device, available: int, batch: int) -> int:
    n = opts.epoch_images or (2 * batch if device.type == "cpu" else 50_000)
    return max(batch, min(n, available) // batch * batch)


def _pool(cfg: Config, opts: BenchOptions, device: torch.device, log=print) -> tuple[Tensor, list[str] | None, str]:
    """Source images for the benchmark: random uint8 (the default, needing no data) or cfg.data (``--data``). The cost
    depends on the content (denormal floats in a training network), so the quoted figures come from real images."""
    B = cfg.train.batch_size
    need = B * (opts.warmup + max(opts.steps, 1))
    if "augment" in opts.parts:
        need = max(need, opts.aug_images + opts.warmup * B)
    if "epoch" in opts.parts:
        need = max(need, _epoch_images(opts, device, 10**9, B) + B)
    if opts.real_data or opts.stream:
        from .data import load_split

        data = load_split(cfg.data, "train", cfg.model.image_size, seed=cfg.train.seed, log=log)
        if len(data) < B:
            raise ValueError(f"{len(data)} images in {cfg.data.name}; the benchmark needs at least a batch of {B}")
        return data.images, data.paths, cfg.data.name
    g = torch.Generator().manual_seed(cfg.train.seed)
    s = cfg.model.image_size
    return torch.randint(0, 256, (need, 3, s, s), dtype=torch.uint8, generator=g), None, f"random uint8 {s}x{s}"


def run_bench(cfg: Config, opts: BenchOptions, log=print, on_part: Callable[[dict], None] | None = None) -> dict:
    """Measure the selected parts and return a JSON-able dict (``machine``, ``settings`` and one entry per part).

    Args:
        cfg: model (``model.*``), batch (``train.batch_size``), precision, device, channels_last and augmentation.
        opts: what to measure.
        log: progress lines (``print`` by default; pass ``lambda *a: None`` for silence).
        on_part: called with the results so far after each part (to save partial results of a long run).
    """
    unknown = set(opts.parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown benchmark parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    for name, least in (("steps", 1), ("rounds", 1), ("warmup", 0)):
        if getattr(opts, name) < least:
            raise ValueError(f"--{name} must be at least {least}, got {getattr(opts, name)}")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    if opts.isolate is None:
        opts = replace(opts, isolate=device.type == "cpu")
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    pool, paths, source = _pool(cfg, opts, device, log)
    result: dict = {
        "machine": machine_info(device),
        "settings": {
            "backbone": cfg.model.backbone,
            "image_size": cfg.model.image_size,
            "batch_size": cfg.train.batch_size,
            "precision": precision,
            "baseline_precision": "fp32",
            "channels_last": cfg.train.channels_last,
            "optimizer": cfg.optim.name,
            "compile": opts.compile,
            "steps": opts.steps,
            "rounds": opts.rounds,
            "fresh_process_per_pipeline": opts.isolate,
            "warmup": opts.warmup,
            "workers": opts.workers,
            "data": source,
            "unit": "source images per second (two views each)",
            # torch's CUDA defaults run fp32 convolutions in TF32 (cudnn.allow_tf32); rows in fp32 say so
            "tf32": device.type == "cuda" and bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32),
        },
    }
    for part in opts.parts:
        if part == "augment":
            result[part] = bench_augment(pool, cfg, opts, device, log)
        elif part == "step":
            result[part] = bench_step_rounds(pool, cfg, opts, device, precision, log)
        elif part == "epoch":
            result[part] = bench_epoch(pool, cfg, opts, device, precision, paths, log)
        elif part == "ablation":
            result[part] = bench_ablation(pool, cfg, opts, device, log)
        if on_part is not None:
            on_part(_jsonable(result))
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return _jsonable(result)


def _jsonable(x):
    if isinstance(x, Measurement):
        d = asdict(x)
        d.update(d.pop("extra"))
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return round(x, 4)
    return x


def tf32_label(part: str, name: str, settings: dict) -> str:
    """`` (TF32)`` for a row that ran fp32 math on a CUDA device where torch uses TF32 for it, else ``""``."""
    if not settings.get("tf32") or part == "augment":
        return ""
    fp32 = name.startswith("fp32") or name == "baseline" or (name.startswith("ours") and settings.get("precision") == "fp32")
    return " (TF32)" if fp32 else ""


def format_table(result: dict) -> str:
    """A plain-text summary of :func:`run_bench`'s result."""
    m, s = result["machine"], result["settings"]
    lines = [
        f"{m['date']}  {m['cpu']} ({m['cpu_count']} cores)" + (f"  {m['gpu']}" if "gpu" in m else "")
        + f"  torch {m['torch']}  load {m['load_average']}",
        f"{s['backbone']}, {s['image_size']} px, batch {s['batch_size']}, ours {s['precision']}"
        + (" channels_last" if s["channels_last"] else "") + f" vs fp32 eager; data: {s['data']}",
        f"{'part':<9}{'pipeline':<50}{'src img/s':>12}{'ms/step':>10}{'peak MB':>10}{'vs baseline':>13}",
    ]
    for part in PARTS:
        if part not in result:
            continue
        r = result[part]
        base = r.get("baseline", {}).get("images_per_s")
        for name, v in r.items():
            if not isinstance(v, dict) or "images_per_s" not in v:
                continue
            ratio = f"x{v['images_per_s'] / base:.2f}" if base and name != "baseline" else ""
            ms = f"{v['step_ms']:,.0f}" if v.get("step_ms") is not None else ""
            mem = f"{v['peak_memory_mb']:,.0f}" if v.get("peak_memory_mb") is not None else ""
            label = name + tf32_label(part, name, s)
            lines.append(f"{part:<9}{label:<50}{v['images_per_s']:>12,.1f}{ms:>10}{mem:>10}{ratio:>13}")
        if r.get("speedup_per_round"):
            lines.append(f"{part:<9}{'ours vs baseline in each round':<50}{'':>32}"
                         + ", ".join(f"x{x:.2f}" for x in r["speedup_per_round"]))
    return "\n".join(lines)

"""``simclr bench`` from a config: where the numbers come from (the machine), the source images, the selected
parts in order, and one JSON-able result."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch
from torch import Tensor

from ..config import Config
from ..models import build_model
from ..precision import choose_precision, device_name
from ..runtime import resolve_device
from .options import PARTS, BenchOptions, epoch_images
from .parts import bench_ablation, bench_augment, bench_epoch, bench_step_rounds
from .timing import Measurement


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: CPU model, cores, load, accelerator, library versions, date (UTC)."""
    cpu = device_name(torch.device("cpu"))
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


def _pool(cfg: Config, opts: BenchOptions, device: torch.device, log=print) -> tuple[Tensor, list[str] | None, str]:
    """Source images for the benchmark: random uint8 (the default, needing no data) or cfg.data (``--data``). The cost
    depends on the content (denormal floats in a training network), so the quoted figures come from real images."""
    B = cfg.train.batch_size
    need = B * (opts.warmup + max(opts.steps, 1))
    if "augment" in opts.parts:
        need = max(need, opts.aug_images + opts.warmup * B)
    if "epoch" in opts.parts:
        need = max(need, epoch_images(opts, device, 10**9, B) + B)
    if opts.real_data or opts.stream:
        from ..data import load_split

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
    choice = choose_precision(cfg.train.precision, device, build_model(cfg.model).to(device), cfg.model.image_size,
                              cfg.train.channels_last, log)
    precision = choice.name
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
            "precision": precision,  # ours; the peers' pipeline runs in fp32, as theirs does
            "precision_reason": choice.reason,
            "hardware": choice.hardware,
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
            result[part] = bench_ablation(pool, cfg, opts, device, precision, log)
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

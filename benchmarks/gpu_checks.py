"""Stage 0 of benchmarks/gpu.sh: the promises about CUDA that no CPU test can check, answered first on a lent GPU.

    python -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_checks.py OUT_DIR [options]

Runs as ONE process under torchrun, so that a process group exists (world size 1) for the synchronised BatchNorm
comparison. Each check prints ``CHECK <name>: <PASS|FAIL|INFO|ERROR|SKIP> <detail>`` as soon as it ends and
OUT_DIR/checks.json is rewritten after each one, so a time limit keeps what finished. In order of importance:

  1. sync_free_step   three training steps (the cifar10_resnet18 model, bf16, channels_last, SGD as configured;
                      then LARS, then under DDP) under ``torch.cuda.set_sync_debug_mode("error")``; on a failure the
                      same steps in "warn" mode list every synchronising line.
  2. sync_bn          torch's SyncBatchNorm vs GlobalBatchNorm (both forced onto their synchronised path with
                      1 process): the same outputs and gradients, ms per training step, synchronisations per step.
                      The faster correct one should become models.CUDA_SYNC_BN.
  3. deterministic    6 steps straight vs 3 steps, a checkpoint round trip and 3 more: bitwise equal with
                      train.deterministic, and whether it is without (cudnn.benchmark, atomics).
  4. eval_on_device   kNN, a linear head and feature extraction run on the GPU (and how long they take).
  5. memory           torch.cuda.mem_get_info and the device-memory check of the pretraining images.
  6. api              torch / torchvision versions within pyproject's bounds and the torch APIs the package uses.

Options: --device (cuda), --batch-size (512), --image-size (32), --steps (10, timed steps per variant), --quick
(tiny sizes, for the CPU smoke test of gpu.sh: the checks that need CUDA say SKIP).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

RESULTS: list[dict] = []
OUT: Path | None = None


def report(name: str, status: str, detail: str, **data) -> None:
    RESULTS.append({"check": name, "status": status, "detail": detail, **data})
    print(f"CHECK {name}: {status} {detail}", flush=True)
    if OUT is not None:
        (OUT / "checks.json").write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")


def _where(frames) -> str:
    """The innermost frame of the simclr package (else the innermost frame) as ``file:line function``."""
    ours = [f for f in frames if "simclr" in f.filename and "gpu_checks" not in f.filename] or list(frames)
    f = ours[-1]
    return f"{Path(f.filename).name}:{f.lineno} {f.name}"


# ----------------------------------------------------------------------------------------------------------- set-up


def _config(args, **over):
    from simclr.config import load_config

    return load_config("cifar10_resnet18", {"train.batch_size": args.batch_size, "model.image_size": args.image_size,
                                            "train.device": args.device, "train.progress": False, **over})


def _images(args, n: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g).to(device)


def _model(cfg, device: torch.device, seed: int = 0) -> nn.Module:
    from simclr.models import build_model

    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


class _Stepper:
    """The body of train.train_one_epoch for a GPU (loss queued, read every train.sync_every steps), step by step."""

    def __init__(self, args, device: torch.device, optimizer: str = "sgd", ddp: bool = False):
        from simclr.optim import Schedule, build_optimizer
        from simclr.precision import choose_precision
        from simclr.runtime import Dist
        from simclr.train import TrainState, _LossTally, device_batches

        self.cfg = _config(args, **{"optim.name": optimizer})
        self.device = device
        self.precision = choose_precision("auto", device).name
        model = _model(self.cfg, device)
        B = self.cfg.train.batch_size
        self.optimizer = build_optimizer(self.cfg.optim, model, B)
        self.schedule = Schedule(self.optimizer, self.cfg.optim, B, 100, 1)
        self.net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else model
        self.rt = Dist(device=device)
        self.state = TrainState()
        self.tally = _LossTally(device, self.rt, reduce=False)
        self.batches = device_batches(_images(args, 8 * B, device), self.cfg, 0, 0, self.rt)

    def step(self) -> None:
        from simclr.train import simclr_loss

        v0, v1 = next(self.batches)
        self.schedule(self.state.global_step)
        loss = simclr_loss(self.net, v0, v1, self.device, self.precision, self.cfg.train.channels_last, self.cfg.train.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.tally.add(loss.detach(), self.state.global_step + 1)
        self.state.global_step += 1


def _syncs(fn) -> list[str]:
    """Run ``fn`` in sync debug mode "warn"; the distinct lines that synchronised."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    lines = []
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            lines.append(f"{Path(w.filename).name}:{w.lineno}")
    return sorted(set(lines), key=lines.index)


# ----------------------------------------------------------------------------------------------------------- checks


def check_sync_free_step(args, device: torch.device) -> None:
    variants = [("sgd", False), ("lars", False), ("sgd", True)]
    for optimizer, ddp in variants:
        name = f"sync_free_step[{optimizer}{'+ddp' if ddp else ''}]"
        if device.type != "cuda":
            report(name, "SKIP", "needs CUDA (torch.cuda.set_sync_debug_mode)")
            continue
        try:
            s = _Stepper(args, device, optimizer, ddp)
            # two warm-up steps: cuDNN autotuning, the allocator, the epoch's permutation copy, and DDP's bucket
            # rebuild (in the second forward), each once per run and not per step
            s.step()
            s.step()
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(3):
                    s.step()
                error = None
            except RuntimeError as e:
                error = (str(e).splitlines()[0][:200], _where(traceback.extract_tb(e.__traceback__)))
            finally:
                torch.cuda.set_sync_debug_mode("default")
            if error is None:
                report(name, "PASS", "3 steps without a host-device synchronisation")
            else:
                lines = _syncs(lambda s=s: [s.step() for _ in range(3)])
                report(name, "FAIL", f"synchronised at {error[1]} ({error[0]}); all sync sites in 3 steps: {lines}",
                       sync_sites=lines)
        except Exception as e:  # a check's own failure must not stop the others
            report(name, "ERROR", f"{type(e).__name__}: {e}"[:300], where=_where(traceback.extract_tb(e.__traceback__)))


class _ForcedSyncBN(nn.SyncBatchNorm):
    """torch's SyncBatchNorm on its synchronised path even with 1 process (it skips that path when world size is 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.nn.modules._functions import SyncBatchNorm as SyncFn

        self.num_batches_tracked.add_(1)
        momentum = 0.0 if self.momentum is None else self.momentum
        return SyncFn.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps, momentum,
                            dist.group.WORLD, 1)


def _forced_global_bn_class():
    """GlobalBatchNorm on its all_reduce path with 1 process (it falls back to plain BatchNorm at world size 1)."""
    from simclr import models

    class _ForcedGlobalBN(models.GlobalBatchNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                return super().forward(x)
            return models._GlobalBatchNormFn.apply(x, self.weight, self.bias, self.eps, self)

    return _ForcedGlobalBN


def _convert(model: nn.Module, kind: str, device: torch.device) -> nn.Module:
    from simclr.models import convert_sync_batchnorm

    if kind == "torch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        for m in model.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = _ForcedSyncBN
        return model
    if kind == "global":
        model = convert_sync_batchnorm(model, device, impl="global")
        forced = _forced_global_bn_class()
        for m in model.modules():
            if type(m).__name__ == "GlobalBatchNorm":
                m.__class__ = forced
        return model
    return model


def check_sync_bn(args, device: torch.device) -> None:
    if device.type != "cuda" or not dist.is_initialized():
        report("sync_bn", "SKIP", "needs CUDA and a process group (run under torchrun)")
        return
    try:
        # agreement of one layer, fp32: outputs and input gradients
        g = torch.Generator(device="cpu").manual_seed(1)
        x = torch.randn(256, 64, 16, 16, generator=g).to(device).contiguous(memory_format=torch.channels_last)
        outs = {}
        for kind in ("plain", "torch", "global"):
            layer = _convert(nn.BatchNorm2d(64).to(device), kind, device)
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            (y * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum().backward()
            outs[kind] = (y.detach().float(), xi.grad.float(), layer.running_var.detach().clone())
        diff = {k: max(float((a - b).abs().max()) for a, b in zip(outs[k], outs["plain"])) for k in ("torch", "global")}
        ok = all(v < 1e-3 for v in diff.values())
        report("sync_bn_agree", "PASS" if ok else "FAIL", f"max |difference| from plain BatchNorm (output, input grad, "
               f"running var): torch {diff['torch']:.2e}, global {diff['global']:.2e}", **diff)

        from simclr.train import simclr_loss

        cfg = _config(args)
        B = cfg.train.batch_size
        images = _images(args, B, device)
        from simclr import augment

        with torch.no_grad():
            v0, v1 = augment.simclr_views(images, cfg.augment, cfg.model.image_size, 0, 0, 0)
        timing = {}
        for kind in ("plain", "torch", "global"):
            model = _convert(_model(cfg, device), kind, device)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step(model=model, opt=opt):
                loss = simclr_loss(model, v0, v1, device, "bf16", True, 0.5)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
            ms = 1000 * (time.perf_counter() - t0) / args.steps
            sites = _syncs(step)
            timing[kind] = {"ms_per_step": round(ms, 2), "sync_sites": sites}
        best = min(("torch", "global"), key=lambda k: timing[k]["ms_per_step"])
        report("sync_bn", "INFO", f"ms/step at batch {B} (bf16, channels_last): plain BN {timing['plain']['ms_per_step']}, "
               f"torch SyncBatchNorm {timing['torch']['ms_per_step']} ({len(timing['torch']['sync_sites'])} sync sites), "
               f"GlobalBatchNorm {timing['global']['ms_per_step']} ({len(timing['global']['sync_sites'])} sync sites); "
               f"faster: {best} (set models.CUDA_SYNC_BN if it agrees above)", timing=timing)
    except Exception as e:
        report("sync_bn", "ERROR", f"{type(e).__name__}: {e}"[:300], where=_where(traceback.extract_tb(e.__traceback__)))


def _train(args, device: torch.device, split: int | None, steps: int = 6) -> dict[str, torch.Tensor]:
    """``steps`` steps of train_one_epoch from a seeded model; with ``split``, stop there, round-trip model, optimizer
    and state through torch.save into a fresh model, and continue. Returns the final parameters and buffers."""
    from simclr.optim import Schedule, build_optimizer
    from simclr.precision import choose_precision
    from simclr.runtime import Dist
    from simclr.train import TrainState, device_batches, train_one_epoch

    cfg = _config(args, **{"train.batch_size": min(args.batch_size, 256)})
    B = cfg.train.batch_size
    images = _images(args, steps * B, device)
    rt, precision = Dist(device=device), choose_precision("auto", device).name

    def fresh():
        model = _model(cfg, device)
        opt = build_optimizer(cfg.optim, model, B)
        return model, opt, Schedule(opt, cfg.optim, B, steps, 1)

    quiet = lambda *a, **k: None  # noqa: E731
    model, opt, sched = fresh()
    state = TrainState()
    batches = device_batches(images, cfg, 0, 0, rt)
    train_one_epoch(model, opt, sched, itertools.islice(batches, split or steps), steps, cfg, state, rt, precision, log=quiet)
    if split:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": dict(state.__dict__)}, buf)
        buf.seek(0)
        saved = torch.load(buf, map_location=device, weights_only=True)
        model, opt, sched = fresh()
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["state"])
        train_one_epoch(model, opt, sched, device_batches(images, cfg, 0, state.step_in_epoch, rt), steps, cfg, state,
                        rt, precision, log=quiet)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def check_deterministic(args, device: torch.device) -> None:
    from simclr.runtime import configure_device

    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        for deterministic in (True, False):
            configure_device(device, reuse_memory=False, deterministic=deterministic)
            if not deterministic:
                torch.use_deterministic_algorithms(False)
                torch.backends.cudnn.deterministic = False
            straight = _train(args, device, None)
            again = _train(args, device, None)
            resumed = _train(args, device, 3)
            d_rep, d_res = _max_diff(straight, again), _max_diff(straight, resumed)
            name = f"deterministic[train.deterministic={str(deterministic).lower()}]"
            bitwise = d_rep == 0 and d_res == 0
            status = ("PASS" if bitwise else "FAIL") if deterministic else "INFO"
            report(name, status, f"6 steps twice: max |diff| {d_rep:.3g}; 6 steps vs 3 + checkpoint + 3: {d_res:.3g}"
                   + (" (bitwise)" if bitwise else ""), repeat=d_rep, resume=d_res)
    except Exception as e:
        report("deterministic", "ERROR", f"{type(e).__name__}: {e}"[:300], where=_where(traceback.extract_tb(e.__traceback__)))
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


def check_eval_on_device(args, device: torch.device) -> None:
    from simclr.evaluate import extract_features, knn_predict, train_head

    try:
        g = torch.Generator().manual_seed(0)
        n, m, d = (50_000, 10_000, 512) if not args.quick else (500, 100, 32)
        bank, queries = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        _sync(device)
        t0 = time.perf_counter()
        pred = knn_predict(bank, labels, queries, 10, 200, 0.1, device=device)
        _sync(device)
        t_knn = time.perf_counter() - t0
        t0 = time.perf_counter()
        k = min(1000, n)
        res = train_head(bank, labels, bank[:k], labels[:k], 10, epochs=2, batch_size=1000, device=device)
        _sync(device)
        t_head = time.perf_counter() - t0
        cfg = _config(args)
        model = _model(cfg, device).backbone
        images = _images(args, 4096 if not args.quick else 64, device).cpu()
        t0 = time.perf_counter()
        feats = extract_features(model, images, cfg.model.image_size, cfg.augment.mean, cfg.augment.std, device, "bf16", 1024)
        t_feat = time.perf_counter() - t0
        ok = pred.shape == (m,) and len(res.history["val_acc"]) == 2 and feats.shape[0] == len(images)
        report("eval_on_device", "PASS" if ok else "FAIL", f"on {device}: kNN {n:,} x {m:,} (k=200) {t_knn:.2f} s, "
               f"linear head 2 epochs of {n:,} {t_head:.2f} s, features of {len(images):,} images {t_feat:.2f} s")
    except Exception as e:
        report("eval_on_device", "ERROR", f"{type(e).__name__}: {e}"[:300], where=_where(traceback.extract_tb(e.__traceback__)))


def check_memory(args, device: torch.device) -> None:
    from simclr.hardware import check_device_memory, free_host_memory, image_bytes

    try:
        host = free_host_memory()
        if device.type != "cuda":
            report("memory", "SKIP", f"host: {host / 2**30 if host else float('nan'):.1f} GiB available; GPU check needs CUDA")
            return
        free, total = torch.cuda.mem_get_info(device)
        check_device_memory(image_bytes(50_000, 32), device)  # CIFAR-10 must fit
        report("memory", "PASS", f"host {host / 2**30 if host else float('nan'):.1f} GiB available; {device}: "
               f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free; CIFAR-10 (150 MB) passes the device check")
    except Exception as e:
        report("memory", "ERROR", f"{type(e).__name__}: {e}"[:300])


def check_api(args, device: torch.device) -> None:
    import torchvision

    def version(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("+")[0].split(".")[:3] if x.isdigit())

    needed = ["torch.compile", "torch.autocast", "torch.use_deterministic_algorithms", "torch.cuda.mem_get_info",
              "torch.cuda.set_sync_debug_mode", "torch.cuda.is_bf16_supported", "torch.distributed.all_gather_into_tensor",
              "torch.nn.SyncBatchNorm.convert_sync_batchnorm", "torch.optim.SGD", "torch._foreach_norm"]
    missing = []
    for dotted in needed:
        obj = sys.modules["torch"]
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part, None)
            if obj is None:
                missing.append(dotted)
                break
    tv, vv = version(torch.__version__), version(torchvision.__version__)
    ok = (2, 4) <= tv[:2] and tv <= (2, 14, 1) and (0, 19) <= vv[:2] and vv <= (0, 29, 1) and not missing
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    report("api", "PASS" if ok else "FAIL", f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
           f"Python {sys.version.split()[0]}, CUDA {torch.version.cuda}, {gpu}; cuDNN TF32 "
           f"{torch.backends.cudnn.allow_tf32}, matmul TF32 {torch.backends.cuda.matmul.allow_tf32}"
           + (f"; missing: {missing}" if missing else ""))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated subset of: api, sync_free_step, sync_bn, deterministic, eval_on_device, memory")
    args = p.parse_args()
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    from simclr.runtime import init_distributed

    rt = init_distributed(args.device)
    device = rt.device
    if device.type == "cuda" and not dist.is_initialized():  # not under torchrun: a 1-process group of our own
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("nccl", rank=0, world_size=1)
    checks = (check_api, check_sync_free_step, check_sync_bn, check_deterministic, check_eval_on_device, check_memory)
    only = set(args.only.split(",")) if args.only else None
    for check in checks:
        if only is None or check.__name__.removeprefix("check_") in only:
            t0 = time.perf_counter()
            check(args, device)
            RESULTS[-1]["seconds"] = round(time.perf_counter() - t0, 1)
    if dist.is_initialized():
        dist.destroy_process_group()
    bad = [r["check"] for r in RESULTS if r["status"] in ("FAIL", "ERROR")]
    print(f"CHECKS done: {len(RESULTS)} results, {len(bad)} failed or errored" + (f": {bad}" if bad else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One SimCLR step in 2 gloo processes against the same step in 1 process, both against a float64 reference.

    python benchmarks/ddp_numerics.py --data ../shared/data/cifar10 [--batch 32] [--out results/ddp_numerics.json]

ResNet-18 (CIFAR stem), a seeded pick of ``--batch`` real images, fp32, NCHW, 1 thread per process, global
BatchNorm (``--sync-bn``) in the 2-process run. The same weights and the same views go through

- ``fp64``: one process, the whole model in float64 (the reference: rounding there is ~1e-16);
- ``one``: one process, fp32, torch's native BatchNorm;
- ``two``: two gloo processes, fp32, DDP + :class:`simclr.models.GlobalBatchNorm`, NT-Xent over the gathered batch.

For each parameter tensor it prints ``|g - g_fp64| / |g_fp64|`` of both fp32 runs and ``|g_two - g_one| / |g_one|``
(the first SGD step is ``-lr * g``, so these are also ratios of the step), per layer and the worst over the model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from simclr import augment
from simclr.config import load_config
from simclr.loss import nt_xent
from simclr.models import build_model, convert_sync_batchnorm

SEED = 0


def load_images(root: Path, n: int) -> torch.Tensor:
    """uint8 [n, 3, 32, 32]: a seeded pick of the training images of an image folder (``ROOT/train/<class>/*``)."""
    files = sorted((root / "train").glob("*/*"))
    if len(files) < n:
        sys.exit(f"error: {root}/train holds {len(files)} images, fewer than --batch {n}")
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(SEED))[:n].tolist()
    arrays = [np.asarray(Image.open(files[i]).convert("RGB").resize((32, 32))) for i in pick]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def gradients(model: torch.nn.Module, v0: torch.Tensor, v1: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Gradients of the NT-Xent loss of one step (both views in one forward, as in training)."""
    model.train()
    model.zero_grad(set_to_none=True)
    _, z = model(torch.cat([v0, v1]))
    z0, z1 = z.chunk(2)
    nt_xent(z0, z1, temperature).backward()
    return {k: p.grad.detach().double().clone() for k, p in model.named_parameters()}


def setup(batch: int, images: torch.Tensor):
    cfg = load_config(None, {"model.image_size": 32, "train.batch_size": batch})
    torch.manual_seed(SEED)
    model = build_model(cfg.model)
    v0, v1 = augment.simclr_views(images, cfg.augment, 32, SEED, 0, 0, global_batch=batch)
    return cfg, model, v0, v1


def worker(rank: int, world: int, store: str, images: torch.Tensor, out: str, dtype: torch.dtype) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    n = len(images) // world
    cfg, model, v0, v1 = setup(len(images), images)
    rows = slice(rank * n, (rank + 1) * n)
    model = convert_sync_batchnorm(model, torch.device("cpu")).to(dtype)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    grads = gradients(ddp, v0[rows].to(dtype), v1[rows].to(dtype), cfg.train.temperature)
    if rank == 0:
        torch.save({k.removeprefix("module."): g for k, g in grads.items()}, out)
    dist.barrier()
    dist.destroy_process_group()


def two_processes(images: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "two.pt")
        mp.spawn(worker, args=(2, os.path.join(tmp, "store"), images, path, dtype), nprocs=2, join=True)
        return torch.load(path, weights_only=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="write the per-layer figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = load_images(args.data, args.batch)
    cfg, model, v0, v1 = setup(args.batch, images)
    one = gradients(model, v0, v1, cfg.train.temperature)
    fp64 = gradients(model.double(), v0.double(), v1.double(), cfg.train.temperature)
    two, two64 = (two_processes(images, dtype) for dtype in (torch.float32, torch.float64))

    rows = [{"param": k, "one_vs_fp64": rel(one[k], fp64[k]), "two_vs_fp64": rel(two[k], fp64[k]),
             "two_vs_one": rel(two[k], one[k])} for k in fp64]
    print(f"{'parameter':55s} {'1 proc vs fp64':>15s} {'2 proc vs fp64':>15s} {'2 vs 1':>10s}")
    for r in rows:
        print(f"{r['param']:55s} {r['one_vs_fp64']:15.2e} {r['two_vs_fp64']:15.2e} {r['two_vs_one']:10.2e}")
    flat = {name: torch.cat([g.flatten() for g in run.values()]) for name, run in (("one", one), ("two", two), ("fp64", fp64))}
    summary = {
        "batch": args.batch, "torch": torch.__version__,
        # the 2-process computation in float64 against the 1-process one: checks the gather and global BatchNorm
        # themselves, free of float32 rounding
        "two_fp64_vs_fp64_worst_layer": max(rel(two64[k], fp64[k]) for k in fp64),
        "worst_layer": {key: max(r[key] for r in rows) for key in ("one_vs_fp64", "two_vs_fp64", "two_vs_one")},
        "whole_step": {"one_vs_fp64": rel(flat["one"], flat["fp64"]), "two_vs_fp64": rel(flat["two"], flat["fp64"]),
                       "two_vs_one": rel(flat["two"], flat["one"])},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, "layers": rows}, indent=2))


if __name__ == "__main__":
    main()

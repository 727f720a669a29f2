"""One process of the 2-process gloo test in test_distributed_loss.py (not a test module itself).

Usage: python dist_loss_worker.py RANK WORLD_SIZE STORE_FILE INPUTS_PT OUT_DIR

Loads the global batch written by the test, takes this rank's rows, runs the computations below and
saves what it observed to OUT_DIR/rank{RANK}.pt; the test compares that with one process.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import simclr.loss as loss_module
from simclr.loss import all_gather_with_grad, multicrop_nt_xent, nt_xent


def _local(x: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    return x[rank * n : (rank + 1) * n].clone()


def gather_dropping_remote_grads(x: torch.Tensor) -> torch.Tensor:
    """The classic bug: plain all_gather, own slice put back so only the LOCAL loss sends gradient."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def main() -> None:
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    store, inputs_path, out_dir = sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    inp = torch.load(inputs_path, weights_only=True)
    t = float(inp["temperature"])
    n = inp["z0"].shape[0] // world
    out: dict[str, torch.Tensor] = {}

    # 1. The gather alone: forward order, and backward = sum over ranks of each rank's upstream gradient.
    x = _local(inp["z0"], rank, n).requires_grad_()
    gathered = all_gather_with_grad(x)
    (gathered * inp["gather_weights"][rank]).sum().backward()
    out["gathered"] = gathered.detach()
    out["gather_grad"] = x.grad

    # 2. The loss with gather, in fp64 and fp32: value on this rank, global mean, input gradients.
    for tag, dtype in (("fp64", torch.float64), ("fp32", torch.float32)):
        a0 = _local(inp["z0"], rank, n).to(dtype).requires_grad_()
        a1 = _local(inp["z1"], rank, n).to(dtype).requires_grad_()
        loss = nt_xent(a0, a1, temperature=t)
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        out[f"loss_{tag}"] = loss.detach()
        out[f"loss_mean_{tag}"] = mean / world
        out[f"grad0_{tag}"] = a0.grad
        out[f"grad1_{tag}"] = a1.grad

    # 3. gather=False keeps everything on this rank.
    out["loss_local_only"] = nt_xent(_local(inp["z0"], rank, n), _local(inp["z1"], rank, n), t, gather=False)

    # 4. Negative control: the same loss with a gather that drops remote gradients must disagree.
    original = loss_module.all_gather_with_grad
    loss_module.all_gather_with_grad = gather_dropping_remote_grads
    try:
        b0 = _local(inp["z0"], rank, n).requires_grad_()
        b1 = _local(inp["z1"], rank, n).requires_grad_()
        bad = nt_xent(b0, b1, temperature=t)
        bad.backward()
    finally:
        loss_module.all_gather_with_grad = original
    out["loss_buggy_gather"] = bad.detach()
    out["grad0_buggy_gather"] = b0.grad

    # 5. Multi-crop: two global views and the small crops' projections, gathered in one collective, fp64.
    views = [_local(v, rank, n).requires_grad_() for v in (inp["z0"], inp["z1"], *inp["small"])]
    mc = multicrop_nt_xent(views, temperature=t)
    mc.backward()
    mc_mean = mc.detach().clone()
    dist.all_reduce(mc_mean)
    out["multicrop_loss"] = mc.detach()
    out["multicrop_loss_mean"] = mc_mean / world
    out["multicrop_grads"] = torch.stack([v.grad for v in views])

    # 6. The decoupled loss (DCL), two views and multi-crop, fp64: the same gather, another denominator.
    for tag, vs in (("dcl", (inp["z0"], inp["z1"])), ("dcl_multicrop", (inp["z0"], inp["z1"], *inp["small"]))):
        views = [_local(v, rank, n).requires_grad_() for v in vs]
        dcl = multicrop_nt_xent(views, temperature=t, decoupled=True)
        dcl.backward()
        dcl_mean = dcl.detach().clone()
        dist.all_reduce(dcl_mean)
        out[f"{tag}_loss_mean"] = dcl_mean / world
        out[f"{tag}_grads"] = torch.stack([v.grad for v in views])

    # 7. End to end with DDP: a linear projection, the two views in one forward, DDP averages grads.
    model = torch.nn.Linear(inp["weight"].shape[1], inp["weight"].shape[0]).double()
    with torch.no_grad():
        model.weight.copy_(inp["weight"])
        model.bias.copy_(inp["bias"])
    ddp = DistributedDataParallel(model)
    z = ddp(torch.cat([_local(inp["x0"], rank, n), _local(inp["x1"], rank, n)]))
    z0, z1 = z.chunk(2)
    nt_xent(z0, z1, temperature=t).backward()
    out["ddp_weight_grad"] = model.weight.grad
    out["ddp_bias_grad"] = model.bias.grad

    torch.save(out, out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

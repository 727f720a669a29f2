"""NT-Xent across 2 gloo processes equals NT-Xent in one process on the concatenated batch.

The global batch is 2 ranks x N images. Rank r holds rows r*N .. r*N+N-1 of both views.

Scaling, explicitly. Let L = single-process loss = mean over all 2*W*N anchors, and L_r = rank r's
loss = mean over its 2N local anchors (negatives from all ranks). Then L = (1/W) * sum_r L_r. Rank r's
inputs x_r receive, thanks to the all_reduce in the gather's backward, d(sum_s L_s)/dx_r = W * dL/dx_r.
DDP averages parameter gradients over ranks, (1/W) * sum_r dL_r/dtheta = dL/dtheta. So the tests check:
    mean_r L_r == L;   L_r == mean of the single-process per-anchor losses of rank r's anchors;
    grad x_r / W == dL/dx_r (same rows);   DDP-averaged parameter gradient == dL/dtheta.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from simclr.loss import multicrop_nt_xent, nt_xent

WORLD = 2
N = 4  # images per rank
D = 8  # projection dim
D_IN = 6  # input dim of the linear projection in the DDP check
TEMPERATURE = 0.2
WORKER = Path(__file__).with_name("dist_loss_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


def per_anchor_losses(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """Single-process NT-Xent per anchor, [2N]: anchors z0 rows then z1 rows (written independently)."""
    z = F.normalize(torch.cat([z0, z1]).double(), dim=1)
    two_n = z.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(two_n, dtype=torch.bool), float("-inf"))
    positive = (torch.arange(two_n) + two_n // 2) % two_n
    return torch.logsumexp(sim, dim=1) - sim[torch.arange(two_n), positive]


def rows_of(rank: int) -> slice:
    return slice(rank * N, (rank + 1) * N)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_loss")
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(WORLD * N, D, generator=g, dtype=torch.float64)
    inputs = {
        "temperature": torch.tensor(TEMPERATURE, dtype=torch.float64),
        "z0": z0,
        "z1": z0 + 0.8 * torch.randn(WORLD * N, D, generator=g, dtype=torch.float64),
        # A different upstream gradient on each rank, so the gather's backward must sum them.
        "gather_weights": torch.randn(WORLD, WORLD * N, D, generator=g, dtype=torch.float64),
        "x0": torch.randn(WORLD * N, D_IN, generator=g, dtype=torch.float64),
        "x1": torch.randn(WORLD * N, D_IN, generator=g, dtype=torch.float64),
        "weight": torch.randn(D, D_IN, generator=g, dtype=torch.float64),
        "bias": torch.randn(D, generator=g, dtype=torch.float64),
        "small": z0 + 1.2 * torch.randn(2, WORLD * N, D, generator=g, dtype=torch.float64),  # two small crops each
    }
    torch.save(inputs, tmp / "inputs.pt")

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p))
    store = tmp / "store"
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), str(WORLD), str(store),
                               str(tmp / "inputs.pt"), str(tmp)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(WORLD)]
    failures = []
    for rank, proc in enumerate(procs):
        try:
            _, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"rank {rank} timed out (collective mismatch / deadlock?)")
        if proc.returncode != 0:
            failures.append(f"rank {rank} exited {proc.returncode}:\n{stderr}")
    assert not failures, "\n".join(failures)
    results = [torch.load(tmp / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    return inputs, results


def test_gather_forward_and_backward(run):
    inputs, results = run
    w = inputs["gather_weights"]
    for rank, res in enumerate(results):
        torch.testing.assert_close(res["gathered"], inputs["z0"], rtol=0, atol=0)
        # y = gather(x_rank); each rank backpropagates sum(y * w[r]); rank's x gets sum_r w[r][its rows].
        torch.testing.assert_close(res["gather_grad"], w[:, rows_of(rank)].sum(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("tag", "tol"), [("fp64", 1e-10), ("fp32", 2e-6)])
def test_loss_value_matches_single_process(run, tag, tol):
    inputs, results = run
    z0, z1 = inputs["z0"], inputs["z1"]
    single = nt_xent(z0, z1, TEMPERATURE)
    per_anchor = per_anchor_losses(z0, z1, TEMPERATURE)
    torch.testing.assert_close(single, per_anchor.mean(), rtol=1e-12, atol=1e-12)

    for rank, res in enumerate(results):
        torch.testing.assert_close(res[f"loss_mean_{tag}"].double(), single, rtol=tol, atol=tol)
        # Rank r's own loss covers exactly its anchors with their positives at the global indices
        # (the check a positive mask that is only right on rank 0 would fail).
        mine = torch.cat([per_anchor[rows_of(rank)], per_anchor[WORLD * N:][rows_of(rank)]])
        torch.testing.assert_close(res[f"loss_{tag}"].double(), mine.mean(), rtol=tol, atol=tol)
    assert not torch.allclose(results[0][f"loss_{tag}"], results[1][f"loss_{tag}"])


@pytest.mark.parametrize(("tag", "tol"), [("fp64", 1e-10), ("fp32", 1e-5)])
def test_input_gradients_match_single_process(run, tag, tol):
    inputs, results = run
    z0 = inputs["z0"].clone().requires_grad_()
    z1 = inputs["z1"].clone().requires_grad_()
    nt_xent(z0, z1, TEMPERATURE).backward()  # gradient of the global mean L

    for rank, res in enumerate(results):
        # Rank r gets d(sum_s L_s)/dx_r = W * dL/dx_r; DDP's 1/W averaging happens on the parameters.
        torch.testing.assert_close(res[f"grad0_{tag}"].double() / WORLD, z0.grad[rows_of(rank)],
                                   rtol=tol, atol=tol)
        torch.testing.assert_close(res[f"grad1_{tag}"].double() / WORLD, z1.grad[rows_of(rank)],
                                   rtol=tol, atol=tol)


def test_gather_without_remote_gradients_is_detected(run):
    """A gather whose backward drops other ranks' gradients gives the right value, wrong gradients."""
    inputs, results = run
    z0 = inputs["z0"].clone().requires_grad_()
    nt_xent(z0, inputs["z1"], TEMPERATURE).backward()
    for rank, res in enumerate(results):
        torch.testing.assert_close(res["loss_buggy_gather"], res["loss_fp64"], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(res["grad0_buggy_gather"] / WORLD, z0.grad[rows_of(rank)], atol=1e-6)


def test_ddp_parameter_gradients_match_single_process(run):
    inputs, results = run
    model = torch.nn.Linear(D_IN, D).double()
    with torch.no_grad():
        model.weight.copy_(inputs["weight"])
        model.bias.copy_(inputs["bias"])
    nt_xent(model(inputs["x0"]), model(inputs["x1"]), TEMPERATURE).backward()
    for res in results:
        torch.testing.assert_close(res["ddp_weight_grad"], model.weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res["ddp_bias_grad"], model.bias.grad, rtol=1e-10, atol=1e-12)


def test_gather_false_is_the_local_loss(run):
    inputs, results = run
    for rank, res in enumerate(results):
        local = nt_xent(inputs["z0"][rows_of(rank)], inputs["z1"][rows_of(rank)], TEMPERATURE)
        torch.testing.assert_close(res["loss_local_only"], local, rtol=1e-12, atol=1e-12)


def test_multicrop_loss_and_gradients_match_single_process(run):
    """Multi-crop NT-Xent under 2 processes: the global mean is the 1-process loss on the global batch, and each
    rank's views get W times the 1-process gradient of their rows (float64)."""
    inputs, results = run
    views = [v.clone().requires_grad_() for v in (inputs["z0"], inputs["z1"], *inputs["small"])]
    single = multicrop_nt_xent(views, TEMPERATURE)
    single.backward()
    for rank, res in enumerate(results):
        torch.testing.assert_close(res["multicrop_loss_mean"], single.detach(), rtol=1e-10, atol=1e-12)
        for j, v in enumerate(views):
            torch.testing.assert_close(res["multicrop_grads"][j] / WORLD, v.grad[rows_of(rank)], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(results[0]["multicrop_loss"], results[1]["multicrop_loss"])


@pytest.mark.parametrize("tag", ["dcl", "dcl_multicrop"])
def test_decoupled_loss_and_gradients_match_single_process(run, tag):
    """The decoupled loss under 2 processes (two views, then with the small crops): the global mean is the 1-process
    loss on the global batch and each rank's views get W times the 1-process gradient of their rows (float64)."""
    inputs, results = run
    source = (inputs["z0"], inputs["z1"]) + ((*inputs["small"],) if tag == "dcl_multicrop" else ())
    views = [v.clone().requires_grad_() for v in source]
    single = multicrop_nt_xent(views, TEMPERATURE, decoupled=True)
    single.backward()
    assert not torch.allclose(single, multicrop_nt_xent(source, TEMPERATURE))  # another loss than NT-Xent
    for rank, res in enumerate(results):
        torch.testing.assert_close(res[f"{tag}_loss_mean"], single.detach(), rtol=1e-10, atol=1e-12)
        for j, v in enumerate(views):
            torch.testing.assert_close(res[f"{tag}_grads"][j] / WORLD, v.grad[rows_of(rank)], rtol=1e-9, atol=1e-12)

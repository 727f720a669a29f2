"""NT-Xent against a hand-written per-anchor reference, plus its numerical and structural properties."""

from __future__ import annotations

import math

import pytest
import torch

from simclr.loss import all_gather_with_grad, multicrop_nt_xent, nt_xent


def reference_per_anchor(z0: torch.Tensor, z1: torch.Tensor, temperature: float, decoupled: bool = False) -> torch.Tensor:
    """Eq. (1) of Chen et al. 2020 written one anchor and one candidate at a time, in float64; ``decoupled``: DCL,
    Yeh et al. 2022 eq. (6), the same with the positive left out of the denominator.

    Anchor k in [0, 2N) is z0[k] for k < N and z1[k - N] otherwise; its positive is (k + N) mod 2N.
    Returns the 2N per-anchor losses (differentiable with respect to z0 and z1).
    """
    z = torch.cat([z0, z1]).double()
    two_n = z.shape[0]
    n = two_n // 2
    losses = []
    for k in range(two_n):
        pos = (k + n) % two_n
        sims = [torch.dot(z[k], z[m]) / (z[k].norm() * z[m].norm()) / temperature for m in range(two_n)]
        numerator = torch.exp(sims[pos])
        denominator = sum(torch.exp(sims[m]) for m in range(two_n) if m != k and not (decoupled and m == pos))
        losses.append(-torch.log(numerator / denominator))
    return torch.stack(losses)


def reference(z0: torch.Tensor, z1: torch.Tensor, temperature: float, decoupled: bool = False) -> torch.Tensor:
    return reference_per_anchor(z0, z1, temperature, decoupled).mean()


def _pair(n: int, d: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g, dtype=dtype)
    # Correlated second view, so the positive is not just another random vector.
    z1 = z0 + 0.7 * torch.randn(n, d, generator=g, dtype=dtype)
    return z0, z1


@pytest.mark.parametrize(("n", "d", "temperature"), [(1, 3, 0.5), (2, 4, 0.5), (5, 7, 0.1), (8, 16, 1.0),
                                                     (6, 5, 0.05)])
def test_value_and_gradients_match_naive_reference_fp64(n, d, temperature):
    z0, z1 = _pair(n, d, seed=n * 100 + d)
    a0, a1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    b0, b1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()

    loss = nt_xent(a0, a1, temperature=temperature)
    expected = reference(b0, b1, temperature)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)

    loss.backward()
    expected.backward()
    torch.testing.assert_close(a0.grad, b0.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("n", "d", "temperature"), [(2, 4, 0.5), (5, 7, 0.1), (6, 5, 0.05)])
def test_decoupled_matches_naive_reference_fp64(n, d, temperature):
    z0, z1 = _pair(n, d, seed=n * 10 + d)
    a0, a1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    b0, b1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    loss = nt_xent(a0, a1, temperature, decoupled=True)
    expected = reference(b0, b1, temperature, decoupled=True)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(a0.grad, b0.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-9, atol=1e-12)
    # leaving the positive out lowers every anchor's loss: by log(1 / (1 - p)), p the positive's softmax share
    assert loss < nt_xent(z0, z1, temperature)


def test_decoupled_needs_a_negative():
    z0, z1 = _pair(1, 3, seed=0)
    with pytest.raises(ValueError, match="at least two images"):
        nt_xent(z0, z1, 0.5, decoupled=True)
    with pytest.raises(ValueError, match="at least two images"):
        multicrop_nt_xent([z0, z1, z0 + 1], 0.5, decoupled=True)


def test_float32_inputs_match_fp64_reference():
    z0, z1 = _pair(16, 32, seed=3)
    a0 = z0.float().requires_grad_()
    a1 = z1.float().requires_grad_()
    loss = nt_xent(a0, a1, temperature=0.2)
    assert loss.dtype == torch.float32
    loss.backward()

    b0, b1 = z0.clone().requires_grad_(), z1.clone().requires_grad_()
    expected = reference(b0, b1, 0.2)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a0.grad.double(), b0.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a1.grad.double(), b1.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-6, 1e4, 1e15])
def test_low_temperature_and_extreme_norms_are_finite_and_correct(scale):
    z0, z1 = _pair(12, 16, seed=5)
    # Near-duplicate rows make several logits close to the maximum 1 / T = 20.
    z0[6:] = z0[:6] + 1e-3 * z0[6:]
    z1[6:] = z1[:6] + 1e-3 * z1[6:]
    expected = reference(z0, z1, 0.05)

    a0 = (z0 * scale).float().requires_grad_()
    a1 = (z1 * scale).float().requires_grad_()
    loss = nt_xent(a0, a1, temperature=0.05)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(a0.grad).all() and torch.isfinite(a1.grad).all()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_close_to_float32():
    z0, z1 = _pair(32, 64, seed=7, dtype=torch.float32)
    h0 = z0.bfloat16().requires_grad_()
    h1 = z1.bfloat16().requires_grad_()
    loss = nt_xent(h0, h1, temperature=0.1)
    loss.backward()

    assert loss.dtype == torch.float32
    # Computed in fp32 after the cast: identical (up to summation order) to fp32 on the rounded inputs.
    torch.testing.assert_close(loss, nt_xent(h0.detach().float(), h1.detach().float(), 0.1),
                               rtol=1e-6, atol=1e-6)
    # And close to the fp32 loss of the unrounded inputs (bf16 rounding of the inputs only).
    torch.testing.assert_close(loss, nt_xent(z0, z1, 0.1), rtol=1e-2, atol=1e-2)
    assert h0.grad.dtype == torch.bfloat16
    assert torch.isfinite(h0.grad.float()).all() and torch.isfinite(h1.grad.float()).all()


def test_autocast_does_not_lower_precision():
    z0, z1 = _pair(32, 64, seed=11, dtype=torch.float32)
    exact = nt_xent(z0, z1, temperature=0.05)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = nt_xent(z0, z1, temperature=0.05)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact, rtol=1e-6, atol=1e-6)


def test_perfect_alignment_gives_near_zero_loss():
    n = 8
    z = torch.eye(n, 16, dtype=torch.float64)  # orthogonal unit rows: positives similarity 1, negatives 0
    loss = nt_xent(z, z.clone(), temperature=0.05)
    # Each anchor: log(1 + (2N - 2) * exp(-1 / T)), ~3e-8 (fp32 rounds it to 0, hence fp64 here).
    expected = math.log1p((2 * n - 2) * math.exp(-20.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert 0 <= nt_xent(z.float(), z.float(), temperature=0.05).item() < 1e-6

    z0, _ = _pair(n, 16, seed=13, dtype=torch.float32)
    random_z1 = torch.randn(n, 16, generator=torch.Generator().manual_seed(14))
    assert nt_xent(z0, z0.clone(), 0.5) < nt_xent(z0, random_z1, 0.5)


def test_random_projections_give_log_of_two_n_minus_one():
    n, d = 64, 4096
    g = torch.Generator().manual_seed(17)
    z0 = torch.randn(n, d, generator=g)
    z1 = torch.randn(n, d, generator=g)
    # In high dimension random cosine similarities are ~0, so every candidate is equally likely.
    assert nt_xent(z0, z1, temperature=0.5).item() == pytest.approx(math.log(2 * n - 1), abs=0.01)


def test_symmetric_in_views_and_invariant_to_joint_permutation_and_scale():
    z0, z1 = _pair(10, 12, seed=19)
    loss = nt_xent(z0, z1, 0.3)
    torch.testing.assert_close(nt_xent(z1, z0, 0.3), loss, rtol=1e-12, atol=1e-12)

    perm = torch.randperm(10, generator=torch.Generator().manual_seed(20))
    torch.testing.assert_close(nt_xent(z0[perm], z1[perm], 0.3), loss, rtol=1e-12, atol=1e-12)

    row_scale = torch.rand(10, 1, generator=torch.Generator().manual_seed(21), dtype=torch.float64) + 0.1
    torch.testing.assert_close(nt_xent(z0 * row_scale, z1 * 3.0, 0.3), loss, rtol=1e-12, atol=1e-12)

    # Pairing matters: breaking the correspondence between views must change the loss.
    assert not torch.allclose(nt_xent(z0, z1[perm], 0.3), loss)


def test_not_distributed_gather_is_identity():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_with_grad(x) is x
    z0, z1 = _pair(6, 5, seed=23)
    torch.testing.assert_close(nt_xent(z0, z1, 0.5, gather=True), nt_xent(z0, z1, 0.5, gather=False))


@pytest.mark.parametrize(("z0", "z1", "temperature"), [
    (torch.zeros(4, 3), torch.zeros(5, 3), 0.5),
    (torch.zeros(4, 3), torch.zeros(4, 2), 0.5),
    (torch.zeros(4), torch.zeros(4), 0.5),
    (torch.zeros(0, 3), torch.zeros(0, 3), 0.5),
    (torch.ones(4, 3), torch.ones(4, 3), 0.0),
    (torch.ones(4, 3), torch.ones(4, 3), -1.0),
])
def test_invalid_arguments_raise(z0, z1, temperature):
    with pytest.raises(ValueError):
        nt_xent(z0, z1, temperature)


# ----------------------------------------------------------------------------- multi-crop


def reference_multicrop(views: list[torch.Tensor], temperature: float, n_global: int = 2,
                        decoupled: bool = False) -> torch.Tensor:
    """Multi-crop NT-Xent one positive pair and one candidate at a time, in float64: for every image and every
    ordered pair (a, p) of two of its views with at least one global, -log(exp(s_ap/T) / sum over all other views
    k != a of the batch of exp(s_ak/T)); the mean over all such pairs. ``decoupled``: the sum over the views of the
    other images only."""
    v, n = len(views), views[0].shape[0]
    flat = [(j, i, views[j][i].double()) for j in range(v) for i in range(n)]

    def sim(x, y):
        return torch.dot(x, y) / (x.norm() * y.norm()) / temperature

    losses = []
    for ja, ia, za in flat:
        denominator = sum(torch.exp(sim(za, zk)) for jk, ik, zk in flat
                          if (jk, ik) != (ja, ia) and not (decoupled and ik == ia))
        for jp in range(v):
            if jp != ja and (ja < n_global or jp < n_global):
                losses.append(-torch.log(torch.exp(sim(za, views[jp][ia].double())) / denominator))
    return torch.stack(losses).mean()


def _views(v: int, n: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    return [base + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(v)]


@pytest.mark.parametrize(("v", "n", "d", "temperature"), [(3, 2, 4, 0.5), (4, 3, 5, 0.2), (8, 4, 6, 0.1), (2, 5, 3, 0.5)])
def test_multicrop_matches_naive_reference_fp64(v, n, d, temperature):
    views = [x.requires_grad_() for x in _views(v, n, d, seed=v * 10 + n)]
    ref_views = [x.detach().clone().requires_grad_() for x in views]
    loss = multicrop_nt_xent(views, temperature)
    expected = reference_multicrop(ref_views, temperature)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    expected.backward()
    for a, b in zip(views, ref_views):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("v", "n", "d", "temperature"), [(3, 2, 4, 0.5), (6, 3, 5, 0.1)])
def test_decoupled_multicrop_matches_naive_reference_fp64(v, n, d, temperature):
    views = [x.requires_grad_() for x in _views(v, n, d, seed=v + n)]
    ref_views = [x.detach().clone().requires_grad_() for x in views]
    loss = multicrop_nt_xent(views, temperature, decoupled=True)
    expected = reference_multicrop(ref_views, temperature, decoupled=True)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    expected.backward()
    for a, b in zip(views, ref_views):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)
    # with two views the multi-view rule is nt_xent's decoupled loss, and the reference agrees
    z0, z1 = _pair(5, 4, seed=2)
    assert torch.equal(multicrop_nt_xent([z0, z1], 0.2, decoupled=True), nt_xent(z0, z1, 0.2, decoupled=True))
    torch.testing.assert_close(reference_multicrop([z0, z1], 0.2, decoupled=True), reference(z0, z1, 0.2, decoupled=True))


def test_multicrop_with_two_views_is_nt_xent_exactly():
    z0, z1 = _pair(6, 8, seed=3, dtype=torch.float32)
    assert torch.equal(multicrop_nt_xent([z0, z1], 0.2), nt_xent(z0, z1, 0.2))
    # and the general formula agrees with it too (the pair rule reduces to eq. 1)
    assert torch.allclose(reference_multicrop([z0, z1], 0.2), reference(z0, z1, 0.2).double(), atol=1e-9)


def test_multicrop_small_crops_are_not_paired_with_each_other():
    """The pair rule is not "all pairs": counting small-small pairs (n_global = all views) changes the loss."""
    views = _views(4, 3, 5, seed=1)
    ours = multicrop_nt_xent(views, 0.5)
    all_pairs = reference_multicrop(views, 0.5, n_global=4)
    torch.testing.assert_close(multicrop_nt_xent(views, 0.5, n_global=4), all_pairs, rtol=1e-6, atol=1e-6)
    assert abs(float(ours - all_pairs)) > 1e-3


def test_multicrop_rejects_bad_input():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError):
        multicrop_nt_xent([z], 0.5)
    with pytest.raises(ValueError):
        multicrop_nt_xent([z, z, torch.randn(3, 3)], 0.5)
    with pytest.raises(ValueError):
        multicrop_nt_xent([z, z, z], 0.0)

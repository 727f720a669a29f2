"""NT-Xent, the SimCLR contrastive loss, and a cross-process gather that keeps gradients.

Reference: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, eq. (1). With ``decoupled=True`` the positive leaves the denominator: the decoupled
contrastive loss (DCL) of Yeh et al., "Decoupled Contrastive Learning", ECCV 2022, eq. (6), whose point is that the
positive's share of the softmax shrinks NT-Xent's gradient most at small batches and early in training.

Under DDP every process holds N images (2N projections). The loss of one process uses its own 2N
projections as anchors and the projections of ALL processes as candidates, so the negatives come from
the global batch of 2 * world * N projections. The per-process loss is the mean over its 2N local
anchors; DDP averages parameter gradients over processes, which gives the gradient of the mean over
all 2 * world * N anchors, i.e. exactly the single-process loss on the global batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["all_gather_with_grad", "multicrop_nt_xent", "nt_xent"]


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_gather_into(out: Tensor, x: Tensor) -> None:
    # torch 2.14 deprecates all_gather_into_tensor in favour of all_gather_single; older releases
    # (the project supports torch >= 2.4) only have the former.
    gather_fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather_fn(out, x)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every process the gradient of its own rows from all losses."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.n = x.shape[0]
        x = x.contiguous()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        _all_gather_into(out, x)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        # Process r's loss depends on every process's rows, so d(sum of all losses)/d(my rows) is the
        # sum over processes of the gradient each computed for my slice. Clone: all_reduce is in place
        # and grad_out may be shared with other consumers of the graph.
        grad = grad_out.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.n
        return grad[start : start + ctx.n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Gather ``x`` from all processes, differentiably.

    Forward: ``all_gather`` along dim 0, rows ordered by rank. Backward: ``all_reduce(SUM)`` of the
    incoming gradient, then this process's slice, so each process receives the gradient of its own
    inputs with respect to the SUM of all processes' losses (a plain ``all_gather`` returns tensors
    without ``grad_fn`` and silently drops the gradient that other processes' losses send back).

    Every process must call this with a tensor of the same shape, and every process must run the
    backward pass (it is a collective).

    Args:
        x: Tensor [N, ...] on this process.

    Returns:
        Tensor [world_size * N, ...]; rows ``rank * N : (rank + 1) * N`` are this process's ``x``.
        ``x`` itself when torch.distributed is not initialised or world_size is 1.
    """
    if _world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def _check_negatives(decoupled: bool, images: int) -> None:
    """The decoupled loss's denominator holds the other images' views only: with one image in the global batch it is
    empty (log 0)."""
    if decoupled and images < 2:
        raise ValueError("the decoupled loss needs at least two images in the (global) batch: with one, an anchor "
                         "has no negative")


def nt_xent(z0: Tensor, z1: Tensor, temperature: float = 0.5, gather: bool = True, decoupled: bool = False) -> Tensor:
    """Normalised temperature-scaled cross-entropy (NT-Xent) loss of SimCLR, Chen et al. 2020 eq. (1).

    Each of the 2N projections is an anchor: its positive is the other view of the same image, its
    negatives are the other 2N - 2 projections (2 * world * N - 2 under DDP with ``gather``), and its
    similarity with itself is excluded. Similarities are cosine similarities divided by
    ``temperature``; the loss for anchor i is ``-log softmax(sim_i / T)[positive(i)]``, computed with
    log-sum-exp in at least float32 (bf16/fp16 inputs are upcast, autocast is disabled inside). ``decoupled``: the
    positive is left out of the sum under the log as well (DCL, Yeh et al. 2022): ``-sim_ip / T + log sum_k exp(sim_ik
    / T)`` over the negatives k only.

    Under torch.distributed with world_size > 1 and ``gather=True``, the projections of all processes
    are gathered with :func:`all_gather_with_grad`; this process's rows are the anchors (row i of this
    process sits at global index ``rank * N + i``) and the result is the mean over its 2N local
    anchors. DDP's gradient averaging then yields the gradient of the mean over the global batch.
    All processes must pass the same N.

    Args:
        z0: Projections of view 0, [N, D].
        z1: Projections of view 1, [N, D]; row i is the same image as ``z0[i]``.
        temperature: Softmax temperature T > 0 (0.5 for CIFAR in the paper, 0.1 for ImageNet).
        gather: Use negatives from all processes when distributed; False keeps the loss local.
        decoupled: the decoupled contrastive loss (no positive in the denominator).

    Returns:
        Scalar tensor (float32, or float64 for float64 inputs): mean loss over the local anchors.

    Raises:
        ValueError: if the shapes differ, are not 2-D, N is 0, temperature is not positive, or ``decoupled`` has
            one image in all (no negative: the sum under the log would be empty).
    """
    if z0.dim() != 2 or z0.shape != z1.shape:
        raise ValueError(f"nt_xent expects z0 and z1 of the same shape [N, D], got {tuple(z0.shape)} "
                         f"and {tuple(z1.shape)}")
    if z0.shape[0] == 0:
        raise ValueError("nt_xent needs at least one pair (N >= 1)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    n = z0.shape[0]
    dtype = torch.promote_types(torch.promote_types(z0.dtype, z1.dtype), torch.float32)
    # Autocast would run the similarity matmul in bf16/fp16 even on fp32 inputs; at T = 0.05 that
    # rounding (logits up to 20, bf16 step 0.125) is visible in the loss.
    with torch.autocast(device_type=z0.device.type, enabled=False):
        z0 = F.normalize(z0.to(dtype), dim=1)
        z1 = F.normalize(z1.to(dtype), dim=1)

        world = _world_size() if gather else 1
        if world > 1:
            # One collective for both views: [N, 2D] -> [world * N, 2D].
            both = all_gather_with_grad(torch.cat([z0, z1], dim=1))
            d = z0.shape[1]
            keys = torch.cat([both[:, :d], both[:, d:]])  # [2 * world * N, D]: all view 0, then all view 1
            offset = dist.get_rank() * n
        else:
            keys = torch.cat([z0, z1])  # [2N, D]
            offset = 0
        total = world * n
        _check_negatives(decoupled, total)

        anchors = torch.cat([z0, z1])  # [2N, D]
        logits = anchors @ keys.T / temperature  # [2N, 2 * world * N]

        i = torch.arange(n, device=logits.device)
        # Global column of each anchor (view 0 block first) and of its positive (the other view).
        self_idx = torch.cat([offset + i, total + offset + i])
        pos_idx = torch.cat([total + offset + i, offset + i])
        # A scatter of a Python scalar: indexed assignment (mask[rows, cols] = True) would copy the value from the
        # host and wait for the device.
        logits = logits.scatter(1, self_idx.view(-1, 1), float("-inf"))
        if decoupled:
            positive = logits.gather(1, pos_idx.view(-1, 1)).squeeze(1)
            negatives = logits.scatter(1, pos_idx.view(-1, 1), float("-inf"))
            return (torch.logsumexp(negatives, dim=1) - positive).mean()

        # cross_entropy = logsumexp(row) - logit[positive], mean over the 2N local anchors.
        return F.cross_entropy(logits, pos_idx)


def multicrop_nt_xent(views: Sequence[Tensor], temperature: float = 0.5, n_global: int = 2, gather: bool = True,
                      decoupled: bool = False) -> Tensor:
    """NT-Xent over several views per image: SimCLR's loss with multi-crop (Caron et al. 2020, SwAV, section 3.2).

    ``views[:n_global]`` are the global views, the rest small crops. The positive pairs of an image are every
    ordered pair of two of its views of which at least one is global: global-global, global-small and
    small-global, but not small-small. Two small crops (a fifth of the source each, or less) often share no pixel,
    so asking them to agree teaches noise; each of them shares content with a global view, which is the
    correspondence SwAV and DINO (Caron et al. 2021) train with. Every view of every other image in the global
    batch is a negative, and so are the same image's views that are not the anchor's positive.

    For anchor a and positive p: ``l(a, p) = -log(exp(s_ap / T) / sum_{k != a} exp(s_ak / T))``, the sum over
    all V * N views of the global batch but a itself (cosine similarities s); the result is the mean of l over
    this process's positive pairs (all processes hold the same number, so DDP's gradient averaging gives the
    gradient of the mean over the global batch, as for :func:`nt_xent`). With two views this is
    :func:`nt_xent` itself, which it calls. ``decoupled`` (DCL, as in :func:`nt_xent`): the sum runs over the views
    of the other images only, so none of the image's own views (positive or not) is in the denominator; with two
    views that is exactly nt_xent's decoupled loss.

    Args:
        views: V >= 2 tensors [N, D], row i of each the same image.
        temperature: softmax temperature T > 0.
        n_global: how many of ``views`` come first as global views (2 for SimCLR).
        gather: use negatives from all processes when distributed (one collective for all views).
        decoupled: the decoupled contrastive loss (the denominator holds the other images' views only).

    Returns:
        Scalar tensor (float32, or float64 for float64 inputs).
    """
    if len(views) < 2 or not 1 <= n_global <= len(views):
        raise ValueError(f"multicrop_nt_xent needs >= 2 views and 1 <= n_global <= views, got {len(views)}, {n_global}")
    if len(views) == 2 and n_global == 2:
        return nt_xent(views[0], views[1], temperature, gather, decoupled)
    shape = views[0].shape
    if len(shape) != 2 or shape[0] == 0 or any(v.shape != shape for v in views):
        raise ValueError(f"multicrop_nt_xent expects views of one shape [N, D], N >= 1, got {[tuple(v.shape) for v in views]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    v, (n, d) = len(views), shape
    dtype = torch.promote_types(functools.reduce(torch.promote_types, [x.dtype for x in views]), torch.float32)
    with torch.autocast(device_type=views[0].device.type, enabled=False):  # as in nt_xent: no bf16 similarities
        z = [F.normalize(x.to(dtype), dim=1) for x in views]
        world = _world_size() if gather else 1
        if world > 1:
            every = all_gather_with_grad(torch.cat(z, dim=1))  # [world * N, V * D]: one collective
            keys = torch.cat([every[:, j * d : (j + 1) * d] for j in range(v)])  # [V * world * N, D], view-major
            offset = dist.get_rank() * n
        else:
            keys, offset = torch.cat(z), 0
        total = world * n
        _check_negatives(decoupled, total)
        anchors = torch.cat(z)  # [V * N, D]: view j of local image i at row j * N + i
        logits = anchors @ keys.T / temperature  # [V * N, V * world * N]
        i = torch.arange(n, device=logits.device)
        view = torch.arange(v, device=logits.device)
        self_col = (view.view(-1, 1) * total + offset + i).reshape(-1)  # each anchor's own column
        logits = logits.scatter(1, self_col.view(-1, 1), float("-inf"))
        # columns of the same image's views: [V * N, V] -> the logits [V, N, V] (anchor view, image, other view)
        same = (view.view(1, -1) * total + (offset + i).view(-1, 1)).repeat(v, 1)
        same_logits = logits.gather(1, same).view(v, n, v)
        denominator = logits.scatter(1, same, float("-inf")) if decoupled else logits
        lse = torch.logsumexp(denominator, dim=1).view(v, n)
        is_global = view < n_global
        pos = (view.view(-1, 1) != view.view(1, -1)) & (is_global.view(-1, 1) | is_global.view(1, -1))  # [V, V]
        pos_logits = torch.where(pos.view(v, 1, v), same_logits, 0.0)  # the anchor's own -inf column is never kept
        pairs = pos.sum(dim=1).to(dtype)  # positives per anchor view
        total_loss = (pairs.view(v, 1) * lse).sum() - pos_logits.sum()
        return total_loss / (pairs.sum() * n)

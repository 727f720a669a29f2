"""The projection head and the SimCLR module; encoders come from the registry in :mod:`simclr.backbones`."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .backbones import Backbone, build, use_cifar_stem, wrap
from .config import ModelConfig
from .errors import ConfigError

__all__ = [
    "Backbone", "GlobalBatchNorm", "ProjectionHead", "SimCLR", "build_backbone", "build_model", "convert_sync_batchnorm",
    "use_cifar_stem",
]


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden... -> out_dim`` with BatchNorm + ReLU after each hidden layer (Chen et al. 2020)."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int = 128, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class SimCLR(nn.Module):
    """Encoder f and projection head g: ``x [B,3,H,W] -> (h = f(x) [B, F], z = g(h) [B, proj_dim])``.

    ``x`` may also be a list of batches of different sizes (multi-crop: the global views, then the small crops):
    the encoder runs once per batch (its BatchNorm sees one resolution at a time) and the head once on all their
    features, concatenated in order, as in SwAV's and DINO's multi-crop wrappers. One module call, so DDP sees
    one forward per step.
    """

    def __init__(self, backbone: Backbone, head: ProjectionHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x) if isinstance(x, torch.Tensor) else torch.cat([self.backbone(b) for b in x])
        return h, self.head(h)


def build_backbone(cfg: ModelConfig, module: nn.Module | None = None) -> Backbone:
    """The encoder named by ``cfg.backbone`` (random init) for ``cfg.image_size`` px images, or ``module`` (your
    own network) wrapped as a :class:`~simclr.backbones.Backbone`."""
    if module is not None:
        return wrap(module, cfg.image_size)
    return build(cfg.backbone, cfg.image_size, cfg.stem, cfg.feature_dim)


def build_model(cfg: ModelConfig, backbone: nn.Module | None = None) -> SimCLR:
    """The SimCLR module described by ``cfg`` (random init), around ``backbone`` when one is given (your own
    module: it maps ``[B, 3, H, W]`` to ``[B, D]``, its D found by a forward pass)."""
    encoder = build_backbone(cfg, backbone)
    model = SimCLR(encoder, ProjectionHead(encoder.out_dim, list(cfg.proj_hidden), cfg.proj_dim, cfg.proj_bn))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = cfg.bn_momentum
    return model


class _GlobalBatchNormFn(torch.autograd.Function):
    """Batch normalisation over the batch of all processes, statistics and their gradients in float64.

    Forward: per channel, the sum and the count are summed over processes, then the centred squares (two passes, so
    nearly constant channels keep their variance). Backward is the reduced form torch's SyncBatchNorm uses: each
    process sums ``dy`` and ``dy * x_hat`` over its rows, one all_reduce adds them up, and
    ``dx = w / sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat))`` with the means over the global batch. Every
    reduction runs in float64: a float32 sum over the 16 x 32 x 32 values of a channel loses digits that
    ``1 / sigma`` then amplifies, and the 1- and 2-process results drift apart (see benchmarks/ddp_numerics.py).
    ``dy`` is the gradient of the SUM of all processes' losses (the convention of :mod:`simclr.loss`), so the
    weight and bias gradients stay local and DDP's averaging makes them those of the global mean loss.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, module):  # type: ignore[override]
        dims = [0] if x.dim() == 2 else [0, 2, 3]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xd = x.double()
        local = torch.cat([xd.sum(dims), xd.new_full((1,), x.numel() / x.shape[1])])
        dist.all_reduce(local)
        n = local[-1]
        mean = local[:-1] / n
        centred = xd - mean.view(shape)
        sq = (centred * centred).sum(dims)
        dist.all_reduce(sq)
        var = sq / n  # biased: BatchNorm normalises with it
        invstd = torch.rsqrt(var + eps)
        x_hat = centred * invstd.view(shape)
        y = x_hat if weight is None else x_hat * weight.double().view(shape) + bias.double().view(shape)
        if module.track_running_stats:
            module.update_running_stats(mean, var * n / (n - 1))
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.dims, ctx.shape = n, dims, shape
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        x_hat = (x.double() - mean.view(shape)) * invstd.view(shape)
        dyd = dy.double()
        sum_dy = dyd.sum(dims)
        sum_dy_xhat = (dyd * x_hat).sum(dims)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both)
            mean_dy, mean_dy_xhat = (both / ctx.n).chunk(2)
            scale = invstd if weight is None else invstd * weight.double()
            grad_x = ((dyd - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)) * scale.view(shape)).to(x.dtype)
        return grad_x, grad_weight, grad_bias, None, None


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from the batch of ALL processes (the paper's global BN).

    torch's ``nn.SyncBatchNorm`` runs on GPUs only; this one works with any backend (gloo on CPU), with its
    statistics and their gradients reduced in float64 (:class:`_GlobalBatchNormFn`). Accepts [B, C] or
    [B, C, H, W]. Outside training or without a process group it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        return _GlobalBatchNormFn.apply(x, self.weight, self.bias, self.eps, self)

    @torch.no_grad()
    def update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """The running averages BatchNorm keeps for evaluation, from this step's global statistics."""
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased_var.to(self.running_var.dtype), alpha=m)


# The synchronised BatchNorm ``--sync-bn`` uses on CUDA (``train.sync_bn_impl: auto``). torch's SyncBatchNorm waits
# for the host once per layer (it checks the gathered counts) and breaks torch.compile graphs; GlobalBatchNorm does
# neither but runs more, smaller kernels. benchmarks/gpu_checks.py (stage 0 of gpu.sh) times both on a GPU; until a
# GPU has been measured the default stays torch's.
CUDA_SYNC_BN = "torch"


def convert_sync_batchnorm(module: nn.Module, device: torch.device, impl: str = "auto") -> nn.Module:
    """Replace every BatchNorm with a synchronised one.

    ``impl``: ``torch`` (``nn.SyncBatchNorm``, CUDA only), ``global`` (:class:`GlobalBatchNorm`, any backend) or
    ``auto``: :data:`CUDA_SYNC_BN` on CUDA, GlobalBatchNorm elsewhere.
    """
    if impl == "auto":
        impl = CUDA_SYNC_BN if device.type == "cuda" else "global"
    if impl == "torch":
        if device.type != "cuda":
            raise ConfigError("train.sync_bn_impl: 'torch' (nn.SyncBatchNorm) runs on CUDA only; use auto or global")
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module, device)


def _to_global_bn(module: nn.Module, device: torch.device) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out = out.to(device=module.weight.device if module.affine else device)
    for name, child in module.named_children():
        out.add_module(name, _to_global_bn(child, device))
    return out

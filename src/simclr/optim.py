"""Optimizers (Adam, AdamW, Nesterov SGD, LARS), parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig

# Normalisation layers (BatchNorm, InstanceNorm, LayerNorm incl. LayerNorm2d subclasses, GroupNorm, RMSNorm).
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
# Transformer embeddings that DeiT / MoCo v3 / timm exclude from weight decay (timm's ``no_weight_decay()``).
NO_DECAY_NAMES = ("pos_embed", "pos_embedding", "cls_token", "class_token", "dist_token", "reg_token",
                  "absolute_pos_embed", "relative_position_bias_table")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; normalisation parameters, biases and transformer position / class-token
    embeddings without decay or LARS adaptation, as in Chen et al. 2020 and You et al. 2017 (and Touvron et al.
    2021 for the embeddings).

    The no-decay group is found by module type and parameter name, so it is right for every backbone: any
    1-d tensor, any parameter of a normalisation layer, any ``bias``, the names in ``NO_DECAY_NAMES`` and what a
    timm module lists in ``no_weight_decay()``.
    """
    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            skip |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    decay, no_decay, seen = [], [], set()
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{prefix}.{name}" if prefix else name
            exempt = (p.ndim <= 1 or isinstance(module, NORM_LAYERS) or name == "bias" or name in NO_DECAY_NAMES
                      or full in skip)
            (no_decay if exempt else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) on SGD with momentum.

    For each parameter not excluded: ``trust = eta * ||w|| / (||g + wd * w||)``, update = lr * trust * (g + wd*w),
    accumulated in a momentum buffer. Groups with ``lars_exclude=True`` (BN, bias) take plain SGD steps.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # One foreach kernel per operation over all of the group's tensors: a per-tensor Python loop costs
            # about 8 small kernel launches per tensor, which shows on a GPU.
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if not group["lars_exclude"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                grads = torch._foreach_mul(grads, list(trust.unbind()))
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            if any(b is None for b in bufs):  # first step: the buffers start as the scaled gradients
                for p, g in zip(params, grads):
                    self.state[p]["momentum_buffer"] = torch.clone(g).detach()
                bufs = [self.state[p]["momentum_buffer"] for p in params]
            else:
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """Peak learning rate: ``lr * batch_size / 256`` when ``scale_lr`` (Goyal et al. 2017), else ``lr``."""
    return cfg.lr * batch_size / 256 if cfg.scale_lr else cfg.lr


def build_optimizer(cfg: OptimConfig, model: nn.Module, batch_size: int, impl: str = "auto") -> torch.optim.Optimizer:
    """Optimizer over ``model``'s parameters with the peak learning rate for ``batch_size`` (global batch).

    ``impl`` picks torch's implementation of Adam and SGD: ``fused`` (one kernel for the whole update), ``foreach``
    (one kernel per operation over all tensors) or ``auto``: fused where torch has it for the parameters' device
    (CPU and CUDA; benchmarks/cpu_step_profile.py times the three on the CPU), else foreach. The updates are the same up to floating-point rounding. LARS is foreach always.
    Build it after moving the model to its device.
    """
    if impl not in ("auto", "fused", "foreach"):
        raise ValueError(f"impl must be auto, fused or foreach, not {impl!r}")
    lr = scaled_lr(cfg, batch_size)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    if cfg.name == "adam":
        # Adam's L2 decay acts through the gradient (torch.optim.Adam semantics, as in the seed notebook project).
        make = lambda **kw: torch.optim.Adam(groups, lr=lr, **kw)  # noqa: E731
    elif cfg.name == "adamw":
        # Decoupled weight decay (Loshchilov & Hutter 2019), the ViT / ConvNeXt recipe (DeiT, MoCo v3).
        make = lambda **kw: torch.optim.AdamW(groups, lr=lr, **kw)  # noqa: E731
    else:
        make = lambda **kw: torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **kw)  # noqa: E731
    if impl == "foreach":
        return make(foreach=True)
    try:
        return make(fused=True)
    except RuntimeError:  # torch has no fused kernel for this device (e.g. MPS for SGD in older releases)
        if impl == "fused":
            raise
        return make(foreach=True)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, schedule: str = "cosine", final_ratio: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based), stepped per iteration.

    Linear warmup from ``peak_lr / warmup_steps`` to ``peak_lr`` over the first ``warmup_steps`` steps, then
    ``cosine``: half-cosine decay from ``peak_lr`` to ``final_ratio * peak_lr`` at ``total_steps``; or ``constant``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    return decayed_lr(min(1.0, (step - warmup_steps) / decay_steps), peak_lr, schedule, final_ratio)


def decayed_lr(t: float, peak_lr: float, schedule: str = "cosine", final_ratio: float = 0.0) -> float:
    """Learning rate after warm-up at fraction ``t`` in [0, 1] of the decay: ``constant``, or half-cosine from
    ``peak_lr`` to ``final_ratio * peak_lr``."""
    if schedule == "constant":
        return peak_lr
    final = final_ratio * peak_lr
    return final + (peak_lr - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_steps(cfg: OptimConfig, steps_per_epoch: int) -> int:
    return round(cfg.warmup_epochs * steps_per_epoch)


class Schedule:
    """Sets every param group's ``lr`` from :func:`lr_at` for a given global step.

    With a :class:`simclr.budget.BudgetPlan` the number of steps is not known in advance: after the warm-up the
    decay follows the plan's progress (a fraction of the schedule, continuous in the step) instead of step / total.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, batch_size: int, steps_per_epoch: int, epochs: int,
                 plan=None):
        self.optimizer = optimizer
        self.peak = scaled_lr(cfg, batch_size)
        self.total = steps_per_epoch * epochs
        self.warmup = min(self.total, warmup_steps(cfg, steps_per_epoch))
        self.schedule = cfg.schedule
        self.final_ratio = cfg.final_lr_ratio
        self.plan = plan

    def __call__(self, step: int) -> float:
        if self.plan is not None:
            warm = self.plan.warmup_fraction(step)
            lr = self.peak * warm if warm is not None else decayed_lr(self.plan.progress(step), self.peak, self.schedule,
                                                                     self.final_ratio)
        else:
            lr = lr_at(step, self.total, self.warmup, self.peak, self.schedule, self.final_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

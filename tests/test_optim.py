import copy
import math

import pytest
import torch
from torch import nn

from simclr.config import OptimConfig
from simclr.models import ProjectionHead
from simclr.optim import LARS, Schedule, build_optimizer, lr_at, param_groups


def test_schedule_values_at_known_steps():
    # 10 warmup steps to peak 1.0, cosine to 0 over the remaining 90
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(4, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)  # half way through the decay
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(32, 100, 10, 2.0) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert lr_at(50, 100, 10, 1.0, schedule="constant") == 1.0
    assert lr_at(100, 100, 0, 1.0, final_ratio=0.1) == pytest.approx(0.1)


def test_schedule_scales_with_batch_and_sets_groups():
    model = ProjectionHead(8, [16], 4)
    cfg = OptimConfig(name="sgd", lr=0.3, scale_lr=True, warmup_epochs=1)
    opt = build_optimizer(cfg, model, batch_size=512)
    sched = Schedule(opt, cfg, batch_size=512, steps_per_epoch=10, epochs=5)
    assert sched.peak == pytest.approx(0.6)  # 0.3 x 512 / 256
    assert sched(9) == pytest.approx(0.6)
    assert all(g["lr"] == pytest.approx(0.6) for g in opt.param_groups)
    assert sched(0) == pytest.approx(0.06)
    assert sched(49) < 0.01


def test_no_decay_on_bn_and_bias():
    model = ProjectionHead(8, [16], 4, batch_norm=True)
    decay, no_decay = param_groups(model, 1e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 1e-4
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert no_decay["lars_exclude"] and not decay["lars_exclude"]
    n = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lars"])
def test_optimizers_reduce_a_loss(name):
    torch.manual_seed(0)
    model = ProjectionHead(8, [16], 1, batch_norm=False)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    lr = {"adam": 1e-2, "adamw": 1e-2, "sgd": 0.05, "lars": 0.5}[name]
    opt = build_optimizer(OptimConfig(name=name, lr=lr, scale_lr=False, weight_decay=0.0, lars_eta=0.05), model, 256)
    first = None
    for _ in range(50):
        loss = ((model(x) - y) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.7


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.full((2, 2), 2.0))  # ||w|| = 4
    b = torch.nn.Parameter(torch.ones(2))
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars_exclude": False}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=1.0, momentum=0.0, eta=0.1)
    w.grad = torch.full((2, 2), 0.5)  # ||g|| = 1 -> trust = 0.1 * 4 / 1 = 0.4
    b.grad = torch.full((2,), 0.5)
    opt.step()
    assert torch.allclose(w, torch.full((2, 2), 2.0 - 0.4 * 0.5))
    assert torch.allclose(b, torch.full((2,), 0.5))  # excluded: plain SGD step


def _lars_reference(params, grads, bufs, lr, momentum, wd, eta, exclude):
    """LARS one tensor at a time, straight from You et al. 2017 (the form the foreach version must equal)."""
    for p, g, i in zip(params, grads, range(len(params))):
        g = g + wd * p
        if not exclude:
            wn, gn = p.norm(), g.norm()
            g = g * (eta * wn / gn if wn > 0 and gn > 0 else 1.0)
        bufs[i] = g.clone() if bufs[i] is None else bufs[i] * momentum + g
        p -= lr * bufs[i]


def test_lars_equals_a_per_tensor_reference_over_steps():
    torch.manual_seed(0)
    shapes = [(8, 4), (16,), (3, 3, 2, 2), (5,)]
    init = [torch.randn(s) for s in shapes]
    init[3].zero_()  # a zero weight: trust ratio falls back to 1
    params = [torch.nn.Parameter(t.clone()) for t in init]
    groups = [{"params": params[:3], "weight_decay": 1e-2, "lars_exclude": False},
              {"params": params[3:], "weight_decay": 0.0, "lars_exclude": True}]
    opt = LARS(groups, lr=0.3, momentum=0.9, eta=0.02)
    ref = [t.clone().double() for t in init]
    bufs = [None] * len(ref)
    for _ in range(4):
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        b0, b1 = bufs[:3], bufs[3:]
        _lars_reference(ref[:3], [g.double() for g in grads[:3]], b0, 0.3, 0.9, 1e-2, 0.02, False)
        _lars_reference(ref[3:], [g.double() for g in grads[3:]], b1, 0.3, 0.9, 0.0, 0.02, True)
        bufs = b0 + b1
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach().double(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_and_foreach_updates_agree(name):
    torch.manual_seed(0)
    # (no bias right before the BN: its true gradient is 0, and Adam turns rounding noise into full-size steps)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    twin = copy.deepcopy(model)
    cfg = OptimConfig(name=name, lr=0.05, scale_lr=False, weight_decay=1e-3, nesterov=True)
    auto, foreach = build_optimizer(cfg, model, 256), build_optimizer(cfg, twin, 256, impl="foreach")
    assert auto.defaults["fused"] and not foreach.defaults.get("fused")  # auto picks torch's fused kernel on the CPU
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    for _ in range(5):
        for m, opt in ((model, auto), (twin, foreach)):
            opt.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="impl"):
        build_optimizer(cfg, model, 256, impl="fast")


def test_no_decay_on_norms_biases_and_vit_embeddings():
    """LayerNorm / GroupNorm / BatchNorm parameters, biases and a ViT's class token and position embedding are
    left out of weight decay; every other tensor is decayed; each parameter is in exactly one group."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = nn.Sequential(
        VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16),
        nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.BatchNorm2d(4),
    )
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"0.class_token", "0.encoder.pos_embedding", "2.weight", "3.weight", "1.bias"} <= skipped
    assert all(n.endswith("bias") or "ln" in n or n in ("0.class_token", "0.encoder.pos_embedding", "2.weight", "3.weight")
               for n in skipped)
    assert "0.conv_proj.weight" in decayed and "1.weight" in decayed
    assert not skipped & decayed and len(skipped) + len(decayed) == len(names)

"""Where a SimCLR training step spends its time on this CPU, and how close its convolutions run to the CPU's ceiling.

    python benchmarks/cpu_step_profile.py [OUT_JSON]     (default: benchmarks/results/cpu_step_profile.json)

Backs the explanation in RESULTS.md of why bf16 + channels_last stays near 2.5-2.9x fp32 here. For the quickstart
model (ResNet-18, CIFAR stem, batch 256 = 512 views, the projection head and NT-Xent), in fp32 contiguous with
glibc's default allocator (the peers' default) and in bf16 autocast + channels_last + fused SGD with freed memory
reused (ours, ``train.reuse_memory``), each in a fresh process, it reports:

1. the share of the step in convolutions (forward, backward), BatchNorm, ReLU and everything else
   (``torch.profiler``, self CPU time over the timed steps);
2. the convolutions' achieved GFLOP/s: FLOPs counted from the layers' shapes (forward 2*N*Cout*Hout*Wout*Cin*k*k;
   backward twice that, minus the input gradient of the first layer, which autograd skips) over the time
   profiled in them;
3. the ceiling: GFLOP/s of a large matrix product (4096 x 4096 x 4096) in the same precision, the best the CPU's
   kernels reach on dense work;
4. for each distinct convolution of our model (bf16, channels_last, 512 views, freed memory reused): the time and
   GFLOP/s of its forward, input-gradient and weight-gradient kernels, timed one at a time, with the oneDNN
   implementation that runs each (oneDNN's verbose log), the same weight gradient computed another way (the input
   unfolded, then one aten matrix product), and what the step's convolutions would take if every weight gradient
   ran at the rate of its forward kernel;
5. one SGD update (momentum, weight decay) of the model's parameters with torch's fused, foreach and per-tensor
   implementations (median of 10 updates each, random gradients).

Run it on a quiet machine; it takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from simclr.bench import machine_info, our_settings, run_pipeline  # noqa: E402
from simclr.bench import views_step as _views_step  # noqa: E402
from simclr.config import load_config  # noqa: E402
from simclr.models import build_model  # noqa: E402
from simclr.optim import build_optimizer  # noqa: E402

CATEGORIES = {
    "conv_forward": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d"),
    "conv_backward": ("aten::convolution_backward",),
    "batchnorm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::_batch_norm_impl_index"),
    "relu": ("aten::relu_", "aten::clamp_min_", "aten::threshold_backward", "aten::relu", "aten::clamp_min"),
}


def conv_flops(model: nn.Module, views: torch.Tensor) -> tuple[float, float]:
    """(forward, backward) FLOPs of the model's convolutions for one forward + backward of ``views``."""
    fwd, first = [], []

    def hook(module: nn.Conv2d, inputs, output) -> None:
        n, c_in = inputs[0].shape[:2]
        k = module.kernel_size[0] * module.kernel_size[1]
        f = 2.0 * n * output.shape[1] * output.shape[2] * output.shape[3] * c_in * k / module.groups
        fwd.append(f)
        first.append(not inputs[0].requires_grad)  # no input gradient is computed for the first layer

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    model(views)  # with autograd on, so that requires_grad tells the first layer from the others
    for h in handles:
        h.remove()
    backward = sum(f * (1 if skip else 2) for f, skip in zip(fwd, first))
    return sum(fwd), backward


def conv_shapes(model: nn.Module, views: torch.Tensor) -> list[dict]:
    """The distinct convolutions of one forward of ``views``: shapes, how often each occurs, whether autograd
    computes its input gradient."""
    seen: dict[tuple, dict] = {}

    def hook(module: nn.Conv2d, inputs, output) -> None:
        x = inputs[0]
        key = (tuple(x.shape), tuple(module.weight.shape), module.stride[0], module.padding[0], x.requires_grad)
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = {"input": list(x.shape), "weight": list(module.weight.shape), "stride": module.stride[0],
                         "padding": module.padding[0], "input_grad": x.requires_grad, "count": 1,
                         "output": list(output.shape)}

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    model(views)
    for h in handles:
        h.remove()
    return list(seen.values())


def _best_of(fn, reps: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _onednn_impls(fn) -> list[str]:
    """The oneDNN convolution implementations ``fn`` runs (from oneDNN's verbose log on file descriptor 1)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = [ln.split(",") for ln in log.read().splitlines() if ",exec,cpu,convolution," in ln]
    # ...,exec,cpu,convolution,<implementation>:<isa>,<propagation kind>,...
    return [f"{ln[i + 2]}: {ln[i + 1].split(':')[0]}" for ln in lines for i in [ln.index("convolution")] if len(ln) > i + 2]


def weight_grad_gemm(g: torch.Tensor, x: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """The weight gradient of a k x k convolution as one matrix product over the unfolded input (channels_last):
    [Cout, N*Ho*Wo] x [N*Ho*Wo, k*k*Cin], the unfolding included."""
    n, ci = x.shape[:2]
    co, ho, wo = g.shape[1:]
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # N, H, W, C view
    cols = torch.empty(n, ho, wo, k, k, ci, dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, :, i, j, :] = xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
    dw = g.permute(0, 2, 3, 1).reshape(-1, co).t() @ cols.view(-1, k * k * ci)
    return dw.view(co, k, k, ci).permute(0, 3, 1, 2)


def _time_conv(c: dict) -> dict:
    """One convolution's kernels, timed one at a time (bf16, channels_last)."""
    x = torch.randn(c["input"]).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c["weight"]).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    st, pad = c["stride"], c["padding"]
    y = torch.nn.functional.conv2d(x, w, stride=st, padding=pad)
    g = torch.randn_like(y)
    co, ci, kh, kw = c["weight"]
    flop = 2.0 * y.numel() * ci * kh * kw

    def forward():
        return torch.nn.functional.conv2d(x, w, stride=st, padding=pad)

    def back(mask):
        return torch.ops.aten.convolution_backward(g, x, w, None, [st, st], [pad, pad], [1, 1], False, [0, 0], 1, mask)

    fwd = _best_of(forward)
    dgrad = _best_of(lambda: back([True, False, False])) if c["input_grad"] else 0.0
    wgrad = _best_of(lambda: back([False, True, False]))
    gemm = _best_of(lambda: weight_grad_gemm(g, x, kh, st, pad))
    impls = _onednn_impls(lambda: (forward(), back([c["input_grad"], True, False])))
    return {**c, "gflop": flop / 1e9, "forward_ms": fwd * 1e3, "input_grad_ms": dgrad * 1e3,
            "weight_grad_ms": wgrad * 1e3, "weight_grad_as_gemm_ms": gemm * 1e3,
            "forward_gflops": flop / fwd / 1e9, "input_grad_gflops": flop / dgrad / 1e9 if dgrad else None,
            "weight_grad_gflops": flop / wgrad / 1e9, "weight_grad_as_gemm_gflops": flop / gemm / 1e9,
            "onednn": impls}


def conv_kernels(model: nn.Module, views: torch.Tensor) -> dict:
    """Section 4 of the module docstring: every distinct convolution's kernels, timed one at a time."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shapes = conv_shapes(model, views)
    rows = [_time_conv(c) for c in shapes]
    total = sum(r["count"] * (r["forward_ms"] + r["input_grad_ms"] + r["weight_grad_ms"]) for r in rows) / 1e3
    at_fwd = sum(r["count"] * (2 * r["forward_ms"] + r["input_grad_ms"]) for r in rows) / 1e3
    return {"convolutions": rows, "step_convolutions_s": total, "step_convolutions_s_if_weight_grad_at_forward_rate": at_fwd}


def optimizer_updates(reps: int = 10) -> dict:
    """Milliseconds of one SGD update of the quickstart model's parameters, per torch implementation (section 5)."""
    cfg = load_config("quickstart", {"train.device": "cpu"})
    model = build_model(cfg.model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    out = {"parameters": sum(p.numel() for p in model.parameters())}
    for name, kw in (("fused", {"fused": True}), ("foreach", {"foreach": True}), ("per_tensor", {"foreach": False})):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6, **kw)
        opt.step()  # momentum buffers created
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        out[f"{name}_ms"] = 1e3 * sorted(times)[reps // 2]
    return out


def matmul_ceiling(dtype: torch.dtype, n: int = 4096, reps: int = 3) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2.0 * n**3 * reps / (time.perf_counter() - t) / 1e9


def profile_step(precision: str, channels_last: bool, reuse_memory: bool, steps: int = 2, kernels: bool = False) -> dict:
    with our_settings(torch.device("cpu"), reuse_memory):
        return _profile_step(precision, channels_last, steps, kernels)


def _profile_step(precision: str, channels_last: bool, steps: int, kernels: bool = False) -> dict:
    cfg = load_config("quickstart", {"train.device": "cpu"})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(cfg.optim, model, cfg.train.batch_size, impl="auto" if precision == "bf16" else "foreach")
    B, size = cfg.train.batch_size, cfg.model.image_size
    v0, v1 = torch.randn(B, 3, size, size), torch.randn(B, 3, size, size)
    device = torch.device("cpu")
    views = torch.cat([v0, v1])
    views = views.contiguous(memory_format=torch.channels_last) if channels_last else views
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        f_fwd, f_bwd = conv_flops(model, views)
    _views_step(model, opt, v0, v1, device, precision, channels_last, cfg.train.temperature)  # warm-up
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            _views_step(model, opt, v0, v1, device, precision, channels_last, cfg.train.temperature)
    wall = (time.perf_counter() - t) / steps
    self_us: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total
        cat = next((c for c, names in CATEGORIES.items() if e.key in names), "other")
        self_us[cat] += e.self_cpu_time_total
    share = {c: self_us[c] / total for c in [*CATEGORIES, "other"]}
    t_fwd = self_us["conv_forward"] / 1e6 / steps
    t_bwd = self_us["conv_backward"] / 1e6 / steps
    out = {
        "precision": precision,
        "channels_last": channels_last,
        "batch": B,
        "step_s": wall,
        "source_images_per_s": B / wall,
        "share_of_profiled_time": share,
        "conv_forward_gflop": f_fwd / 1e9,
        "conv_backward_gflop": f_bwd / 1e9,
        "conv_forward_gflops": f_fwd / t_fwd / 1e9,
        "conv_backward_gflops": f_bwd / t_bwd / 1e9,
    }
    if kernels:
        out["conv_kernels"] = conv_kernels(model, views)
    return out


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "benchmarks" / "results" / "cpu_step_profile.json"
    result = {
        "machine": machine_info(torch.device("cpu")),
        "command": "python benchmarks/cpu_step_profile.py",
        "matmul_ceiling_gflops": {"fp32": matmul_ceiling(torch.float32), "bf16": matmul_ceiling(torch.bfloat16)},
        "sgd_update": optimizer_updates(),
        # each in a fresh process, as simclr bench does on the CPU (the heap one leaves changes the other's speed)
        "ours_bf16_channels_last": run_pipeline(profile_step, "bf16", True, True, 2, True),
        "peers_fp32": run_pipeline(profile_step, "fp32", False, False),
    }
    ours, peers = result["ours_bf16_channels_last"], result["peers_fp32"]
    result["step_ratio"] = ours["source_images_per_s"] / peers["source_images_per_s"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    ceil = result["matmul_ceiling_gflops"]
    print(f"matmul ceiling: fp32 {ceil['fp32']:.0f} GFLOP/s, bf16 {ceil['bf16']:.0f} GFLOP/s")
    u = result["sgd_update"]
    print(f"one SGD update of {u['parameters']:,} parameters: fused {u['fused_ms']:.1f} ms, foreach {u['foreach_ms']:.1f} ms, "
          f"per tensor {u['per_tensor_ms']:.1f} ms")
    for name, r in (("ours bf16+channels_last", ours), ("peers fp32", peers)):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in r["share_of_profiled_time"].items())
        print(f"{name:<24} {r['source_images_per_s']:6.1f} src img/s; conv forward {r['conv_forward_gflops']:.0f} GFLOP/s, "
              f"backward {r['conv_backward_gflops']:.0f} GFLOP/s; time: {shares}")
    k = ours["conv_kernels"]
    print("our convolutions, one kernel at a time (ms, GFLOP/s): shape x count | forward | input grad | weight grad |"
          " weight grad as unfold + GEMM | oneDNN kernels")
    for c in k["convolutions"]:
        co, ci, kh, _ = c["weight"]
        name = f"{ci}->{co} {kh}x{kh}/{c['stride']} @{c['input'][2]}px x{c['count']}"
        dg = f"{c['input_grad_ms']:5.0f} {c['input_grad_gflops']:4.0f}" if c["input_grad_gflops"] else "    -    -"
        impl = ", ".join(c["onednn"])
        print(f"  {name:<24} | {c['forward_ms']:5.0f} {c['forward_gflops']:4.0f} | {dg} | {c['weight_grad_ms']:5.0f} "
              f"{c['weight_grad_gflops']:4.0f} | {c['weight_grad_as_gemm_ms']:5.0f} {c['weight_grad_as_gemm_gflops']:4.0f} | {impl}")
    print(f"  convolutions of one step: {k['step_convolutions_s']:.2f} s; with weight gradients at the forward rate: "
          f"{k['step_convolutions_s_if_weight_grad_at_forward_rate']:.2f} s")
    print(f"step ratio {result['step_ratio']:.2f}x -> {out}")


if __name__ == "__main__":
    main()

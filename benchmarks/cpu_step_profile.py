"""Where a SimCLR training step spends its time on this CPU, and how close its convolutions run to the CPU's ceiling.

    python benchmarks/cpu_step_profile.py [OUT_JSON]     (default: benchmarks/results/cpu_step_profile.json)

Backs the explanation in RESULTS.md of why bf16 + channels_last stays near 2.5-2.9x fp32 here. For the quickstart
model (ResNet-18, CIFAR stem, batch 256 = 512 views, the projection head and NT-Xent), in fp32 contiguous with
glibc's default allocator (the peers' default) and in bf16 autocast + channels_last + fused SGD with freed memory
reused (ours, ``train.reuse_memory``), it reports:

1. the share of the step in convolutions (forward, backward), BatchNorm, ReLU and everything else
   (``torch.profiler``, self CPU time over the timed steps);
2. the convolutions' achieved GFLOP/s: FLOPs counted from the layers' shapes (forward 2*N*Cout*Hout*Wout*Cin*k*k;
   backward twice that, minus the input gradient of the first layer, which autograd skips) over the time
   profiled in them;
3. the ceiling: GFLOP/s of a large matrix product (4096 x 4096 x 4096) in the same precision, the best the CPU's
   kernels reach on dense work.

Run it on a quiet machine; it takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from simclr.bench import _views_step, machine_info, our_settings  # noqa: E402
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


def matmul_ceiling(dtype: torch.dtype, n: int = 4096, reps: int = 3) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2.0 * n**3 * reps / (time.perf_counter() - t) / 1e9


def profile_step(precision: str, channels_last: bool, reuse_memory: bool, steps: int = 2) -> dict:
    with our_settings(torch.device("cpu"), reuse_memory):
        return _profile_step(precision, channels_last, steps)


def _profile_step(precision: str, channels_last: bool, steps: int) -> dict:
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
    return {
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


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "benchmarks" / "results" / "cpu_step_profile.json"
    result = {
        "machine": machine_info(torch.device("cpu")),
        "command": "python benchmarks/cpu_step_profile.py",
        "matmul_ceiling_gflops": {"fp32": matmul_ceiling(torch.float32), "bf16": matmul_ceiling(torch.bfloat16)},
        "ours_bf16_channels_last": profile_step("bf16", True, reuse_memory=True),
        "peers_fp32": profile_step("fp32", False, reuse_memory=False),
    }
    ours, peers = result["ours_bf16_channels_last"], result["peers_fp32"]
    result["step_ratio"] = ours["source_images_per_s"] / peers["source_images_per_s"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    ceil = result["matmul_ceiling_gflops"]
    print(f"matmul ceiling: fp32 {ceil['fp32']:.0f} GFLOP/s, bf16 {ceil['bf16']:.0f} GFLOP/s")
    for name, r in (("ours bf16+channels_last", ours), ("peers fp32", peers)):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in r["share_of_profiled_time"].items())
        print(f"{name:<24} {r['source_images_per_s']:6.1f} src img/s; conv forward {r['conv_forward_gflops']:.0f} GFLOP/s, "
              f"backward {r['conv_backward_gflops']:.0f} GFLOP/s; time: {shares}")
    print(f"step ratio {result['step_ratio']:.2f}x -> {out}")


if __name__ == "__main__":
    main()

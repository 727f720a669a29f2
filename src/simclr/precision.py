"""The numeric precision of a run, chosen from the hardware: bf16 autocast where the device runs bf16 natively, fp32
where it would be emulated, and a short timed probe where the hardware alone does not tell.

Why it matters: on a CPU with AVX512-BF16 or AMX, bf16 autocast with channels_last trains a ResNet-18 about 3x faster
than fp32; on one with AVX2 only (AMD Zen 3, most laptops), oneDNN emulates bf16 and the same step runs about 20x
slower than fp32 (benchmarks/RESULTS.md, "Precision from the hardware"). One default cannot serve both.

The rule is :func:`auto_precision`, a pure function of (device type, capability string, probe result);
:func:`choose_precision` reads the capability, runs the probe when the rule asks for one and returns a
:class:`Precision`, which the run logs, saves in run.json and shows in its report.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .errors import ConfigError
from .runtime import Log, autocast, synchronize

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")
# A reduced precision must beat fp32 by this factor in the probe to be chosen: its rounding is not free, and two
# precisions within noise of each other are a tie that fp32 wins.
PROBE_MARGIN = 1.15
PROBE_BATCH = 4  # images per probe forward pass
PROBE_PASSES = 2  # timed passes per precision, after one untimed pass (kernel selection, caches)
# Where bf16 is emulated (the measured cost a warning quotes when no probe ran): a 2-core AMD EPYC Zen 3 (AVX2),
# ResNet-18 CIFAR stem, batch 64, 32 px, channels_last, forward + backward, 2026-12-06.
EMULATED_BF16_NOTE = "fp32 43.6 vs bf16 2.2 images/s on an AVX2-only AMD EPYC Zen 3 (benchmarks/RESULTS.md)"


@dataclass
class Precision:
    """The precision a run uses, and why.

    Attributes:
        name: ``fp32``, ``bf16``, ``fp16`` or ``fp64``: what autocast (or the model's dtype, for fp64) uses.
        requested: the configured ``train.precision`` (``auto`` or an explicit name).
        reason: one sentence: the rule that chose ``name`` (or that it was asked for).
        hardware: the device and its capability, e.g. ``cpu: AMD EPYC (x86_64 AVX2)``.
        probe: the timed probe's figures when one ran: seconds per forward pass for each candidate, the batch
            and image size (None when the hardware alone decided).
    """

    name: str
    requested: str = "auto"
    reason: str = ""
    hardware: str = ""
    probe: dict | None = field(default=None)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- the rule (pure)


def probe_candidates(device_type: str, capability: str) -> tuple[str, ...]:
    """The precisions a probe must time on this hardware; empty when the hardware alone decides."""
    return _rule(device_type, capability)[0]


def auto_precision(device_type: str, capability: str, probe: dict[str, float] | None = None) -> tuple[str, str]:
    """``train.precision: auto``: (precision, reason) for a device.

    Args:
        device_type: ``cpu``, ``cuda`` or ``mps``.
        capability: as :func:`capability` writes it: ``x86_64 AVX2``, ``x86_64 AVX512 AVX512_BF16 AMX``,
            ``aarch64 SVE256`` for a CPU; ``sm_90`` for a CUDA GPU.
        probe: seconds per forward pass of each of :func:`probe_candidates` and of fp32; needed only where
            :func:`probe_candidates` is not empty.

    CPU: bf16 where the capability includes AVX512_BF16 or AMX (native bf16 dot products); fp32 on other x86
    processors, where bf16 is emulated; the probe decides on other architectures (ARM's bf16 extension is not
    reported by torch). CUDA: bf16 from compute capability 8.0 (Ampere: bf16 tensor cores), fp16 on 7.x (fp16
    tensor cores, no bf16 ones), the probe decides between fp16 and fp32 on 6.x (fast fp16 on the P100, slow on
    consumer Pascal cards) and on an unreadable capability, fp32 before 6.0. MPS and others: fp32
    (reduced-precision training there is not tested by this project).
    """
    candidates, chosen, reason = _rule(device_type, capability)
    if not candidates:
        return chosen, reason
    if probe is None or any(c not in probe for c in candidates + ("fp32",)):
        raise ValueError(f"auto_precision: {device_type} {capability!r} needs a probe of fp32, {', '.join(candidates)}")
    best = min(candidates, key=lambda c: probe[c])
    speedup = probe["fp32"] / max(probe[best], 1e-12)
    timing = ", ".join(f"{c} {probe[c] * 1e3:.1f} ms" for c in ("fp32",) + candidates)
    if speedup >= PROBE_MARGIN:
        return best, f"probe: {best} ran {speedup:.2f}x as fast as fp32 on this {device_type} ({timing} per pass)"
    return "fp32", (f"probe: no reduced precision beat fp32 by {PROBE_MARGIN}x on this {device_type} "
                    f"(best {best} at {speedup:.2f}x; {timing} per pass)")


_X86 = ("X86_64", "AMD64", "I386", "I686", "X86")


def _rule(device_type: str, capability: str) -> tuple[tuple[str, ...], str, str]:
    """(the reduced precisions a probe must time against fp32, else (); the choice without a probe; why)."""
    caps = capability.upper().split()
    if device_type == "cpu":
        if "AMX" in caps or "AVX512_BF16" in caps:
            return (), "bf16", "native bf16 (AVX512-BF16 / AMX): bf16 autocast is about 3x fp32"
        if caps and caps[0] in _X86:
            return (), "fp32", ("no native bf16 on this x86 CPU (no AVX512-BF16, no AMX): bf16 would be emulated, "
                                "about 20x slower than fp32")
        return ("bf16",), "", "torch does not report whether this CPU computes bf16 natively"
    if device_type == "cuda":
        digits = capability.lower().removeprefix("sm_")
        if not (digits.isdigit() and len(digits) >= 2):
            return ("bf16", "fp16"), "", "unreadable compute capability"
        major = int(digits[:-1])
        if major >= 8:
            return (), "bf16", "bf16 tensor cores (compute capability 8.0 or newer)"
        if major == 7:
            return (), "fp16", "fp16 tensor cores without bf16 ones (compute capability 7.x), with loss scaling"
        if major == 6:
            return ("fp16",), "", "fp16 is fast on some compute capability 6.x GPUs (P100) and slow on others"
        return (), "fp32", "no fast reduced precision before compute capability 6.0"
    return (), "fp32", f"reduced-precision training on {device_type} is not tested by this project"


# ----------------------------------------------------------------------------- the hardware and the probe


def capability(device: torch.device) -> str:
    """What the rule reads: ``x86_64 AVX2`` or ``x86_64 AVX512 AVX512_BF16 AMX`` (the machine, torch's CPU kernel
    level, and the bf16 instruction sets torch detects), ``sm_90`` for a CUDA GPU, ``mps`` for an Apple GPU."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"
    if device.type != "cpu":
        return device.type
    parts = [platform.machine() or "unknown", torch.backends.cpu.get_cpu_capability()]
    cpu = getattr(torch, "cpu", None)
    for flag, test in (("AVX512_BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported")):
        if getattr(cpu, test, lambda: False)():
            parts.append(flag)
    return " ".join(parts)


def device_name(device: torch.device) -> str:
    """The processor's or GPU's name: ``AMD EPYC``, ``NVIDIA H100 80GB HBM3``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "unknown CPU"
    return device.type


def hardware(device: torch.device) -> str:
    """``cpu: AMD EPYC (x86_64 AVX2)``: the device, its name and its capability, for logs, run.json and reports."""
    return f"{device.type}: {device_name(device)} ({capability(device)})"


def probe(model: nn.Module, image_size: int, device: torch.device, candidates: tuple[str, ...],
          channels_last: bool = True, batch: int = PROBE_BATCH) -> dict:
    """Time forward passes of ``model`` at each precision: ``{"seconds_per_pass": {p: s}, "batch", "image_size"}``.

    Under a second where bf16 is native or cheap: one untimed pass per precision (kernel selection), then
    :data:`PROBE_PASSES` timed ones, without gradients and in eval mode (BatchNorm statistics are not touched; the
    mode is restored). A precision whose untimed pass already took 3x the fastest timed one so far is not timed
    further: it has lost, and an emulated precision would otherwise cost seconds.
    """
    was_training = model.training
    model.eval()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    seconds: dict[str, float] = {}
    order = ("fp32",) + tuple(c for c in candidates if c != "fp32")  # fp32 first: the reference
    try:
        with torch.no_grad():
            for p in order:
                t0 = time.perf_counter()
                _forward(model, x, device, p)
                first = time.perf_counter() - t0
                if seconds and first > 3 * min(seconds.values()):
                    seconds[p] = first
                    continue
                t0 = time.perf_counter()
                for _ in range(PROBE_PASSES):
                    _forward(model, x, device, p)
                seconds[p] = (time.perf_counter() - t0) / PROBE_PASSES
    finally:
        model.train(was_training)
    return {"seconds_per_pass": seconds, "batch": batch, "image_size": image_size}


def _forward(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> None:
    with autocast(device, precision):
        model(x)
    synchronize(device)


def check_explicit(requested: str, device: torch.device) -> None:
    """Refuse what cannot run: an unknown name (exit 2, listing the allowed ones), fp16 on a CPU (exit 2, why)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"train.precision: invalid value {requested!r}; allowed values: {', '.join(PRECISIONS)}")
    if requested == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision: fp16 on the CPU is refused: PyTorch's CPU autocast has few fp16 kernels "
                          "and no processor here computes fp16 natively, so it is slower than fp32 and needs loss "
                          "scaling; use --precision auto (bf16 where the CPU has it natively, else fp32) or fp32")


def choose_precision(requested: str, device: torch.device, model: nn.Module | None = None, image_size: int = 32,
                     channels_last: bool = True, log: Log | None = None) -> Precision:
    """The :class:`Precision` of a run on ``device``: ``auto`` by :func:`auto_precision` (probing ``model`` where the
    rule asks for it), an explicit name as asked (bf16 on a CPU without native bf16 runs, with one warning that
    gives its measured cost and the fix). The choice and its reason are logged.

    Args:
        requested: ``train.precision``.
        device: where the model runs.
        model: the run's model (or encoder), for the probe; without one, an uncertain case falls back to fp32.
        image_size: the side of the probe's inputs (the run's view size).
        channels_last: the probe's memory format (the run's).
        log: where the choice goes (``print``); None: nowhere.
    """
    check_explicit(requested, device)
    hw, cap = hardware(device), capability(device)
    figures = None
    if requested == "auto":
        candidates = probe_candidates(device.type, cap)
        if candidates and model is None:
            name, reason = "fp32", f"{_rule(device.type, cap)[2]}, and there is no model to probe"
        else:
            if candidates:
                figures = probe(model, image_size, device, candidates, channels_last)
            name, reason = auto_precision(device.type, cap, figures["seconds_per_pass"] if figures else None)
    else:
        name, reason = requested, "asked for (train.precision)"
        if requested == "bf16" and device.type == "cpu" and _rule("cpu", cap)[1] == "fp32":
            cost = EMULATED_BF16_NOTE
            if model is not None:
                figures = probe(model, image_size, device, ("bf16",), channels_last)
                s = figures["seconds_per_pass"]
                cost = f"a forward pass took {s['bf16'] / max(s['fp32'], 1e-12):.1f}x as long in bf16 as in fp32 here"
            if log is not None:
                log(f"warning: --precision bf16 on a CPU without native bf16 ({cap}): it is emulated and slow "
                    f"({cost}); use --precision auto or fp32")
    choice = Precision(name, requested, reason, hw, figures)
    if log is not None:
        log(f"precision {name} on {hw}: {reason}")
    return choice

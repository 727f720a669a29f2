"""Forward speed of the frozen ResNet-18 (CIFAR stem) at 32 px in fp32: what the evaluation's feature extraction
could gain from its layout, batch size, TorchScript, or folding BatchNorm into the convolutions.

    python benchmarks/cpu_forward.py

Prints images/s per variant (4 timed batches after one untimed); the process settings are `simclr pretrain`'s
(runtime.configure_device). "no BatchNorm" replaces every BatchNorm by an identity: the upper bound of folding.
"""

from __future__ import annotations

import copy
import time

import torch

from simclr.config import ModelConfig
from simclr.models import build_model
from simclr.runtime import configure_device


def speed(model: torch.nn.Module, batch: int, fmt: torch.memory_format, rounds: int = 4) -> float:
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(rounds):
            model(x)
    return rounds * batch / (time.perf_counter() - t0)


def main() -> None:
    torch.manual_seed(0)
    configure_device(torch.device("cpu"))
    enc = build_model(ModelConfig(backbone="resnet18", image_size=32)).backbone.eval()
    cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
    nobn = copy.deepcopy(enc)
    for m in list(nobn.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(m, name, torch.nn.Identity())
    nobn = nobn.to(memory_format=torch.channels_last)
    rows = [("channels_last, batch 256 (the evaluation's)", cl, 256, torch.channels_last),
            ("channels_last, batch 512", cl, 512, torch.channels_last),
            ("channels_last, batch 1024", cl, 1024, torch.channels_last),
            ("contiguous, batch 256", enc, 256, torch.contiguous_format),
            ("no BatchNorm, channels_last, batch 256", nobn, 256, torch.channels_last)]
    for label, model, batch, fmt in rows:
        print(f"{label}: {speed(model, batch, fmt):.1f} images/s", flush=True)
    jit = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(copy.deepcopy(enc))))
    print(f"TorchScript freeze + optimize_for_inference, batch 256: {speed(jit, 256, torch.contiguous_format):.1f} "
          "images/s")


if __name__ == "__main__":
    main()

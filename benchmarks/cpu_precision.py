"""fp32 against bf16 autocast on this CPU, and what ``train.precision: auto`` picks here (issue: precision from the
hardware).

ResNet-18 with the CIFAR stem, channels_last, one SimCLR training step (both views of a batch, forward + backward +
SGD) at each precision, after one untimed step, in one process:

    python benchmarks/cpu_precision.py [--batch-size 64] [--steps 2]

Writes benchmarks/results/cpu_precision.json (the processor, torch's capability string, images/s per precision,
and the choice of simclr.precision with its reason).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()

    from simclr.bench import views_step
    from simclr.config import load_config
    from simclr.models import build_model
    from simclr.optim import build_optimizer
    from simclr.precision import choose_precision, hardware
    from simclr.runtime import configure_device

    cpu = torch.device("cpu")
    configure_device(cpu)
    cfg = load_config("quickstart", {"train.batch_size": a.batch_size})
    views = torch.randn(2, a.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "hardware": hardware(cpu),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": a.batch_size,
           "command": f"python benchmarks/cpu_precision.py --batch-size {a.batch_size} --steps {a.steps}",
           "unit": "source images per second (two views each), forward + backward + SGD step", "images_per_s": {}}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(cfg.model).to(memory_format=torch.channels_last)
        opt = build_optimizer(cfg.optim, model, a.batch_size)
        views_step(model, opt, views[0], views[1], cpu, precision, True, 0.2)  # untimed: oneDNN primitive creation
        t0 = time.perf_counter()
        for _ in range(a.steps):
            float(views_step(model, opt, views[0], views[1], cpu, precision, True, 0.2))
        out["images_per_s"][precision] = round(a.steps * a.batch_size / (time.perf_counter() - t0), 2)
        print(precision, out["images_per_s"][precision], "img/s", flush=True)
    choice = choose_precision("auto", cpu, build_model(cfg.model).to(memory_format=torch.channels_last), 32)
    out["auto"] = choice.to_dict()
    out["bf16_over_fp32"] = round(out["images_per_s"]["bf16"] / out["images_per_s"]["fp32"], 3)
    print(json.dumps(out, indent=2))
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/cpu_precision.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Per-step time of the real training loop (train.train_one_epoch) on real images over the first steps of a run,
with and without flushing denormal floats to zero, each in a fresh process:

    python benchmarks/cpu_step_drift.py [--data ../shared/data/cifar10] [--steps 50] [--batch-size 128]

A run's steps get slower as the network trains when tiny values turn denormal (the CPU handles those in slow
microcode); simclr.runtime.configure_device flushes them. Writes benchmarks/results/cpu_step_drift.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def one(data: str, steps: int, batch: int, flush: bool) -> list[float]:
    import torch

    from simclr.batches import device_batches
    from simclr.config import load_config
    from simclr.data import load_split
    from simclr.optim import Schedule
    from simclr.precision import choose_precision
    from simclr.runtime import Dist, configure_device
    from simclr.train import TrainState, _build, train_one_epoch

    cfg = load_config("quickstart", {"data.name": data, "train.batch_size": batch, "train.progress": False,
                                     "train.checkpoint_every": 0})
    device = torch.device("cpu")
    configure_device(device, cfg.train.reuse_memory)
    torch.set_flush_denormal(flush)  # before the first parallel kernel: the worker threads inherit it
    images = load_split(cfg.data, "train", cfg.model.image_size, seed=0, log=lambda *a: None).images
    rt = Dist(device=device)
    model, net, optimizer, _, _ = _build(cfg, rt, None, lambda *a: None)
    precision = choose_precision(cfg.train.precision, device, model, cfg.model.image_size).name  # the run's choice
    schedule = Schedule(optimizer, cfg.optim, batch, len(images) // batch, cfg.train.epochs)
    marks: list[float] = []

    def timed(step: int) -> float:  # the loop asks the schedule once per step, before the step
        marks.append(time.perf_counter())
        return schedule(step)

    train_one_epoch(net, optimizer, timed, device_batches(images, cfg, 0, 0, rt), steps, cfg, TrainState(), rt, precision,
                    log=lambda *a, **k: None)
    marks.append(time.perf_counter())
    return [round(b - a, 3) for a, b in zip(marks, marks[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--child", choices=["flush", "keep"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(a.data, a.steps, a.batch_size, a.child == "flush")))
        return
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor() or platform.machine(),
           "command": " ".join(["python benchmarks/cpu_step_drift.py"] + sys.argv[1:]), "batch_size": a.batch_size}
    import torch

    from simclr.precision import device_name

    out["cpu"] = device_name(torch.device("cpu"))
    for mode in ("keep", "flush"):
        cmd = [sys.executable, __file__, "--data", a.data, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
               "--child", mode]
        times = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        q = len(times) // 4
        out[mode] = {"step_s": times, "first_quarter_mean_s": sum(times[1:q]) / (q - 1),
                     "last_quarter_mean_s": sum(times[-q:]) / q, "images_per_s": a.batch_size * (len(times) - 1) / sum(times[1:])}
        print(mode, {k: round(v, 3) for k, v in out[mode].items() if k != "step_s"}, flush=True)
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/cpu_step_drift.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

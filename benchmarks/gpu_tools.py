"""Helpers of benchmarks/gpu.sh: export the backbone of an interrupted run, and summarise the results.

    python benchmarks/gpu_tools.py export RUN_DIR            # checkpoints/last.pt -> RUN_DIR/backbone.safetensors
    python benchmarks/gpu_tools.py summary OUT_DIR RUN_DIR   # OUT_DIR/summary.md + summary.json

Run with the repo's ``src`` on PYTHONPATH (gpu.sh does that); needs nothing beyond the project's dependencies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def export(run_dir: Path) -> None:
    """Write backbone.safetensors from the last checkpoint, so an interrupted run can be evaluated."""
    from simclr.checkpoint import load_checkpoint, save_weights
    from simclr.evaluate import run_config
    from simclr.models import build_model

    if (run_dir / "backbone.safetensors").is_file():
        print(f"{run_dir}: finished run, backbone.safetensors already there")
        return
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = run_config(run_dir)
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    epoch = ckpt["state"]["epoch"]
    save_weights(model.backbone, run_dir / "backbone.safetensors", {"format": "simclr-1", "note": f"exported after epoch {epoch}"})
    print(f"{run_dir}: exported the backbone of epoch {epoch} from checkpoints/last.pt")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _planned_epochs(run_dir: Path) -> str:
    try:
        import yaml

        return str(yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"])
    except Exception:  # a missing or partial run directory: the summary still gets written
        return "?"


def _time_to_accuracy(out_dir: Path) -> dict | None:
    """Stage T of gpu.sh: the budgeted run's plan and wall time, and its test kNN (None if the stage did not run)."""
    info = _read_json(out_dir / "tta_run.json")
    if not info:
        return None
    plan = info.get("budget") or {}
    knn = _read_json(out_dir / "tta_knn_test.json") or {}
    return {"budget_s": plan.get("budget_s", 0.0), "steps": plan.get("steps"), "epochs": info.get("epochs"),
            "images_per_s": plan.get("images_per_s"), "wall_time_s": info.get("wall_time_s"),
            "knn_test": knn.get("accuracy")}


def summary(out_dir: Path, run_dir: Path) -> None:
    """summary.md + summary.json: the checks, throughput ratios, seconds and kNN accuracy per epoch, final test kNN."""
    from simclr.bench import tf32_label

    bench = _read_json(out_dir / "bench.json") or {}
    lines = []
    metrics_path = out_dir / "metrics.jsonl"
    if metrics_path.is_file():
        lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    knn_test = _read_json(run_dir / "eval" / "knn" / "metrics.json")
    timing = _read_json(out_dir / "timing.json") or {}
    checks = _read_json(out_dir / "checks.json") or []
    epochs = [x["epoch"] for x in lines]
    # an epoch's wall time: training (epoch_time_s) plus the checkpoint written after it (checkpoint_time_s)
    secs = [x["epoch_time_s"] + (x.get("checkpoint_time_s") or 0.0) for x in lines if x.get("epoch_time_s") is not None]
    ckpt = [x.get("checkpoint_time_s") for x in lines if x.get("checkpoint_time_s") is not None]
    steady = secs[1:] or secs  # the first epoch carries cuDNN/allocator warm-up
    mean_s = sum(steady) / len(steady) if steady else None
    settings = bench.get("settings", {})
    result = {
        "checks": checks,
        "machine": bench.get("machine"),
        "throughput": {
            part: {k + tf32_label(part, k, settings): (v.get("images_per_s", v.get("error")) if isinstance(v, dict) else v)
                   for k, v in bench[part].items()}
            for part in ("augment", "step", "epoch", "ablation") if part in bench
        },
        "peak_memory_mb": {
            f"{part}/{k}": v.get("peak_memory_mb") for part in ("step", "ablation") if part in bench
            for k, v in bench[part].items() if isinstance(v, dict)
        },
        "pretrain": {
            "epochs_done": epochs[-1] if epochs else 0,
            "seconds_per_epoch_mean": mean_s,  # checkpoint included
            "checkpoint_seconds_mean": sum(ckpt) / len(ckpt) if ckpt else None,
            "projected_100_epochs_s": 100 * mean_s if mean_s else None,
            "images_per_s_mean": (sum(x["images_per_sec"] for x in lines[1:] or lines) / len(lines[1:] or lines)) if lines else None,
            "knn_val": {x["epoch"]: x["knn_accuracy"] for x in lines if "knn_accuracy" in x},
            "knn_test": knn_test.get("accuracy") if knn_test else None,
            "per_epoch": [{k: x.get(k) for k in ("epoch", "epoch_time_s", "checkpoint_time_s", "images_per_sec", "loss", "lr",
                                                 "knn_accuracy")} for x in lines],
        },
        "stage_seconds": timing,
        "time_to_accuracy": _time_to_accuracy(out_dir),
    }
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")

    md = ["# GPU benchmark summary", ""]
    if checks:  # first: what only a GPU can answer
        md += ["## Checks (benchmarks/gpu_checks.py)", ""]
        md += [f"- **{c['check']}**: {c['status']} {c['detail']}" for c in checks]
        md.append("")
    elif (out_dir / "log.txt").is_file():
        md += ["## Checks: no results (see log.txt)", ""]
    m = result["machine"] or {}
    md.append(f"{m.get('date', '?')}: {m.get('gpu', '?')}, {m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores), torch {m.get('torch', '?')}")
    md.append("")
    if bench:
        md += ["| part | pipeline | source images/s | ms/step | peak MB |", "| --- | --- | ---: | ---: | ---: |"]
        for part in ("augment", "step", "epoch", "ablation"):
            for name, v in bench.get(part, {}).items():
                if isinstance(v, dict) and "error" in v:
                    md.append(f"| {part} | {name} | failed: {v['error'][:80]} | | |")
                elif isinstance(v, dict):
                    ms = f"{v['step_ms']:.1f}" if v.get("step_ms") is not None else ""
                    mem = f"{v['peak_memory_mb']:.0f}" if v.get("peak_memory_mb") is not None else ""
                    md.append(f"| {part} | {name}{tf32_label(part, name, settings)} | {v['images_per_s']:,.0f} | {ms} | {mem} |")
                else:
                    md.append(f"| {part} | {name} | x{v:.2f} | | |")
        md.append("")
    tta = result["time_to_accuracy"]
    if tta:
        md += [f"Time to accuracy (stage T, cifar10_resnet18 --budget {tta['budget_s']:.0f}s): test kNN "
               + (f"{tta['knn_test']:.4f}" if tta["knn_test"] is not None else "none")
               + f" after {tta['wall_time_s'] or 0:.0f} s of pretraining, {tta['steps']} steps ({tta['epochs']} epochs), "
               f"{tta['images_per_s'] or 0:,.0f} images/s planned", ""]
    p = result["pretrain"]
    md.append(f"cifar10_resnet18 ({_planned_epochs(run_dir)}-epoch schedule): {p['epochs_done']} epochs done; "
              + (f"{p['seconds_per_epoch_mean']:.2f} s/epoch after the first (100 epochs: {p['projected_100_epochs_s'] / 60:.1f} min)"
                 + (f", of which {p['checkpoint_seconds_mean']:.2f} s checkpoint" if p["checkpoint_seconds_mean"] is not None else "")
                 if p["seconds_per_epoch_mean"] else "no epoch finished")
              + (f"; test kNN {p['knn_test']:.4f}" if p["knn_test"] is not None else ""))
    md += ["", "| epoch | s training | s checkpoint | images/s | loss | kNN (val) |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for x in p["per_epoch"]:
        knn = f"{x['knn_accuracy']:.4f}" if x.get("knn_accuracy") is not None else ""
        md.append(f"| {x['epoch']} | {x.get('epoch_time_s') or 0:.2f} | {x.get('checkpoint_time_s') or 0:.2f} | "
                  f"{x.get('images_per_sec') or 0:,.0f} | {x.get('loss') or 0:.4f} | {knn} |")
    (out_dir / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:60]))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "export":
        export(Path(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "summary":
        summary(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)

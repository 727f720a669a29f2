"""The plain-text table ``simclr bench`` prints of a result."""

from __future__ import annotations

from .options import PARTS


def tf32_label(part: str, name: str, settings: dict) -> str:
    """`` (TF32)`` for a row that ran fp32 math on a CUDA device where torch uses TF32 for it, else ``""``."""
    if not settings.get("tf32") or part == "augment":
        return ""
    fp32 = name.startswith("fp32") or name == "baseline" or (name.startswith("ours") and settings.get("precision") == "fp32")
    return " (TF32)" if fp32 else ""


def format_table(result: dict) -> str:
    """A plain-text summary of :func:`run_bench`'s result."""
    m, s = result["machine"], result["settings"]
    lines = [
        f"{m['date']}  {m['cpu']} ({m['cpu_count']} cores)" + (f"  {m['gpu']}" if "gpu" in m else "")
        + f"  torch {m['torch']}  load {m['load_average']}",
        f"{s['backbone']}, {s['image_size']} px, batch {s['batch_size']}, ours {s['precision']}"
        + (" channels_last" if s["channels_last"] else "") + f" vs the peers' fp32 eager; data: {s['data']}",
        *([f"precision {s['precision']}: {s['precision_reason']} ({s['hardware']})"] if s.get("precision_reason") else []),
        f"{'part':<9}{'pipeline':<50}{'src img/s':>12}{'ms/step':>10}{'peak MB':>10}{'vs baseline':>13}",
    ]
    for part in PARTS:
        if part not in result:
            continue
        r = result[part]
        base = r.get("baseline", {}).get("images_per_s")
        for name, v in r.items():
            if not isinstance(v, dict) or "images_per_s" not in v:
                continue
            ratio = f"x{v['images_per_s'] / base:.2f}" if base and name != "baseline" else ""
            ms = f"{v['step_ms']:,.0f}" if v.get("step_ms") is not None else ""
            mem = f"{v['peak_memory_mb']:,.0f}" if v.get("peak_memory_mb") is not None else ""
            label = name + tf32_label(part, name, s)
            lines.append(f"{part:<9}{label:<50}{v['images_per_s']:>12,.1f}{ms:>10}{mem:>10}{ratio:>13}")
        if r.get("speedup_per_round"):
            lines.append(f"{part:<9}{'ours vs baseline in each round':<50}{'':>32}"
                         + ", ".join(f"x{x:.2f}" for x in r["speedup_per_round"]))
    return "\n".join(lines)

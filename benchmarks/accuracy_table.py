"""The recipe ablation table of benchmarks/RESULTS.md from the results of `bash benchmarks/cpu_accuracy.sh <row>`:

    python benchmarks/accuracy_table.py [budget6m b6m_bs128 ...]   (default: the ABLATION rows of cpu_accuracy.sh, then budget6m)

One line per run: test kNN and linear accuracy, the same on the validation split (the recipe is chosen on those),
images/s and images seen in pretraining. Reads benchmarks/results/cpu_accuracy_<name>.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SCRIPT = (Path(__file__).resolve().parent / "cpu_accuracy.sh").read_text()  # owns the rows and R0
R0 = re.search(r'^R0="([^"]*)"', SCRIPT, flags=re.M).group(1)


def _pct(x) -> str:
    return f"{100 * x:.1f} %" if isinstance(x, (int, float)) else "—"


def row(name: str) -> str:
    r = json.loads((RESULTS / f"cpu_accuracy_{name}.json").read_text())
    plan = r.get("budget_plan") or {}
    steps = plan.get("steps") or 0
    batch = round(plan["images_per_s"] / plan["steps_per_s"]) if plan.get("steps_per_s") else 0  # images per step
    seen = steps * batch
    speed = seen / r["pretrain_wall_time_s"] if r.get("pretrain_wall_time_s") else None
    flags = r["command"].split("--set train.knn_every=0", 1)[-1].replace(" --baselines ''", "").removesuffix(" --baselines")
    flags = flags.replace(R0, "").strip() or ("(the quickstart preset)" if name == "budget6m" else "(R0)")
    test, val = r.get("simclr", {}), r.get("simclr_val", {})
    return (f"| {name} | `{flags}` | {_pct(test.get('knn'))} | {_pct(test.get('linear'))} | {_pct(val.get('knn'))} | "
            f"{_pct(val.get('linear'))} | {speed:,.0f} | {seen:,} |" if speed else f"| {name} | `{flags}` | ... |")


def main(names: list[str]) -> None:
    if not names:
        # the rows in the order of cpu_accuracy.sh's ABLATION list (its one owner), then the shipped recipe
        names = re.findall(r'^\s*"(b6m_\w+)\|', SCRIPT, flags=re.M) + ["budget6m"]
        names = [n for n in names if (RESULTS / f"cpu_accuracy_{n}.json").is_file()]
    print("| run | flags | kNN test | linear test | kNN val | linear val | images/s | images seen |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        print(row(name))
    base = json.loads((RESULTS / "cpu_accuracy_b6m_old.json").read_text())
    ri, riv = base.get("random_init", {}), base.get("random_init_val", {})
    print(f"| random init | (no pretraining) | {_pct(ri.get('knn'))} | {_pct(ri.get('linear'))} | {_pct(riv.get('knn'))} | "
          f"{_pct(riv.get('linear'))} | | 0 |")


if __name__ == "__main__":
    main(sys.argv[1:])

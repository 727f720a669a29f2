"""The recipe ablation table of benchmarks/RESULTS.md from the results of `bash benchmarks/cpu_accuracy.sh <row>`:

    python benchmarks/accuracy_table.py [budget6m b6m_bs128 ...]   (default: the ABLATION rows of cpu_accuracy.sh, then budget6m)
    python benchmarks/accuracy_table.py --round2 TAG                (round 2: budget6m_q_TAG, then the QROWS rows run with TAG)
    python benchmarks/accuracy_table.py --round3 TAG                (round 3: budget6m_s_TAG, then the SROWS rows run with TAG)
    python benchmarks/accuracy_table.py --round4 TAG                (round 4: recipe T's two seeds, s6m_t01[_seed1]_TAG, then the TROWS rows)

One line per run: test kNN and linear accuracy, the same on the validation split (the recipe is chosen on those),
images/s and images seen in pretraining. Reads benchmarks/results/cpu_accuracy_<name>.json, and the test figures'
95 % bootstrap intervals from the runs' own RUNS/<name>/eval/<protocol>/metrics.json (RUNS: cpu_accuracy.sh's
default, runs/bench_accuracy), else from the copy of them the result file keeps; a run recorded before either shows
its figure alone.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from simclr.stats import describe_bootstrap, format_interval, format_metric

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCRIPT = (HERE / "cpu_accuracy.sh").read_text()  # owns the rows, R0 and where the runs go
R0 = re.search(r'^R0="([^"]*)"', SCRIPT, flags=re.M).group(1)
Q = re.search(r'^Q="([^"]*)"', SCRIPT, flags=re.M).group(1)  # recipe Q, pinned under the round-2 rows
S = re.search(r'^S="([^"]*)"', SCRIPT, flags=re.M).group(1)  # recipe S, pinned under the round-3 rows
RUNS = HERE.parent / re.search(r"^RUNS=\$\{3:-([^}]*)\}", SCRIPT, flags=re.M).group(1)
found: dict = {}  # the bootstrap settings of the first run with intervals, and the runs without them


def _pct(x) -> str:
    return format_interval(x) if isinstance(x, (int, float)) else "—"


def _test(run: Path, protocol: str, x, stored: dict | None = None) -> str:
    """A test figure with its interval from the run's metrics.json, else from the copy cpu_accuracy.sh keeps in the
    result file (``stored``: its ``*_test_metrics``), else the figure alone (a run evaluated before the intervals)."""
    path = run / "eval" / protocol / "metrics.json"
    m = json.loads(path.read_text()) if path.is_file() else (stored or {}).get(protocol, {})
    if "intervals" not in m:
        found.setdefault("missing", []).append(str(run.relative_to(RUNS)))
        return _pct(x)
    found.setdefault("bootstrap", (m["bootstrap"], m["n_test"]))
    return format_metric(m)


def _recipe(r: dict) -> str:
    """The name of the quickstart recipe a preset row ran (Q, S, T: RESULTS.md's rounds), from the recipe it recorded."""
    recipe = r.get("recipe") or {}
    scale = (recipe.get("augment") or {}).get("scale") or [0.2, 1.0]  # before "recipe": Q's
    temperature = (recipe.get("train") or {}).get("temperature", 0.2)
    if scale == [0.2, 1.0]:
        return "(recipe Q)"
    return "(recipe S)" if temperature == 0.2 else f"(recipe T: crop scale {scale}, temperature {temperature})"


def row(name: str) -> str:
    r = json.loads((RESULTS / f"cpu_accuracy_{name}.json").read_text())
    plan = r.get("budget_plan") or {}
    steps = plan.get("steps") or 0
    batch = round(plan["images_per_s"] / plan["steps_per_s"]) if plan.get("steps_per_s") else 0  # images per step
    seen = steps * batch
    speed = seen / r["pretrain_wall_time_s"] if r.get("pretrain_wall_time_s") else None
    flags = r["command"].split("--set train.knn_every=0", 1)[-1].replace(" --baselines ''", "").removesuffix(" --baselines")
    preset = name.startswith(("budget6m", "q6m_base", "t6m_base"))  # a preset itself: no flags of its own
    flags = flags.replace(R0, "").replace(Q, "").replace(S, "").strip() or (_recipe(r) if preset else "(R0)")
    test, val = r.get("simclr", {}), r.get("simclr_val", {})
    knn, linear = (_test(RUNS / name, p, test.get(p), r.get("simclr_test_metrics")) for p in ("knn", "linear"))
    return (f"| {name} | `{flags}` | {knn} | {linear} | {_pct(val.get('knn'))} | "
            f"{_pct(val.get('linear'))} | {speed:,.0f} | {seen:,} |" if speed else f"| {name} | `{flags}` | ... |")


def main(names: list[str]) -> None:
    base_name = "b6m_old"  # the run whose random-init baseline ends the table
    if names[:1] in (["--round2"], ["--round3"], ["--round4"]):
        # round 2: recipe Q's budget6m run on this kind of processor (renamed budget6m_q_TAG when the preset moved
        # on), then cpu_accuracy.sh's QROWS in its order; round 3: recipe S's (budget6m_s_TAG), then the SROWS;
        # round 4: recipe T's two seeds (rows of round 3), then the TROWS. The random-init row is the budget6m
        # run's of the round (round 4: round 3's: the network at random init does not depend on the recipe).
        tag, rnd = names[1], names[0]
        base, prefix = {"--round2": ("budget6m_q", "q6m"), "--round3": ("budget6m_s", "s6m"),
                        "--round4": ("budget6m_s", "t6m")}[rnd]
        first = [f"{base}_{tag}"] if rnd != "--round4" else [f"s6m_t01_{tag}", f"s6m_t01_seed1_{tag}"]
        names = first + [f"{n}_{tag}" for n in re.findall(rf'^\s*"({prefix}_\w+)\|', SCRIPT, flags=re.M)]
        names = [n for n in names if (RESULTS / f"cpu_accuracy_{n}.json").is_file()]
        base_name = f"{base}_{tag}"
    elif not names:
        # the rows in the order of cpu_accuracy.sh's ABLATION list (its one owner), then the shipped recipe
        names = re.findall(r'^\s*"(b6m_\w+)\|', SCRIPT, flags=re.M) + ["budget6m"]
        names = [n for n in names if (RESULTS / f"cpu_accuracy_{n}.json").is_file()]
    machines = {json.loads((RESULTS / f"cpu_accuracy_{n}.json").read_text()).get("hardware") for n in names}
    print("Machine: " + "; ".join(sorted(m or "AMD EPYC Zen 4 (x86_64 AVX512 AVX512_BF16), bf16 (before run.json "
                                         "named the hardware)" for m in machines)))
    print()
    print("| run | flags | kNN test | linear test | kNN val | linear val | images/s | images seen |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        print(row(name))
    base = json.loads((RESULTS / f"cpu_accuracy_{base_name}.json").read_text())
    ri, riv = base.get("random_init", {}), base.get("random_init_val", {})
    knn, linear = (_test(RUNS / base_name / "baselines" / "random", p, ri.get(p), base.get("random_init_test_metrics"))
                   for p in ("knn", "linear"))
    print(f"| random init | (no pretraining) | {knn} | {linear} | {_pct(riv.get('knn'))} | {_pct(riv.get('linear'))} | | 0 |")
    print()
    if "bootstrap" in found:
        print(f"Test columns: {describe_bootstrap(*found['bootstrap'])}.")
    if found.get("missing"):
        print(f"No interval (neither a metrics.json with intervals under {RUNS.relative_to(HERE.parent)}/ "
              "nor a copy in the result file): "
              f"{', '.join(dict.fromkeys(found['missing']))}; `simclr evaluate --run <run> --protocol knn,linear` adds them "
              "(or rerun `bash benchmarks/cpu_accuracy.sh <row>`).")


if __name__ == "__main__":
    main(sys.argv[1:])

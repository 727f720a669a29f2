"""``simclr compare``: two runs' stored predictions on the same test images -> paired difference and McNemar's test.

A difference between two encoders is real when it holds on the same images: both runs' ``predictions.csv`` are
paired image by image, the difference of their scores gets a paired bootstrap interval and the discordant images
McNemar's test (:mod:`simclr.stats`). Runs tested on different images cannot be paired and are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import stats
from ..config import BUILTIN_DATASETS
from ..errors import ConfigError, DataError
from ..rundir import EVAL, write_json
from .outputs import read_predictions
from .protocols import parse_protocols

# metrics.json keys that fix a run's test images, and how a message names them
TEST_SET_KEYS = {"data": "data", "data_limit": "data.limit", "n_test": "test images", "classes": "classes"}


def _outputs(run: Path, protocol: str) -> tuple[dict, dict]:
    """metrics.json and predictions.csv of ``protocol`` in a run directory (``RUN/eval/<p>``) or an eval folder."""
    for d in (run / EVAL / protocol, run / protocol):
        if (d / "metrics.json").is_file() and (d / "predictions.csv").is_file():
            return json.loads((d / "metrics.json").read_text()), read_predictions(d / "predictions.csv")
    raise DataError(f"{run}: no {EVAL}/{protocol}/metrics.json with predictions.csv; evaluate it first "
                    f"(simclr evaluate --run {run} --protocol {protocol})")


def _check_same_test_set(names: tuple[str, str], metrics: tuple[dict, dict], preds: tuple[dict, dict]) -> None:
    """Raise ConfigError naming the first difference between the two runs' test sets."""
    (a, b), (ma, mb), (pa, pb) = names, metrics, preds
    differ = f"{a} and {b} were tested on different test images, so they cannot be paired"
    for key, label in TEST_SET_KEYS.items():
        va, vb = ma.get(key), mb.get(key)
        if key not in ma or key not in mb or va == vb:
            continue
        if key == "data" and va not in BUILTIN_DATASETS and vb not in BUILTIN_DATASETS:
            continue  # two paths may name the same folder: its files decide below
        raise ConfigError(f"{differ}: {label} {va!r} vs {vb!r}")
    if len(pa["true"]) != len(pb["true"]):
        raise ConfigError(f"{differ}: {len(pa['true'])} vs {len(pb['true'])} test images in predictions.csv")
    if pa["path"] and pb["path"]:
        # folder sources: the same files relative to each run's data folder, in the same order
        rel_a = [os.path.relpath(p, ma.get("data", "")) for p in pa["path"]]
        rel_b = [os.path.relpath(p, mb.get("data", "")) for p in pb["path"]]
        moved = [i for i, (x, y) in enumerate(zip(rel_a, rel_b)) if x != y]
        if moved:
            raise ConfigError(f"{differ}: {len(moved)} of {len(rel_a)} test files differ (first: image {moved[0]}, "
                              f"{rel_a[moved[0]]} vs {rel_b[moved[0]]})")
    wrong = int((pa["true"] != pb["true"]).sum())
    if wrong:
        raise ConfigError(f"{differ}: their stored test labels differ at {wrong} of {len(pa['true'])} images")


def compare_runs(run_a: str | Path, run_b: str | Path, protocol: str = "knn", resamples: int = 1000, seed: int = 0,
                 out: str | Path | None = None) -> dict:
    """A minus B under ``protocol`` on the same test images, with a paired bootstrap interval and McNemar's test.

    Args:
        run_a, run_b: run directories (``RUN/eval/<protocol>/``) or eval folders (``<folder>/<protocol>/``) that
            hold ``metrics.json`` and ``predictions.csv``.
        protocol: one of knn, linear, mlp, finetune.
        resamples: bootstrap resamples (>= 1); seed: seeds them.
        out: also write the result as JSON there.

    Returns:
        ``{"protocol", "run_a", "run_b", "method_a", "method_b", "n_test", "bootstrap", "difference":
        {metric: {"a", "b", "difference", "interval"}}, "mcnemar": {"a_only", "b_only", "p_value", "test"}}``.

    Raises:
        ConfigError: the runs were tested on different images (names the difference), a bad protocol or
            resample count. DataError: a run has no stored predictions for ``protocol``.
    """
    if len(parse_protocols(protocol)) != 1:
        raise ConfigError(f"--protocol {protocol!r}: compare takes one protocol")
    stats.check_resamples(resamples, "--resamples")
    runs = (Path(run_a), Path(run_b))
    (ma, pa), (mb, pb) = (_outputs(r, protocol) for r in runs)
    _check_same_test_set((str(runs[0]), str(runs[1])), (ma, mb), (pa, pb))
    y = pa["true"]
    result = {
        "protocol": protocol,
        "run_a": str(runs[0]),
        "run_b": str(runs[1]),
        "method_a": ma.get("method"),
        "method_b": mb.get("method"),
        "n_test": len(y),
        "bootstrap": stats.bootstrap_settings(resamples, seed),
        "difference": stats.paired_difference(y, pa["predicted"], pb["predicted"], resamples, seed,
                                              len(ma.get("classes") or [])),
        "mcnemar": stats.mcnemar(pa["predicted"] == y, pb["predicted"] == y),
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
    return result


# The paired test holds the two encoders fixed, so the training seed's share of the difference is not in it; measured
# (benchmarks/RESULTS.md, round 2): one recipe pretrained with seeds 0 and 1 differed by 2.2 points of kNN, p = 1e-8.
SEED_CAVEAT = ("This compares these two encoders; to compare two recipes, pretrain each with several seeds "
               "(the training seed alone moved kNN by 2.2 points in benchmarks/RESULTS.md)")


def format_comparison(result: dict) -> str:
    """The printed summary of :func:`compare_runs`: both scores, the difference and what it allows one to say."""
    d, mc = result["difference"], result["mcnemar"]
    acc = d["accuracy"]
    a, b = (f"{result[f'method_{x}'] or 'run'} ({result[f'run_{x}']})" for x in ("a", "b"))
    lo, hi = acc["interval"]
    if lo > 0 or hi < 0:
        verdict = (f"A is {'better' if acc['difference'] > 0 else 'worse'} than B on these test images: the interval of "
                   "the difference excludes 0")
    else:
        verdict = "A and B cannot be told apart on these test images: the interval of the difference contains 0"
    lines = [
        f"{result['protocol']} on the same {result['n_test']:,} test images",
        f"  A: {a}: accuracy {stats.format_interval(acc['a'])}",
        f"  B: {b}: accuracy {stats.format_interval(acc['b'])}",
        "  A - B (percentage points, paired):",
        *(f"    {label} {stats.format_interval(d[k]['difference'], d[k]['interval'], signed=True)}"
          for k, label in (("accuracy", "accuracy   "), ("f1_weighted", "F1 weighted"), ("f1_macro", "F1 macro   "))),
        f"  McNemar: A right and B wrong on {mc['a_only']:,} images, the reverse on {mc['b_only']:,}; "
        f"p = {mc['p_value']:.3g} ({mc['test']})",
        f"  {verdict}",
        f"  {stats.describe_bootstrap(result['bootstrap'], result['n_test'])}, the same resamples for A and B",
        f"  {SEED_CAVEAT}",
    ]
    return "\n".join(lines)

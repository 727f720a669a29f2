"""simclr.stats: bootstrap intervals on stored predictions, the paired difference, McNemar's test, the one format."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from simclr import stats
from simclr.errors import ConfigError
from simclr.evaluate import classification_metrics


def predictions(n: int, accuracy: float, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated test labels and predictions: right with probability ``accuracy``, else a uniformly wrong class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    wrong = (y + rng.integers(1, classes, n)) % classes
    return y, np.where(rng.random(n) < accuracy, y, wrong)


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of a binomial proportion k / n (closed form)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_scores_of_the_whole_set_are_scikit_learns():
    y, p = predictions(500, 0.6, classes=5)
    p[p == 4] = 3  # class 4 is never predicted
    names = ["a", "b", "c", "d", "e", "f"]  # class 5 has neither test images nor predictions: F1 0, as sklearn
    m = classification_metrics(y, p, names)
    s = stats.score_rows(y, p, np.arange(len(y))[None], len(names))
    for key in stats.METRICS:
        assert s[key][0] == pytest.approx(m[key], abs=1e-12), key


def test_accuracy_interval_matches_wilson_to_the_bootstraps_own_tolerance():
    n, resamples = 2000, 2000
    y, p = predictions(n, 0.7, seed=1)
    k = int((y == p).sum())
    acc, z = k / n, scipy_stats.norm.ppf(0.975)
    lo, hi = stats.bootstrap_interval(y, p, resamples, seed=0)["accuracy"]
    w_lo, w_hi = wilson(k, n, z)
    # Tolerance from what the bootstrap is: a quantile estimated from `resamples` draws has a standard error of
    # sqrt(q (1 - q) / B) / density (density of the resampled accuracy ~ normal, sd sqrt(acc (1 - acc) / n)); the
    # resampled accuracy moves in steps of 1 / n; Wilson's interval is centred (z^2 / 2n)(1 - 2 acc) off acc.
    sd = math.sqrt(acc * (1 - acc) / n)
    q = 0.025
    quantile_se = math.sqrt(q * (1 - q) / resamples) / (scipy_stats.norm.pdf(z) / sd)
    tol = 4 * quantile_se + 1 / n + abs((acc + z * z / (2 * n)) / (1 + z * z / n) - acc)
    assert lo == pytest.approx(w_lo, abs=tol) and hi == pytest.approx(w_hi, abs=tol)
    assert hi - lo > 10 * tol  # the check has teeth: the interval is wide against its tolerance


def test_fixed_seed_gives_the_same_interval():
    y, p = predictions(800, 0.5, seed=2)
    first = stats.bootstrap_interval(y, p, 300, seed=7)
    assert stats.bootstrap_interval(y, p, 300, seed=7) == first
    assert stats.bootstrap_interval(y, p, 300, seed=8) != first
    m = classification_metrics(y, p, [str(c) for c in range(10)])
    for key in stats.METRICS:
        assert first[key][0] < m[key] < first[key][1], key


def test_paired_difference_of_identical_predictions_is_zero_with_p_one():
    y, p = predictions(400, 0.55, seed=3)
    d = stats.paired_difference(y, p, p.copy(), 200, seed=0)
    for key in stats.METRICS:
        assert d[key]["difference"] == 0 and d[key]["interval"] == [0.0, 0.0], key
    mc = stats.mcnemar(p == y, p == y)
    assert (mc["a_only"], mc["b_only"], mc["p_value"]) == (0, 0, 1.0)


def test_paired_difference_sees_a_real_improvement():
    y, b = predictions(2000, 0.5, seed=4)
    a = b.copy()
    fix = np.flatnonzero(a != y)[:50]  # A gets 50 more images right (2.5 points), nothing else changes
    a[fix] = y[fix]
    d = stats.paired_difference(y, a, b, 500, seed=0)["accuracy"]
    assert d["difference"] == pytest.approx(0.025)
    assert 0 < d["interval"][0] < 0.025 < d["interval"][1]
    # paired: much narrower than the two separate intervals, which overlap
    ia, ib = (stats.bootstrap_interval(y, x, 500, seed=0)["accuracy"] for x in (a, b))
    assert ia[0] < ib[1]
    assert d["interval"][1] - d["interval"][0] < 0.5 * (ia[1] - ia[0])


@pytest.mark.parametrize("a_only,b_only", [(0, 3), (2, 9), (12, 12), (30, 12), (400, 350)])
def test_mcnemar_against_scipy(a_only, b_only):
    both = 50  # concordant images do not count
    correct_a = np.array([True] * a_only + [False] * b_only + [True] * both)
    correct_b = np.array([False] * a_only + [True] * b_only + [True] * both)
    mc = stats.mcnemar(correct_a, correct_b)
    n = a_only + b_only
    if n < stats.EXACT_BELOW:
        ref = scipy_stats.binomtest(a_only, n, 0.5).pvalue
        assert mc["test"] == "exact binomial"
    else:
        ref = scipy_stats.chi2.sf((abs(a_only - b_only) - 1) ** 2 / n, 1)
        assert mc["test"].startswith("chi-square")
    assert (mc["a_only"], mc["b_only"]) == (a_only, b_only)
    assert mc["p_value"] == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_bad_resample_count_is_a_config_error(bad):
    y, p = predictions(20, 0.5)
    with pytest.raises(ConfigError, match="resamples"):
        stats.bootstrap_interval(y, p, bad)


def test_the_one_format():
    assert stats.format_interval(0.44, [0.43, 0.45]) == "44.0 % [43.0, 45.0]"
    assert stats.format_interval(0.007, [-0.002, 0.016], signed=True) == "+0.7 % [-0.2, 1.6]"
    assert stats.format_interval(0.44) == "44.0 %"
    assert stats.format_spread(0.441, 0.003, 3) == "44.1 % ± 0.3 (3 seeds)"
    m = {"accuracy": 0.54, "intervals": {"accuracy": [0.53, 0.55]},
         "seed_runs": {"seeds": [0, 1, 2], "mean": {"accuracy": 0.541}, "std": {"accuracy": 0.003}}}
    assert stats.format_metric(m) == "54.0 % [53.0, 55.0]; 54.1 % ± 0.3 (3 seeds)"
    assert stats.format_metric({"accuracy": 0.5}) == "50.0 %"  # a metrics.json from before the intervals
    text = stats.describe_bootstrap(stats.bootstrap_settings(1000, 0), 10000)
    assert "95 %" in text and "10,000 test images" in text and "1,000 resamples" in text

"""The command line: `simclr compare` on stored evaluation outputs (written here by hand: no model runs)."""

import csv
import json

import numpy as np
import pytest

from simclr.cli import main
from simclr.evaluate.outputs import PREDICTION_COLUMNS

CLASSES = ["a", "b", "c"]


def fake_eval(run, y, pred, protocol="knn", data="cifar10", limit=None, paths=None, method="M"):
    """``run/eval/<protocol>/`` with the metrics.json keys compare reads and a predictions.csv."""
    d = run / "eval" / protocol
    d.mkdir(parents=True)
    meta = {"protocol": protocol, "method": method, "data": data, "data_limit": limit, "n_test": len(y),
            "classes": CLASSES, "accuracy": float(np.mean(np.asarray(y) == np.asarray(pred)))}
    (d / "metrics.json").write_text(json.dumps(meta))
    with open(d / "predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(PREDICTION_COLUMNS) + (["path"] if paths else []))
        for i, (t, p) in enumerate(zip(y, pred)):
            w.writerow([i, t, p, CLASSES[t], CLASSES[p]] + ([paths[i]] if paths else []))
    return run


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.6, y, (y + 1) % 3)
    return y.tolist(), pred.tolist()


def test_compare_identical_runs(tmp_path, labels, capsys):
    y, p = labels
    a, b = fake_eval(tmp_path / "a", y, p), fake_eval(tmp_path / "b", y, p)
    out = tmp_path / "cmp" / "knn.json"
    assert main(["compare", str(a), str(b), "--out", str(out), "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["difference"]["accuracy"]["difference"] == 0 and r["difference"]["accuracy"]["interval"] == [0, 0]
    assert r["mcnemar"] == {"a_only": 0, "b_only": 0, "p_value": 1.0, "test": "exact binomial"}
    assert r["n_test"] == 300 and r["bootstrap"]["resamples"] == 200 and r["protocol"] == "knn"
    assert "+0.0 % [0.0, 0.0]" in text and "p = 1 " in text and "cannot be told apart" in text
    assert "to compare two recipes, pretrain each with several seeds" in text  # what the test leaves out


def test_compare_measures_a_real_difference(tmp_path, labels, capsys):
    y, p = labels
    better = [t if i % 3 == 0 else q for i, (t, q) in enumerate(zip(y, p))]  # a third of the errors fixed
    a, b = fake_eval(tmp_path / "a", y, better), fake_eval(tmp_path / "b", y, p)
    assert main(["compare", str(a), str(b), "--resamples", "300"]) == 0
    text = capsys.readouterr().out
    assert "A is better than B" in text
    assert main(["compare", str(b), str(a), "--resamples", "300"]) == 0
    assert "A is worse than B" in capsys.readouterr().out


@pytest.mark.parametrize("change,message", [
    ({"limit": 200}, "data.limit None vs 200"),
    ({"data": "cifar100"}, "data 'cifar10' vs 'cifar100'"),
    ({"y": "shuffled"}, "stored test labels differ"),
    ({"y": "shorter"}, "test images 300 vs 299"),
])
def test_compare_refuses_other_test_sets(tmp_path, labels, capsys, change, message):
    y, p = labels
    y_b, p_b = list(y), list(p)
    if change.get("y") == "shuffled":
        y_b = y_b[1:] + y_b[:1]
    elif change.get("y") == "shorter":
        y_b, p_b = y_b[:-1], p_b[:-1]
    a = fake_eval(tmp_path / "a", y, p)
    b = fake_eval(tmp_path / "b", y_b, p_b, data=change.get("data", "cifar10"), limit=change.get("limit"))
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "different test images" in err and message in err


def test_compare_folders_by_their_files(tmp_path, labels, capsys):
    y, p = labels
    files = [f"test/{CLASSES[t]}/{i:04d}.png" for i, t in enumerate(y)]
    a = fake_eval(tmp_path / "a", y, p, data="data", paths=[f"data/{f}" for f in files])
    same = fake_eval(tmp_path / "b", y, p, data="/x/data", paths=[f"/x/data/{f}" for f in files])  # another name
    assert main(["compare", str(a), str(same), "--resamples", "50"]) == 0
    other = list(files)
    other[5] = "test/a/9999.png"
    moved = fake_eval(tmp_path / "c", y, p, data="data", paths=[f"data/{f}" for f in other])
    assert main(["compare", str(a), str(moved)]) == 2
    assert "1 of 300 test files differ (first: image 5" in capsys.readouterr().err


def test_compare_bad_input(tmp_path, labels, capsys):
    y, p = labels
    a, b = fake_eval(tmp_path / "a", y, p), fake_eval(tmp_path / "b", y, p)
    assert main(["compare", str(a), str(b), "--resamples", "-5"]) == 2
    assert "--resamples: invalid value -5" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--protocol", "svm"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--protocol", "linear"]) == 3
    assert "simclr evaluate --run" in capsys.readouterr().err

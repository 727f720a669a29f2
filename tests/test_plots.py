"""Each plot function writes a valid PNG (signature bytes, PIL can open it) and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclr import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, expected: Path) -> tuple[int, int]:
    assert isinstance(path, Path)
    assert path == expected
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100
        return im.size


def test_plot_loss(tmp_path):
    out = tmp_path / "nested" / "loss.png"  # parent folders are created
    assert_png(plots.plot_loss([1, 2, 3, 4], [6.2, 5.1, float("nan"), 4.0], out), out)
    assert_png(plots.plot_loss([], [], tmp_path / "empty.png", title="empty"), tmp_path / "empty.png")
    with pytest.raises(ValueError):
        plots.plot_loss([1, 2], [1.0], tmp_path / "bad.png")


def test_plot_knn_fractions_and_percentages(tmp_path):
    assert_png(plots.plot_knn([10, 20, 30], [0.41, 0.55, 0.62], tmp_path / "a.png"), tmp_path / "a.png")
    assert_png(plots.plot_knn([10, 20], [41.0, 55.0], str(tmp_path / "b.png")), tmp_path / "b.png")


@pytest.mark.parametrize("keys", [
    ("train_loss", "val_loss", "train_acc", "val_acc"),
    ("train_loss",),
    ("val_acc",),
    (),
])
def test_plot_curves_any_subset(tmp_path, keys):
    history = {k: list(np.linspace(1.0, 0.5, 5)) for k in keys}
    out = tmp_path / f"curves_{len(keys)}.png"
    assert_png(plots.plot_curves(history, out, title="MLP head"), out)


def test_plot_curves_two_panels_are_wider(tmp_path):
    both = assert_png(plots.plot_curves({"train_loss": [1, 0.5], "val_acc": [0.2, 0.4]}, tmp_path / "a.png"),
                      tmp_path / "a.png")
    one = assert_png(plots.plot_curves({"train_loss": [1, 0.5]}, tmp_path / "b.png"), tmp_path / "b.png")
    assert both[0] > one[0]


@pytest.mark.parametrize("c", [2, 10, 40])
def test_plot_confusion(tmp_path, c):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(c, c)) + np.eye(c, dtype=np.int64) * 100
    names = [f"class_{i}" for i in range(c)]
    out = tmp_path / f"cm{c}.png"
    assert_png(plots.plot_confusion(cm, names, out, title="Confusion"), out)


def test_plot_confusion_rejects_non_square(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_confusion(np.zeros((2, 3), dtype=int), ["a", "b"], tmp_path / "x.png")


def test_plot_tsne_subsamples_and_handles_unlabeled(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    labels[:5] = -1
    features = rng.normal(size=(120, 64)).astype(np.float32) + labels[:, None] * 3.0
    out = tmp_path / "tsne.png"
    assert_png(plots.plot_tsne(features, labels, ["cat", "dog", "ship"], out, seed=1, max_points=60), out)


def test_plot_tsne_tiny_inputs(tmp_path):
    assert_png(plots.plot_tsne(np.zeros((3, 4)), np.array([0, 1, 0]), ["a", "b"], tmp_path / "t.png"),
               tmp_path / "t.png")
    feats = np.random.default_rng(1).normal(size=(8, 5))
    # Labels beyond class_names still get a legend entry (their number).
    assert_png(plots.plot_tsne(feats, np.array([0, 1, 2, 3] * 2), ["a"], tmp_path / "u.png"), tmp_path / "u.png")


def test_plot_tsne_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_tsne(np.full((10, 3), np.nan), np.zeros(10), ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plots.plot_tsne(np.zeros((10, 3)), np.zeros(9), ["a"], tmp_path / "x.png")


def test_stratified_subsample_keeps_every_class():
    labels = np.array([0] * 990 + [1] * 9 + [2])
    idx = plots._stratified_subsample(labels, 100, seed=0)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    assert set(labels[idx]) == {0, 1, 2}
    assert np.array_equal(idx, plots._stratified_subsample(labels, 100, seed=0))


def test_plot_label_efficiency(tmp_path):
    results = {"SimCLR": [(100, 0.45), (1000, 0.70), (6500, 0.80)],
               "Random init": [(1000, 0.30), (100, 0.2), (6500, 0.41)]}
    assert_png(plots.plot_label_efficiency(results, tmp_path / "le.png"), tmp_path / "le.png")
    assert_png(plots.plot_label_efficiency({}, tmp_path / "none.png"), tmp_path / "none.png")


@pytest.mark.parametrize("epochs", [[2], [1, 2, 3], [10, 20]])
def test_epoch_axis_has_whole_number_ticks(epochs):
    """A kNN or loss curve with one point spans one epoch either side (not 1.9 to 2.1), ticks are integers."""
    fig = plots._figure(4, 3)
    ax = fig.add_subplot()
    ax.plot(epochs, [0.5] * len(epochs), marker="o")
    plots._epoch_axis(ax, epochs)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    if len(epochs) == 1:
        assert (lo, hi) == (epochs[0] - 1, epochs[0] + 1)
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert epochs[0] in ticks or len(epochs) > 1


def test_plot_knn_single_point(tmp_path):
    path = tmp_path / "knn.png"
    assert_png(plots.plot_knn([2], [0.41], path), path)

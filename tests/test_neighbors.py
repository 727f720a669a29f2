"""Nearest neighbours: exact chunked cosine search, query choice, the picture, the evaluation hook and the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.baselines import write_baseline_run
from simclr.cli import main
from simclr.config import load_config
from simclr.data import ImageData
from simclr.evaluate import EvalData, evaluate_encoder
from simclr.evaluate.neighbors import pick_queries, search, write_eval_neighbors
from simclr.models import build_backbone
from simclr.plots import plot_neighbors
from simclr.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as im:
        im.verify()


def test_search_toy_set_with_a_known_answer():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 1.0], [10.0, 0.5]])
    queries = torch.tensor([[2.0, 0.0], [0.0, 0.5]])  # norms differ: cosine ignores them
    sims, idx = search(queries, bank, k=3)
    assert idx.tolist() == [[0, 5, 4], [1, 4, 5]]
    assert sims[0, 0].item() == pytest.approx(1.0) and sims[0, 2].item() == pytest.approx(2 ** -0.5)
    assert sims[1, 2].item() == pytest.approx(0.5 / (100.25 ** 0.5))


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_search_equals_the_full_sort(chunk):
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(200, 16, generator=g)
    bank[50] = bank[10]  # an exact tie with a lower index: it must come first
    queries = torch.cat([torch.randn(5, 16, generator=g), bank[10:11]])
    sims, idx = search(queries, bank.split(chunk), k=8)
    # the reference order in float64, where no two distinct rows round to the same similarity (a float32 matmul's
    # last bit depends on the kernel and the thread count)
    full = torch.nn.functional.normalize(queries.double(), dim=1) @ torch.nn.functional.normalize(bank.double(), dim=1).T
    ref = torch.sort(-full, dim=1, stable=True).indices[:, :8]
    assert torch.equal(idx, ref)
    assert torch.allclose(sims.double(), full.gather(1, ref), atol=1e-6)
    assert idx[-1, :2].tolist() == [10, 50]
    small_s, small_i = search(queries, bank[:3].split(chunk), k=8)  # fewer rows than k
    assert small_i.shape == (6, 3)


def test_queries_are_one_per_class_round_robin():
    labels = torch.tensor([2, 2, 0, 1, 0, 1, 2, -1])
    assert pick_queries(labels, 4) == [2, 3, 0, 4]
    assert pick_queries(labels, 10) == [2, 3, 0, 4, 5, 1, 6]
    assert pick_queries(torch.full((5,), -1), 3) == [0, 1, 2]


def test_picture_is_a_valid_png_with_coloured_frames(tmp_path):
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    nb = np.full((2, 3, 3, 8, 8), 128, dtype=np.uint8)
    match = np.array([[True, False, True], [False, False, True]])
    path = plot_neighbors(q, nb, tmp_path / "n.png", match=match, query_names=["cat", "dog"], title="toy")
    assert_png(path)
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert (44, 160, 44) in colours and (214, 39, 40) in colours
    green = np.all(pixels == (44, 160, 44), axis=1).sum()
    red = np.all(pixels == (214, 39, 40), axis=1).sum()
    assert green == pytest.approx(red, rel=0.05)  # three green frames, three red ones
    with pytest.raises(ValueError, match="match must be"):
        plot_neighbors(q, nb, tmp_path / "bad.png", match=match[:, :2])


def _toy_eval_data():
    """Two classes: images of class c are all of one colour, so a colour-sensitive feature finds its class."""
    def make(n, offset):
        labels = torch.tensor([i % 2 for i in range(n)])
        images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
        images[labels == 0, 0] = 200
        images[labels == 1, 2] = 200
        images += torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1) + offset
        return ImageData(images, labels, ["red", "blue"])

    return EvalData(make(12, 0), make(2, 20), make(4, 40), ["red", "blue"])


def test_eval_neighbors_match_classes(tmp_path):
    data = _toy_eval_data()
    feats = lambda d: d.images.float().mean((2, 3))  # noqa: E731  mean colour per channel
    png = write_eval_neighbors(feats(data.train), feats(data.test), data, tmp_path / "nb", "toy", k=4)
    assert_png(png)
    rec = json.loads((tmp_path / "nb" / "neighbors.json").read_text())
    assert rec["queries"] == [0, 1, 2, 3] and rec["k"] == 4
    assert rec["matches"] == 16  # every neighbour shares its query's class
    assert all(lab == [q] * 4 for lab, q in zip(rec["neighbor_labels"], rec["query_labels"]))


def test_evaluation_writes_the_picture_and_the_report_shows_it_side_by_side(tiny_folder, tmp_path):
    cfg = load_config(None, {"data.name": str(tiny_folder), "model.image_size": 16, "data.n_val": 6, "eval.knn_k": 5,
                             "eval.batch_size": 12, "eval.tsne_points": 0, "train.device": "cpu"})
    runs = []
    for seed, method in ((0, "SimCLR"), (1, "Random init")):
        torch.manual_seed(seed)
        run = write_baseline_run(tmp_path / method.replace(" ", "_"), cfg, build_backbone(cfg.model), "baseline", method)
        evaluate_encoder(build_backbone(cfg.model), cfg, "knn", run / "eval", method=method, log=lambda *a, **k: None)
        assert_png(run / "eval" / "neighbors" / "neighbors.png")
        rec = json.loads((run / "eval" / "neighbors" / "neighbors.json").read_text())
        assert len(rec["queries"]) == 10 and sorted(set(rec["query_labels"])) == [0, 1, 2]
        runs.append(run)
    md, html = write_report(runs, tmp_path / "report")
    text = html.read_text()
    assert "Nearest neighbours" in text and 'class="gallery wide"' in text
    section = text.split('id="neighbors"')[1].split("<h2")[0]
    assert section.count("<figure>") == 2 and "SimCLR" in section and "Random init" in section
    assert "Evaluation: neighbors" not in text  # not shown as if it were a protocol
    mdt = md.read_text()
    assert "## Nearest neighbours" in mdt
    for line in mdt.splitlines():
        if line.startswith("![") and "neighbors" in line:
            assert (md.parent / line.split("](")[1].rstrip(")")).is_file()


def test_neighbors_command(tiny_folder, tmp_path, capsys):
    cfg = load_config(None, {"data.name": str(tiny_folder), "model.image_size": 16, "train.device": "cpu"})
    torch.manual_seed(0)
    run = write_baseline_run(tmp_path / "run", cfg, build_backbone(cfg.model), "simclr", "Tiny")
    queries = sorted((tiny_folder / "test" / "a").glob("*.png"))[:2]
    out = tmp_path / "nb.png"
    rc = main(["neighbors", "--run", str(run), "--data", str(tiny_folder), "--query", *map(str, queries),
               "--out", str(out), "-k", "5", "--batch-size", "7"])
    assert rc == 0, capsys.readouterr().err
    assert_png(out)
    rec = json.loads(out.with_suffix(".json").read_text())
    assert [r["query"] for r in rec] == [str(q) for q in queries]
    assert all(len(r["neighbors"]) == 5 for r in rec)
    sims = [n["similarity"] for n in rec[0]["neighbors"]]
    assert sims == sorted(sims, reverse=True)
    assert all(n["image"].startswith(str(tiny_folder / "train")) for n in rec[0]["neighbors"])
    assert main(["neighbors", "--run", str(run), "--data", str(tiny_folder), "--query", str(tmp_path / "missing.png"),
                 "--out", str(out)]) == 3
    assert main(["neighbors", "--run", str(run), "--data", str(tiny_folder), "--query", str(queries[0]),
                 "--out", str(tmp_path / "nb.jpg")]) == 2

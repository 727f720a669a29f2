import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import simclr
from simclr.baselines import write_baseline_run
from simclr.cli import main
from simclr.config import load_config
from simclr.evaluate import (
    balanced_order,
    classification_metrics,
    evaluate_encoder,
    extract_features,
    knn_predict,
    train_head,
)
from simclr.models import build_backbone

PNG = b"\x89PNG\r\n\x1a\n"


def tiny_eval_cfg(folder, **over):
    base = {
        "data.name": str(folder), "model.image_size": 16, "data.n_val": 6, "eval.knn_k": 5, "eval.mlp_epochs": 4,
        "eval.linear_epochs": 5, "eval.finetune_epochs": 1, "eval.batch_size": 12, "eval.tsne_points": 60,
        "train.device": "cpu",
    }
    base.update(over)
    return load_config(None, base)


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as im:
        im.verify()


def bn_touched_encoder(cfg):
    """A random encoder whose BatchNorm statistics are not the defaults, left in train mode with gradients on."""
    torch.manual_seed(0)
    enc = build_backbone(cfg.model)
    with torch.no_grad():
        enc.train()(torch.randn(8, 3, 16, 16))
    return enc


# ----------------------------------------------------------------------------- metrics and kNN


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    y_pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 3, 2])  # class 3 is predicted but never true
    names = ["cat", "dog", "car", "ship"]
    m = classification_metrics(y_true, y_pred, names)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred)) == pytest.approx(0.6)
    labels = [0, 1, 2, 3]
    assert m["f1_weighted"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0))
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    recall = recall_score(y_true, y_pred, labels=[0, 1, 2], average=None)
    assert [m["per_class_accuracy"][n] for n in names[:3]] == pytest.approx(list(recall))
    assert m["per_class_accuracy"]["cat"] == pytest.approx(2 / 3)
    assert m["per_class_accuracy"]["ship"] is None  # no test image of that class
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()


def test_knn_toy_problem():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.05, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[2.0, 0.1], [0.2, 3.0], [1.0, 1.05]])  # norms differ: cosine similarity decides
    assert knn_predict(bank, labels, queries, 2, k=3, t=0.1).tolist() == [0, 1, 1]
    # Weighted vote: one very close neighbour of class 0 outvotes two far ones of class 1 at a low temperature...
    bank2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.1, 1.0]])
    labels2 = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.3]])
    assert knn_predict(bank2, labels2, q, 2, k=3, t=0.05).tolist() == [0]
    # ... and loses to the majority when the temperature flattens the weights.
    assert knn_predict(bank2, labels2, q, 2, k=3, t=100.0).tolist() == [1]
    # k larger than the bank is clamped
    assert knn_predict(bank, labels, queries, 2, k=200, t=0.1).shape == (3,)


def test_balanced_order_prefixes():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    order = balanced_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    assert torch.bincount(labels[order[:30]], minlength=3).tolist() == [10, 10, 10]
    assert torch.equal(order, balanced_order(labels, seed=3))
    assert not torch.equal(order, balanced_order(labels, seed=4))


# ----------------------------------------------------------------------------- heads


def _blobs(n, seed, dim=16, classes=3, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(n) % classes
    return centers[y] + noise * torch.randn(n, dim, generator=g), y


def test_linear_probe_separates_blobs_and_keeps_best_epoch():
    x, y = _blobs(300, 1)
    xv, yv = _blobs(60, 2)
    res = train_head(x, y, xv, yv, 3, hidden=(), epochs=8, lr=0.01, batch_size=100)
    assert res.history["val_acc"][res.best_epoch - 1] == max(res.history["val_acc"])
    assert res.val_accuracy == pytest.approx(1.0)
    xt, yt = _blobs(90, 3)
    assert (res.model(xt).argmax(1) == yt).float().mean() >= 0.95


def test_mlp_early_stopping_keeps_lowest_validation_loss():
    x, y = _blobs(200, 1, noise=2.0)
    xv, _ = _blobs(60, 2, noise=2.0)
    yv = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(5))  # unlearnable: val loss rises
    res = train_head(x, y, xv, yv, 3, hidden=(32, 16), epochs=40, lr=1e-2, batch_size=32, schedule="constant",
                     select="val_loss", patience=3)
    assert res.epochs_run < 40
    assert res.epochs_run - res.best_epoch == 3
    assert res.best_epoch == int(np.argmin(res.history["val_loss"])) + 1


# ----------------------------------------------------------------------------- frozen encoder


def test_encoder_unchanged_by_linear_mlp_knn(tiny_folder, tmp_path):
    cfg = tiny_eval_cfg(tiny_folder)
    enc = bn_touched_encoder(cfg)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    assert any(k.endswith("running_mean") and v.abs().sum() > 0 for k, v in before.items())
    modes = []
    hooks = [m.register_forward_pre_hook(lambda mod, _inp: modes.append(mod.training))
             for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    results = evaluate_encoder(enc, cfg, ["linear", "mlp", "knn"], tmp_path / "eval", log=lambda *a, **k: None)
    for h in hooks:
        h.remove()
    assert modes and not any(modes), "BatchNorm ran in train mode during feature extraction"
    after = enc.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"
    assert enc.training  # the caller's mode is restored
    assert all(p.grad is None for p in enc.parameters())

    for protocol in ("linear", "mlp", "knn"):
        d = tmp_path / "eval" / protocol
        m = json.loads((d / "metrics.json").read_text())
        assert m["accuracy"] == results[protocol]["accuracy"]
        for key in ("accuracy", "f1_weighted", "f1_macro", "per_class_accuracy", "n_train", "n_val", "n_test",
                    "protocol", "head_epochs", "wall_time_s", "method"):
            assert key in m, key
        assert (m["n_train"], m["n_val"], m["n_test"]) == (30, 6, 12)  # mlp: n_train_labels clamped to the 30
        assert set(m["per_class_accuracy"]) == {"a", "b", "c"}
        for key in ("accuracy", "f1_weighted", "f1_macro"):  # every test figure carries its 95 % interval
            low, high = m["intervals"][key]
            assert low <= m[key] <= high, key
        assert m["bootstrap"]["resamples"] == cfg.eval.bootstrap and m["bootstrap"]["level"] == 0.95
        assert "seed_runs" not in m  # eval.seeds = 1: nothing repeated
        rows = list(csv.DictReader((d / "predictions.csv").open()))
        assert len(rows) == 12 and {"index", "true", "predicted"} <= set(rows[0])
        acc = np.mean([r["true"] == r["predicted"] for r in rows])
        assert acc == pytest.approx(m["accuracy"])
        for png in ("confusion_matrix", "tsne_train", "tsne_test"):
            assert_png(d / f"{png}.png")
        if protocol != "knn":
            assert_png(d / "curves.png")
            assert "net.0.weight" in load_file(str(d / "head.safetensors"))
            assert m["head_epochs"] >= 1
    assert json.loads((tmp_path / "eval" / "linear" / "metrics.json").read_text())["settings"]["standardised"]


def test_finetune_trains_a_copy(tiny_folder, tmp_path):
    cfg = tiny_eval_cfg(tiny_folder)
    enc = bn_touched_encoder(cfg)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cfg.eval.tsne_points = 0
    cfg.eval.seeds = 2
    res = evaluate_encoder(enc, cfg, "finetune", tmp_path / "eval", labels=[12], log=lambda *a, **k: None)
    assert res["finetune"]["n_train"] == 12 and res["finetune"]["head_epochs"] == 1
    assert [r["seed"] for r in res["finetune"]["seed_runs"]["rows"]] == [0, 1]
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())
    d = tmp_path / "eval" / "finetune"
    w = load_file(str(d / "model.safetensors"))
    assert "fc.weight" in w and not torch.equal(w["encoder.net.conv1.weight"], before["net.conv1.weight"])
    assert_png(d / "curves.png")


# ----------------------------------------------------------------------------- runs, CLI, embeddings


@pytest.fixture
def tiny_run(tiny_folder, tmp_path):
    """A run directory with a random encoder (what `simclr pretrain` leaves, minus the training)."""
    cfg = tiny_eval_cfg(tiny_folder, out=str(tmp_path / "run"), name="Tiny SimCLR")
    torch.manual_seed(0)
    return write_baseline_run(tmp_path / "run", cfg, build_backbone(cfg.model), "simclr", "Tiny SimCLR")


def test_load_encoder_ready_for_inference(tiny_run):
    enc = simclr.load_encoder(tiny_run)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert enc.image_size == 16 and len(enc.mean) == 3 and len(enc.std) == 3
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    x = enc.preprocess(images)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    with torch.no_grad():
        f = enc(x)
    ref = extract_features(enc, images, enc.image_size, enc.mean, enc.std, torch.device("cpu"), "fp32")
    assert f.shape == (4, enc.out_dim) and torch.allclose(f, ref, atol=1e-5)


def test_evaluate_cli_and_errors(tiny_run, tmp_path, capsys):
    rc = main(["evaluate", "--run", str(tiny_run), "--protocol", "knn", "--device", "cpu", "--batch-size", "8",
               "--set", "eval.tsne_points=0"])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tiny_run / "eval" / "knn" / "metrics.json").read_text())
    assert m["method"] == "Tiny SimCLR" and m["protocol"] == "knn"
    assert "knn: test accuracy" in capsys.readouterr().out

    assert main(["evaluate", "--run", str(tiny_run), "--protocol", "knn", "--labels", "1000"]) == 2
    err = capsys.readouterr().err
    assert "--labels 1000" in err and "30 labeled training images" in err
    assert main(["evaluate", "--run", str(tiny_run), "--protocol", "svm"]) == 2
    assert "unknown protocol" in capsys.readouterr().err

    (tiny_run / "backbone.safetensors").unlink()
    assert main(["evaluate", "--run", str(tiny_run), "--protocol", "knn"]) == 5
    assert "backbone.safetensors" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "nowhere"), "--protocol", "knn"]) == 5
    assert "not found" in capsys.readouterr().err


def test_seeds_give_one_row_per_seed_then_compare(tiny_run, tmp_path, capsys):
    rc = main(["evaluate", "--run", str(tiny_run), "--protocol", "knn,linear", "--seeds", "3", "--epochs", "2",
               "--set", "eval.tsne_points=0", "--set", "eval.bootstrap=200"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    lin = json.loads((tiny_run / "eval" / "linear" / "metrics.json").read_text())
    runs = lin["seed_runs"]
    assert runs["seeds"] == [0, 1, 2] and [r["seed"] for r in runs["rows"]] == [0, 1, 2]
    assert runs["rows"][0]["accuracy"] == lin["accuracy"]  # the train.seed run is the headline figure
    for key in ("accuracy", "f1_weighted", "f1_macro"):
        values = [r[key] for r in runs["rows"]]
        assert runs["mean"][key] == pytest.approx(np.mean(values))
        assert runs["std"][key] == pytest.approx(np.std(values, ddof=1))
    assert lin["bootstrap"]["resamples"] == 200
    knn = json.loads((tiny_run / "eval" / "knn" / "metrics.json").read_text())
    assert "no seed" in knn["seed_runs"]["note"] and "rows" not in knn["seed_runs"]
    assert "(3 seeds)" in out and "knn has no seed" in out and "percentile bootstrap" in out

    # the same run against itself: no difference, p = 1
    assert main(["compare", str(tiny_run), str(tiny_run), "--protocol", "linear", "--out", str(tmp_path / "c.json")]) == 0
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["difference"]["accuracy"]["difference"] == 0 and r["mcnemar"]["p_value"] == 1.0

    assert main(["evaluate", "--run", str(tiny_run), "--protocol", "knn", "--seeds", "0"]) == 2
    assert "eval.seeds: invalid value 0" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tiny_run), "--protocol", "knn", "--set", "eval.bootstrap=-5"]) == 2
    assert "eval.bootstrap: invalid value -5" in capsys.readouterr().err


def test_label_sweep(tiny_run, capsys):
    rc = main(["evaluate", "--run", str(tiny_run), "--protocol", "knn,linear", "--labels", "3,12,all", "--epochs", "2"])
    assert rc == 0, capsys.readouterr().err
    d = tiny_run / "eval" / "label_efficiency"
    curves = json.loads((d / "label_efficiency.json").read_text())
    assert [n for n, _ in curves["Tiny SimCLR (knn)"]] == [3, 12, 30]
    assert set(curves) == {"Tiny SimCLR (knn)", "Tiny SimCLR (linear)"}
    assert_png(d / "label_efficiency.png")
    assert not (tiny_run / "eval" / "knn").exists()  # a sweep writes only its own folder
    for row in map(json.loads, (d / "sweep.jsonl").read_text().splitlines()):
        low, high = row["intervals"]["accuracy"]
        assert low <= row["accuracy"] <= high


def test_embed_writes_features_with_paths(tiny_run, tiny_folder, tmp_path):
    out = tmp_path / "emb" / "features.npz"
    assert main(["embed", "--run", str(tiny_run), "--data", str(tiny_folder), "--out", str(out), "--device", "cpu"]) == 0
    z = np.load(out)
    assert z["features"].shape == (48, 512) and z["features"].dtype == np.float32
    assert len(z["paths"]) == 48 and z["paths"][0].endswith(".png")
    assert sorted(set(z["split"].tolist())) == ["test", "train"]
    assert main(["embed", "--run", str(tiny_run), "--out", str(tmp_path / "x.csv")]) == 2

import json
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from simclr.baselines import backbone_state, imagenet_state_dict, imagenet_weights_file, read_state_file
from simclr.cli import main
from simclr.errors import CheckpointError

TINY = ["--image-size", "16", "--device", "cpu", "--batch-size", "12", "--set", "data.n_val=6", "--set", "eval.knn_k=5",
        "--set", "eval.tsne_points=0"]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch.hub cache and no network: any download attempt fails like an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch_home"


def resnet18_state(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_imagenet_weights_from_the_hub_cache_without_network(torch_home):
    state = resnet18_state()
    target = imagenet_weights_file("resnet18")
    assert target == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    loaded = imagenet_state_dict("resnet18", progress=False)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_offline_error_names_file_and_folder(torch_home, tiny_folder, tmp_path, capsys):
    with pytest.raises(CheckpointError) as e:
        imagenet_state_dict("resnet18", progress=False)
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(torch_home / "hub" / "checkpoints") in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg and "--weights PATH" in msg
    rc = main(["supervised", "--data", str(tiny_folder), "--out", str(tmp_path / "sup"), "--weights", "imagenet", *TINY])
    assert rc == 5 and "resnet18-f37072fd.pth" in capsys.readouterr().err


def test_state_dict_formats_map_to_backbone_keys():
    tv = resnet18_state()
    mapped = backbone_state(tv)
    assert "net.conv1.weight" in mapped and not any(k.startswith("net.fc") for k in mapped)
    assert backbone_state({f"module.{k}": v for k, v in tv.items()}).keys() == mapped.keys()
    simclr_ckpt = {f"backbone.{k}": v for k, v in mapped.items()} | {"head.net.0.weight": torch.zeros(2, 2)}
    assert backbone_state(simclr_ckpt).keys() == mapped.keys()
    assert backbone_state(mapped).keys() == mapped.keys()


def test_supervised_with_local_weights_file(torch_home, tiny_folder, tmp_path, capsys):
    state = resnet18_state(seed=1)
    path = tmp_path / "my_resnet18.pth"
    torch.save(state, path)
    out = tmp_path / "sup"
    rc = main(["supervised", "--data", str(tiny_folder), "--out", str(out), "--weights", str(path), "--protocol", "knn", *TINY])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "eval" / "knn" / "metrics.json").read_text())
    assert m["protocol"] == "knn" and m["n_test"] == 12 and m["image_size"] == 16
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "supervised" and info["epochs"] == 0
    saved = load_file(str(out / "backbone.safetensors"))
    assert torch.equal(saved["net.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    for name in ("confusion_matrix.png", "predictions.csv"):
        assert (out / "eval" / "knn" / name).is_file()

    # a safetensors copy loads the same way
    st = tmp_path / "my_resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    assert read_state_file(st).keys() == state.keys()


def test_bad_weights_files_are_clear_errors(torch_home, tiny_folder, tmp_path, capsys):
    base = ["supervised", "--data", str(tiny_folder), "--out", str(tmp_path / "sup"), "--protocol", "knn", *TINY]
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main([*base, "--weights", str(bad)]) == 5
    assert "cannot be read" in capsys.readouterr().err
    assert main([*base, "--weights", str(tmp_path / "missing.pth")]) == 5
    assert "not found" in capsys.readouterr().err
    torch.manual_seed(0)
    r34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), r34)
    assert main([*base, "--weights", str(r34)]) == 5
    assert "does not match the model architecture" in capsys.readouterr().err
    assert main([*base, "--weights", "none", "--protocol", "knn"]) == 2
    assert "random baseline" in capsys.readouterr().err


def test_scratch_baseline_trains_end_to_end(tiny_folder, tmp_path, capsys):
    out = tmp_path / "scratch"
    rc = main(["supervised", "--data", str(tiny_folder), "--out", str(out), "--weights", "none", "--epochs", "1",
               "--labels", "12", *TINY])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "eval" / "finetune" / "metrics.json").read_text())
    assert m["method"] == "Supervised from scratch" and m["n_train"] == 12 and m["head_epochs"] == 1
    assert (out / "eval" / "finetune" / "model.safetensors").is_file()
    assert (out / "eval" / "finetune" / "curves.png").is_file()

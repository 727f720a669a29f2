"""The backbone registry: names, small-image rules, each family through pretrain -> export -> load_encoder, and
your own module through the Python API."""

import json
import sys

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

import simclr
from simclr import backbones
from simclr.cli import main
from simclr.config import ModelConfig, load_config
from simclr.errors import ConfigError
from simclr.models import build_backbone, build_model
from simclr.optim import NORM_LAYERS, param_groups

timm = pytest.importorskip("timm", reason="timm is the optional extra simclr[timm]; `make setup` installs it")


def tiny_cfg(folder, out, **over):
    base = {
        "data.name": str(folder), "out": str(out), "model.image_size": 16, "model.proj_hidden": [16], "model.proj_dim": 8,
        "train.batch_size": 4, "train.epochs": 1, "train.knn_every": 0, "train.knn_k": 3, "data.n_val": 6,
        "data.limit": 4, "optim.lr": 0.05, "optim.warmup_epochs": 0, "train.progress": False, "train.preview": False,
        "train.device": "cpu", "train.precision": "fp32",
    }
    base.update(over)
    return load_config(None, base)


def test_resnet18_cifar_stem_keeps_the_original_structure_and_keys():
    """Runs written before the registry (``backbone.net.*`` keys, CIFAR stem) keep loading."""
    ref = torchvision.models.resnet18(weights=None)
    ref.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    ref.fc = nn.Identity()
    enc = build_backbone(ModelConfig(backbone="resnet18", image_size=32))
    assert str(enc.net) == str(ref)
    assert list(enc.state_dict()) == [f"net.{k}" for k in ref.state_dict()]
    assert enc.out_dim == 512 and enc.classifier == "fc"
    big = build_backbone(ModelConfig(backbone="resnet18", image_size=96, feature_dim=256))
    assert big.net.conv1.kernel_size == (7, 7) and isinstance(big.net.maxpool, nn.MaxPool2d)
    assert isinstance(big.net.fc, nn.Linear) and big.out_dim == 256
    model = build_model(ModelConfig(backbone="resnet18", image_size=32, proj_hidden=[8], proj_dim=4))
    assert "backbone.net.conv1.weight" in model.state_dict()


def test_small_image_rule_for_other_cnns():
    """At <= 64 px the first strided convolution of a non-ResNet CNN runs at stride 1 (no upsampling)."""
    small = build_backbone(ModelConfig(backbone="mobilenet_v3_small", image_size=32))
    full = build_backbone(ModelConfig(backbone="mobilenet_v3_small", image_size=32, stem="imagenet"))
    first = [m for m in small.net.modules() if isinstance(m, nn.Conv2d)][0]
    assert first.stride == (1, 1)
    assert [m for m in full.net.modules() if isinstance(m, nn.Conv2d)][0].stride == (2, 2)
    feats = {}

    def keep(key):
        def hook(module, inputs, output):
            feats[key] = inputs[0].shape

        return hook

    small.net.avgpool.register_forward_hook(keep("small"))
    full.net.avgpool.register_forward_hook(keep("full"))
    x = torch.zeros(2, 3, 32, 32)
    assert small.eval()(x).shape == full.eval()(x).shape == (2, small.out_dim)
    assert feats["small"][-1] == 2 and feats["full"][-1] == 1  # total stride 16 instead of 32


def test_vit_patch_follows_the_image_size():
    vit = build_backbone(ModelConfig(backbone="vit_b_16", image_size=32))
    assert vit.net.patch_size == 4 and vit.net.image_size == 32 and vit.out_dim == 768
    assert vit.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 768)
    with pytest.raises(ConfigError, match="multiple of"):
        build_backbone(ModelConfig(backbone="vit_b_16", image_size=36, stem="imagenet"))
    tv = build_backbone(ModelConfig(backbone="timm:vit_tiny_patch16_224", image_size=32))
    assert tv.net.patch_embed.proj.kernel_size == (4, 4) and tv.out_dim == 192


def test_a_network_that_cannot_take_the_size_is_a_config_error():
    with pytest.raises(ConfigError, match="inception_v3 cannot take 32 px"):
        build_backbone(ModelConfig(backbone="inception_v3", image_size=32))


def test_unknown_names_exit_2_with_closest_matches(capsys, tmp_path):
    assert main(["pretrain", "--backbone", "mobilenet_v3_smal", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'mobilenet_v3_smal'" in err and "mobilenet_v3_small" in err
    assert main(["pretrain", "--backbone", "timm:resnet_18", "--out", str(tmp_path / "r")]) == 2
    assert "timm:resnet18" in capsys.readouterr().err


def test_backbones_command_lists_and_filters(capsys):
    assert main(["backbones", "mobilenet_v3*"]) == 0
    out = capsys.readouterr().out.split()
    assert out == ["mobilenet_v3_large", "mobilenet_v3_small"]
    assert main(["backbones"]) == 0
    names = capsys.readouterr().out.split()
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)
    assert "timm:resnet18" in names and "resnet18" in names
    assert main(["backbones", "no_such_net"]) == 2


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    backbones.timm_names.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"simclr\[timm\]"):
            load_config(None, {"model.backbone": "timm:resnet18"})
        assert "resnet18" in backbones.available("resnet18") and not any(
            n.startswith("timm:") for n in backbones.available())
    finally:
        backbones.timm_names.cache_clear()


FAMILIES = ["mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "convnext_tiny", "timm:resnet18",
            "timm:vit_tiny_patch16_224"]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_pretrains_one_step_exports_and_reloads(name, tiny_folder, tmp_path):
    cfg = tiny_cfg(tiny_folder, tmp_path / "run", **{"model.backbone": name, "optim.name": "adamw", "optim.lr": 1e-3,
                                                       "optim.scale_lr": False, "optim.weight_decay": 0.05})
    torch.manual_seed(0)
    fresh = build_backbone(cfg.model)
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    run = simclr.pretrain(cfg)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1  # 4 images, batch 4
    saved = load_file(str(run / "backbone.safetensors"))
    enc = simclr.load_encoder(run)
    assert enc.name == name and not enc.training
    assert set(enc.state_dict()) == set(saved)
    assert all(torch.equal(v, saved[k]) for k, v in enc.state_dict().items())
    assert any(not torch.equal(saved[k], initial[k]) for k in saved if saved[k].is_floating_point())  # it trained
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        f = enc(enc.preprocess(x))
    assert f.shape == (2, enc.out_dim) and torch.isfinite(f).all()
    # every normalisation parameter and every bias is out of weight decay; every weight matrix / kernel in it
    decay, no_decay = param_groups(fresh, 0.05)
    skipped = {id(p) for p in no_decay["params"]}
    assert len(skipped) + len(decay["params"]) == len(list(fresh.parameters()))
    for mod in fresh.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if isinstance(mod, NORM_LAYERS) or pname == "bias":
                assert id(p) in skipped, (type(mod).__name__, pname)
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and pname == "weight":
                assert id(p) not in skipped


class TinyNet(nn.Module):
    """A user's own encoder: [B, 3, H, W] -> [B, 24]."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 24, 3, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.body(x)).flatten(1)


def test_your_own_module_pretrains_and_reloads(tiny_folder, tmp_path):
    module = TinyNet()
    run = simclr.pretrain(tiny_cfg(tiny_folder, tmp_path / "run"), backbone=module)
    cfg_text = (run / "config.yaml").read_text()
    assert "backbone: custom:TinyNet" in cfg_text
    saved = load_file(str(run / "backbone.safetensors"))
    assert set(saved) == {f"net.{k}" for k in module.state_dict()}
    assert all(torch.equal(v, saved[f"net.{k}"]) for k, v in module.state_dict().items())  # trained in place
    with pytest.raises(ConfigError, match="backbone=MyNet"):
        simclr.load_encoder(run)
    enc = simclr.load_encoder(run, backbone=TinyNet())
    assert enc.out_dim == 24 and isinstance(enc.net, TinyNet)
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(enc(enc.preprocess(x)), module.eval()(enc.preprocess(x)))


def test_vit_small_preset_builds_adamw_with_embeddings_out_of_decay():
    from simclr.optim import build_optimizer

    cfg = load_config("vit_small_cifar10", {"train.device": "cpu"})
    assert cfg.optim.name == "adamw" and cfg.optim.warmup_epochs == 40 and cfg.train.temperature == 0.2
    model = build_model(cfg.model)
    assert model.backbone.net.patch_embed.proj.kernel_size == (4, 4) and model.backbone.out_dim == 384
    opt = build_optimizer(cfg.optim, model, cfg.train.batch_size)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.5e-4 * 512 / 256)
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    net = model.backbone.net
    assert id(net.cls_token) in no_decay and id(net.pos_embed) in no_decay
    assert id(net.blocks[0].attn.qkv.weight) not in no_decay and opt.param_groups[0]["weight_decay"] == 0.1

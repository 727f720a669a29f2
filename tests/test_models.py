import pytest
import torch

from simclr.config import ModelConfig
from simclr.models import build_model, use_cifar_stem


def test_cifar_stem_auto():
    assert use_cifar_stem("auto", 32) and use_cifar_stem("auto", 64)
    assert not use_cifar_stem("auto", 96) and not use_cifar_stem("auto", 224)
    assert use_cifar_stem("cifar", 224) and not use_cifar_stem("imagenet", 32)


def test_resnet18_cifar_shapes():
    m = build_model(ModelConfig(backbone="resnet18", image_size=32, proj_hidden=[64], proj_dim=16)).eval()
    assert m.backbone.net.conv1.kernel_size == (3, 3) and isinstance(m.backbone.net.maxpool, torch.nn.Identity)
    h, z = m(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, 512) and z.shape == (2, 16)


def test_notebook_backbone_ends_in_linear():
    m = build_model(ModelConfig(backbone="resnet18", stem="imagenet", image_size=64, feature_dim=256, proj_hidden=[172], proj_dim=128, proj_bn=False)).eval()
    h, z = m(torch.randn(2, 3, 64, 64))
    assert h.shape == (2, 256) and z.shape == (2, 128)
    assert m.backbone.net.conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("name,dim", [("resnet34", 512), ("resnet50", 2048)])
def test_other_backbones(name, dim):
    m = build_model(ModelConfig(backbone=name, image_size=32, proj_hidden=[], proj_dim=8))
    assert m.backbone.out_dim == dim

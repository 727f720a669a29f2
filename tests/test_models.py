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


@pytest.mark.parametrize("momentum", [0.1, 0.01])
def test_bn_momentum_sets_every_batchnorm_and_weights_the_running_statistics(momentum):
    """model.bn_momentum reaches every BatchNorm of the encoder and the head; one training batch moves a running
    mean from 0 to momentum x the batch's mean."""
    m = build_model(ModelConfig(backbone="resnet18", image_size=8, proj_hidden=[16], proj_dim=8, bn_momentum=momentum))
    norms = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 21 and all(x.momentum == momentum for x in norms)  # 20 in ResNet-18, 1 in the head
    seen = []
    bn1 = m.backbone.net.bn1
    bn1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))  # None: output kept
    m.backbone.train()(torch.randn(4, 3, 8, 8))
    expected = momentum * seen[0].mean((0, 2, 3))
    assert torch.allclose(bn1.running_mean, expected, atol=1e-6)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_bn_momentum_out_of_range_is_a_config_error(value):
    from simclr.config import load_config
    from simclr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.bn_momentum: invalid value .*must be in \(0, 1\]"):
        load_config(None, {"model.bn_momentum": value})

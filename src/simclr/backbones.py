"""Backbones by name: the one registry that pretraining, evaluation and the baselines build encoders from.

Names:

- every torchvision classification model (``torchvision.models.list_models(module=torchvision.models)``):
  ``resnet18``, ``mobilenet_v3_small``, ``efficientnet_b0``, ``regnet_y_400mf``, ``convnext_tiny``, ``vit_b_16``, ...
- every timm model as ``timm:NAME`` (``pip install 'simclr[timm]'``), e.g. ``timm:resnet18``;
- ``custom:NAME``: a module passed to :func:`simclr.pretrain` / :func:`simclr.load_encoder` (the name is a label;
  such a run cannot be rebuilt from its config alone).

Every encoder is the network with its classifier removed (the final layer that maps to the classes becomes
``nn.Identity``, or a ``Linear(pooled, feature_dim)`` when ``model.feature_dim`` is set, and the dropout next to
it is dropped); its output dimension is found by one forward pass on a blank image of the configured size.

Small images (``model.stem: auto`` and images of 64 px or less, or ``stem: cifar``):

- the ResNet family (any network with a 7x7 ``conv1`` followed by ``maxpool``: torchvision ResNets, ResNeXts,
  wide ResNets and timm's ResNets) gets the CIFAR stem: a 3x3 stride-1 ``conv1`` and no max-pool (He et al. 2016,
  section 4.2), with the state-dict keys of torchvision's ResNet;
- plain ViTs (torchvision ``vit_*``, timm ViTs) get a patch size of image_size / 8 (an 8x8 token grid: patch 4
  at 32 px, as in the CIFAR ViT recipes) and position embeddings for that grid;
- other transformers (Swin, MaxViT) are built for the configured image size, nothing else changes;
- every other convolutional network (MobileNet, EfficientNet, RegNet, ConvNeXt, DenseNet, ...) has its first
  strided convolution set to stride 1. A MobileNet at 32 px thus ends in a 2x2 map instead of 1x1 (total stride
  16 instead of 32), the same trade as the CIFAR stem, at four times the compute of the unchanged network.

The input is never upsampled. A network that cannot take the configured size (Inception v3 below 75 px, MaxViT at
32 px) is a :class:`~simclr.errors.ConfigError` naming the size.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re

import torch
from torch import nn

from .errors import ConfigError

TIMM_PREFIX = "timm:"
CUSTOM_PREFIX = "custom:"
SMALL_IMAGE = 64  # px: at or below this size ``stem: auto`` picks the small-image stem
VIT_GRID = 8  # tokens per side for plain ViTs on small images
TIMM_EXTRA = "timm models need the optional extra: pip install 'simclr[timm]' (or pip install timm)"


def use_cifar_stem(stem: str, image_size: int) -> bool:
    """``auto`` picks the small-image stem (CIFAR stem for ResNets) for images of 64 px or less."""
    return stem == "cifar" or (stem == "auto" and image_size <= SMALL_IMAGE)


# ----------------------------------------------------------------------------- names


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision classification model name."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(TIMM_EXTRA) from None
    return timm


@functools.cache
def timm_names() -> tuple[str, ...]:
    """Every timm model name (without the ``timm:`` prefix); raises ConfigError when timm is not installed."""
    return tuple(_timm().list_models())


def available(pattern: str | None = None) -> list[str]:
    """Backbone names matching ``pattern`` (shell wildcards, or a substring when it has none), sorted.

    torchvision names come first, then ``timm:NAME`` for every timm model when timm is installed.
    """
    names = list(torchvision_names())
    try:
        names += [TIMM_PREFIX + n for n in timm_names()]
    except ConfigError:
        pass
    if pattern:
        pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n.lower(), pat.lower())]
    return names


def check_name(name: str) -> None:
    """Raise :class:`ConfigError` (exit code 2) naming the closest matches unless ``name`` is a known backbone."""
    if name.startswith(CUSTOM_PREFIX):
        return
    if name.startswith(TIMM_PREFIX):
        pool, key = [TIMM_PREFIX + n for n in timm_names()], name
    else:
        pool, key = list(torchvision_names()), name
        if name in pool:
            return
        try:
            pool += [TIMM_PREFIX + n for n in timm_names()]
        except ConfigError:
            pass
    if key in pool:
        return
    close = difflib.get_close_matches(key, pool, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ConfigError(f"model.backbone: unknown backbone {name!r}.{hint} `simclr backbones [PATTERN]` lists all "
                      "(torchvision names, and timm:NAME with the timm extra)")


# ----------------------------------------------------------------------------- the encoder module


class Backbone(nn.Module):
    """An encoder whose output is one feature vector per image.

    Input ``[B, 3, H, W]`` normalised images; output ``[B, out_dim]``. A 4-D output of the wrapped network
    ``[B, C, h, w]`` is average-pooled to ``[B, C]``.

    Attributes:
        net: the wrapped network (state-dict keys ``net.*``).
        out_dim: feature dimension.
        name: the registry name (``resnet18``, ``timm:resnet18``, ``custom:MyNet``).
        classifier: dotted path (in ``net``) of the removed classifier, or None.
    """

    def __init__(self, net: nn.Module, out_dim: int, name: str, classifier: str | None = None):
        super().__init__()
        self.net = net
        self.out_dim = int(out_dim)
        self.name = name
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if isinstance(y, (tuple, list)):  # e.g. a custom module returning (features, extras)
            y = y[0]
        if y.ndim == 4:
            y = y.mean(dim=(2, 3))
        return y.flatten(1)


def output_dim(net: nn.Module, image_size: int) -> int:
    """Output dimension of ``net`` (pooled), from one eval-mode forward pass on a blank ``image_size`` image."""
    was_training = net.training
    net.eval()
    try:
        p = next(net.parameters(), None)
        x = torch.zeros(1, 3, image_size, image_size, device=p.device if p is not None else "cpu")
        with torch.no_grad():
            y = Backbone(net, 0, "probe")(x)
    finally:
        net.train(was_training)
    return int(y.shape[1])


def wrap(module: nn.Module, image_size: int, name: str | None = None) -> Backbone:
    """A user's module as a :class:`Backbone` (``custom:<class name>``); a Backbone is returned as it is."""
    if isinstance(module, Backbone):
        return module
    if not isinstance(module, nn.Module):
        raise ConfigError(f"backbone: expected a torch.nn.Module, got {type(module).__name__}")
    try:
        dim = output_dim(module, image_size)
    except Exception as e:  # the user's module: any failure is a configuration problem to report plainly
        raise ConfigError(f"backbone: your module {type(module).__name__} failed on a [1, 3, {image_size}, {image_size}] "
                          f"image ({e.__class__.__name__}: {e}); it must map [B, 3, H, W] images to [B, D] "
                          "features (or [B, D, h, w] maps, average-pooled)") from None
    return Backbone(module, dim, name or custom_name(module))


def custom_name(module: nn.Module) -> str:
    return CUSTOM_PREFIX + type(module).__name__


def build(name: str, image_size: int, stem: str = "auto", feature_dim: int | None = None) -> Backbone:
    """The encoder ``name`` (random init) for ``image_size`` px images; see the module docstring for the rules.

    Args:
        name: a torchvision name or ``timm:NAME``.
        image_size: side (px) of the images it will see.
        stem: ``auto`` | ``cifar`` (small-image stem) | ``imagenet`` (the network as published).
        feature_dim: optional linear layer (pooled -> feature_dim) in place of the classifier.

    Raises:
        ConfigError: unknown name, timm missing, ``custom:`` name, or a network that cannot take the size.
    """
    if name.startswith(CUSTOM_PREFIX):
        raise ConfigError(f"model.backbone is {name!r}: the run was trained with your own module; pass it again, "
                          "e.g. simclr.load_encoder(run, backbone=MyNet()) or simclr.pretrain(cfg, backbone=MyNet())")
    check_name(name)
    small = use_cifar_stem(stem, image_size)
    if name.startswith(TIMM_PREFIX):
        net = _timm_model(name.removeprefix(TIMM_PREFIX), image_size, small)
    else:
        net = _torchvision_model(name, image_size, small)
    classifier = _remove_classifier(net, name)
    if small:
        _small_image_stem(net)
    try:
        dim = output_dim(net, image_size)
    except Exception as e:  # shape errors from deep inside the network: say which size it refused
        raise ConfigError(f"model.backbone: {name} cannot take {image_size} px images ({e.__class__.__name__}: "
                          f"{str(e).splitlines()[0][:200]}); use a larger --image-size or another backbone") from None
    if feature_dim:
        _set_module(net, classifier, nn.Linear(dim, feature_dim))
        dim = feature_dim
    return Backbone(net, dim, name, classifier)


# ----------------------------------------------------------------------------- construction


def _torchvision_model(name: str, image_size: int, small: bool) -> nn.Module:
    import torchvision
    from torchvision.models import vision_transformer as tv_vit

    kwargs: dict = {}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)  # one output in training mode too
    if name.startswith("maxvit"):
        kwargs["input_size"] = (image_size, image_size)
    if not name.startswith("vit_"):
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except (ValueError, RuntimeError, AssertionError) as e:
            raise ConfigError(f"model.backbone: {name} cannot be built for {image_size} px images ({e})") from None
    ref = torchvision.models.get_model(name, weights=None)
    patch = _vit_patch(name, image_size, ref.patch_size, small)
    return tv_vit.VisionTransformer(image_size=image_size, patch_size=patch, num_layers=len(ref.encoder.layers),
                                    num_heads=ref.encoder.layers[0].num_heads, hidden_dim=ref.hidden_dim,
                                    mlp_dim=ref.mlp_dim)


def _vit_patch(name: str, image_size: int, native: int, small: bool) -> int:
    patch = max(1, image_size // VIT_GRID) if small else native
    if image_size % patch:
        raise ConfigError(f"model.image_size: {name} cuts images into {patch} px patches "
                          f"({'image_size / 8 on small images' if small else 'its native patch'}); {image_size} px "
                          f"is not a multiple of {patch}: use {image_size - image_size % patch} or {image_size + patch - image_size % patch}")
    return patch


def _timm_model(name: str, image_size: int, small: bool) -> nn.Module:
    timm = _timm()
    attempts: list[dict] = []
    if timm.models.is_model_in_modules(name, ["vision_transformer"]):
        m = re.search(r"patch(\d+)", name)
        native = int(m.group(1)) if m else 16
        attempts.append({"img_size": image_size, "patch_size": _vit_patch(TIMM_PREFIX + name, image_size, native, small)})
    attempts += [{"img_size": image_size}, {}]
    last: Exception | None = None
    for kw in attempts:
        try:
            return timm.create_model(name, pretrained=False, **kw)
        except TypeError as e:  # the model takes no img_size / patch_size: build it as published
            last = e
    raise ConfigError(f"model.backbone: timm:{name} cannot be built ({last})")


_NUM_CLASSES = 1000  # torchvision and timm classification builds default to ImageNet's 1,000 classes


def _remove_classifier(net: nn.Module, name: str) -> str | None:
    """Replace the final class-logit layer by Identity (and dropout beside it); returns its dotted path."""
    if hasattr(net, "reset_classifier") and name.startswith(TIMM_PREFIX):
        net.reset_classifier(0)  # timm: pooled features out; its head's path for feature_dim
        head = getattr(net, "pretrained_cfg", None) or {}
        return head.get("classifier") if isinstance(head.get("classifier"), str) else None
    found = None
    for path, m in net.named_modules():
        if (isinstance(m, nn.Linear) and m.out_features == _NUM_CLASSES) or (
            isinstance(m, nn.Conv2d) and m.out_channels == _NUM_CLASSES and m.kernel_size == (1, 1)
        ):
            found = path  # the last one in definition order is the classifier
    if found is None:
        raise ConfigError(f"model.backbone: {name}: no classifier layer found to remove")
    parent_path, _, _ = found.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    for child_name, child in parent.named_children():
        if isinstance(child, nn.Dropout):
            setattr(parent, child_name, nn.Identity())
    _set_module(net, found, nn.Identity())
    return found


def _set_module(net: nn.Module, path: str | None, module: nn.Module) -> None:
    if not path:
        raise ConfigError("model.feature_dim: this backbone has no classifier slot for the feature layer; "
                          "leave model.feature_dim unset")
    parent_path, _, leaf = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, leaf, module)


def _small_image_stem(net: nn.Module) -> None:
    """Apply the small-image rule of the module docstring in place (random init)."""
    conv1 = getattr(net, "conv1", None)
    if isinstance(conv1, nn.Conv2d) and conv1.kernel_size == (7, 7) and hasattr(net, "maxpool"):
        # The CIFAR stem; exactly the module structure (and state-dict keys) of the original resnet18 encoder.
        net.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        return
    if _is_transformer(net):
        return  # plain ViTs got their patch size at construction; Swin / MaxViT are used as built
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1:
            m.stride = (1, 1)
            return


def _is_transformer(net: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__ for m in net.modules())


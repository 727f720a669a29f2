"""Baselines: a randomly initialised encoder, ImageNet-supervised features and a ResNet trained from scratch.

Each baseline is an ordinary run directory (``config.yaml``, ``run.json``, ``backbone.safetensors``,
``eval/<protocol>/``), so ``simclr evaluate``, ``simclr embed``, ``simclr.load_encoder`` and the report treat
it exactly like a SimCLR run:

- ``random``: the SimCLR architecture with random weights, evaluated under the same protocols: what the
  architecture and the protocol give without any learning.
- ``imagenet``: torchvision's ImageNet-supervised weights of ``model.backbone`` (``IMAGENET1K_V1``, e.g.
  ``ResNet18_Weights.IMAGENET1K_V1``, else the model's default weights) as a frozen feature extractor, ImageNet
  normalisation and 224 px input; the seed notebook project's baseline.
- ``scratch``: the SimCLR architecture trained end to end from random weights on the same labeled images
  (protocol ``finetune``): the honest reference for what pretraining buys when labels are scarce.
"""

from __future__ import annotations

import copy
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file

from .backbones import Backbone, build
from .checkpoint import load_state_checked, save_weights
from .config import Config, save_config
from .errors import CheckpointError, ConfigError
from .evaluate import evaluate_run
from .models import build_backbone
from .rundir import BACKBONE, CONFIG, write_run_json
from .runtime import Log

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224  # input side (px) the ImageNet weights were trained at
METHODS = {"random": "Random init", "imagenet": "ImageNet supervised", "scratch": "Supervised from scratch"}



# ----------------------------------------------------------------------------- weights


def _imagenet_enum(backbone: str):
    """torchvision's ImageNet weights for ``backbone``: ``IMAGENET1K_V1`` where it exists (the weights the ResNet
    baselines always used), else the model's default weights."""
    try:
        enum = torchvision.models.get_model_weights(backbone)
    except (ValueError, KeyError):
        raise ConfigError(f"model.backbone: torchvision has no ImageNet weights for {backbone!r}; the imagenet "
                          "baseline takes a torchvision name (timm and custom backbones: pass --weights PATH)") from None
    return getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT


def imagenet_weights_file(backbone: str = "resnet18") -> Path:
    """Where torch.hub keeps (and looks for) the ImageNet weights: ``$TORCH_HOME/hub/checkpoints/<file name>``."""
    url = _imagenet_enum(backbone).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def imagenet_state_dict(backbone: str = "resnet18", progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights through the weights API (downloaded once into the torch.hub cache).

    Raises:
        CheckpointError: offline and not cached (the message names the file and the folder to place it in),
            or a cached file that cannot be read.
    """
    weights = _imagenet_enum(backbone)
    target = imagenet_weights_file(backbone)
    existed = target.is_file()
    try:
        return weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if existed:
            raise CheckpointError(
                f"the ImageNet weights file {target} cannot be read ({reason}); it is truncated or not the file "
                f"from {weights.url}. Delete it and run again with network access, or replace it with a good copy"
            ) from None
        raise CheckpointError(
            f"the ImageNet weights for {backbone} could not be downloaded ({reason}). On a machine with network "
            f"access download {weights.url} and place the file {target.name} in the folder {target.parent} "
            f"(that is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another folder), or pass "
            f"--weights PATH with a local copy"
        ) from None


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (loaded with ``weights_only=True``).

    Accepts a plain state dict or a checkpoint holding one under ``state_dict`` or ``model``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; --weights takes imagenet, none or the path of a "
                              "ResNet state dict (.pth / .pt / .safetensors)")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"weights file {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                              "it is truncated or not a PyTorch/safetensors state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict (a mapping of parameter names to tensors)")
    return obj


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ResNet state dict onto :class:`~simclr.models.Backbone` keys (``net.<torchvision key>``).

    Understands torchvision's format (its ``fc`` classifier is dropped), this project's ``backbone.safetensors``
    (``net.*``, kept as is) and SimCLR checkpoints (``backbone.net.*``); ``module.`` / ``_orig_mod.`` prefixes
    from DDP and torch.compile are removed.
    """
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            k = k.removeprefix(prefix)
        out[k] = v
    if any(k.startswith("backbone.") for k in out):
        out = {k.removeprefix("backbone."): v for k, v in out.items() if k.startswith("backbone.")}
    if any(k.startswith("net.") for k in out):
        return out
    return {f"net.{k}": v for k, v in out.items() if not k.startswith("fc.")}


def backbone_from_state(name: str, state: dict[str, torch.Tensor], source: str) -> tuple[Backbone, bool]:
    """A Backbone ``name`` (from the registry) holding ``state`` (see :func:`backbone_state`).

    For the ResNet family the stem is read from ``conv1``'s kernel (3x3: CIFAR stem); other networks are built as
    published. The classifier of a torchvision-format state dict is dropped; a simclr export's feature layer
    (``model.feature_dim``) is kept.

    Returns:
        ``(backbone, cifar_stem)``.
    """
    ours = any(k.startswith(("net.", "backbone.")) for k in state)
    state = backbone_state(state)
    conv = state.get("net.conv1.weight")
    cifar_stem = conv is not None and conv.ndim == 4 and conv.shape[-1] == 3
    probe = build(name, 32 if cifar_stem else IMAGENET_SIZE, "cifar" if cifar_stem else "imagenet")
    head = f"net.{probe.classifier}." if probe.classifier else None
    weight = state.get(f"{head}weight") if head else None
    if head and not ours:  # torchvision's classifier (its ``fc`` went in backbone_state already)
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    encoder = probe
    if ours and weight is not None and weight.ndim == 2:  # an export with a linear feature layer
        encoder = build(name, 32 if cifar_stem else IMAGENET_SIZE, "cifar" if cifar_stem else "imagenet", int(weight.shape[0]))
    load_state_checked(encoder, state, source)
    return encoder, cifar_stem


def _feature_layer(encoder: Backbone) -> int | None:
    """``model.feature_dim`` of an encoder: its out_dim when its classifier slot holds a linear layer."""
    if not encoder.classifier:
        return None
    return encoder.out_dim if isinstance(encoder.net.get_submodule(encoder.classifier), torch.nn.Linear) else None


# ----------------------------------------------------------------------------- baseline run directories


def write_baseline_run(out: str | Path, cfg: Config, encoder: Backbone, kind: str, method: str,
                       extra: dict | None = None, command: str | None = None) -> Path:
    """A run directory for a baseline: ``config.yaml`` (``cfg``), ``backbone.safetensors`` and ``run.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG, {"command": command or "", "kind": kind})
    save_weights(encoder, out / BACKBONE, {"format": "simclr-1", "method": method})
    info = {"kind": kind, "method": method, "backbone": cfg.model.backbone, "batch_size": None, "proj_dim": None,
            "epochs": 0, "optimizer": None, "data": cfg.data.name, "finished": True}
    info.update(extra or {})
    write_run_json(out, info)
    return out


def _derived(cfg: Config, out: str | Path, method: str) -> Config:
    new = copy.deepcopy(cfg)
    new.out = str(out)
    new.name = method
    return new


def random_baseline(cfg: Config, out: str | Path, protocols: Sequence[str] | str | None = None,
                    labels: Sequence[int | None] | None = None, command: str | None = None, log: Log = print,
                    **eval_kwargs) -> dict[str, dict]:
    """A randomly initialised encoder of the configured architecture (seeded by ``train.seed``), evaluated under
    ``protocols`` (default ``eval.protocols``); writes the run directory ``out``. Returns ``{protocol: metrics}``."""
    method = METHODS["random"]
    rcfg = _derived(cfg, out, method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        encoder = build_backbone(rcfg.model)
    # No pretraining happened: 0 s of it, so the report shows the evaluation time alone.
    write_baseline_run(out, rcfg, encoder, "baseline", method, {"wall_time_s": 0.0}, command)
    log(f"[{method}] run directory {out}")
    return evaluate_run(out, protocols or rcfg.eval.protocols, cfg=rcfg, labels=labels, method=method, log=log,
                        **eval_kwargs)


def supervised(cfg: Config, weights: str = "imagenet", protocols: Sequence[str] | str | None = None,
               labels: Sequence[int | None] | None = None, image_size: int | None = None,
               command: str | None = None, log: Log = print, **eval_kwargs) -> dict[str, dict]:
    """The supervised baselines; writes the run directory ``cfg.out``.

    Args:
        cfg: data, evaluation and device settings; ``model.backbone`` picks the ResNet.
        weights: ``imagenet`` (torchvision ImageNet weights as a frozen feature extractor), ``none`` (the
            configured architecture trained from scratch on the labeled split: protocol ``finetune``) or the path
            of a local state dict (torchvision format, a simclr ``backbone.safetensors`` or checkpoint).
        protocols: default ``eval.protocols`` (``finetune`` for ``none``).
        labels: as in :func:`simclr.evaluate.evaluate_encoder`.
        image_size: input side (px); default 224 for ImageNet-stem weights, else ``model.image_size``.

    Returns:
        ``{protocol: metrics}``.
    """
    out = Path(cfg.out)
    if weights == "none":
        protocols = protocols or ["finetune"]
        plist = protocols.split(",") if isinstance(protocols, str) else list(protocols)
        if any(p.strip() != "finetune" for p in plist):
            raise ConfigError("--weights none trains the network from scratch on the labels (protocol finetune); a "
                              "frozen random encoder under knn/linear/mlp is the random baseline "
                              "(eval.baselines: [random] in `simclr run`)")
        method = METHODS["scratch"]
        scfg = _derived(cfg, out, method)
        if image_size:
            scfg.model.image_size = image_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            encoder = build_backbone(scfg.model)
        write_baseline_run(out, scfg, encoder, "supervised", method,
                           {"batch_size": scfg.eval.batch_size, "optimizer": "sgd"}, command)
        log(f"[{method}] training {scfg.model.backbone} from random weights; run directory {out}")
        return evaluate_run(out, protocols, cfg=scfg, labels=labels, method=method, log=log, **eval_kwargs)

    if weights == "imagenet":
        log(f"loading torchvision's ImageNet weights for {cfg.model.backbone} ({imagenet_weights_file(cfg.model.backbone)})")
        state, source, method = imagenet_state_dict(cfg.model.backbone), "ImageNet weights", METHODS["imagenet"]
    else:
        state, source = read_state_file(weights), str(weights)
        method = f"Supervised ({Path(weights).name})"
    encoder, cifar_stem = backbone_from_state(cfg.model.backbone, state, source)
    scfg = _derived(cfg, out, method)
    scfg.model.stem = "cifar" if cifar_stem else "imagenet"
    scfg.model.feature_dim = _feature_layer(encoder)
    if not cifar_stem:
        scfg.model.image_size = image_size or IMAGENET_SIZE
        scfg.augment.mean, scfg.augment.std = IMAGENET_MEAN, IMAGENET_STD
    elif image_size:
        scfg.model.image_size = image_size
    write_baseline_run(out, scfg, encoder, "supervised", method, {"weights": str(weights)}, command)
    log(f"[{method}] frozen {scfg.model.backbone} features at {scfg.model.image_size} px; run directory {out}")
    return evaluate_run(out, protocols or scfg.eval.protocols, cfg=scfg, labels=labels, method=method, log=log,
                        **eval_kwargs)

"""The encoder and config a run directory holds, ready for inference or evaluation."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from .. import augment, rundir
from ..checkpoint import load_weights
from ..config import Config, load_config, read_config
from ..errors import CheckpointError
from ..models import Backbone, build_backbone


def load_encoder(run_dir: str | Path, device: str | torch.device = "cpu", backbone: nn.Module | None = None) -> Backbone:
    """The encoder a run learned, frozen and in eval mode, ready for inference.

    The returned :class:`~simclr.models.Backbone` carries its preprocessing: ``image_size`` (px), ``mean`` and
    ``std`` (per channel) and ``preprocess(images)`` mapping uint8 ``[N,3,H,W]`` to the normalised float32
    ``[N,3,image_size,image_size]`` it expects (bilinear resize, scale to [0, 1], normalise)::

        enc = simclr.load_encoder("runs/quickstart")
        with torch.no_grad():
            features = enc(enc.preprocess(images))  # [N, enc.out_dim]

    Args:
        run_dir: a run directory holding ``config.yaml`` and ``backbone.safetensors``.
        device: where to put the encoder.
        backbone: the module the run was pretrained with (``simclr.pretrain(cfg, backbone=module)``): a fresh
            instance of it receives the weights; default: the registry's ``model.backbone``.

    Raises:
        CheckpointError: not a run directory, pretraining unfinished, or weights that do not match the config.
    """
    run_dir = Path(run_dir).expanduser()
    return encoder_from_run(run_dir, read_config(_config_file(run_dir)), torch.device(device), backbone)


def _config_file(run_dir: Path) -> Path:
    """``RUN/config.yaml``, or a CheckpointError saying what a run directory is."""
    path = run_dir / rundir.CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml); pass the --out folder of "
                              "`simclr pretrain` or `simclr run`")
    return path


def encoder_from_run(run_dir: Path, cfg: Config, device: torch.device, backbone: nn.Module | None = None) -> Backbone:
    """The frozen encoder of ``run_dir`` built as ``cfg`` says, with its preprocessing attached (see :func:`load_encoder`)."""
    weights = run_dir / rundir.BACKBONE
    if not weights.is_file():
        hint = (f"pretraining has not finished (the file is written at the end); continue it with "
                f"`simclr pretrain --config {run_dir / 'config.yaml'} --resume`" if (run_dir / rundir.CHECKPOINT).is_file()
                else "it is written when `simclr pretrain` finishes; pass a finished run directory")
        raise CheckpointError(f"{run_dir} has no backbone.safetensors: {hint}")
    encoder = build_backbone(cfg.model, backbone)
    load_weights(encoder, weights)
    encoder.eval().requires_grad_(False).to(device)
    encoder.image_size = cfg.model.image_size
    encoder.mean = tuple(cfg.augment.mean)
    encoder.std = tuple(cfg.augment.std)
    encoder.preprocess = functools.partial(augment.eval_transform, out_size=cfg.model.image_size,
                                           mean=encoder.mean, std=encoder.std)
    return encoder


def run_config(run_dir: str | Path, config: str | None = None, overrides: dict | None = None) -> Config:
    """The run's resolved config (``RUN/config.yaml``), then an optional YAML and dotted-key overrides."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found; pass the --out folder of `simclr pretrain` or `simclr run`")
    return load_config(config, overrides, base=read_config(_config_file(run_dir)))


def encoder_for_data(run_dir: str | Path, data: str, overrides: dict | None = None, backbone: nn.Module | None = None):
    """(config, device, precision, frozen encoder) of a run, its config pointed at another ``data`` source: what
    ``simclr embed`` and ``simclr neighbors`` compute features with."""
    from ..precision import choose_precision
    from ..runtime import resolve_device

    cfg = run_config(run_dir, None, {**(overrides or {}), "data.name": data})
    device = resolve_device(cfg.train.device)
    encoder = encoder_from_run(Path(run_dir).expanduser(), cfg, device, backbone)
    return cfg, device, choose_precision(cfg.train.precision, device, encoder, encoder.image_size).name, encoder

"""Atomic checkpoints, safe loading and safetensors export of the backbone and projection head."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import CheckpointError
from .rundir import atomic_write_bytes


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic (see :func:`simclr.rundir.atomic_write_bytes`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no code execution); clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; run without --resume to start a new run")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}); it is truncated, "
            "corrupt or not a simclr checkpoint. Delete it (or restore a copy) and start without --resume"
        ) from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"checkpoint {path} is not a simclr checkpoint (no 'model' entry)")
    return obj


def save_weights(module: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Export a module's state dict as safetensors (atomic)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(safetensors_bytes(tensors, metadata=metadata), path)


def load_weights(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load safetensors weights into ``module``; wrong keys or shapes raise CheckpointError naming them."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"weights file {path} cannot be read ({e}); it is truncated or not a safetensors file") from None
    load_state_checked(module, state, str(path))
    return module


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a message that names missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:5]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source} does not match the model architecture ({'; '.join(parts)}); check --backbone, "
                              "--image-size and the projection settings against the run that wrote it")
    module.load_state_dict(state)


def config_differences(old: dict, new: dict, sections: tuple[str, ...] = ("model", "data", "augment")) -> list[str]:
    """Keys under ``sections`` whose values differ between two resolved config dicts (``"model.backbone: a -> b"``)."""
    diffs = []
    for sec in sections:
        a, b = old.get(sec, {}) or {}, new.get(sec, {}) or {}
        for k in sorted(set(a) | set(b)):
            if k in ("root", "cache_dir", "download", "strict"):
                continue  # where files live, not what they are
            va, vb = a.get(k), b.get(k)
            if isinstance(va, tuple):
                va = list(va)
            if isinstance(vb, tuple):
                vb = list(vb)
            if va != vb:
                diffs.append(f"{sec}.{k}: {va!r} -> {vb!r}")
    return diffs

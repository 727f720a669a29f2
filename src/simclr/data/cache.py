"""The on-disk uint8 cache: a decoded split stored as one ``.pt`` file, keyed by what it was built from.

The key holds the source, its file list (sizes and modification times), the image side and the split, so a
changed file, side or split misses the cache and a second load of the same ones reads one file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import DataConfig, default_cache_root
from ..hardware import check_host_memory
from ..rundir import atomic_write
from ..runtime import Log
from .images import ImageData

CACHE_VERSION = 1  # bump when decoding changes so that old caches are not reused


def file_stats(root: str, paths: list[str]) -> list[tuple[str, int, int]]:
    """``(path relative to root, size, mtime ns)`` per file; (-1, -1) for a file that cannot be stat'ed."""
    cut = len(os.path.join(root, ""))
    out = []
    for p in paths:
        full = os.path.join(root, p)
        try:
            st = os.stat(full)
            out.append((full[cut:], st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((full[cut:], -1, -1))
    return out


def _cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root() / "tensors"


def cached(cfg: DataConfig, stem: str, key: dict, build: Callable[[], ImageData], log: Log) -> ImageData:
    """Return the cached ImageData for ``key`` or build it and store it atomically.

    The file is ``<cache_dir>/<stem>-<sha256 prefix>.pt``; older files with the same stem (the same source, split
    and size with a different file list) are removed when a new one is written.
    """
    key = dict(key, version=CACHE_VERSION)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = _cache_dir(cfg)
    path = folder / f"{stem}-{digest}.pt"
    if path.is_file():
        check_host_memory(path.stat().st_size, f"the cached images {path}")
        try:
            data = _read_cache(path)
            log(f"loaded {len(data)} images from cache {path}")
            return data
        except Exception as e:  # a truncated or foreign file: rebuild it
            log(f"warning: cache file {path} is unreadable ({type(e).__name__}: {e}); rebuilding it")
    data = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_cache(path, data)
        for old in folder.glob(f"{stem}-*.pt"):
            if old.name != path.name:
                old.unlink(missing_ok=True)
        log(f"cached {len(data)} images at {path}")
    except OSError as e:
        log(f"warning: could not write the cache {path} ({e}); continuing without it")
    return data


def _write_cache(path: Path, data: ImageData) -> None:
    meta = {"classes": data.classes, "paths": data.paths, "skipped": data.skipped, "version": CACHE_VERSION}
    payload = {"images": data.images.contiguous(), "labels": data.labels, "meta": json.dumps(meta)}
    atomic_write(path, lambda f: torch.save(payload, f))


def _read_cache(path: Path) -> ImageData:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    images, labels = payload["images"], payload["labels"]
    meta = json.loads(payload["meta"])
    ok = (
        images.dtype == torch.uint8
        and images.ndim == 4
        and images.shape[1] == 3
        and labels.dtype == torch.long
        and labels.shape == (images.shape[0],)
        and meta.get("version") == CACHE_VERSION
    )
    if not ok:
        raise ValueError("unexpected contents")
    return ImageData(
        images=images,
        labels=labels,
        classes=list(meta["classes"]),
        paths=meta["paths"],
        skipped=list(meta["skipped"]),
        from_cache=True,
    )

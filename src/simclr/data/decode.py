"""Image files -> uint8 pixels: one decoder (PIL: any mode to RGB, short side resized, center crop), run in a pool of
worker processes for large file lists, and the one warning about files it cannot read."""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..errors import DataError
from ..hardware import check_host_memory, cpu_count, image_bytes
from ..runtime import Log
from .images import ImageData

# Below this many files a process pool costs more than it saves.
POOL_MIN_FILES = 2000


def decode_files(
    files: list[str], labels: Sequence[int] | Tensor, classes: list[str], size: int, log: Log = print, what: str = "images"
) -> ImageData:
    """Decode image files to an :class:`ImageData` at side ``size``, without the cache.

    The decoder of :func:`~simclr.data.load_split` (so the pixels equal the ones it holds); the streaming path uses it for the
    few images it needs in memory (kNN monitor sets, augmentation preview). Unreadable files are left out and
    listed in ``skipped``; from ``POOL_MIN_FILES`` files on, a process pool decodes.

    Args:
        files: image paths.
        labels: one label per file (-1 unlabeled).
        classes: class names the labels index into.
        size: side S of the decoded images.
        log: receives the progress lines; ``what`` names the files in them.
    """
    check_host_memory(image_bytes(len(files), size), f"{len(files)} {what} at {size}x{size} px")
    workers = cpu_count() if len(files) >= POOL_MIN_FILES else 1
    log(f"decoding {len(files)} {what} at {size}x{size} px ({workers} process{'es' if workers > 1 else ''})")
    t0 = time.perf_counter()
    arrays, bad = _decode_all(files, size, workers)
    bad_set = set(bad)
    ok = [i for i in range(len(files)) if i not in bad_set]
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()  # [N, S, S, 3] -> [N, 3, S, S]
    log(f"decoded {len(ok)} images in {time.perf_counter() - t0:.1f} s")
    return ImageData(
        images=images,
        labels=torch.as_tensor(labels, dtype=torch.long)[ok],
        classes=list(classes),
        paths=[files[i] for i in ok],
        skipped=[files[i] for i in bad],
    )


def _decode_all(paths: list[str], size: int, workers: int) -> tuple[np.ndarray, list[int]]:
    """Decode ``paths`` to uint8 ``[k, size, size, 3]`` (k readable files) and the indices that failed."""
    if workers <= 1:
        return _decode_chunk(paths, size, 0)
    n_chunks = min(len(paths), workers * 8)
    bounds = np.linspace(0, len(paths), n_chunks + 1).astype(int)
    chunks = [(paths[a:b], a) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    # fork starts workers in milliseconds; spawn would re-import torch in each. The workers only run PIL/numpy.
    method = "fork" if sys.platform.startswith("linux") else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        results = list(pool.map(_decode_chunk, [c[0] for c in chunks], [size] * len(chunks), [c[1] for c in chunks]))
    arrays = [r[0] for r in results]
    bad = [i for r in results for i in r[1]]
    return np.concatenate(arrays), bad


def _decode_chunk(paths: list[str], size: int, offset: int) -> tuple[np.ndarray, list[int]]:
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    bad: list[int] = []
    k = 0
    for i, p in enumerate(paths):
        try:
            out[k] = read_image(p, size)
            k += 1
        except Exception:  # any decoder failure means an unreadable file
            bad.append(offset + i)
    return out[:k], bad


def read_image(path: str, size: int) -> np.ndarray:
    """One file -> uint8 ``[size, size, 3]``: RGB, shorter side resized to ``size``, center crop."""
    with Image.open(path) as im:
        im.draft(None, (size, size))  # JPEG: let libjpeg decode at a reduced scale (still >= size)
        if im.info.get("exif"):
            im = ImageOps.exif_transpose(im)
        rgb = _to_rgb(im)
        w, h = rgb.size
        if (w, h) != (size, size):
            s = min(w, h)
            box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
        arr = np.asarray(rgb, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    return arr


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white; 16-bit and float grey are scaled to 8 bit."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F" and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr.astype(np.float64).clip(0, 65535) / 257.0  # 65535 -> 255
        grey = np.nan_to_num(arr.astype(np.float64)).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode == "RGB":
        im.load()
        return im
    return im.convert("RGB")


def report_unreadable(skipped: list[str], strict: bool, where: str, log: Log, after: str = "") -> None:
    """The one warning about files that could not be decoded, or with ``data.strict`` the DataError."""
    if not skipped:
        return
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    what = f"{len(skipped)} unreadable image file(s) in {where} (corrupt, truncated, empty or not an image)"
    if strict:
        raise DataError(f"{what} and data.strict is on: {shown}")
    log(f"warning: skipped {what}: {shown}{after}")

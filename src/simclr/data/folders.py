"""Image folders: finding the layout and the files of a split, with its seeded held-out test split.

Three layouts: ``ROOT/train/<class>/*`` + ``ROOT/test/<class>/*``; ``ROOT/<class>/*`` (a fixed, seeded per-class
test split of ``data.test_fraction``); or a flat ``ROOT/*`` of unlabeled images.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from pathlib import Path

import torch
from PIL import Image

from ..config import BUILTIN_DATASETS, DataConfig
from ..errors import DataError
from ..runtime import Log
from .cache import cached, file_stats
from .decode import decode_files, report_unreadable
from .images import ImageData

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# Fixed seed: the held-out test images must not change with the run's --seed.
TEST_SPLIT_SEED = 20200213


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(folder: str) -> tuple[list[str], int]:
    """All image files under ``folder`` (recursive, sorted paths) and the number of other visible files.

    Plain strings and ``os.scandir``: on 50,000 files ``pathlib`` objects cost most of a warm load.
    """
    found: list[str] = []
    ignored = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                stack.append(e.path)
            elif _is_image(e.name):
                found.append(e.path)
            else:
                ignored += 1
    found.sort()
    return found, ignored


def _class_folders(folder: Path) -> dict[str, tuple[list[str], int]]:
    """``{class name: (image files, ignored files)}`` for the subfolders of ``folder`` that hold images."""
    out: dict[str, tuple[list[str], int]] = {}
    if not folder.is_dir():
        return out
    subs = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    for name in subs:
        files, ignored = _walk_images(os.path.join(folder, name))
        if files:
            out[name] = (files, ignored)
    return out


def _flat_images(folder: Path) -> tuple[list[str], int]:
    files, ignored = [], 0
    for e in os.scandir(folder):
        if e.name.startswith(".") or e.is_dir():
            continue
        if _is_image(e.name):
            files.append(e.path)
        else:
            ignored += 1
    return sorted(files), ignored


def _held_out(files: list[str], class_name: str, fraction: float) -> set[str]:
    """Seeded per-class test selection; seeded by the class name so other classes do not move it."""
    n = len(files)
    n_test = round(n * fraction)
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    else:
        n_test = 0
    g = torch.Generator().manual_seed(TEST_SPLIT_SEED ^ zlib.crc32(class_name.encode()))
    perm = torch.randperm(n, generator=g)[:n_test].tolist()
    return {files[i] for i in perm}


def _scan_folder(root: Path, split: str, test_fraction: float) -> tuple[str, list[str], list[int], list[str], list[str], int]:
    """Find the layout of ``root`` and the files of ``split``.

    Returns:
        (layout, files, labels, classes, reference files for the native size, ignored non-image files).
    """
    exts = " ".join(IMAGE_EXTENSIONS)
    train_classes = _class_folders(root / "train")
    if train_classes:
        test_classes = _class_folders(root / "test")
        classes = sorted(set(train_classes) | set(test_classes))
        ref = [f for c in sorted(train_classes) for f in train_classes[c][0]]
        if split == "test":
            if not test_classes:
                raise DataError(
                    f"{root} has train/<class>/ folders but no test/<class>/ folders with images "
                    f"({exts}); add {root / 'test'}/<class>/ or use the ROOT/<class>/ layout"
                )
            chosen = test_classes
        else:
            chosen = train_classes
        index = {c: i for i, c in enumerate(classes)}
        files = [f for c in sorted(chosen) for f in chosen[c][0]]
        labels = [index[c] for c in sorted(chosen) for _ in chosen[c][0]]
        ignored = sum(v[1] for v in chosen.values())
        return "split", files, labels, classes, ref, ignored

    class_dirs = _class_folders(root)
    if class_dirs:
        classes = sorted(class_dirs)
        files, labels = [], []
        ignored = sum(v[1] for v in class_dirs.values())
        for i, c in enumerate(classes):
            members = class_dirs[c][0]
            test = _held_out(members, c, test_fraction)
            keep = [f for f in members if (f in test) == (split == "test")]
            files += keep
            labels += [i] * len(keep)
        ref = [f for c in classes for f in class_dirs[c][0]]
        return "classes", files, labels, classes, ref, ignored

    flat, ignored = _flat_images(root)
    if flat:
        if split == "test":
            raise DataError(
                f"{root} is a flat folder of unlabeled images; a labeled protocol (test split) needs class "
                f"folders: ROOT/<class>/* or ROOT/train/<class>/* + ROOT/test/<class>/*"
            )
        return "flat", flat, [-1] * len(flat), [], flat, ignored
    raise DataError(
        f"no images ({exts}) found in {root}: expected ROOT/train/<class>/* + ROOT/test/<class>/*, "
        f"ROOT/<class>/* or image files directly in ROOT"
    )


def _native_side(files: list[str], root: Path) -> int:
    """Short side of the first image whose header PIL can read."""
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
                if w > 0 and h > 0:
                    return min(w, h)
        except Exception:  # unreadable files are reported by the decoder
            continue
    raise DataError(f"none of the {len(files)} image files in {root} could be read")


def open_folder(cfg: DataConfig, split: str, image_size: int, log: Log) -> tuple[Path, str, list[str], list[int], list[str], int]:
    """The image files of one split of the folder ``cfg.name``, not decoded: (root, layout, files, labels, classes,
    side S the images are stored at). Shared by :func:`~simclr.data.load_split` and :func:`~simclr.data.list_images`."""
    root = Path(cfg.name).expanduser()
    if not root.exists():
        raise DataError(
            f"data path {root} does not exist; data.name must be one of {', '.join(BUILTIN_DATASETS)} "
            f"or a folder of images"
        )
    if not root.is_dir():
        raise DataError(f"data path {root} is a file; data.name must be a folder of images (or a dataset name)")
    root = root.resolve()
    layout, files, labels, classes, ref, ignored = _scan_folder(root, split, cfg.test_fraction)
    if ignored:
        log(f"note: ignored {ignored} file(s) without an image extension ({' '.join(IMAGE_EXTENSIONS)}) in {root}")
    if not files:
        raise DataError(f"the {split} split of {root} is empty (layout {layout}, test_fraction {cfg.test_fraction})")
    return root, layout, files, labels, classes, cfg.cache_size or min(image_size, _native_side(ref, root))


def load_folder(cfg: DataConfig, split: str, image_size: int, log: Log) -> ImageData:
    """One split of the image folder ``cfg.name``, decoded (or read from the cache); unreadable files reported once."""
    root, layout, files, labels, classes, size = open_folder(cfg, split, image_size, log)
    key = {
        "kind": f"folder-{layout}",
        "path": str(root),
        "files": file_stats(str(root), files),
        "labels": labels,
        "classes": classes,
        "size": size,
        "split": split,
        "test_fraction": cfg.test_fraction if layout == "classes" else None,
    }

    def build() -> ImageData:
        return decode_files(files, labels, classes, size, log, what=f"{split} images from {root}")

    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name)[:40] or "root"
    where = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    data = cached(cfg, f"folder-{safe}-{where}-{split}-{size}", key, build, log)

    report_unreadable(data.skipped, cfg.strict, str(root), log,
                      "; the list is written to the run directory (skipped_files.txt)")
    if len(data) == 0:
        raise DataError(f"none of the {len(files)} image files of the {split} split in {root} could be read")
    return data

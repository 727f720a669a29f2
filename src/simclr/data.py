"""Images from their sources (torchvision datasets, image folders) as uint8 tensors, cached on disk.

Every source ends up as the same thing: an :class:`ImageData` holding a uint8 tensor ``[N, 3, S, S]`` (RGB,
contiguous, CPU) and int64 labels ``[N]`` (-1 = unlabeled). Sources are

* the torchvision datasets ``cifar10``, ``cifar100`` and ``stl10`` (downloaded to ``data.root``), or
* a folder of images, in one of three layouts:
  ``ROOT/train/<class>/*`` + ``ROOT/test/<class>/*``; ``ROOT/<class>/*`` (a fixed, seeded per-class
  test split of ``data.test_fraction``); or a flat ``ROOT/*`` of unlabeled images.

Decoding a folder of JPEGs takes seconds to minutes, so the decoded tensor is cached under ``data.cache_dir``,
keyed by the source, its file list (sizes and modification times), the image side and the split. A second
load reads one file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from .config import BUILTIN_DATASETS, DataConfig, default_cache_root
from .errors import DataError
from .rundir import atomic_write
from .runtime import Log

SPLITS = ("train", "test", "unlabeled")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CACHE_VERSION = 1  # bump when decoding changes so that old caches are not reused
# Fixed seeds: the held-out test images must not change with the run's --seed.
TEST_SPLIT_SEED = 20200213
TEST_LIMIT_SEED = 0
# Below this many files a process pool costs more than it saves.
POOL_MIN_FILES = 2000



@dataclass
class ImageData:
    """A decoded image set.

    Attributes:
        images: uint8 ``[N, 3, S, S]`` RGB, contiguous, on the CPU when loaded.
        labels: int64 ``[N]``; -1 marks an unlabeled image.
        classes: class names; ``labels`` index into this list (empty for unlabeled folders).
        paths: source file of each image for folder sources, None for torchvision datasets.
        skipped: files that could not be decoded (corrupt, truncated, empty, not an image).
        from_cache: True when the images were read from the uint8 cache instead of decoded.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    paths: list[str] | None = None
    skipped: list[str] = field(default_factory=list)
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Tensor | Sequence[int]) -> ImageData:
        """Rows ``idx`` (integer indices or a boolean mask) as a new ImageData; ``classes`` is shared."""
        index = torch.as_tensor(idx)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(torch.long).flatten()
        paths = [self.paths[i] for i in index.tolist()] if self.paths is not None else None
        return ImageData(
            images=self.images[index].contiguous(),
            labels=self.labels[index],
            classes=list(self.classes),
            paths=paths,
            skipped=list(self.skipped),
            from_cache=self.from_cache,
        )


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def load_split(cfg: DataConfig, split: str, image_size: int, seed: int = 0, log: Log = print) -> ImageData:
    """Load one split of the configured source as uint8 tensors, using the cache when it is valid.

    Args:
        cfg: data section of the config. ``cfg.name`` is ``cifar10``/``cifar100``/``stl10`` or a folder path.
        split: ``"train"``, ``"test"`` or ``"unlabeled"``. Sources without a separate unlabeled set return their
            train images with all labels set to -1 for ``"unlabeled"``.
        image_size: side (px) of the views the model sees; images are stored at
            ``S = cfg.cache_size or min(image_size, native short side)``.
        seed: run seed; only used for ``cfg.limit`` on the train/unlabeled splits.
        log: receives progress lines and the (single) warning about unreadable files.

    Returns:
        ImageData with ``images`` uint8 ``[N, 3, S, S]`` and ``labels`` int64 ``[N]``.

    Raises:
        DataError: missing or empty source, dataset not downloadable, no readable images, a test split asked of
            an unlabeled folder, or unreadable files with ``cfg.strict``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if split == "unlabeled" and cfg.name != "stl10":
        # No separate unlabeled set: the train images (and their cache entry) without labels.
        data = load_split(dataclasses.replace(cfg, limit=None), "train", image_size, seed, log)
        data.labels = torch.full_like(data.labels, -1)
    elif cfg.name in BUILTIN_DATASETS:
        data = _load_builtin(cfg, split, image_size, log)
    else:
        data = _load_folder(cfg, split, image_size, log)
    keep = _limit_keep(len(data), cfg, split, seed)
    if keep is not None:
        log(f"data.limit: using {cfg.limit} of {len(data)} {split} images")
        data = data.subset(keep)
    return data


def _limit_keep(n: int, cfg: DataConfig, split: str, seed: int) -> Tensor | None:
    """Rows ``data.limit`` keeps of ``n`` (sorted), or None to keep all: the first ``limit`` of a seeded permutation;
    the test split's seed is fixed so that its images do not move with the run's ``--seed``."""
    if cfg.limit is None or cfg.limit >= n:
        return None
    g = torch.Generator().manual_seed(TEST_LIMIT_SEED if split == "test" else seed)
    return torch.randperm(n, generator=g)[: cfg.limit].sort().values


def split_labels(labels: Tensor, cfg: DataConfig, seed: int, classes: Sequence[str] = ()) -> dict[str, Tensor]:
    """Index tensors for pretraining and for the labeled heads, from the labels alone.

    The labels alone decide, so that the streaming path (:func:`list_images`) picks the same images as the
    in-memory path for the same files and seed.

    ``cfg.split == "standard"``: pretrain on every image; a seeded permutation of the labeled images gives
    ``labeled_val`` (its first ``n_val``) and ``labeled_train`` (all the rest).
    ``cfg.split == "seed"`` (the seed notebook project's protocol): ``n_labeled`` labeled images are drawn and held out of
    pretraining; ``labeled_val`` is the first ``n_val`` of them, ``labeled_train`` the other
    ``n_labeled - n_val``; ``pretrain`` is every other image.

    Small datasets are clamped: ``n_val`` is at most 20 % of the labeled images, and the seed split holds out at
    most half of the dataset.

    Args:
        labels: int64 ``[N]`` labels of the train split (-1 for unlabeled images).
        cfg: data config (``split``, ``n_labeled``, ``n_val``).
        seed: run seed.
        classes: class names, only for the error message.

    Returns:
        ``{"pretrain", "labeled_train", "labeled_val"}``: sorted int64 index tensors into ``labels``; the labeled
        ones are empty when no image has a label.

    Raises:
        DataError: labeled images exist but span fewer than 2 classes.
    """
    labels = labels.to(torch.long).cpu()
    n = int(labels.numel())
    labeled = (labels >= 0).nonzero().flatten()
    empty = torch.empty(0, dtype=torch.long)
    if labeled.numel() == 0:
        return {"pretrain": torch.arange(n), "labeled_train": empty, "labeled_val": empty.clone()}
    n_classes = int(labels[labeled].unique().numel())
    if n_classes < 2:
        raise DataError(
            f"labeled evaluation needs images of at least 2 classes; the train split has {n_classes} "
            f"({', '.join(classes) or 'no class names'}). Add class folders or use an unlabeled source."
        )
    g = torch.Generator().manual_seed(seed)
    order = labeled[torch.randperm(labeled.numel(), generator=g)]
    if cfg.split == "seed":
        n_held = min(cfg.n_labeled, labeled.numel(), n // 2)
        chosen = order[:n_held]
        n_val = min(cfg.n_val, int(0.2 * n_held))
        mask = torch.ones(n, dtype=torch.bool)
        mask[chosen] = False
        pretrain = mask.nonzero().flatten()
        val, lab_train = chosen[:n_val], chosen[n_val:]
    else:
        n_val = min(cfg.n_val, int(0.2 * labeled.numel()))
        pretrain = torch.arange(n)
        val, lab_train = order[:n_val], order[n_val:]
    return {
        "pretrain": pretrain,
        "labeled_train": lab_train.sort().values,
        "labeled_val": val.sort().values,
    }


# --------------------------------------------------------------------------------------------------------------
# torchvision datasets


@dataclass(frozen=True)
class _Builtin:
    title: str
    folder: str  # extracted folder under root
    archive: str  # file torchvision downloads and extracts
    url: str
    native: int  # native image side (px)
    files: tuple[str, ...]  # files that must exist in the extracted folder


_BUILTINS = {
    "cifar10": _Builtin(
        "CIFAR-10",
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        32,
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
         "batches.meta"),
    ),
    "cifar100": _Builtin(
        "CIFAR-100",
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        32,
        ("train", "test", "meta"),
    ),
    "stl10": _Builtin(
        "STL-10",
        "stl10_binary",
        "stl10_binary.tar.gz",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        96,
        ("train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin"),
    ),
}

_STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _placement_hint(spec: _Builtin, root: Path) -> str:
    return (
        f"Download {spec.archive} from {spec.url} and place it in {root} (it is extracted on first use), "
        f"or extract it there so that {root / spec.folder} exists"
    )


def _open_torchvision(name: str, spec: _Builtin, root: Path, split: str, download: bool):
    import torchvision.datasets as tvd

    try:
        if name == "stl10":
            return tvd.STL10(str(root), split="test" if split == "test" else split, download=download)
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        return cls(str(root), train=split != "test", download=download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, tarfile errors...
        if download:
            what = f"could not download or extract {spec.title} into {root} ({type(e).__name__}: {e})"
        else:
            what = f"{spec.title} files in {root / spec.folder} are missing or corrupted ({e})"
        raise DataError(f"{what}. {_placement_hint(spec, root)}.") from e


def _load_builtin(cfg: DataConfig, split: str, image_size: int, log: Log) -> ImageData:
    name = cfg.name
    spec = _BUILTINS[name]
    root = Path(cfg.root).expanduser() if cfg.root else default_cache_root() / "data"
    base = root / spec.folder
    dataset = None
    if not all((base / f).is_file() for f in spec.files):
        has_archive = (root / spec.archive).is_file()
        if not cfg.download and not has_archive:
            raise DataError(
                f"{spec.title} not found in {root} (expected {base}) and data.download is off. "
                f"{_placement_hint(spec, root)}; or set data.download=true."
            )
        # With the archive in place torchvision verifies and extracts it without touching the network.
        log(f"{spec.title}: {'extracting' if has_archive else 'downloading'} into {root}")
        root.mkdir(parents=True, exist_ok=True)
        dataset = _open_torchvision(name, spec, root, split, download=True)
    size = cfg.cache_size or min(image_size, spec.native)
    key = {
        "kind": name,
        "path": str(base.resolve()),
        "files": _file_stats(str(base), sorted(spec.files)),
        "size": size,
        "split": split,
    }

    def build() -> ImageData:
        ds = dataset or _open_torchvision(name, spec, root, split, download=False)
        if name == "stl10":
            images = torch.from_numpy(np.ascontiguousarray(ds.data))  # already [N, 3, 96, 96]
            labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
            classes = list(getattr(ds, "classes", None) or _STL10_CLASSES)
        else:
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # [N, 32, 32, 3] -> [N, 3, 32, 32]
            labels = torch.as_tensor(ds.targets, dtype=torch.long)
            classes = list(ds.classes)
        return ImageData(_resize_square(images, size), labels, classes, None)

    return _cached(cfg, f"{name}-{split}-{size}", key, build, log)


def _resize_square(images: Tensor, size: int, chunk: int = 2048) -> Tensor:
    """uint8 ``[N, 3, H, W]`` -> uint8 ``[N, 3, size, size]``: center square crop, bilinear antialiased resize."""
    h, w = images.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    images = images[..., top : top + s, left : left + s]
    if s == size:
        return images.contiguous()
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


# --------------------------------------------------------------------------------------------------------------
# Image folders


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


def _open_folder(cfg: DataConfig, split: str, image_size: int, log: Log) -> tuple[Path, str, list[str], list[int], list[str], int]:
    """The image files of one split of the folder ``cfg.name``, not decoded: (root, layout, files, labels, classes,
    side S the images are stored at). Shared by :func:`load_split` and :func:`list_images`."""
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


def report_unreadable(skipped: list[str], strict: bool, where: str, log: Log, after: str = "") -> None:
    """The one warning about files that could not be decoded, or with ``data.strict`` the DataError."""
    if not skipped:
        return
    shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    what = f"{len(skipped)} unreadable image file(s) in {where} (corrupt, truncated, empty or not an image)"
    if strict:
        raise DataError(f"{what} and data.strict is on: {shown}")
    log(f"warning: skipped {what}: {shown}{after}")


def _load_folder(cfg: DataConfig, split: str, image_size: int, log: Log) -> ImageData:
    root, layout, files, labels, classes, size = _open_folder(cfg, split, image_size, log)
    key = {
        "kind": f"folder-{layout}",
        "path": str(root),
        "files": _file_stats(str(root), files),
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
    data = _cached(cfg, f"folder-{safe}-{where}-{split}-{size}", key, build, log)

    report_unreadable(data.skipped, cfg.strict, str(root), log,
                      "; the list is written to the run directory (skipped_files.txt)")
    if len(data) == 0:
        raise DataError(f"none of the {len(files)} image files of the {split} split in {root} could be read")
    return data


def decode_files(
    files: list[str], labels: Sequence[int] | Tensor, classes: list[str], size: int, log: Log = print, what: str = "images"
) -> ImageData:
    """Decode image files to an :class:`ImageData` at side ``size``, without the cache.

    The decoder of :func:`load_split` (so the pixels equal the ones it holds); the streaming path uses it for the
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
    workers = _cpu_count() if len(files) >= POOL_MIN_FILES else 1
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


def _cpu_count() -> int:
    """Cores for this process's decode pool: its share of the machine's cores when torchrun starts several
    processes on it (``LOCAL_WORLD_SIZE``), so that they do not oversubscribe the cores together."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // local_processes())


def local_processes() -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


# ----------------------------------------------------------------------------------------------------------------
# Memory checks: decoding a dataset that does not fit ends in the kernel's OOM killer, with no message


def free_host_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_STREAM_HINT = ("set data.stream=true (--set data.stream=true) so that each step's files are decoded as it runs, or "
                "use fewer or smaller images (data.limit, data.cache_size)")


def check_host_memory(nbytes: int, what: str) -> None:
    """Raise DataError when ``nbytes`` of ``what`` (times the processes of this job on this machine, each of which
    holds its own copy) exceed the host's available memory."""
    free = free_host_memory()
    copies = local_processes()
    need = nbytes * copies
    if free is not None and need > free:
        each = f" ({copies} processes on this machine hold a copy each)" if copies > 1 else ""
        raise DataError(f"{what} take {need / 2**30:.1f} GiB of memory{each}, but only {free / 2**30:.1f} GiB are "
                        f"available; {_STREAM_HINT}")


def image_bytes(n: int, size: int) -> int:
    """Bytes of ``n`` uint8 images of 3 x size x size."""
    return n * 3 * size * size


# Share of a GPU's free memory the device-resident images may take: the rest is for the model and activations.
DEVICE_DATA_SHARE = 0.5


def check_device_memory(nbytes: int, device: torch.device, what: str = "the pretraining images") -> None:
    """Raise DataError when ``nbytes`` of device-resident images would take more than :data:`DEVICE_DATA_SHARE` of
    the free memory of CUDA ``device`` (times the processes that share it); nothing to check on other devices."""
    if device.type != "cuda":
        return
    free, _total = torch.cuda.mem_get_info(device)
    sharing = max(1, -(-local_processes() // max(torch.cuda.device_count(), 1)))  # processes per GPU
    need = nbytes * sharing
    if need > DEVICE_DATA_SHARE * free:
        each = f" ({sharing} processes share this GPU)" if sharing > 1 else ""
        raise DataError(f"{what} take {need / 2**30:.1f} GiB on {device}{each}, more than "
                        f"{DEVICE_DATA_SHARE:.0%} of its {free / 2**30:.1f} GiB free; {_STREAM_HINT}")


def to_device_checked(images: Tensor, device: torch.device) -> Tensor:
    """``images`` on ``device`` (non-blocking) after :func:`check_device_memory`."""
    check_device_memory(images.numel() * images.element_size(), device)
    return images.to(device, non_blocking=True)


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
            out[k] = _read_image(p, size)
            k += 1
        except Exception:  # any decoder failure means an unreadable file
            bad.append(offset + i)
    return out[:k], bad


def _read_image(path: str, size: int) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------------------
# The uint8 cache


def _file_stats(root: str, paths: list[str]) -> list[tuple[str, int, int]]:
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


def _cached(cfg: DataConfig, stem: str, key: dict, build: Callable[[], ImageData], log: Log) -> ImageData:
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


def list_images(cfg: DataConfig, split: str, image_size: int, seed: int = 0, log: Log = print) -> tuple[list[str], Tensor, list[str], int]:
    """The files of one split of an image folder, without decoding them (for the streaming loader).

    Same layouts, split rules and ``cfg.limit`` selection as :func:`load_split`; unreadable files are only found
    when a loader decodes them (so with unreadable files present the ``limit`` subset can differ slightly).
    Decoding a file with ``_read_image(path, size)`` gives the pixels :func:`load_split` would hold.

    Returns:
        (paths, labels int64 [N] (-1 unlabeled), classes, S): S is the side :func:`load_split` stores images at.

    Raises:
        DataError: for torchvision datasets (nothing to stream) and for the folder errors of :func:`load_split`.
    """
    if cfg.name in BUILTIN_DATASETS:
        raise DataError(
            f"data.stream reads image files, and {cfg.name!r} is a torchvision dataset that is held in memory: "
            "turn data.stream off, or point data.name at a folder of images"
        )
    _, _, files, labels, classes, size = _open_folder(cfg, split, image_size, log)
    if split == "unlabeled":
        labels = [-1] * len(files)
    paths, label_t = [str(f) for f in files], torch.tensor(labels, dtype=torch.long)
    keep = _limit_keep(len(paths), cfg, split, seed)
    if keep is not None:
        paths, label_t = [paths[i] for i in keep.tolist()], label_t[keep]
    return paths, label_t, classes, size

"""One split of the configured source: a torchvision dataset or an image folder, decoded (:func:`load_split`) or
listed for the streaming loader (:func:`list_images`)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..config import BUILTIN_DATASETS, DataConfig
from ..errors import DataError
from ..runtime import Log
from .builtin import load_builtin
from .folders import load_folder, open_folder
from .images import ImageData
from .subsets import limit_keep

SPLITS = ("train", "test", "unlabeled")


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
        data = load_builtin(cfg, split, image_size, log)
    else:
        data = load_folder(cfg, split, image_size, log)
    keep = limit_keep(len(data), cfg, split, seed)
    if keep is not None:
        log(f"data.limit: using {cfg.limit} of {len(data)} {split} images")
        data = data.subset(keep)
    return data


def list_images(cfg: DataConfig, split: str, image_size: int, seed: int = 0, log: Log = print) -> tuple[list[str], Tensor, list[str], int]:
    """The files of one split of an image folder, without decoding them (for the streaming loader).

    Same layouts, split rules and ``cfg.limit`` selection as :func:`load_split`; unreadable files are only found
    when a loader decodes them (so with unreadable files present the ``limit`` subset can differ slightly).
    Decoding a file with :func:`~simclr.data.decode.read_image` gives the pixels :func:`load_split` would hold.

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
    _, _, files, labels, classes, size = open_folder(cfg, split, image_size, log)
    if split == "unlabeled":
        labels = [-1] * len(files)
    paths, label_t = [str(f) for f in files], torch.tensor(labels, dtype=torch.long)
    keep = limit_keep(len(paths), cfg, split, seed)
    if keep is not None:
        paths, label_t = [paths[i] for i in keep.tolist()], label_t[keep]
    return paths, label_t, classes, size

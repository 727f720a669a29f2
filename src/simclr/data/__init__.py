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

Modules: :mod:`.sources` (one split of the configured source: :func:`load_split`, :func:`list_images`),
:mod:`.builtin` (the torchvision datasets), :mod:`.folders` (folder layouts and the held-out test split),
:mod:`.decode` (image files to pixels, in worker processes), :mod:`.cache` (the on-disk uint8 cache),
:mod:`.subsets` (``data.limit`` and the pretrain / labeled split), :mod:`.images` (:class:`ImageData`).
The memory and CPU checks are :mod:`simclr.hardware`'s. The names below are the package's interface.
"""

from .decode import decode_files, read_image, report_unreadable
from .folders import IMAGE_EXTENSIONS
from .images import ImageData
from .sources import SPLITS, list_images, load_split
from .subsets import split_labels

__all__ = [
    "IMAGE_EXTENSIONS", "SPLITS", "ImageData", "decode_files", "list_images", "load_split", "read_image",
    "report_unreadable", "split_labels",
]

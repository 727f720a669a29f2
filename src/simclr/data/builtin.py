"""The torchvision datasets ``cifar10``, ``cifar100`` and ``stl10``: found, extracted or downloaded under
``data.root``, then resized once to the stored side and cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import DataConfig, default_cache_root
from ..errors import DataError
from ..runtime import Log
from .cache import cached, file_stats
from .images import ImageData


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


def load_builtin(cfg: DataConfig, split: str, image_size: int, log: Log) -> ImageData:
    """One split of the torchvision dataset ``cfg.name`` at side ``min(image_size, native)`` (or ``cfg.cache_size``),
    from the cache when it is valid; extracted from an archive in ``data.root`` or downloaded when missing."""
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
        "files": file_stats(str(base), sorted(spec.files)),
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

    return cached(cfg, f"{name}-{split}-{size}", key, build, log)


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

"""The image sets a run uses: pretraining images, the kNN monitor's bank and queries, evaluation train/val/test."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Config
from .data import ImageData, decode_files, list_images, load_split, report_unreadable, split_labels
from .errors import DataError
from .runtime import Log

# Streaming path (data.stream): the kNN monitor's bank (labeled_train) and queries (labeled_val) are the only
# images decoded into memory, so on huge folders they are capped at a seeded random subset of this many images
# each; memory stays bounded (10,000 + 5,000 images of S = 96 px is about 400 MB of uint8). The in-memory path
# already holds every image and monitors with all of them.
STREAM_KNN_BANK = 10_000
STREAM_KNN_QUERIES = 5_000



@dataclass
class StreamedImages:
    """The pretraining images of the streaming path: their files and the side S they decode at, never pixels.

    DataLoader workers decode each step's files (:mod:`simclr.stream`) and are the ones that find unreadable
    files, so there is no ``skipped`` list here.
    """

    paths: list[str]
    size: int

    def __len__(self) -> int:
        return len(self.paths)


def pretraining_sets(cfg: Config, seed: int, log) -> tuple[ImageData | StreamedImages, ImageData | None, ImageData | None]:
    """(pretraining images, kNN bank, kNN queries): the monitor never looks at the test set.

    With ``data.stream`` the pretraining images stay files (the same split of the same file list, from
    :func:`simclr.data.list_images` and :func:`simclr.data.split_labels`); only the monitor sets are decoded.
    """
    if cfg.data.stream:
        paths, labels, classes, size = list_images(cfg.data, "train", cfg.model.image_size, seed, log)
        if _too_few_classes(labels, log):
            return StreamedImages(paths, size), None, None
        subsets = split_labels(labels, cfg.data, seed, classes)
        streamed = StreamedImages([paths[i] for i in subsets["pretrain"].tolist()], size)
        if len(subsets["labeled_train"]) == 0 or len(subsets["labeled_val"]) == 0:
            return streamed, None, None
        bank, queries = (
            _monitor_set(paths, labels, classes, subsets[name], cap, size, cfg, seed, log, name)
            for name, cap in (("labeled_train", STREAM_KNN_BANK), ("labeled_val", STREAM_KNN_QUERIES))
        )
        return streamed, bank, queries
    if cfg.data.name == "stl10":
        pre = load_split(cfg.data, "unlabeled", cfg.model.image_size, seed=seed, log=log)
        labeled = load_split(cfg.data, "train", cfg.model.image_size, seed=seed, log=log)
        subsets = split_labels(labeled.labels, cfg.data, seed, labeled.classes)
    else:
        data = load_split(cfg.data, "train", cfg.model.image_size, seed=seed, log=log)
        if _too_few_classes(data.labels, log):
            return data, None, None
        subsets = split_labels(data.labels, cfg.data, seed, data.classes)
        pre, labeled = data.subset(subsets["pretrain"]), data
    if len(subsets["labeled_train"]) == 0 or len(subsets["labeled_val"]) == 0:
        return pre, None, None
    return pre, labeled.subset(subsets["labeled_train"]), labeled.subset(subsets["labeled_val"])


def _too_few_classes(labels: torch.Tensor, log) -> bool:
    """True (with a note) when the labels span fewer than 2 classes: no labeled split and no kNN monitor then."""
    if int(labels[labels >= 0].unique().numel()) >= 2:
        return False
    log("note: fewer than 2 labeled classes, so pretraining uses every image and the kNN monitor is off")
    return True


def _monitor_set(
    paths: list[str], labels: torch.Tensor, classes: list[str], index: torch.Tensor, cap: int, size: int, cfg: Config, seed: int, log, name: str
) -> ImageData:
    """Decode rows ``index`` of a streamed file list for the kNN monitor: at most ``cap`` of them, a seeded pick.

    Unreadable files are left out with a warning (an error with ``data.strict``), as :func:`simclr.data.load_split`
    does; the pretraining files are not scanned for them (the loader workers report those).
    """
    if len(index) > cap:
        keep = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed))[:cap]
        log(f"kNN monitor ({name}): decoding a seeded {cap} of its {len(index)} images (data.stream)")
        index = index[keep].sort().values
    data = decode_files([paths[i] for i in index.tolist()], labels[index], classes, size, log, what=f"kNN monitor ({name}) images")
    report_unreadable(data.skipped, cfg.data.strict, f"the kNN monitor's {name} images", log)
    return data


def preview_images(pre: ImageData | StreamedImages, seed: int) -> torch.Tensor:
    """uint8 ``[k, 3, S, S]``: 8 seeded pretraining images for the augmentation preview (k < 8 if some are unreadable).

    On the streaming path just those files are decoded.
    """
    pick = torch.randperm(len(pre), generator=torch.Generator().manual_seed(seed))[:8]  # a spread of classes
    if isinstance(pre, ImageData):
        return pre.images[pick]
    files = [pre.paths[i] for i in pick.tolist()]
    return decode_files(files, [-1] * len(files), [], pre.size, log=lambda _: None).images



@dataclass
class EvalData:
    """Labeled images for evaluation: ``train`` (the labeled pool, seeded order), ``val`` (model selection), ``test``."""

    train: ImageData
    val: ImageData
    test: ImageData
    classes: list[str]

    @property
    def num_classes(self) -> int:
        top = max([int(d.labels.max()) for d in (self.train, self.val, self.test) if len(d)] or [0])
        return max(len(self.classes), top + 1)


def load_eval_data(cfg: Config, log: Log = print) -> EvalData:
    """Labeled train / validation images (:func:`simclr.data.split_labels`, the same seed as pretraining) and the test split.

    Raises:
        DataError: the data has no labels (a flat folder) or no test split.
    """
    seed = cfg.train.seed
    labeled = load_split(cfg.data, "train", cfg.model.image_size, seed=seed, log=log)
    subsets = split_labels(labeled.labels, cfg.data, seed, labeled.classes)
    if len(subsets["labeled_train"]) == 0:
        raise DataError(f"{cfg.data.name}: no labeled images; evaluation needs class folders "
                        "(ROOT/<class>/* or ROOT/train/<class>/* + ROOT/test/<class>/*)")
    test = load_split(cfg.data, "test", cfg.model.image_size, seed=seed, log=log)
    if len(test) == 0:
        raise DataError(f"{cfg.data.name}: the test split is empty; evaluation reports test metrics")
    return EvalData(labeled.subset(subsets["labeled_train"]), labeled.subset(subsets["labeled_val"]), test,
                    list(labeled.classes))


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded order of ``range(len(labels))`` whose every prefix is as class-balanced as possible.

    Classes take turns (in a seeded random order within each class), so the first N indices hold about
    N / C images of each of the C classes: a label budget of 100 sees every class.
    """
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    perm = torch.randperm(len(labels), generator=g)
    y = labels[perm]
    rank = torch.zeros(len(y), dtype=torch.int64)  # position of each image within its class
    for c in y.unique():
        m = y == c
        rank[m] = torch.arange(int(m.sum()))
    return perm[torch.sort(rank, stable=True).indices]

"""The image sets a run uses: what it pretrains on, what its kNN monitor and its evaluation label and test."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Config
from .data import ImageData, load_split, split_labels
from .errors import DataError
from .runtime import Log


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
    splits = split_labels(labeled.labels, cfg.data, seed, labeled.classes)
    if len(splits["labeled_train"]) == 0:
        raise DataError(f"{cfg.data.name}: no labeled images; evaluation needs class folders "
                        "(ROOT/<class>/* or ROOT/train/<class>/* + ROOT/test/<class>/*)")
    test = load_split(cfg.data, "test", cfg.model.image_size, seed=seed, log=log)
    if len(test) == 0:
        raise DataError(f"{cfg.data.name}: the test split is empty; evaluation reports test metrics")
    return EvalData(labeled.subset(splits["labeled_train"]), labeled.subset(splits["labeled_val"]), test,
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

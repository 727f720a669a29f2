"""Which rows of a split a run uses: ``data.limit``'s seeded subset, and the split into pretraining, labeled-train
and labeled-validation indices; both from the number of images and their labels alone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError

# Fixed seed: the test split's limited subset must not change with the run's --seed.
TEST_LIMIT_SEED = 0


def limit_keep(n: int, cfg: DataConfig, split: str, seed: int) -> Tensor | None:
    """Rows ``data.limit`` keeps of ``n`` (sorted), or None to keep all: the first ``limit`` of a seeded permutation;
    the test split's seed is fixed so that its images do not move with the run's ``--seed``."""
    if cfg.limit is None or cfg.limit >= n:
        return None
    g = torch.Generator().manual_seed(TEST_LIMIT_SEED if split == "test" else seed)
    return torch.randperm(n, generator=g)[: cfg.limit].sort().values


def split_labels(labels: Tensor, cfg: DataConfig, seed: int, classes: Sequence[str] = ()) -> dict[str, Tensor]:
    """Index tensors for pretraining and for the labeled heads, from the labels alone.

    The labels alone decide, so that the streaming path (:func:`~simclr.data.list_images`) picks the same images as the
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

"""The one type every source ends up as: :class:`ImageData`, uint8 images with their labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


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

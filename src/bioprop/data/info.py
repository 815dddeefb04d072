"""Dataset metadata (:class:`DatasetInfo`) and the containers that dataset readers return."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a dataset.

    ``mean``/``std`` are the published per-channel constants on the [0, 1] pixel scale, used by
    ``normalization="dataset"``; ``augment_default`` is what ``DataConfig(augment=None)`` means.
    """

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) as the model sees it
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment_default: bool = False
    in_memory: bool = True

    @property
    def has_top5(self) -> bool:
        """Whether top-5 error is meaningful (more than 10 classes)."""
        return self.num_classes > 10

    def to_dict(self) -> dict:
        return dict(asdict(self), input_shape=list(self.input_shape), mean=list(self.mean),
                    std=list(self.std), has_top5=self.has_top5)


@dataclass
class InMemoryData:
    """Train and test images as uint8 (N, C, H, W) tensors with int64 (N,) labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str] = field(default_factory=list)


@dataclass
class FolderData:
    """Image files with class indices, for datasets too large to hold in memory."""

    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]
    root: Path | None = None

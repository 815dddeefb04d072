"""From a :class:`DataConfig` to a :class:`DataBundle` of train / val / test splits.

The validation split is a seeded random subset (``torch.Generator``) of ``val_size`` training
examples, removed from the training split; the test split is the official test (or ImageNet
val) set. Normalisation constants are fixed here, once, and recorded in ``bundle.normalization``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from bioprop.data.batching import FLIPS, Split, TensorSplit, make_generator
from bioprop.data import catalog
from bioprop.data.imagenet import FolderSplit
from bioprop.data.info import DatasetInfo, FolderData
from bioprop.checks import check_path_text
from bioprop.errors import BiopropError

NORMALIZATIONS = ("standard", "none", "dataset")
MAX_CROP_PADDING = 64  # zero padding of the random crop, in pixels


@dataclass
class DataConfig:
    """Which data and how to present it; JSON-serialisable (``dataclasses.asdict``)."""

    name: str
    data_dir: str | None = None
    val_size: int = 10000  # training examples held out for validation / model selection; 0 = none
    normalization: str = "standard"  # "standard": per-channel mean/std of the training split
    # (after removing val; for "imagenet" the published constants, which are exactly that);
    # "none": pixels / 255; "dataset": the published constants
    augment: bool | None = None  # None = dataset default (cifar10, imagenet*: True; mnist: False)
    crop_padding: int = 4  # in-memory sets: random crop with this much zero padding
    flip: str = "horizontal"  # "horizontal", "vertical" (as the paper's text says), "none"
    num_workers: int = 0  # DataLoader workers for the imagenet folder loader
    decoder: str = "pillow"  # imagenet JPEG decoder: pillow, simplejpeg, turbojpeg, auto (fastest installed)
    jpeg_draft: str = "off"  # imagenet: decode JPEGs at reduced size where the crop allows: off, train, all
    verify: bool = True  # compare the published checksums before loading (False: a user's own modified copy)

    def validate(self) -> None:
        catalog.DATASETS.get(self.name)
        if self.data_dir is not None and not isinstance(self.data_dir, (str, os.PathLike)):
            raise BiopropError(f"data.data_dir={self.data_dir!r}; expected a folder path or null")
        if self.data_dir is not None:
            check_path_text(self.data_dir, "data.data_dir")
        if not isinstance(self.normalization, str) or self.normalization not in NORMALIZATIONS:
            raise BiopropError(f"data.normalization={self.normalization!r}; expected one of "
                               f"{', '.join(NORMALIZATIONS)}")
        if not isinstance(self.flip, str) or self.flip not in FLIPS:
            raise BiopropError(f"data.flip={self.flip!r}; expected one of {', '.join(FLIPS)}")
        for field in ("val_size", "crop_padding", "num_workers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BiopropError(f"data.{field}={value!r}; expected an integer >= 0")
        from bioprop.data.imagenet import DECODERS, DRAFT_MODES

        if self.crop_padding > MAX_CROP_PADDING:
            raise BiopropError(f"data.crop_padding={self.crop_padding!r}; expected an integer in "
                               f"0..{MAX_CROP_PADDING}")
        if not isinstance(self.decoder, str) or self.decoder not in DECODERS:
            raise BiopropError(f"data.decoder={self.decoder!r}; expected one of {', '.join(DECODERS)}")
        if not isinstance(self.jpeg_draft, str) or self.jpeg_draft not in DRAFT_MODES:
            raise BiopropError(f"data.jpeg_draft={self.jpeg_draft!r}; expected one of {', '.join(DRAFT_MODES)}")
        if not isinstance(self.verify, bool):
            raise BiopropError(f"data.verify={self.verify!r}; expected true or false")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise BiopropError(f"data.augment={self.augment!r}; expected true, false or null")


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Split
    val: Split | None
    test: Split
    normalization: dict  # {"mean": [...], "std": [...]} on the [0, 1] pixel scale
    augment: bool  # resolved: pass as ``batches(augment=...)`` for training epochs
    classes: list[str]


def channel_stats(x: torch.Tensor, indices: torch.Tensor | None = None,
                  chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std (population) of uint8 images on the [0, 1] scale,
    from a 256-bin histogram per channel, chunk by chunk."""
    c = x.shape[1]
    offsets = (torch.arange(c, device=x.device) * 256).view(1, c, 1, 1)
    counts = torch.zeros(256 * c, dtype=torch.float64)
    n = len(x) if indices is None else len(indices)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk) if indices is None else indices[start:start + chunk]
        counts += torch.bincount((x[rows].int() + offsets).flatten(), minlength=256 * c).double().cpu()
    counts = counts.view(c, 256)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * values**2).sum(1) / total - mean**2
    return mean.tolist(), var.clamp_min(0).sqrt().tolist()


def split_indices(n: int, val_size: int, seed: int, dataset: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices: a seeded random subset of ``val_size`` for val, both sorted."""
    if val_size >= n:
        of = f" of dataset {dataset!r}" if dataset else ""
        raise BiopropError(f"data.val_size={val_size} (--val-size) but the training set{of} has only {n} "
                           f"examples; expected 0 <= val_size < {n}")
    perm = torch.randperm(n, generator=make_generator(seed, "validation-split"))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def load_data(config: DataConfig, seed: int = 0, *, verify: bool | None = None) -> DataBundle:
    """Load dataset ``config.name`` (fetching it into the cache if needed) and split it.

    Loading always checks structure (shapes, dtypes, label ranges). Unless ``config.verify`` is
    false (``--no-verify``; the ``verify`` argument overrides it), the published MD5s are compared
    first and a mismatch raises :class:`~bioprop.data.catalog.ChecksumError` naming the file, the
    expected and the actual checksum. Checksums are remembered by path, size and modification
    time, so this costs one hash per file until a file changes."""
    config.validate()
    source = catalog.DATASETS.get(config.name)
    info: DatasetInfo = source.info
    path = source.obtain(config.data_dir)
    if config.verify if verify is None else verify:
        catalog.verify(config.name, config.data_dir, strict=True)
    data = source.load(path)
    augment = info.augment_default if config.augment is None else config.augment
    n = len(data.train) if isinstance(data, FolderData) else len(data.x_train)
    train_idx, val_idx = split_indices(n, config.val_size, seed, config.name)

    if config.normalization == "none":
        mean, std = [0.0] * info.input_shape[0], [1.0] * info.input_shape[0]
    elif config.normalization == "dataset" or isinstance(data, FolderData):
        mean, std = list(info.mean), list(info.std)
    else:
        mean, std = channel_stats(data.x_train, train_idx if config.val_size else None)
        std = [s if s > 0 else 1.0 for s in std]

    if isinstance(data, FolderData):
        def make(items):
            return FolderSplit(items, mean, std, config.flip, config.num_workers, decoder=config.decoder,
                               draft=config.jpeg_draft)
        train = make([data.train[i] for i in train_idx.tolist()])
        val = make([data.train[i] for i in val_idx.tolist()]) if config.val_size else None
        test = make(data.test)
    else:
        def make(x, y, idx=None):
            return TensorSplit(x, y, mean, std, idx, config.crop_padding, config.flip)
        if config.val_size:
            train = make(data.x_train, data.y_train, train_idx)
            val = make(data.x_train, data.y_train, val_idx)
        else:
            train, val = make(data.x_train, data.y_train), None
        test = make(data.x_test, data.y_test)
    classes = data.classes or [str(k) for k in range(info.num_classes)]
    return DataBundle(info, train, val, test, {"mean": mean, "std": std}, augment, classes)

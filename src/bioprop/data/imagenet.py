"""ImageNet (ILSVRC-2012) in the class-folder layout, streamed from disk through a DataLoader.

Layout: ``<root>/imagenet/train/<wnid>/*.JPEG`` and ``<root>/imagenet/val/<wnid>/*.JPEG``
(the ``ImageFolder`` layout; the official flat ``val/`` folder must first be sorted into class
folders, e.g. with the widely used ``valprep.sh``). Classes are the sorted folder names and must
be the same set in ``train`` and ``val``. Files ending in .jpeg/.jpg/.png (any case) are used.

Images are decoded with Pillow and converted to RGB. Training: random-resized crop to 224
(scale 0.08..1, aspect ratio 3/4..4/3, the Inception recipe) and a random flip; evaluation:
resize the shorter side to 256, centre crop 224. Workers return uint8 tensors; normalisation
happens on the target device as for the in-memory splits.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bioprop.data.batching import Split
from bioprop.data.info import DatasetInfo, FolderData
from bioprop.data.sources import Attempts, FileCheck, data_roots
from bioprop.errors import BiopropError

EXTENSIONS = (".jpeg", ".jpg", ".png")
CROP, RESIZE = 224, 256
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
_FLIPS = {"horizontal": getattr(Image, "Transpose", Image).FLIP_LEFT_RIGHT,
          "vertical": getattr(Image, "Transpose", Image).FLIP_TOP_BOTTOM}


def scan(folder: Path) -> dict[str, list[str]]:
    """{class folder name: sorted image paths} for one of train/ or val/."""
    out: dict[str, list[str]] = {}
    loose = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                with os.scandir(entry.path) as files:
                    out[entry.name] = sorted(f.path for f in files
                                             if f.name.lower().endswith(EXTENSIONS) and f.is_file())
            elif entry.name.lower().endswith(EXTENSIONS):
                loose.append(entry.name)
    if loose and not out:
        raise BiopropError(f"imagenet folder {str(folder)!r} holds images directly (e.g. "
                           f"{loose[0]}); expected one sub-folder per class (<wnid>/*.JPEG), "
                           "e.g. sorted with valprep.sh")
    return dict(sorted(out.items()))


def random_resized_box(width: int, height: int, rng: random.Random,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop, as torchvision's RandomResizedCrop draws it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height  # fallback: the largest centred crop within the ratio range
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def load_image(path: str, train: bool, seed: int, flip: str) -> torch.Tensor:
    """One image as a uint8 (3, 224, 224) tensor; ``train`` selects the augmenting transform."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError) as e:
        raise BiopropError(f"image {path!r} could not be decoded ({e}); expected a JPEG/PNG") from None
    if train:
        rng = random.Random(seed)
        img = img.resize((CROP, CROP), _BILINEAR, box=random_resized_box(*img.size, rng))
        if flip != "none" and rng.random() < 0.5:
            img = img.transpose(_FLIPS[flip])
    else:
        w, h = img.size
        size = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
        img = img.resize(size, _BILINEAR)
        left, top = round((size[0] - CROP) / 2), round((size[1] - CROP) / 2)
        img = img.crop((left, top, left + CROP, top + CROP))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Indexed by ``(i, seed, train)``: item i, transformed with its own per-sample seed."""

    def __init__(self, items: list[tuple[str, int]], flip: str):
        self.items, self.flip = items, flip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int, bool]):
        i, seed, train = key
        path, label = self.items[i]
        return load_image(path, train, seed, self.flip), label


class FolderSplit(Split):
    """A split of image files, decoded on the fly by ``num_workers`` DataLoader workers."""

    def __init__(self, items: list[tuple[str, int]], mean, std, flip: str = "horizontal",
                 num_workers: int = 0):
        self.files = ImageFiles(items, flip)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.files)

    def _batches(self, chunks, augment, generator, device):
        keys = []
        for chunk in chunks:  # per-sample seeds from the (seed, epoch, rank) generator
            seeds = torch.randint(0, 2**62, (len(chunk),), generator=generator).tolist()
            keys.append([(i, s, augment) for i, s in zip(chunk.tolist(), seeds)])
        loader = DataLoader(self.files, batch_sampler=keys, num_workers=self.num_workers,
                            pin_memory=device.type == "cuda")
        yield from loader


class ImageNetFolders:
    def __init__(self, info: DatasetInfo):
        self.info = info

    def _find(self, data_dir, attempts: Attempts | None) -> Path | None:
        for label, root in data_roots(data_dir):
            for base in [root / "imagenet"] + ([root] if label != "cache" else []):
                if (base / "train").is_dir() and (base / "val").is_dir():
                    return base
                if attempts is not None:
                    attempts.add(f"{label} {base}", "no train/ and val/ folders")
        return None

    def obtain(self, data_dir=None) -> Path:
        attempts = Attempts()
        base = self._find(data_dir, attempts)
        if base is None:
            raise attempts.error(
                "dataset 'imagenet': could not find the ILSVRC-2012 folders",
                "Expected <data_dir>/imagenet/train/<wnid>/*.JPEG and <data_dir>/imagenet/val/"
                "<wnid>/*.JPEG (pass --data-dir or set $BIOPROP_DATA). ImageNet cannot be "
                "downloaded automatically: get it from https://image-net.org and sort val/ "
                "into class folders.")
        return base

    def verify(self, data_dir=None) -> list[FileCheck]:
        base = self.obtain(data_dir)
        data = self.load(base)  # checks the class sets
        return [FileCheck(str(base / "train"), None, None, True, f"{len(data.train)} images, "
                          f"{len(data.classes)} classes (no published checksum)"),
                FileCheck(str(base / "val"), None, None, True, f"{len(data.test)} images")]

    def load(self, base: Path) -> FolderData:
        train, val = scan(base / "train"), scan(base / "val")
        if set(train) != set(val):
            def first(names):
                return f"{names[:5]}{' ...' if len(names) > 5 else ''}"
            raise BiopropError(
                f"imagenet at {str(base)!r}: the class folders of train/ and val/ differ "
                f"(only in train: {first(sorted(set(train) - set(val)))}; "
                f"only in val: {first(sorted(set(val) - set(train)))}); expected the same set")
        empty = [c for c, files in train.items() if not files]
        if not train or empty:
            raise BiopropError(f"imagenet at {str(base)!r}: train/ has no images"
                               + (f" in class folders {empty[:5]}" if empty else "")
                               + f"; expected files ending in {', '.join(EXTENSIONS)}")
        classes = list(train)
        items = lambda folders: [(p, k) for k, c in enumerate(classes) for p in folders[c]]  # noqa: E731
        return FolderData(items(train), items(val), classes, base)

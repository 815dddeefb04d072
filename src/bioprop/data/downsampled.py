"""Downsampled ImageNet (Chrabaszcz, Loshchilov & Hutter 2017), 32x32 or 64x64, in ``.npz`` batches.

Files: ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and ``val_data.npz``, each with
``data`` (N, 3*S*S) uint8, channel-planar like CIFAR (S*S red, then green, then blue values, each
row-major), ``labels`` (N,) in 1..1000, and (train batches) ``mean``. They are loaded into memory
as uint8 (N, 3, S, S) tensors with labels shifted to 0..999. The files may sit flat in one folder
or in the folders of the official downloads; see :meth:`DownsampledImageNet.layouts`.

The splits are :class:`~bioprop.data.batching.TensorSplit` objects, so batching, rank sharding,
augmentation (random crop with zero padding, flip) and ``batches(..., start=k)`` behave exactly
as for CIFAR-10 (tests/data/test_data_resume.py checks ``start`` with two ranks).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from bioprop.data.info import DatasetInfo, InMemoryData
from bioprop.data.sources import Attempts, FileCheck, check_file, data_roots
from bioprop.errors import BiopropError

TRAIN_FILES = [f"train_data_batch_{i}.npz" for i in range(1, 11)]
VAL_FILE = "val_data.npz"


class DownsampledImageNet:
    def __init__(self, info: DatasetInfo):
        self.info = info
        self.size = info.input_shape[1]

    def layouts(self, generic: bool = True) -> tuple[list[str], list[str]]:
        """Sub-folders of a base folder searched for train and for val files ('.' = flat).

        The generic ones ('.', train, val) only inside ``<root>/imagenet<S>/``: directly under
        ``<root>`` they could hold the other size, as 32 and 64 share their file names."""
        s = self.size
        train, val = [f"Imagenet{s}_train*"], [f"Imagenet{s}_val*"]
        return ([".", *train, "train"], [".", *val, "val"]) if generic else (train, val)

    def _bases(self, data_dir) -> list[tuple[str, Path]]:
        out = []
        for label, root in data_roots(data_dir):
            out.append((label, root / self.info.name))
            if label != "cache":
                out.append((label, root))
        return out

    def _resolve(self, base: Path) -> dict[str, Path | None]:
        """Where each file lies under ``base`` (None when absent)."""
        train_dirs, val_dirs = self.layouts(generic=base.name == self.info.name)

        def search(name: str, patterns: list[str]) -> Path | None:
            for pattern in patterns:
                folders = [base] if pattern == "." else sorted(base.glob(pattern))
                for folder in folders:
                    if (folder / name).is_file():
                        return folder / name
            return None

        found = {n: search(n, train_dirs) for n in TRAIN_FILES}
        found[VAL_FILE] = search(VAL_FILE, val_dirs)
        return found

    def _find(self, data_dir, attempts: Attempts | None) -> Path | None:
        """The first base folder under which all 11 files are found."""
        for label, base in self._bases(data_dir):
            found = self._resolve(base) if base.is_dir() else {}
            missing = [n for n in TRAIN_FILES + [VAL_FILE] if found.get(n) is None]
            if not missing:
                return base
            if attempts is not None:
                attempts.add(f"{label} {base}", "no such folder" if not base.is_dir() else
                             f"missing {len(missing)} of 11 files, e.g. {missing[0]}")
        return None

    def _error(self, data_dir, what: str) -> BiopropError:
        attempts = Attempts()
        self._find(data_dir, attempts)
        train_dirs, val_dirs = self.layouts()
        return attempts.error(
            f"dataset {self.info.name!r}: {what}",
            f"Expected {TRAIN_FILES[0]} .. {TRAIN_FILES[-1]} in one of the sub-folders "
            f"{train_dirs} and {VAL_FILE} in one of {val_dirs} of <data_dir>/{self.info.name}/ "
            f"('.' = that folder itself), or in {train_dirs[1]} and {val_dirs[1]} of <data_dir>/. "
            "Download the npz version from "
            "https://image-net.org/download-images (Downsampled ImageNet) on a machine with "
            "internet; it cannot be fetched automatically.")

    def obtain(self, data_dir=None) -> Path:
        base = self._find(data_dir, None)
        if base is None:
            raise self._error(data_dir, "could not find its .npz files")
        return base

    def verify(self, data_dir=None) -> list[FileCheck]:
        base = self._find(data_dir, None)
        if base is None:
            raise self._error(data_dir, "no complete copy was found")
        return [check_file(p, None) for p in self._resolve(base).values()]

    def _read(self, path: Path, key: str) -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as npz:
                return npz[key]
        except KeyError:
            raise BiopropError(f"{self.info.name} file {str(path)!r} has no array {key!r}; "
                               "expected keys 'data' and 'labels'") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise BiopropError(f"{self.info.name} file {str(path)!r} could not be read ({e}); "
                               "expected an .npz archive") from None

    def _read_split(self, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        s, width = self.size, 3 * self.size * self.size
        labels = [self._read(p, "labels").astype(np.int64).reshape(-1) for p in paths]
        total = sum(len(y) for y in labels)
        x = torch.empty((total, 3, s, s), dtype=torch.uint8)  # filled in place: no 2x peak
        start = 0
        for path, y in zip(paths, labels):
            data = self._read(path, "data")
            if data.dtype != np.uint8 or data.shape != (len(y), width):
                raise BiopropError(f"{self.info.name} file {str(path)!r}: 'data' is {data.dtype} "
                                   f"{data.shape}; expected uint8 ({len(y)}, {width})")
            if y.size and (y.min() < 1 or y.max() > self.info.num_classes):
                raise BiopropError(f"{self.info.name} file {str(path)!r}: labels span "
                                   f"{y.min()}..{y.max()}; expected 1..{self.info.num_classes}")
            x[start:start + len(y)] = torch.from_numpy(data.reshape(-1, 3, s, s))
            start += len(y)
        return x, torch.from_numpy(np.concatenate(labels) - 1)

    def load(self, base: Path) -> InMemoryData:
        found = self._resolve(base)
        x_train, y_train = self._read_split([found[n] for n in TRAIN_FILES])
        x_test, y_test = self._read_split([found[VAL_FILE]])
        return InMemoryData(x_train, y_train, x_test, y_test)

"""MNIST and Fashion-MNIST: the IDX file format, where the four files are looked for, fetching.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header ``0x00 0x00 <type> <ndim>``
(type ``0x08`` = unsigned byte), then ``ndim`` big-endian uint32 sizes, then the data, row-major.
Image files have ``ndim`` 3 (N, 28, 28), label files ``ndim`` 1 (N,). Files may be stored raw or
gzip-compressed (``<name>`` or ``<name>.gz``); checksums are MD5s of the uncompressed content.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from bioprop.data.info import DatasetInfo, InMemoryData
from bioprop.data.sources import (Attempts, FileCheck, Remote, check_file, data_roots,
                                  fetch_remote, find_variant)
from bioprop.errors import BiopropError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (raw or gzip) into a uint8 array of its shape."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise BiopropError(f"IDX file {str(path)!r} could not be read ({e}); "
                           "expected a raw or gzip-compressed IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise BiopropError(f"IDX file {str(path)!r} has a bad magic number {raw[:4].hex()!r}; "
                           "expected 0000 08 <ndim> (e.g. 00000803 for images, 00000801 for labels)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise BiopropError(f"IDX file {str(path)!r} has element type 0x{dtype_code:02x}; "
                           "expected 0x08 (unsigned byte)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise BiopropError(f"IDX file {str(path)!r} has {ndim} dimensions; expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BiopropError(f"IDX file {str(path)!r} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) + header
    if len(raw) != expected:
        raise BiopropError(f"IDX file {str(path)!r} has {len(raw)} bytes; expected {expected} "
                           f"for shape {shape} (truncated or corrupt)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


class IdxDataset:
    """A dataset of four IDX files (MNIST layout) with published MD5s and download sources."""

    def __init__(self, info: DatasetInfo, md5s: dict[str, str], remotes: list[Remote],
                 torchvision_folder: str, classes: list[str] | None = None):
        self.info = info
        self.classes = classes or [str(k) for k in range(info.num_classes)]
        self.md5s = md5s
        self.remotes = remotes
        self.torchvision_folder = torchvision_folder

    def candidates(self, data_dir) -> list[tuple[str, Path]]:
        """Folders that may hold the four files, in search order, with labels."""
        out = []
        for label, root in data_roots(data_dir):
            if label == "cache":
                out.append((label, root / self.info.name))
            else:
                # not <root> itself: MNIST and Fashion-MNIST share their file names
                for folder in (root / self.info.name, root / self.torchvision_folder / "raw"):
                    out.append((label, folder))
        return out

    def _missing(self, folder: Path) -> list[str]:
        return [n for n in self.md5s if find_variant(folder, n) is None]

    def locate(self, data_dir=None, attempts: Attempts | None = None) -> Path | None:
        for label, folder in self.candidates(data_dir):
            missing = self._missing(folder)
            if not missing:
                return folder
            if attempts is not None:
                why = "no such folder" if not folder.is_dir() else f"missing {', '.join(missing)}[.gz]"
                attempts.add(f"{label} {folder}", why)
        return None

    def obtain(self, data_dir=None) -> Path:
        """The folder holding the four files: found locally, else fetched into the cache."""
        attempts = Attempts()
        folder = self.locate(data_dir, attempts)
        if folder is not None:
            return folder
        dest = data_roots(data_dir)[-1][1] / self.info.name
        if fetch_remote(self.md5s, dest, self.remotes, attempts):
            return dest
        raise attempts.error(
            f"dataset {self.info.name!r}: could not find or fetch its four IDX files "
            f"({', '.join(self.md5s)}, raw or .gz)",
            f"Put them in <data_dir>/{self.info.name}/ (pass --data-dir or set $BIOPROP_DATA) "
            f"or in {dest}/, or allow network access to a mirror.")

    def verify(self, data_dir=None) -> list[FileCheck]:
        folder = self.locate(data_dir)
        if folder is None:  # report against the first folder that holds any of the files
            partial = [f for _, f in self.candidates(data_dir)
                       if f.is_dir() and len(self._missing(f)) < len(self.md5s)]
            if not partial:
                attempts = Attempts()
                self.locate(data_dir, attempts)
                raise attempts.error(f"dataset {self.info.name!r}: none of its files were found",
                                     f"Run `bioprop data fetch {self.info.name}` first.")
            folder = partial[0]
        return [check_file(find_variant(folder, n) or folder / n, md5) for n, md5 in self.md5s.items()]

    def load(self, folder: Path) -> InMemoryData:
        arrays = {}
        for split, (images_name, labels_name) in SPLIT_FILES.items():
            images_path = find_variant(folder, images_name)
            labels_path = find_variant(folder, labels_name)
            images = read_idx(images_path, 3)
            labels = read_idx(labels_path, 1)
            if images.shape[0] != labels.shape[0]:
                raise BiopropError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                                   f"holds {labels.shape[0]} labels; expected equal counts")
            if images.shape[1:] != self.info.input_shape[1:]:
                raise BiopropError(f"{images_path} holds images of size {images.shape[1:]}; "
                                   f"expected {self.info.input_shape[1:]}")
            if labels.size and labels.max() >= self.info.num_classes:
                raise BiopropError(f"{labels_path} holds label {labels.max()}; expected "
                                   f"0..{self.info.num_classes - 1}")
            arrays[split] = (torch.from_numpy(images.copy()).unsqueeze(1),
                             torch.from_numpy(labels.astype(np.int64)))
        return InMemoryData(*arrays["train"], *arrays["test"], list(self.classes))

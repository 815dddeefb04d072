"""CIFAR-10 in its canonical ``cifar-10-batches-py`` pickle layout (or the ``.tar.gz`` archive).

Each of ``data_batch_1`` .. ``data_batch_5`` (10,000 images each) and ``test_batch`` is a
pickled dict (protocol 2, written by Python 2) with keys ``b"data"``, a uint8 array
(N, 3072) whose rows are one image in channel-planar, row-major order (1024 red, then 1024 green,
then 1024 blue values, i.e. C x H x W = 3 x 32 x 32), and ``b"labels"``, N ints in 0..9;
``batches.meta`` holds ``b"label_names"``. The pickles are read with an unpickler that only
admits numpy arrays and bytes, so a file cannot run code. The archive
``cifar-10-python.tar.gz`` is unpacked into the cache, never next to the archive.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from bioprop.data.info import DatasetInfo, InMemoryData
from bioprop.data.sources import (Attempts, FileCheck, Remote, _extract_all, check_file,
                                  data_roots, fetch_remote)
from bioprop.errors import BiopropError

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
MIRRORS = [Remote("url", "https://www.cs.toronto.edu/~kriz/")]
_MARKER = ".extracted-from"


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR pickles need: numpy arrays/dtypes/scalars and bytes."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR pickle")
        if module.endswith("multiarray"):  # numpy 2 renamed numpy.core to numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One CIFAR pickle as a dict with bytes keys."""
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise BiopropError(f"CIFAR file {str(path)!r} could not be unpickled ({e}); expected a "
                           "pickled dict as in cifar-10-batches-py") from None
    if not isinstance(obj, dict):
        raise BiopropError(f"CIFAR file {str(path)!r} holds a {type(obj).__name__}; expected a dict")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def read_images(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    batch = read_batch(path)
    if b"data" not in batch or b"labels" not in batch:
        raise BiopropError(f"CIFAR file {str(path)!r} has keys {sorted(batch)}; expected "
                           "b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise BiopropError(f"CIFAR file {str(path)!r}: b'data' is {data.dtype} {data.shape}; "
                           "expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise BiopropError(f"CIFAR file {str(path)!r}: b'labels' must be {data.shape[0]} "
                           "integers in 0..9")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels)


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() for n in TRAIN_FILES + ["test_batch"])


class CifarDataset:
    def __init__(self, info: DatasetInfo):
        self.info = info

    def _places(self, data_dir) -> list[tuple[str, str, Path]]:
        """(label, kind "folder"/"archive", path) in search order."""
        places = []
        for label, root in data_roots(data_dir):
            bases = [root / "cifar10"] if label == "cache" else [root / "cifar10", root]
            places += [(label, "folder", b / FOLDER) for b in bases]
            places += [(label, "archive", b / ARCHIVE) for b in bases]
        return places

    def _cache(self, data_dir) -> Path:
        return data_roots(data_dir)[-1][1] / "cifar10"

    def _extract(self, archive: Path, cache: Path) -> Path:
        """Unpack ``archive`` into ``cache/cifar-10-batches-py`` unless already done from it."""
        target = cache / FOLDER
        stat = archive.stat()
        stamp = f"{archive.resolve()} {stat.st_size} {stat.st_mtime_ns}"
        marker = target / _MARKER
        if _complete(target) and marker.is_file() and marker.read_text() == stamp:
            return target
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".extract-") as tmp:
            try:
                with tarfile.open(archive, "r:*") as tar:
                    _extract_all(tar, Path(tmp))
            except (OSError, EOFError, tarfile.TarError) as e:
                raise BiopropError(f"CIFAR archive {str(archive)!r} could not be unpacked ({e}); "
                                   f"expected a tar.gz holding {FOLDER}/") from None
            unpacked = Path(tmp) / FOLDER
            if not _complete(unpacked):
                raise BiopropError(f"CIFAR archive {str(archive)!r} lacks {FOLDER}/ with "
                                   f"{', '.join(TRAIN_FILES)}, test_batch")
            (unpacked / _MARKER).write_text(stamp)
            try:  # atomic; fails if another process (e.g. another rank) got there first
                os.rename(unpacked, target)
            except OSError:
                if not (marker.is_file() and marker.read_text() == stamp and _complete(target)):
                    shutil.rmtree(target)  # a stale copy from another archive
                    os.rename(unpacked, target)
        return target

    def _find(self, data_dir, attempts: Attempts | None) -> tuple[str, Path] | None:
        for label, kind, path in self._places(data_dir):
            if kind == "folder" and _complete(path) or kind == "archive" and path.is_file():
                return kind, path
            if attempts is not None:
                why = ("no such file" if kind == "archive" else "no such folder"
                       if not path.is_dir() else "incomplete (needs data_batch_1..5, test_batch)")
                attempts.add(f"{label} {path}", why)
        return None

    def obtain(self, data_dir=None) -> Path:
        attempts = Attempts()
        found = self._find(data_dir, attempts)
        cache = self._cache(data_dir)
        if found is None and fetch_remote({ARCHIVE: ARCHIVE_MD5}, cache, MIRRORS, attempts,
                                          uncompressed=False):
            found = ("archive", cache / ARCHIVE)
        if found is None:
            raise attempts.error(
                "dataset 'cifar10': could not find or download CIFAR-10",
                f"Download {ARCHIVE} (python version, md5 {ARCHIVE_MD5}) from "
                "https://www.cs.toronto.edu/~kriz/cifar.html on a machine with internet and put it "
                f"(or its unpacked {FOLDER}/ folder) in <data_dir>/cifar10/, passing --data-dir or "
                "setting $BIOPROP_DATA.")
        kind, path = found
        return path if kind == "folder" else self._extract(path, cache)

    def verify(self, data_dir=None) -> list[FileCheck]:
        found = self._find(data_dir, None)
        if found is None:
            attempts = Attempts()
            self._find(data_dir, attempts)
            raise attempts.error("dataset 'cifar10': no copy was found",
                                 "Run `bioprop data fetch cifar10` or provide the files.")
        kind, path = found
        rows = []
        if kind == "archive":
            rows.append(check_file(path, ARCHIVE_MD5, uncompressed=False))
            path = self._extract(path, self._cache(data_dir))
        rows += [check_file(path / n, md5, uncompressed=False) for n, md5 in FILE_MD5.items()]
        return rows

    def load(self, folder: Path) -> InMemoryData:
        train = [read_images(folder / n) for n in TRAIN_FILES]
        x_test, y_test = read_images(folder / "test_batch")
        classes = []
        if (folder / "batches.meta").is_file():
            names = read_batch(folder / "batches.meta").get(b"label_names", [])
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return InMemoryData(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]),
                            x_test, y_test, classes)

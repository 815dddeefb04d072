"""Fixtures for the experiment tests: the genuine MNIST beside the repository, and writers of tiny
CIFAR-10 / ImageNet copies in their real on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from realdata import missing_reason, real_data_root


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and a private cache: data come from the folders the tests name."""
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")
    monkeypatch.setenv("BIOPROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOPROP_DATA", raising=False)


@pytest.fixture
def mnist_dir() -> Path:
    root = real_data_root("mnist")
    if root is None:
        pytest.skip(missing_reason("mnist"))
    return root


def write_cifar(root: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0) -> Path:
    """``root/cifar10/cifar-10-batches-py``: protocol-2 pickles with bytes keys, as the original."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        obj = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
               b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
               b"filenames": [f"{name}_{k}.png".encode() for k in range(n)]}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    meta = {b"label_names": [c.encode() for c in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck"]]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_imagenet(root: Path, classes=("n01440764", "n01443537", "n01484850"), n_train: int = 3,
                   n_val: int = 2) -> Path:
    """``root/imagenet/{train,val}/<wnid>/*.JPEG`` (the ILSVRC class-folder layout)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in classes:
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (240 + 8 * i, 260, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", "JPEG", quality=90)
    return root


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    return write_cifar(tmp_path / "data")


@pytest.fixture
def imagenet_dir(tmp_path) -> Path:
    return write_imagenet(tmp_path / "data")


@pytest.fixture
def cifar_big_dir(tmp_path) -> Path:
    """Enough training images (5 x 1100) for the presets' 5,000-image validation split."""
    return write_cifar(tmp_path / "data", per_batch=1100, n_test=100)

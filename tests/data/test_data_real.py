"""Known answers on the genuine MNIST and Fashion-MNIST files of the shared data folder."""

import argparse
import time

import pytest
import torch

from bioprop.cli.data import add_parser
from bioprop.data import DataConfig, channel_stats, fetch, load_data, verify

MNIST_TRAIN_FIRST = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
MNIST_TEST_FIRST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def _bundle(shared, name, **kw):
    return load_data(DataConfig(name, data_dir=str(shared), **kw), seed=0)


def test_mnist_known_answers(shared_data):
    b = _bundle(shared_data, "mnist", val_size=0, normalization="standard")
    assert b.val is None
    assert tuple(b.train.x.shape) == (60000, 1, 28, 28) and b.train.x.dtype == torch.uint8
    assert tuple(b.test.x.shape) == (10000, 1, 28, 28)
    assert b.train.y[:10].tolist() == MNIST_TRAIN_FIRST
    assert b.test.y[:10].tolist() == MNIST_TEST_FIRST
    mean, std = b.normalization["mean"][0], b.normalization["std"][0]
    assert mean == pytest.approx(0.1307, abs=5e-4) and std == pytest.approx(0.3081, abs=5e-4)
    assert b.info.input_shape == (1, 28, 28) and b.info.num_classes == 10 and not b.info.has_top5
    assert b.augment is False
    # normalised batches over the whole train split: mean 0, std 1
    xs = torch.cat([x for x, _ in b.train.batches(5000, shuffle=False)])
    assert xs.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert xs.std().item() == pytest.approx(1.0, abs=1e-3)


def test_mnist_epoch_is_fast(shared_data):
    b = _bundle(shared_data, "mnist", val_size=10000)
    assert len(b.train) == 50000 and len(b.val) == 10000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-batch ops: threads only add contention here
    try:
        times = []
        for epoch in range(3):
            start = time.perf_counter()
            n = sum(len(y) for _, y in b.train.batches(100, shuffle=True, seed=0, epoch=epoch))
            times.append(time.perf_counter() - start)
            assert n == 50000
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 1.0, times


def test_fashion_known_answers(shared_data):
    b = _bundle(shared_data, "fashion-mnist", val_size=0)
    assert len(b.train) == 60000 and len(b.test) == 10000
    assert torch.bincount(b.train.y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(b.test.y, minlength=10).tolist() == [1000] * 10
    mean, std = channel_stats(b.train.x)
    assert mean[0] == pytest.approx(0.286, abs=1e-3) and std[0] == pytest.approx(0.353, abs=1e-3)
    assert b.classes[9] == "Ankle boot"


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_verify_and_fetch_shared_files(shared_data, name, isolated, capsys):
    report = verify(name, shared_data)
    assert len(report) == 4 and all(r.ok and r.actual_md5 == r.expected_md5 for r in report)
    assert all(r.path.startswith(str(shared_data / name)) for r in report)
    assert fetch(name, shared_data) == shared_data / name
    written = list((isolated / "cache").rglob("*")) if (isolated / "cache").exists() else []
    assert [f.name for f in written] in ([], ["checksums.json"])  # found locally: only the checksum memo
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", "verify", name, "--data-dir", str(shared_data)])
    assert args.func(args) == 0
    assert "4 of 4 files OK" in capsys.readouterr().out


def test_env_var_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("BIOPROP_DATA", str(shared_data))
    assert fetch("mnist") == shared_data / "mnist"


def test_a_changed_byte_inside_a_valid_gzip_stops_training_with_the_checksums(shared_data, isolated, tmp_path):
    """The issue's probe: one label byte changed, the gzip still valid; train must refuse it."""
    import gzip
    import shutil

    from bioprop.data import ChecksumError, DataConfig, load_data
    from bioprop.data.sources import md5_file

    copy = tmp_path / "copy" / "mnist"
    shutil.copytree(shared_data / "mnist", copy)
    labels = next(copy.glob("t10k-labels-idx1-ubyte*"))
    opener = gzip.open if labels.suffix == ".gz" else open
    with opener(labels, "rb") as f:
        content = bytearray(f.read())
    content[8] = (content[8] + 1) % 10  # the first label
    with opener(labels, "wb") as f:
        f.write(bytes(content))
    with pytest.raises(ChecksumError) as error:
        load_data(DataConfig("mnist", data_dir=str(tmp_path / "copy")))
    message = str(error.value)
    assert str(labels) in message and "checksum mismatch" in message and "bioprop data fetch mnist" in message
    assert md5_file(labels) in message  # the actual checksum, and the expected one
    assert "27ae3e4e09519cfbb04c329615203637" in message
    bundle = load_data(DataConfig("mnist", data_dir=str(tmp_path / "copy"), verify=False))  # --no-verify: on purpose
    assert len(bundle.test) == 10000


def test_checksums_are_remembered_until_the_file_changes(tmp_path, isolated, monkeypatch):
    from bioprop.data import sources

    path = tmp_path / "file"
    path.write_bytes(b"abc")
    first = sources.md5_file(path)
    calls = []
    original = sources._md5_file
    monkeypatch.setattr(sources, "_md5_file", lambda *a: calls.append(a) or original(*a))
    assert sources.md5_file(path) == first and not calls  # remembered: not hashed again
    path.write_bytes(b"abcd")  # size and mtime change
    assert sources.md5_file(path) != first and len(calls) == 1

"""CIFAR-10 from generated files in the exact cifar-10-batches-py pickle layout and tar.gz."""

import argparse
import os
import pickle

import numpy as np
import pytest
import torch

from bioprop.cli.data import add_parser
from bioprop.data import DataConfig, load_data, verify
from bioprop.errors import BiopropError


def _load(data_dir, **kw):
    return load_data(DataConfig("cifar10", verify=False, data_dir=str(data_dir), **kw), seed=0)


@pytest.mark.parametrize("where", ["cifar10", "."])
def test_batches_folder(tmp_path, fmt, where):
    _, batches, test = fmt.write_cifar(tmp_path / where)
    b = _load(tmp_path, val_size=0)
    assert b.train.x.shape == (100, 3, 32, 32) and b.test.x.shape == (20, 3, 32, 32)
    x = b.train.x
    assert x[0, 0, 5, 7] == 200 and x[0, 2, 31, 0] == 100  # planar C x H x W rows
    row = batches[3][0][4]  # image 4 of data_batch_4 is image 64 overall
    assert torch.equal(x[64, 1], torch.from_numpy(row[1024:2048].reshape(32, 32)))
    assert b.train.y.tolist() == sum((labels for _, labels in batches), [])
    assert b.test.y.tolist() == test[1]
    assert b.classes[3] == "cat" and b.info.num_classes == 10 and b.info.input_shape == (3, 32, 32)
    assert b.augment is True  # CIFAR default


def test_tar_gz_is_unpacked_into_cache(tmp_path, fmt):
    data_dir = tmp_path / "data"
    fmt.write_cifar_tar(data_dir / "cifar10", tmp_path / "staging")
    before = sorted(os.listdir(data_dir / "cifar10"))
    b = _load(data_dir, val_size=10)
    assert len(b.train) == 90 and len(b.val) == 10 and b.train.x[0, 0, 5, 7] == 200
    assert sorted(os.listdir(data_dir / "cifar10")) == before  # the data folder is only read
    extracted = tmp_path / "cache" / "cifar10" / "cifar-10-batches-py"
    assert (extracted / "data_batch_5").is_file()
    stamp = (extracted / "data_batch_1").stat().st_mtime_ns
    _load(data_dir, val_size=10)  # second time: no re-extraction
    assert (extracted / "data_batch_1").stat().st_mtime_ns == stamp


def test_verify_generated_copy_reports_mismatch(tmp_path, fmt, capsys):
    fmt.write_cifar_tar(tmp_path / "cifar10", tmp_path / "staging")
    report = verify("cifar10", tmp_path, strict=False)
    assert report[0].path.endswith("cifar-10-python.tar.gz")
    assert report[0].expected_md5 == "c58f30108f718f92721af3b95e74349a"
    assert len(report) == 8 and not any(r.ok for r in report)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", "verify", "cifar10", "--data-dir", str(tmp_path)])
    assert args.func(args) == 1
    assert "0 of 8 files OK" in capsys.readouterr().out
    with pytest.raises(BiopropError, match="failed verification"):
        load_data(DataConfig("cifar10", verify=False, data_dir=str(tmp_path), val_size=0), verify=True)


def test_unsafe_pickle_is_refused(tmp_path, fmt):
    folder, _, _ = fmt.write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(BiopropError, match="data_batch_2.*is not allowed"):
        _load(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_bad_structure_names_file(tmp_path, fmt):
    folder, _, _ = fmt.write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, protocol=2))
    with pytest.raises(BiopropError, match="test_batch.*expected uint8 \\(N, 3072\\)"):
        _load(tmp_path, val_size=0)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, protocol=2))
    with pytest.raises(BiopropError, match="test_batch.*integers in 0..9"):
        _load(tmp_path, val_size=0)


def test_missing_cifar_says_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")
    with pytest.raises(BiopropError) as err:
        _load(tmp_path)
    msg = str(err.value)
    for place in (tmp_path / "cifar10" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz",
                  tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz"):
        assert str(place) in msg
    assert "mirror https://www.cs.toronto.edu/~kriz/: skipped" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg

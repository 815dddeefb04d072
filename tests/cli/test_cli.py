"""The command line: real MNIST end to end, and bad input refused before training starts."""

import gzip
import json
import shutil
import subprocess
import sys

import pytest

from bioprop.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_end_to_end_on_real_mnist(shared_data, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--data", "mnist", "--data-dir", str(shared_data), "--model", "mnist-lc",
                             "--rule", "dfa", "--epochs", "1", "--batch-size", "20", "--lr", "1e-3", "--beta2", "0.99",
                             "--seed", "0", "--val-size", "500", "--limit-batches", "3", "--limit-eval-batches", "1",
                             "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert "epoch   1/1" in out and "test" in out
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["optimizers"]["forward"] == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0,
                                           "eps_convention": "pytorch", "optimizer": "adam", "momentum": 0.0,
                                           "nesterov": False, "lr_schedule": "constant", "warmup_epochs": 0.0,
                                           "min_lr_ratio": 0.0, "step_epochs": 30.0, "step_gamma": 0.1}
    assert saved["data"]["val_size"] == 500 and saved["rule"] == "dfa"


def test_listing_commands(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "imagenet-lc" in out and "4,181,120" in out  # mnist-lc weights
    code, out, _ = run_cli(capsys, "rules")
    assert code == 0 and "fa " in out and "Feedback alignment" in out


@pytest.mark.parametrize("argv, message", [
    (["--data", "cifar100", "--model", "mnist-fc"], "unknown dataset 'cifar100'"),
    (["--data", "mnist", "--model", "mnist-huge"], "unknown model 'mnist-huge'"),
    (["--data", "mnist", "--model", "mnist-fc", "--rule", "backprop"], "unknown learning rule 'backprop'"),
    (["--data", "mnist", "--model", "cifar-lc"], "model 'cifar-lc' expects inputs"),
    (["--data", "mnist", "--model", "mnist-fc", "--lr", "-0.1"], "learning rate must be > 0"),
    (["--data", "mnist", "--model", "mnist-fc", "--rule", "bp", "--alpha", "0.1"], "rule 'bp' has no option 'alpha'"),
    (["--data", "mnist", "--model", "mnist-fc", "--val-size", "70000"], "val_size"),
    (["--model", "mnist-fc"], "--data and --model are required"),
])
def test_bad_input_exits_2_with_a_message(shared_data, tmp_path, capsys, argv, message):
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", *argv, "--data-dir", str(shared_data), "--out", str(out_dir),
                           "--no-progress")
    assert code == 2
    assert message in err and err.startswith("bioprop: error:")
    assert not (out_dir / "checkpoint.pt").exists()


TRUNCATED_IDX = b"\x00\x00\x08\x03" + b"\x00" * 20  # right magic, truncated body


def break_training_images(folder, layout):
    """Leave ``train-images-idx3-ubyte`` in ``folder`` broken in ``layout``: "raw" (as npm delivers
    MNIST), "gz" (as the mirrors do) or "raw+gz" (an intact raw file, a broken .gz copy beside it).
    Returns the broken file."""
    raw, gz = folder / "train-images-idx3-ubyte", folder / "train-images-idx3-ubyte.gz"
    intact = raw.read_bytes() if raw.is_file() else gzip.decompress(gz.read_bytes())
    for old in (raw, gz):
        old.unlink(missing_ok=True)
    if layout == "raw+gz":
        raw.write_bytes(intact)
    broken = raw if layout == "raw" else gz
    broken.write_bytes(TRUNCATED_IDX if layout == "raw" else gzip.compress(TRUNCATED_IDX))
    return broken


@pytest.mark.parametrize("layout, flags", [
    ("raw", []), ("gz", []),  # the checksums name the file the loader reads, in either layout
    ("raw", ["--no-verify"]), ("gz", ["--no-verify"]),  # so does the structure check without them
    ("raw+gz", []),  # a broken second copy is named too, not trained around
])
def test_corrupt_data_file_is_named(shared_data, tmp_path, capsys, monkeypatch, layout, flags):
    monkeypatch.setenv("BIOPROP_OFFLINE", "1")
    monkeypatch.setenv("BIOPROP_CACHE", str(tmp_path / "cache"))
    shutil.copytree(shared_data / "mnist", tmp_path / "data" / "mnist")
    broken = break_training_images(tmp_path / "data" / "mnist", layout)
    code, _, err = run_cli(capsys, "train", "--data", "mnist", "--data-dir", str(tmp_path / "data"),
                           "--model", "mnist-fc", "--no-progress", *flags)
    assert code == 2 and str(broken) in err, err


def test_console_script_exit_status(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bioprop.cli", "train", "--data", "mnist", "--model", "mnist-fc",
                             "--epochs", "-1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "epochs must be a positive integer" in result.stderr

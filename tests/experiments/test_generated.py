"""CIFAR-10 and ImageNet presets on tiny data generated in the real on-disk formats (the real sets
cannot be had on these machines): ``cifar-10-batches-py`` pickles and ILSVRC class folders."""

from __future__ import annotations

import json

import pytest

from bioprop.cli import main


def test_reproduce_cifar_presets_on_generated_pickles(cifar_big_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["reproduce", "cifar-fc-dtp-alternating", "cifar-fc-bp", "--seeds", "1", "--epochs", "1",
                 "--limit-batches", "1", "--limit-eval-batches", "1", "--data-dir", str(cifar_big_dir),
                 "--out", str(out), "--no-progress", "--no-verify"]) == 0  # generated files: not the published ones
    config = json.loads((out / "cifar-fc-dtp-alternating" / "seed0" / "config.json").read_text())
    assert config["data"]["name"] == "cifar10" and config["data"]["augment"] is True
    assert config["data"]["val_size"] == 5000 and config["model"] == "cifar-fc"
    assert config["data"]["verify"] is False  # recorded
    report = (out / "report.md").read_text()
    assert "CIFAR-10 (Table 1b)" in report and "| BP | 41.32 |" in report


def test_train_cifar_lc_tp_preset_on_generated_pickles(cifar_dir, capsys):
    assert main(["train", "--preset", "cifar-lc-sdtp-parallel", "--data-dir", str(cifar_dir), "--no-verify",
                 "--val-size", "20",
                 "--epochs", "1", "--batch-size", "10", "--eval-batch-size", "20", "--limit-batches", "1",
                 "--limit-eval-batches", "1", "--no-progress"]) == 0
    assert "test error at best val" in capsys.readouterr().out


def test_train_imagenet_preset_on_generated_folders(imagenet_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "imagenet-lc-bp-conv", "--data-dir", str(imagenet_dir), "--val-size", "3",
                 "--epochs", "1", "--batch-size", "3", "--eval-batch-size", "3", "--limit-batches", "1",
                 "--limit-eval-batches", "1", "--no-progress", "--out", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "test_top5_error" in row and "val_top5_error" in row


@pytest.mark.slow
def test_train_imagenet_lc_preset_on_generated_folders(imagenet_dir, capsys):
    """The 260M-weight LC network: about 6 GB of memory and a minute on a 2-core CPU."""
    assert main(["train", "--preset", "imagenet-lc-fa", "--data-dir", str(imagenet_dir), "--val-size", "3",
                 "--epochs", "1", "--batch-size", "3", "--eval-batch-size", "3", "--limit-batches", "1",
                 "--limit-eval-batches", "1", "--no-progress"]) == 0
    assert "test error at best val" in capsys.readouterr().out

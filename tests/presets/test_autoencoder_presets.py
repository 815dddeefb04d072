"""The MNIST autoencoder presets (App. 5.5, Figs. 6-7): the MNIST-FC Table 5 column of each method on
the autoencoder, listed by `bioprop presets`, runnable by `bioprop train --preset` and `bioprop
reproduce`, writing reconstruction metrics."""

from __future__ import annotations

import json

import pytest

from bioprop.cli import main
from bioprop.presets import DECISIONS, PRESETS, get_preset, select_presets
from bioprop.presets import autoencoder, paper

NAMES = ["mnist-ae-dtp-parallel", "mnist-ae-sdtp-parallel", "mnist-ae-bp"]
SMOKE = ["--epochs", "1", "--limit-batches", "3", "--limit-eval-batches", "1", "--no-progress"]


def test_three_presets_in_their_own_group_not_in_table_1a():
    assert [p.name for p in select_presets(["autoencoder"])] == NAMES
    assert [p.name for p in select_presets(["mnist-ae-*"])] == NAMES
    assert [p.name for p in select_presets(["mnist-ae"])] == NAMES
    assert not any(p.autoencoder for p in select_presets(["mnist"]))
    for name in NAMES:
        preset = PRESETS.get(name)
        assert preset.autoencoder and not preset.beyond and preset.paper.test_error is None


@pytest.mark.parametrize("method", autoencoder.METHODS)
def test_each_borrows_the_mnist_fc_column_of_its_method(method):
    config = get_preset(f"mnist-ae-{method}").config()
    cell = paper.make_config("mnist", "fc", method)
    assert config.model == "mnist-autoencoder" and config.data.normalization == "none"
    assert config.optimizers == cell.optimizers and config.rule_options == cell.rule_options
    assert (config.rule, config.epochs, config.batch_size, config.data.val_size) == \
        (cell.rule, cell.epochs, cell.batch_size, cell.data.val_size)
    hyper = paper.TABLE5["mnist-fc"][method]
    assert config.optimizers["forward"].lr == hyper.forward.lr
    if method == "dtp-parallel":
            assert config.rule_options == {"schedule": "parallel", "alpha": hyper.alpha, "noise": hyper.noise,
                                           **paper.TP_CONVENTIONS}


def test_decisions_and_listing(capsys):
    topics = " ".join(d.topic for d in DECISIONS)
    assert "autoencoder hyperparameters" in topics and "autoencoder input scaling" in topics
    assert main(["presets", "autoencoder"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES) and "mnist-autoencoder" in out
    assert main(["presets", "--decisions"]) == 0
    assert "MNIST-FC Table 5 column" in capsys.readouterr().out


def test_train_preset_writes_reconstruction_metrics(shared_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "mnist-ae-bp", "--data-dir", str(shared_data), *SMOKE, "--out", str(out)]) == 0
    assert "test reconstruction error" in capsys.readouterr().out
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < row["test_reconstruction_error"] < 1 and "reconstructions" in row
    results = json.loads((out / "results.json").read_text())
    assert results["best_test_reconstruction_error"] == row["test_reconstruction_error"]


def test_reproduce_runs_every_autoencoder_preset_and_reports_figures_6_and_7(shared_data, tmp_path):
    root = tmp_path / "ae"
    assert main(["reproduce", "mnist-ae-*", "--seeds", "1", "--data-dir", str(shared_data), *SMOKE,
                 "--out", str(root)]) == 0
    for name in NAMES:
        row = json.loads((root / name / "seed0" / "metrics.jsonl").read_text().splitlines()[-1])
        assert {"train_reconstruction_error", "val_reconstruction_error", "test_reconstruction_error"} <= set(row)
        assert row["reconstructions"]["count"] == 8
    report = (root / "report.md").read_text()
    assert "MNIST autoencoder (App. 5.5" in report
    assert (root / "autoencoder-curves.png").is_file() and (root / "autoencoder-reconstructions.png").is_file()

"""Every registered rule trains from ``bioprop train`` on every registered model: MNIST networks on
the genuine MNIST, CIFAR-10 and ImageNet networks on tiny files in the real on-disk formats.
The fast set (every rule on mnist-fc and mnist-lc) runs in CI; the rest is ``slow``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioprop.cli import main
from bioprop.models import list_models
from bioprop.rules import list_rules
from bioprop.rules.base import wrappable_rules

FAST_MODELS = ["mnist-fc", "mnist-lc"]
SLOW_MODELS = [m for m in list_models() if m not in FAST_MODELS]
TINY = ["--epochs", "1", "--limit-batches", "1", "--limit-eval-batches", "1", "--no-progress",
        "--alignment-every", "1"]


def _data_args(model: str, request) -> list[str]:
    if model.startswith("mnist"):
        return ["--data", "mnist", "--data-dir", str(request.getfixturevalue("mnist_dir")), "--val-size", "100",
                "--batch-size", "8", "--eval-batch-size", "50"]
    if model.startswith("cifar"):
        return ["--data", "cifar10", "--data-dir", str(request.getfixturevalue("cifar_dir")), "--no-verify",
                "--val-size", "20", "--batch-size", "4", "--eval-batch-size", "10"]
    return ["--data", "imagenet", "--data-dir", str(request.getfixturevalue("imagenet_dir")), "--val-size", "3",
            "--batch-size", "2", "--eval-batch-size", "2"]


def _train(rule: str, model: str, request, tmp_path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", model, "--rule", rule, *_data_args(model, request), *TINY, "--out", str(out)]
    assert main(argv) == 0, argv
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    angles = {k: v for k, v in row.get("diagnostics", {}).items() if k.startswith("update_angle/")}
    for p in row.get("passes", []):
        angles.update({k: v for k, v in p.get("diagnostics", {}).items() if k.startswith("update_angle/")})
    assert angles and all(0 <= v <= 180 for v in angles.values()), (rule, model, row)


@pytest.mark.parametrize("model", FAST_MODELS)
@pytest.mark.parametrize("rule", list_rules())
def test_every_rule_trains_on_the_mnist_networks(rule, model, request, tmp_path):
    _train(rule, model, request, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("model", SLOW_MODELS)
@pytest.mark.parametrize("rule", list_rules())
def test_every_rule_trains_on_every_other_network(rule, model, request, tmp_path):
    _train(rule, model, request, tmp_path)


RESNET = str(Path(__file__).resolve().parents[2] / "examples" / "small_resnet.py") + ":small_resnet"


@pytest.mark.parametrize("rule", wrappable_rules())
def test_every_wrappable_rule_trains_a_users_resnet_from_the_cli(rule, cifar_dir, tmp_path):
    """A user's own model by file path (batch norm, skips, pooling), trained by `bioprop train`."""
    out = tmp_path / "run"
    extra = ["--deliver-at", "stem,stage1"] if rule == "dfa" else []
    argv = ["train", "--model", RESNET, "--rule", rule, "--data", "cifar10", "--data-dir", str(cifar_dir),
            "--no-verify", "--val-size", "20", "--batch-size", "4", "--eval-batch-size", "10", *TINY, *extra,
            "--out", str(out)]
    assert main(argv) == 0, argv
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["diagnostics"]["update_angle/head"] == pytest.approx(0.0, abs=1e-3)  # the last layer: true gradient
    assert {"update_angle/stem.0", "update_angle/stage2.skip.0"} <= set(row["diagnostics"])


def test_target_propagation_refuses_a_users_module_by_name(cifar_dir, capsys):
    argv = ["train", "--model", RESNET, "--rule", "dtp", "--data", "cifar10", "--data-dir", str(cifar_dir),
            "--no-verify", "--val-size", "20", *TINY]
    assert main(argv) == 2
    assert "dtp" in capsys.readouterr().err

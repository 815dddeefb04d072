"""``bioprop models`` and ``bioprop plan`` count the same parameters, and say which count is which."""

from __future__ import annotations

import pytest
import torch

from bioprop.cli import main
from bioprop.cli.info import COUNTS_LEGEND
from bioprop.experiments.plan import plan
from bioprop.models import create_model, list_models


def models_table(capsys) -> dict[str, dict[str, int]]:
    """``bioprop models``'s weights and parameters columns, by model."""
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:7] == ["model", "input", "outputs", "task", "weights", "parameters", "layers"]
    assert lines[-1] == COUNTS_LEGEND and "biases excluded" in COUNTS_LEGEND
    rows = {}
    for line in lines[1:]:
        if not line.strip() or line == COUNTS_LEGEND:
            continue
        name, _, _, _, weights, parameters = line.split()[:6]
        rows[name] = {"weights": int(weights.replace(",", "")), "parameters": int(parameters.replace(",", ""))}
    return rows


@pytest.mark.parametrize("name", list_models())
def test_models_and_plan_count_the_same_parameters(capsys, name):
    row = models_table(capsys)[name]
    with torch.device("meta"):
        model = create_model(name)
    biases = sum(layer.bias.numel() for layer in model.layers if layer.bias is not None)
    assert row["weights"] == model.num_weights() and row["parameters"] == row["weights"] + biases
    planned = {group.name: group.count for group in plan(name, "bp", 1).parameters}
    assert planned == {"forward": row["parameters"]}  # backprop trains every parameter of the network


def test_plan_labels_its_counts_as_parameters_with_biases(capsys):
    assert main(["plan", "--model", "mnist-fc", "--rule", "dtp", "--batch-size", "10"]) == 0
    out = capsys.readouterr().out
    forward = next(line for line in out.splitlines() if line.strip().startswith("forward "))
    assert "forward parameters (trained, 12 tensors)" in forward and "466,698" in forward
    assert forward.rstrip().endswith("weights and biases")
    assert "inverse parameters" in out and "weights (" not in out

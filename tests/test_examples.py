"""The own-loop examples (examples/own_loop_*.py, docs/own-loop.md) run on the synthetic problem with a
few steps, their loss falls, and the gradients their loops apply are the rule's, not backprop's."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def examples(monkeypatch):
    """Imports an example as a module (they import their sibling own_loop_data)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


def falls(losses, k=5):
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


def test_feedback_example_trains_by_feedback_alignment(examples):
    example = examples("own_loop_feedback")
    result = example.main(["--synthetic", "--steps", "30"])
    assert len(result["losses"]) == 30 and falls(result["losses"])
    # the output layer gets the true error; the layers below get FA's, not backprop's
    assert result["angles"]["out"] < 1 and min(result["angles"][name] for name in ("conv1", "conv2", "fc")) > 20
    # loss.backward() through the wrapped module is the rule's own update
    net = example.SmallCNN()
    wrapped = __import__("bioprop").wrap(net, rule="fa", seed=0)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    F.cross_entropy(wrapped(x), y).backward()
    by_backward = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    wrapped.bioprop_rule.compute_gradients(x, y, ("forward",))
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), by_backward))


def test_dfa_example_trains_by_direct_feedback_alignment(examples):
    result = examples("own_loop_dfa").main(["--synthetic", "--steps", "30"])
    assert len(result["losses"]) == 30 and falls(result["losses"])
    rule, net = result["rule"], result["net"]
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def gradients():
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        return {name: p.grad.clone() for name, p in net.named_parameters()}

    dfa = gradients()
    with rule.true_backprop():
        backprop = gradients()
    assert torch.equal(dfa["out.weight"], backprop["out.weight"])  # the output layer: its true gradient
    hidden = dfa["hidden1.1.weight"].flatten()
    assert F.cosine_similarity(hidden, backprop["hidden1.1.weight"].flatten(), dim=0) < 0.99
    net.zero_grad()
    rule.compute_gradients(x, y, ("forward",))  # the rule's update is what the example's loop applied
    assert all(torch.equal(p.grad, dfa[name]) for name, p in net.named_parameters())


def test_target_prop_example_alternates_passes_and_trains(examples):
    example = examples("own_loop_target_prop")
    result = example.main(["--synthetic", "--steps", "40", "--pass-length", "10"])
    history = result["history"]
    assert [row["groups"] for row in history] == [("inverse",), ("forward",)] * 2
    assert "inverse losses" in history[0] and "forward losses" not in history[0]
    assert history[-1]["task loss"] < history[0]["task loss"]
    # an inverse pass writes gradients of the inverses only, a forward pass of the forward weights only
    rule = example.build_rule("dtp", "alternating")
    assert rule.passes() == (("inverse",), ("forward",))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    groups = rule.parameter_groups()
    for trained in ("inverse", "forward"):
        rule.zero_grad(set_to_none=True)
        step = rule.compute_gradients(x, y, (trained,))
        for group, params in groups.items():
            assert all((p.grad is not None) == (group == trained) for p in params), (trained, group)
        assert all(name.startswith(f"{trained}_loss/") for name in step.local_losses)


def test_target_prop_example_takes_a_custom_loss(examples):
    result = examples("own_loop_target_prop").main(["--synthetic", "--steps", "4", "--pass-length", "2",
                                                    "--label-smoothing", "0.1", "--schedule", "parallel"])
    assert result["rule"].task.name == "label-smoothed"
    assert [row["groups"] for row in result["history"]] == [("forward", "inverse")] * 2


def test_an_example_runs_as_a_script():
    process = subprocess.run([sys.executable, str(EXAMPLES / "own_loop_dfa.py"), "--synthetic", "--steps", "3"],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert "step     3  loss" in process.stdout and "test error" in process.stdout


def test_penultimate_width_models_swap_only_that_width():
    """examples/penultimate_width.py (issue 15): loaded as a config names it, each network is the
    registered one with only the last hidden layer's width changed."""
    from bioprop.models import create_model, model_factory

    for name, registered, width in [("mnist_lc_penultimate_256", "mnist-lc", 256),
                                    ("mnist_fc_penultimate_1024", "mnist-fc", 1024)]:
        network = model_factory(f"{EXAMPLES / 'penultimate_width.py'}:{name}")()
        shapes, expected = network.output_shapes(), create_model(registered).output_shapes()
        assert shapes[-2] == (width,) != expected[-2]
        assert shapes[:-2] == expected[:-2] and shapes[-1] == expected[-1] == (10,)

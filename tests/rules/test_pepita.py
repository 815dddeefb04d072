"""PEPITA (rules/forward_only/pepita.py): the modulated pass and the updates against a hand computation
on a 2-layer network; convolutional layers get their own weight-gradient map of the passes'
difference; bf16 runs the two passes in float32."""

import math

import pytest
import torch
import torch.nn.functional as F

from bioprop.models import create_model
from bioprop.rules import create_rule
from small_networks import fc_network


def _two_layers():
    network = fc_network([6, 4], classes=3)  # x (6) -> tanh(W1 x + b1) (4) -> W2 h1 + b2 (3)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, *network.input_shape, generator=generator, dtype=torch.float64)
    return network, x, torch.randint(0, 3, (5,), generator=generator)


@pytest.mark.parametrize("output_error", ["standard", "modulated"])
def test_updates_match_a_hand_computation(output_error):
    network, x, y = _two_layers()
    rule = create_rule("pepita", network, seed=0, output_error=output_error)
    step = rule.compute_gradients(x, y, ("forward",))
    (W1, b1), (W2, b2) = [(layer.weight.detach(), layer.bias.detach()) for layer in network.layers]
    F_ = rule.input_feedback
    assert F_.shape == (6, 3) and F_.abs().max() <= 0.05 * math.sqrt(6 / 6)
    n, onehot = len(y), F.one_hot(y, 3).double()
    v = x.flatten(1)
    h1 = torch.tanh(v @ W1.T + b1)
    out = h1 @ W2.T + b2
    e = torch.softmax(out, 1) - onehot                      # standard pass: the output error
    v_mod = v + e @ F_.T                                    # h_0^mod = x + F e
    h1_mod = torch.tanh(v_mod @ W1.T + b1)                  # the modulated pass
    if output_error == "modulated":
        e = torch.softmax(h1_mod @ W2.T + b2, 1) - onehot   # the authors' code: the modulated pass's error
    torch.testing.assert_close(step.logits, out)
    torch.testing.assert_close(step.loss, F.cross_entropy(out, y))
    torch.testing.assert_close(network.layers[0].weight.grad, (h1 - h1_mod).T @ v_mod / n)
    torch.testing.assert_close(network.layers[0].bias.grad, (h1 - h1_mod).mean(0))
    torch.testing.assert_close(network.layers[1].weight.grad, e.T @ h1_mod / n)
    torch.testing.assert_close(network.layers[1].bias.grad, e.mean(0))


def test_feedback_matrix_is_fixed_seeded_and_scaled():
    torch.manual_seed(0)
    rule = create_rule("pepita", create_model("mnist-fc"), seed=3, modulation_scale=0.1)
    bound = 0.1 * math.sqrt(6 / 784)
    assert rule.input_feedback.shape == (784, 10)
    assert rule.input_feedback.abs().max() <= bound and rule.input_feedback.abs().max() > 0.9 * bound
    again = create_rule("pepita", create_model("mnist-fc"), seed=3, modulation_scale=0.1)
    assert torch.equal(again.input_feedback, rule.input_feedback)


@pytest.mark.parametrize("model", ["mnist-conv", "mnist-lc"])
def test_feature_map_layers_use_their_weight_gradient_map_of_the_difference(model):
    """A hidden map layer's update is what autograd gives for δ_l = (h_l − h_l^mod) / N at h_{l-1}^mod."""
    torch.manual_seed(0)
    network = create_model(model)
    rule = create_rule("pepita", network, seed=0)
    x, y = torch.randn(3, 1, 28, 28), torch.randint(0, 10, (3,))
    rule.compute_gradients(x, y, ("forward",))
    with torch.no_grad():
        hidden = network.hidden_activations(x)
        error = torch.softmax(hidden[-1], 1) - F.one_hot(y, 10).float()
        modulated = x + rule.modulation(error)
        first_mod = network.blocks[0](modulated)
    second = network.blocks[1]
    with torch.enable_grad():
        pre = second.layer(second.layer_input(first_mod))
        expected = torch.autograd.grad(pre, second.layer.weight, (hidden[1] - torch.tanh(pre.detach())) / len(x))[0]
    torch.testing.assert_close(second.layer.weight.grad, expected, rtol=1e-4, atol=1e-6)


def test_bf16_runs_both_passes_in_float32():
    torch.manual_seed(0)
    network = create_model("mnist-fc")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    reference = create_rule("pepita", network, seed=0)
    reference.compute_gradients(x, y, ("forward",))
    expected = [p.grad.clone() for p in network.parameters()]
    network.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference.compute_gradients(x, y, ("forward",))
    for parameter, want in zip(network.parameters(), expected):
        assert parameter.grad.dtype == torch.float32
        torch.testing.assert_close(parameter.grad, want)

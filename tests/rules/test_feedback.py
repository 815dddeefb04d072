"""BP, FA and DFA: known answers (FA with B = W is BP), updates reach every parameter, fixed
feedback never changes, DFA memory grows with the largest layer only."""

import copy

import pytest
import torch

from bioprop.errors import BiopropError
from bioprop.models import create_model, list_models
from bioprop.rules import create_rule, list_rules
from bioprop.rules.base import task_loss
from small_networks import batch

SMALL_MODELS = [name for name in list_models() if not name.startswith("imagenet")]
FEEDBACK_RULES = ["bp", "fa", "dfa"]


def gradients(rule, x, y):
    rule.zero_grad(set_to_none=True)
    step = rule.compute_gradients(x, y, ("forward",))
    return {name: p.grad.clone() for name, p in rule.model.named_parameters()}, step


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_fa_with_feedback_equal_to_forward_weights_is_backprop_exactly(name):
    torch.manual_seed(0)
    model = create_model(name)
    x, y = batch(model)
    bp_grads, bp_step = gradients(create_rule("bp", model), x, y)
    fa = create_rule("fa", model)
    for layer in model.layers:
        layer.feedback_weight.copy_(layer.weight.detach())
    fa_grads, fa_step = gradients(fa, x, y)
    assert torch.equal(fa_step.logits, bp_step.logits)
    for key in bp_grads:
        assert torch.equal(fa_grads[key], bp_grads[key]), key


@pytest.mark.parametrize("name", ["mnist-fc", "mnist-lc", "mnist-conv"])
def test_fa_with_random_feedback_differs_from_backprop_below_the_top(name):
    torch.manual_seed(0)
    model = create_model(name)
    x, y = batch(model)
    bp_grads, _ = gradients(create_rule("bp", model), x, y)
    fa_grads, _ = gradients(create_rule("fa", model), x, y)  # fa wraps the model in place; bp has run already
    last = f"blocks.{len(model.blocks) - 1}.layer.weight"
    assert torch.equal(fa_grads[last], bp_grads[last])  # the output layer's gradient needs no feedback
    assert not torch.allclose(fa_grads["blocks.0.layer.weight"], bp_grads["blocks.0.layer.weight"])


@pytest.mark.parametrize("rule_name", FEEDBACK_RULES)
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_every_parameter_receives_an_update_and_fixed_feedback_never_changes(rule_name, name):
    torch.manual_seed(0)
    model = create_model(name)
    rule = create_rule(rule_name, model, seed=1)
    before = copy.deepcopy(rule.state_dict())
    optimizer = torch.optim.Adam(rule.parameter_groups()["forward"], lr=1e-3)
    x, y = batch(model, size=3)
    optimizer.zero_grad()
    rule.compute_gradients(x, y, ("forward",))
    optimizer.step()
    for key, parameter in rule.model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key
        assert not torch.equal(parameter.detach(), before[f"model.{key}"]), key
    for key, buffer in rule.named_buffers():
        assert torch.equal(buffer, before[key]), f"feedback buffer {key} changed"


def test_feedback_weights_are_buffers_seeded_per_layer():
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    first, again, other = (create_rule("fa", copy.deepcopy(model), seed=seed) for seed in (0, 0, 1))
    assert len(list(first.parameters())) == len(list(model.parameters()))  # no extra Parameters
    assert [name for name, _ in first.named_buffers()] == [f"model.blocks.{index}.layer.feedback_weight"
                                                           for index in range(len(model.layers))]
    for index in range(len(model.layers)):
        assert torch.equal(first.feedback_weight(index), again.feedback_weight(index))
        assert not torch.equal(first.feedback_weight(index), other.feedback_weight(index))
    assert not torch.equal(first.feedback_weight(1), first.feedback_weight(2))  # layers of equal shape differ


def test_dfa_sends_projected_output_error_to_every_hidden_layer():
    """Known answer: in a network of linear layers+tanh, DFA's hidden delta is (B_l e) * (1 - h^2)."""
    torch.manual_seed(0)
    model = create_model("mnist-fc")
    dfa = create_rule("dfa", model)
    x, y = batch(model, size=5)
    dfa.zero_grad()
    dfa.compute_gradients(x, y, ("forward",))
    activations = [x.flatten(1)] + [h.detach() for h in model.hidden_activations(x)]
    logits = activations[-1].requires_grad_()
    (error,) = torch.autograd.grad(task_loss(logits, y), logits)
    for index in range(len(model.blocks) - 1):
        h = activations[index + 1]
        delta = (error @ dfa.feedback_weight(index)) * (1 - h ** 2)
        expected = delta.t() @ activations[index]
        torch.testing.assert_close(model.layers[index].weight.grad, expected, rtol=1e-5, atol=1e-7)
    # the output layer learns from its true gradient
    expected_out = error.t() @ activations[-2]
    torch.testing.assert_close(model.layers[-1].weight.grad, expected_out, rtol=1e-5, atol=1e-7)


def test_dfa_feedback_memory_grows_with_the_largest_layer_only():
    with torch.device("meta"):
        model = create_model("imagenet-lc")
        dfa = create_rule("dfa", model)
    largest = 56 * 56 * 48
    hidden_layers = len(model.layers) - 1
    assert dfa.feedback_matrix.shape == (1000 + hidden_layers - 1, largest)
    assert sum(b.numel() for b in dfa.buffers()) == (1000 + hidden_layers - 1) * largest
    # a per-layer matrix for every hidden layer would need the sum over layers:
    assert sum(dfa.hidden_sizes) * 1000 > 2 * dfa.feedback_matrix.numel()  # 2.3x here


def test_dfa_windows_differ_between_layers_of_equal_width():
    torch.manual_seed(0)
    dfa = create_rule("dfa", create_model("mnist-fc"))
    assert not torch.equal(dfa.feedback_weight(0), dfa.feedback_weight(1))


@pytest.mark.parametrize("rule_name", FEEDBACK_RULES)
def test_same_seed_same_gradients(rule_name):
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("mnist-lc")
        grads, _ = gradients(create_rule(rule_name, model, seed=5), *batch(model))
        results.append(grads)
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_registry_and_options():
    assert {"bp", "fa", "dfa"} <= set(list_rules())
    with pytest.raises(BiopropError, match="unknown learning rule 'xp'"):
        create_rule("xp", create_model("mnist-fc"))
    with pytest.raises(BiopropError, match="rule 'bp' has no option 'alpha'"):
        create_rule("bp", create_model("mnist-fc"), alpha=0.1)


@pytest.mark.parametrize("rule_name", FEEDBACK_RULES)
@pytest.mark.parametrize("name", ["imagenet-lc", "imagenet-conv"])
def test_imagenet_models_receive_updates(rule_name, name):
    torch.manual_seed(0)
    model = create_model(name)
    rule = create_rule(rule_name, model)
    rule.compute_gradients(*batch(model, size=2), ("forward",))
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key

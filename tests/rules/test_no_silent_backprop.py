"""Issue 17 §1: a backward pass through ``rule(x)`` never trains as backprop by accident. For every
registered rule, on a small network: where the rule has an autograd form (``trains_through_autograd``:
BP, the feedback rules, DFA) it gives exactly ``compute_gradients``'s gradients, and differs from
backprop's (except ``bp``); everywhere else it raises, naming ``compute_gradients`` and ``passes()``.
Evaluation under ``torch.no_grad()`` and ``true_backprop()`` are unaffected."""

import copy

import pytest
import torch

import bioprop
from bioprop.errors import BiopropError
from bioprop.models import LayerSpec, build_network
from bioprop.rules import RULES, create_rule, list_rules


def small_network(seed=0):
    torch.manual_seed(seed)
    return build_network("small", (1, 8, 8), [LayerSpec("fc", 16), LayerSpec("fc", 12)], num_classes=5)


def batch(size=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 5, (size,), generator=generator)


def task_loss(rule, x, y):
    return rule.task.loss(rule(x), rule.task.target(x, y))


def gradients(module):
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


def backprop_gradients(model, x, y):
    bp = create_rule("bp", copy.deepcopy(model))
    bp.compute_gradients(x, y, ("forward",))
    return gradients(bp.model)


@pytest.mark.parametrize("name", list_rules())
def test_backward_through_the_rules_output_is_its_update_or_refused(name):
    model, (x, y) = small_network(), batch()
    if not RULES.get(name).trains_through_autograd:
        rule = create_rule(name, model, seed=3)
        output = rule(x)
        with pytest.raises(BiopropError, match=rf"rule '{name}' has no autograd form.*compute_gradients.*passes\(\)"):
            rule.task.loss(output, rule.task.target(x, y)).backward()
        return
    by_step, by_backward = (create_rule(name, copy.deepcopy(model), seed=3) for _ in range(2))
    by_step.compute_gradients(x, y, by_step.passes()[0])  # every group of the rule's one pass
    task_loss(by_backward, x, y).backward()
    expected, got = gradients(by_step), gradients(by_backward)
    assert set(got) == set(expected) and all(value is not None for value in expected.values())
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    backprop = backprop_gradients(model, x, y)
    differs = [key for key in backprop if not torch.equal(got[f"model.{key}"], backprop[key])]
    assert bool(differs) == (name != "bp"), differs


@pytest.mark.parametrize("name", list_rules())
def test_evaluation_and_true_backprop_are_unaffected(name):
    model, (x, y) = small_network(), batch()
    plain = copy.deepcopy(model)
    rule = create_rule(name, model, seed=3)
    rule.eval()
    with torch.no_grad():
        output = rule(x)
        assert output.grad_fn is None and torch.equal(output, plain.eval()(x))  # the plain model's numbers
    rule.train()
    with rule.true_backprop():
        task_loss(rule, x, y).backward()
    got = gradients(rule.model)
    for key, value in backprop_gradients(plain.train(), x, y).items():
        assert torch.equal(got[key], value), key


def test_bp_is_backprop_also_on_a_model_another_rule_wraps():
    model, (x, y) = small_network(), batch()
    expected = backprop_gradients(model, x, y)
    fa = create_rule("fa", model)
    bp = create_rule("bp", model)  # allowed: it switches fa off while it runs
    bp.compute_gradients(x, y, ("forward",))
    assert all(torch.equal(p.grad, expected[key]) for key, p in model.named_parameters() if key in expected)
    model.zero_grad()
    task_loss(bp, x, y).backward()
    assert all(torch.equal(p.grad, expected[key]) for key, p in model.named_parameters() if key in expected)
    model.zero_grad()
    task_loss(fa, x, y).backward()  # and fa is still fa
    assert not torch.equal(model.blocks[0].layer.weight.grad, expected["blocks.0.layer.weight"])


@pytest.mark.parametrize("name", ["fa", "kp", "dfa"])
def test_a_rule_whose_model_was_unwrapped_refuses_to_run(name):
    model, (x, y) = small_network(), batch()
    rule = create_rule(name, model)
    assert bioprop.unwrap(model) is model
    for call in (lambda: rule(x), lambda: rule.compute_gradients(x, y, ("forward",))):
        with pytest.raises(BiopropError, match=f"rule '{name}' no longer wraps its model"):
            call()


@pytest.mark.parametrize("name", ["dtp", "sdtp"])
def test_target_propagation_refuses_a_wrapped_model_by_name(name):
    model = small_network()
    create_rule("fa", model)
    with pytest.raises(BiopropError, match=f"already wrapped by rule 'fa': rule '{name}' needs a model of its own"):
        create_rule(name, model)

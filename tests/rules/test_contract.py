"""The contract every registered learning rule keeps, tested over ``list_rules()``: a new rule is
checked by being registered (timm's ``test_models.py`` over every registered model)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import torch

from bioprop.models import create_model
from bioprop.presets.paper import TABLE5
from bioprop.rules import RULES, LearningRule, create_rule, list_rules
from bioprop.rules.base import searchable_options

MODELS = ["mnist-fc", "mnist-lc", "mnist-conv"]
CITATION = re.compile(r"\b(19|20)\d\d\b")


def build(name: str, model: str = "mnist-fc", seed: int = 0) -> LearningRule:
    torch.manual_seed(seed)
    return create_rule(name, create_model(model), seed=seed)


def batch(seed: int = 0, n: int = 6):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def grads(rule: LearningRule) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.clone() for name, p in rule.named_parameters()}


@pytest.mark.parametrize("name", list_rules())
def test_documented_with_equations_and_citation(name):
    cls = RULES.get(name)
    text = (cls.__doc__ or "") + (inspect.getmodule(cls).__doc__ or "")
    assert CITATION.search(text), f"{name}: no citation (a year) in its class or module docstring"
    assert "=" in text, f"{name}: no update equations in its docstrings"
    assert cls.label, name
    for option in dataclasses.fields(cls.Options):
        assert option.metadata.get("help"), f"{name}: option {option.name} has no help text"


@pytest.mark.parametrize("name", list_rules())
def test_declared_groups_options_and_presets_are_consistent(name):
    cls = RULES.get(name)
    cls.check_options(cls.Options())  # the defaults are valid
    assert cls.groups and cls.groups[0] == "forward"
    assert set(cls.group_defaults) <= set(cls.groups) and set(cls.group_defaults.values()) <= set(cls.groups)
    for option, (distribution, low, high) in searchable_options(name).items():
        assert distribution in ("uniform", "log-uniform") and low < high, (name, option)
    if cls.preset_column is not None:
        assert all(cls.preset_column in columns for columns in TABLE5.values()), cls.preset_column
    rule = build(name)
    groups = rule.parameter_groups()
    assert tuple(groups) == cls.groups
    owned = [id(p) for params in groups.values() for p in params]
    assert sorted(owned) == sorted(id(p) for p in rule.parameters()), "every parameter in exactly one group"
    assert all(set(one_pass) <= set(cls.groups) for one_pass in rule.passes())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", list_rules())
def test_gradients_only_for_the_pass_groups_and_for_all_of_them(name, model):
    rule = build(name, model)
    groups = rule.parameter_groups()
    buffers = {key: value.clone() for key, value in rule.named_buffers()}
    x, y = batch()
    updated: set[int] = set()
    for one_pass in rule.passes():
        rule.zero_grad(set_to_none=True)
        result = rule.compute_gradients(x, y, one_pass)
        assert result.logits.shape == (len(y), 10) and torch.isfinite(result.loss)
        for group, params in groups.items():
            for p in params:
                if group in one_pass:
                    if p.grad is not None:
                        assert torch.isfinite(p.grad).all()
                        updated.add(id(p))
                else:
                    assert p.grad is None or not p.grad.any(), f"{group} got a gradient in pass {one_pass}"
    missing = [n for n, p in rule.named_parameters() if id(p) not in updated]
    assert not missing, f"{name} on {model}: no gradient for {missing}"
    for key, value in rule.named_buffers():  # fixed weights stay fixed (drawn per step, if at all)
        torch.testing.assert_close(value, buffers[key], rtol=0, atol=0, msg=f"buffer {key} changed")


@pytest.mark.parametrize("name", list_rules())
def test_same_seed_same_gradients_and_state_dict_round_trip(name):
    x, y = batch()
    first, second = build(name), build(name)
    for rule in (first, second):
        torch.manual_seed(123)  # the noise of target propagation comes from torch's generator
        rule.compute_gradients(x, y, rule.passes()[-1])
    for (key, a), b in zip(grads(first).items(), grads(second).values()):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)
    other = build(name, seed=1)
    other.load_state_dict(first.state_dict())
    fresh = build(name)
    fresh.load_state_dict(first.state_dict())
    for rule in (other, fresh):
        rule.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        rule.compute_gradients(x, y, rule.passes()[-1])
    for (key, a), b in zip(grads(fresh).items(), grads(other).values()):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=f"{key} after load_state_dict")


@pytest.mark.parametrize("name", list_rules())
def test_alignment_interface(name):
    rule = build(name)
    weights = rule.layer_weights()
    assert weights and all(isinstance(w, torch.nn.Parameter) for w in weights.values())
    for layer, (weight, feedback) in rule.feedback_pairs().items():
        assert layer in weights and weight.shape == feedback.shape
    with rule.true_backprop():
        logits = rule.model(batch()[0])
    assert logits.shape == (6, 10)

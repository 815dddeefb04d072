"""Issue 17 §2: one way to apply a rule. ``wrap`` returns the user's module for every rule that can
wrap one, the rule is ``bioprop.rule_of(module)``, and ``create_rule`` and ``wrap`` store what they add
in one layout, on the model (each layer's ``feedback_weight``; DFA's ``feedback_matrix``; brsf's and
wm's ``bioprop_feedback_state``). A plain model's ``state_dict`` (a pretrained checkpoint) loads strictly
into a wrapped one, ``bioprop.unwrap`` gives the plain module back (its ``state_dict`` keys as before,
its gradients backprop's), and checkpoints written in the layout before (a Network's ``feedback_<i>``
and ``feedback_matrix`` on the rule, the counter as the rule's ``_extra_state``) still load."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioprop
from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import create_rule
from bioprop.rules.feedback.fa import CountsBatches

FEEDBACK_RULES = ["fa", "usf", "brsf", "frsf", "kp", "wm"]
STORED = {"fa", "frsf", "kp", "wm"}
COUNTED = {"brsf", "wm"}


class SmallCNN(nn.Module):
    input_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.Tanh())
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        return self.out(self.hidden(self.features(x)))


def wrap(net, rule_name, seed=0):
    options = {"deliver_at": ["features", "hidden"]} if rule_name == "dfa" else {}
    return bioprop.wrap(net, rule=rule_name, seed=seed, **options)


def data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=generator), torch.randint(0, 5, (6,), generator=generator)


def backward(net, x, y):
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def added_keys(rule_name):
    layers = ["features.0", "hidden.1", "out"]
    keys = {f"{layer}.feedback_weight" for layer in layers} if rule_name in STORED else set()
    keys |= {"bioprop_feedback_state"} if rule_name in COUNTED else set()
    return keys | ({"feedback_matrix"} if rule_name == "dfa" else set())


@pytest.mark.parametrize("rule_name", ["bp", *FEEDBACK_RULES, "dfa"])
def test_wrap_returns_the_module_and_the_rule_is_reachable(rule_name):
    torch.manual_seed(0)
    net = SmallCNN()
    plain_keys = set(net.state_dict())
    assert wrap(net, rule_name) is net
    if rule_name == "bp":  # backprop is autograd itself: nothing to wrap, nothing to find
        with pytest.raises(BiopropError, match="SmallCNN is not wrapped by a bioprop rule"):
            bioprop.rule_of(net)
        assert set(net.state_dict()) == plain_keys
        return
    rule = bioprop.rule_of(net)
    assert rule.name == rule_name and rule.model is net and net.bioprop_rule is rule
    assert set(net.state_dict()) == plain_keys | added_keys(rule_name)
    assert all(torch.is_tensor(value) for value in net.state_dict().values())  # no other entries
    assert set(rule.state_dict()) == {f"model.{key}" for key in net.state_dict()}  # one layout, under model.


@pytest.mark.parametrize("rule_name", FEEDBACK_RULES + ["dfa"])
def test_create_rule_and_wrap_store_the_same_things_in_the_same_place(rule_name):
    torch.manual_seed(0)
    by_wrap, by_create = SmallCNN(), SmallCNN()
    by_create.load_state_dict(by_wrap.state_dict())
    wrap(by_wrap, rule_name, seed=3)
    options = {"deliver_at": "features,hidden"} if rule_name == "dfa" else {}
    rule = create_rule(rule_name, by_create, seed=3, **options)
    assert bioprop.rule_of(by_create) is rule
    x, y = data()
    backward(by_wrap, x, y), backward(by_create, x, y)  # brsf, wm: one batch counted each
    expected, got = by_wrap.state_dict(), by_create.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("rule_name", FEEDBACK_RULES + ["dfa"])
def test_a_plain_state_dict_loads_strictly_and_keeps_the_feedback(rule_name):
    torch.manual_seed(0)
    pretrained = SmallCNN()
    with torch.no_grad():
        for parameter in pretrained.parameters():
            parameter.add_(1.0)
    net = wrap(SmallCNN(), rule_name, seed=2)
    x, y = data()
    backward(net, x, y)
    feedback = {k: v.clone() for k, v in net.state_dict().items() if k in added_keys(rule_name)}
    result = net.load_state_dict(pretrained.state_dict())  # strict
    assert not result.missing_keys and not result.unexpected_keys
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pretrained.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in feedback.items())  # B (learned or drawn) and the counter kept


@pytest.mark.parametrize("rule_name", FEEDBACK_RULES + ["dfa"])
def test_unwrap_gives_the_plain_module_back(rule_name):
    torch.manual_seed(0)
    plain = SmallCNN()
    net = copy.deepcopy(plain)
    wrap(net, rule_name)
    twin = copy.deepcopy(net)  # a copy of a wrapped module carries its own rule
    x, y = data()
    assert bioprop.unwrap(net) is net and bioprop.unwrap(net) is net  # twice: nothing left to do
    assert list(net.state_dict()) == list(plain.state_dict())
    assert "bioprop_rule" not in net.__dict__ and not hasattr(net, "feedback_matrix")
    hooks = ("_forward_pre_hooks", "_forward_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")
    for module in net.modules():
        assert "forward" not in module.__dict__ and all(not getattr(module, name) for name in hooks)
    expected, got = backward(plain, x, y), backward(net, x, y)
    assert all(torch.equal(got[k], expected[k]) for k in expected)  # backprop again
    assert bioprop.rule_of(twin).name == rule_name and bioprop.rule_of(twin).model is twin
    assert set(twin.state_dict()) == set(plain.state_dict()) | added_keys(rule_name)
    bioprop.unwrap(twin)  # the copy's rule removes the copy's hooks
    assert all(not getattr(module, name) for module in twin.modules() for name in hooks)
    wrap(net, "usf" if rule_name != "usf" else "fa")  # free for another rule


def test_a_wrapped_state_dict_loads_into_a_plain_model_once_unwrapped():
    torch.manual_seed(0)
    net = wrap(SmallCNN(), "kp")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        SmallCNN().load_state_dict(net.state_dict())
    SmallCNN().load_state_dict(bioprop.unwrap(copy.deepcopy(net)).state_dict())


def old_layout(rule, state):
    """``state`` (the rule's state_dict now) as it was written before issue 17 on a bioprop Network."""
    state = dict(state)
    if rule.name == "dfa":
        state["feedback_matrix"] = state.pop("model.feedback_matrix")
        return state
    for site in rule.sites:
        if site.stores:
            state[f"feedback_{site.index}"] = state.pop(f"model.{site.key}")
    if isinstance(rule, CountsBatches):
        step, seed = state.pop(f"model.{CountsBatches.state_key}").tolist()
        state["_extra_state"] = {"feedback_step": step, "seed": seed}
    return state


@pytest.mark.parametrize("rule_name", ["fa", "brsf", "kp", "wm", "dfa"])
def test_checkpoints_in_the_layout_before_still_load(rule_name):
    torch.manual_seed(0)
    rule = create_rule(rule_name, create_model("mnist-fc"), seed=7)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    rule.compute_gradients(x, y, rule.passes()[0])
    with torch.no_grad():
        for parameter in rule.parameters():
            parameter.add_(0.01)
    written = old_layout(rule, rule.state_dict())
    assert not any(key.endswith("feedback_weight") or key.endswith("feedback_matrix") for key in written
                   if key.startswith("model."))
    restored = create_rule(rule_name, create_model("mnist-fc"), seed=99)
    restored.load_state_dict(written)  # strict
    expected, got = rule.state_dict(), restored.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)

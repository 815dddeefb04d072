"""Issue 17 §4: feedback layers follow autocast exactly as the layers they replace. On CPU bf16
autocast, for every feedback layer type and every feedback rule: the output dtype is the plain layer's,
``backward()`` outside the autocast region works with and without a bias (and with ``GradScaler``),
and with ``B = W`` every bf16 gradient equals backprop's under the same autocast, bit for bit. In a
network, every rule's output has backprop's dtype, so bf16 comparisons between rules are like for
like."""

import copy

import pytest
import torch
from torch import nn

import bioprop
from bioprop.models import Conv2dSame, create_model
from bioprop.nn import LocallyConnected2d
from bioprop.rules import create_rule

WRAP_RULES = ["fa", "usf", "brsf", "frsf", "kp", "wm"]
STORED = ["fa", "frsf", "kp", "wm"]  # the rules whose stored tensor gives B = W when set to W

#: (builder taking ``bias``, input shape)
LAYERS = {
    "linear": (lambda bias: nn.Linear(6, 5, bias=bias), (4, 6)),
    "linear-tokens": (lambda bias: nn.Linear(6, 5, bias=bias), (4, 3, 6)),
    "conv1d": (lambda bias: nn.Conv1d(3, 4, 3, padding=1, bias=bias), (2, 3, 9)),
    "conv2d": (lambda bias: nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=bias), (2, 3, 8, 8)),
    "conv2d-reflect": (lambda bias: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", bias=bias), (2, 3, 8, 8)),
    "conv3d": (lambda bias: nn.Conv3d(2, 3, 3, padding=1, bias=bias), (2, 2, 4, 5, 4)),
    "conv-transpose2d": (lambda bias: nn.ConvTranspose2d(3, 4, 3, stride=2, bias=bias), (2, 3, 5, 5)),
    "locally-connected": (lambda bias: LocallyConnected2d(3, 4, 8, 3, 2, bias=bias), (2, 3, 8, 8)),
    "conv2d-same-tf": (lambda bias: Conv2dSame(3, 4, (8, 8), 3, 2, bias=bias), (2, 3, 8, 8)),
}


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def forward_backward(layer, x, out_grad):
    """Forward under autocast, backward outside it; (output, input gradient, parameter gradients)."""
    x = x.clone().requires_grad_()
    with bf16():
        out = layer(x)
    out.backward(out_grad.to(out.dtype))
    return out, x.grad, {n: p.grad for n, p in layer.named_parameters() if "feedback" not in n}


def case(name, bias, seed=0):
    make, shape = LAYERS[name]
    torch.manual_seed(seed)
    layer = make(bias)
    x = torch.randn(*shape)
    with torch.no_grad(), bf16():
        out_grad = torch.randn(layer(x).shape)
    return layer, x, out_grad


def plain_and_wrapped(name, rule_name, bias):
    """(the plain layer, a wrapped copy, an input, an output gradient)."""
    plain, x, out_grad = case(name, bias)
    return plain, bioprop.wrap(copy.deepcopy(plain), rule=rule_name, seed=1), x, out_grad


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rule_name", WRAP_RULES)
@pytest.mark.parametrize("name", LAYERS)
def test_output_dtype_and_backward_outside_autocast(name, rule_name, bias):
    plain, wrapped, x, out_grad = plain_and_wrapped(name, rule_name, bias)
    expected, got = forward_backward(plain, x, out_grad), forward_backward(wrapped, x, out_grad)
    assert got[0].dtype == expected[0].dtype == torch.bfloat16
    assert got[1].dtype == x.dtype and got[1].shape == x.shape and torch.isfinite(got[1]).all()
    for key, gradient in got[2].items():  # float32 gradients of the float32 master weights
        assert gradient.dtype == torch.float32 and gradient.shape == expected[2][key].shape, key
    if rule_name in ("kp", "wm"):
        assert wrapped.feedback_weight.grad.dtype == torch.float32


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rule_name", STORED)
@pytest.mark.parametrize("name", LAYERS)
def test_with_feedback_equal_to_the_weight_bf16_gradients_are_backprops(name, rule_name, bias):
    plain, wrapped, x, out_grad = plain_and_wrapped(name, rule_name, bias)
    with torch.no_grad():
        wrapped.feedback_weight.copy_(wrapped.weight)  # frsf: B = |W| sign(W) = W
    expected, got = forward_backward(plain, x, out_grad), forward_backward(wrapped, x, out_grad)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    for key in expected[2]:
        assert torch.equal(got[2][key], expected[2][key]), key
    if rule_name == "kp":
        assert torch.equal(wrapped.feedback_weight.grad, wrapped.weight.grad)


@pytest.mark.parametrize("rule_name", ["fa", "kp", "usf"])
@pytest.mark.parametrize("name", ["linear", "conv2d"])
def test_grad_scaler_steps_a_bias_free_layer(name, rule_name):
    layer, x, _ = case(name, bias=False)
    net = bioprop.wrap(nn.Sequential(layer), rule=rule_name)
    before = layer.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with bf16():
        loss = net(x).float().square().mean()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(layer.weight).all() and not torch.equal(layer.weight, before)


@pytest.mark.parametrize("model_name", ["mnist-fc", "mnist-lc", "mnist-conv"])
def test_every_rules_output_has_backprops_dtype_in_a_network(model_name):
    x, y = torch.randn(3, 1, 28, 28), torch.randint(0, 10, (3,))
    dtypes = {}
    for rule_name in ["bp", "dfa", *WRAP_RULES]:
        torch.manual_seed(0)
        rule = create_rule(rule_name, create_model(model_name), seed=0)
        with bf16():
            step = rule.compute_gradients(x, y, rule.passes()[0])
        dtypes[rule_name] = step.logits.dtype
        assert all(p.grad.dtype == torch.float32 for p in rule.parameters() if p.grad is not None), rule_name
    assert set(dtypes.values()) == {torch.bfloat16}, dtypes

"""Issue 17 §3: ``wrap`` covers or refuses every layer that has weights. Over a zoo of ``torch.nn``
layers, each is a feedback layer (with ``B = W`` every output and gradient equals backprop's bit for
bit; with ``B != W`` the input gradient is ``B``'s transposed map, i.e. the layer's own input gradient
with ``B`` as its weight), a local layer (normalisation, PReLU, embeddings: trained by autograd), or
refused by name (with ``strict=False``: named in one warning and left on backprop)."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioprop
from bioprop.errors import BiopropError
from bioprop.models import Conv2dSame
from bioprop.nn import LocallyConnected2d
from bioprop.rules.feedback.coverage import layer_coverage

WRAP_RULES = ["fa", "usf", "brsf", "frsf", "kp", "wm"]

#: feedback layers: (builder, input shape)
FEEDBACK_ZOO = {
    "linear": (lambda: nn.Linear(6, 5), (4, 6)),
    "linear-tokens": (lambda: nn.Linear(6, 5), (4, 3, 6)),
    "linear-no-bias": (lambda: nn.Linear(6, 5, bias=False), (4, 6)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 11)),
    "conv1d-same-even-kernel": (lambda: nn.Conv1d(3, 4, 4, padding="same", bias=False), (2, 3, 11)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 8, 8)),
    "conv2d-dilated-grouped": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 9, 9)),
    "conv2d-reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 8, 8)),
    "conv2d-circular": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", bias=False), (2, 3, 8, 8)),
    "conv2d-same-even-kernel": (lambda: nn.Conv2d(3, 4, (4, 2), padding="same"), (2, 3, 8, 8)),
    "conv2d-valid": (lambda: nn.Conv2d(3, 4, 3, padding="valid"), (2, 3, 8, 8)),
    "conv2d-unbatched": (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 8, 8)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 3, padding=1, stride=(1, 2, 1)), (2, 2, 5, 6, 5)),
    "conv-transpose1d": (lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1), (2, 3, 7)),
    "conv-transpose2d-grouped": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
                                 (2, 4, 5, 5)),
    "conv-transpose2d-dilated": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, dilation=2, bias=False), (2, 3, 5, 5)),
    "conv-transpose3d": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (2, 2, 3, 3, 3)),
    "locally-connected": (lambda: LocallyConnected2d(3, 4, 8, 3, 2), (2, 3, 8, 8)),
    "conv2d-same-tf": (lambda: Conv2dSame(3, 4, (8, 8), 3, 2), (2, 3, 8, 8)),
    "weight-normalised-linear": (lambda: nn.utils.parametrizations.weight_norm(nn.Linear(6, 5)), (4, 6)),
}


def run(layer, x, out_grad, call=None):
    """(output, input gradient, parameter gradients) of one forward and backward pass."""
    x = x.clone().requires_grad_()
    out = layer(x) if call is None else call(layer, x)
    out.backward(out_grad)
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None and "feedback" not in n}
    return out, x.grad, grads


def zoo_case(name, seed=0):
    make, shape = FEEDBACK_ZOO[name]
    torch.manual_seed(seed)
    layer = make()
    x = torch.randn(*shape)
    with torch.no_grad():
        out_grad = torch.randn_like(layer(x))
    return layer, x, out_grad


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name", FEEDBACK_ZOO)
def test_with_feedback_equal_to_the_weight_every_gradient_is_backprops_bit_for_bit(name):
    plain, x, out_grad = zoo_case(name)
    wrapped = bioprop.wrap(copy.deepcopy(plain), rule="fa")
    assert [site.name for site in bioprop.rule_of(wrapped).sites] == [""]
    with torch.no_grad():
        wrapped.feedback_weight.copy_(wrapped.weight)
    expected, got = run(plain, x, out_grad), run(wrapped, x, out_grad)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert set(got[2]) == set(expected[2]) and expected[2]
    for key in expected[2]:
        assert torch.equal(got[2][key], expected[2][key]), key


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("rule_name", WRAP_RULES)
@pytest.mark.parametrize("name", FEEDBACK_ZOO)
def test_the_input_gradient_is_the_feedback_weights_transposed_map(name, rule_name):
    plain, x, out_grad = zoo_case(name)
    wrapped = bioprop.wrap(copy.deepcopy(plain), rule=rule_name, seed=4)
    rule = bioprop.rule_of(wrapped)
    _, input_grad, grads = run(wrapped, x, out_grad)
    feedback = rule.feedback_weight(0).detach()  # this batch's B (brsf redraws it per batch)
    assert not torch.equal(feedback, wrapped.weight)
    reference = copy.deepcopy(plain)
    exact = not nn.utils.parametrize.is_parametrized(reference)
    with torch.no_grad():  # the layer itself with B as its weight: its input gradient is B's transposed map
        if exact:
            reference.weight.copy_(feedback)
        else:
            reference.weight = feedback  # through weight norm's right inverse: B up to rounding
    _, expected_input_grad, _ = run(reference, x, out_grad)
    torch.testing.assert_close(input_grad, expected_input_grad, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6)
    _, _, backprop = run(copy.deepcopy(plain), x, out_grad)  # the layer's own gradients are backprop's
    for key in backprop:
        assert torch.equal(grads[key], backprop[key]), key


def test_conv_transpose_output_size_argument_is_followed():
    torch.manual_seed(0)
    plain = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    wrapped = bioprop.wrap(copy.deepcopy(plain), rule="fa")
    with torch.no_grad():
        wrapped.feedback_weight.copy_(wrapped.weight)
    x, out_grad = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 10, 10)
    call = lambda layer, inputs: layer(inputs, output_size=[10, 10])
    expected, got = run(plain, x, out_grad, call), run(wrapped, x, out_grad, call)
    assert got[0].shape == (2, 4, 10, 10)
    assert all(torch.equal(a, b) for a, b in zip(got[:2], expected[:2]))
    assert all(torch.equal(got[2][key], expected[2][key]) for key in expected[2])


class LayerScale(nn.Module):
    """A module using a raw parameter of its own."""

    def __init__(self, features):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(features))

    def forward(self, x):
        return x * self.gamma


class ScaledLinear(nn.Linear):
    """A subclass of a feedback layer with a forward of its own."""

    def forward(self, x):
        return 2 * F.linear(x, self.weight.t().t(), self.bias)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(6, 2, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = kind(6, 6, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


class LSTMStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(6, 6)

    def forward(self, x):
        return self.cell(x.flatten(0, 1))[0].view_as(x)


class Pairwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.bilinear = nn.Bilinear(6, 6, 6)

    def forward(self, x):
        return self.bilinear(x, x)


#: refused layers: (builder of the layer, its name in the model, the type named in the message)
REFUSED_ZOO = {
    "multihead-attention": (Attention, "attention", "MultiheadAttention"),
    "transformer-layer": (lambda: nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, batch_first=True),
                          "self_attn", "MultiheadAttention"),  # its feed-forward Linears are covered
    "lstm": (lambda: Recurrent(nn.LSTM), "rnn", "LSTM"),
    "gru": (lambda: Recurrent(nn.GRU), "rnn", "GRU"),
    "rnn": (lambda: Recurrent(nn.RNN), "rnn", "RNN"),
    "lstm-cell": (LSTMStep, "cell", "LSTMCell"),
    "bilinear": (Pairwise, "bilinear", "Bilinear"),
    "raw-parameter": (lambda: LayerScale(6), "", "LayerScale"),
    "subclass-with-own-forward": (lambda: ScaledLinear(6, 6), "", "ScaledLinear"),
    "lazy-uninitialised": (lambda: nn.LazyLinear(6), "", "LazyLinear"),
}


def with_a_linear_head(layer):
    return nn.Sequential(layer, nn.Linear(6, 3))


@pytest.mark.parametrize("case", REFUSED_ZOO)
def test_every_other_layer_with_parameters_is_refused_by_name(case):
    make, name, kind = REFUSED_ZOO[case]
    torch.manual_seed(0)
    model = with_a_linear_head(make())
    path = f"0.{name}" if name else "0"
    with pytest.raises(BiopropError, match=rf"'fa' cannot send the error .* {path} \({kind}\): .*strict=False"):
        bioprop.wrap(model, rule="fa")
    assert not hasattr(model[1], "feedback_weight") and bioprop.rules.wrapping.wrapping_rule(model) is None


@pytest.mark.parametrize("case", [c for c in REFUSED_ZOO if c != "lazy-uninitialised"])
def test_strict_false_names_them_once_and_leaves_them_on_backprop(case):
    make, name, kind = REFUSED_ZOO[case]
    torch.manual_seed(0)
    plain = with_a_linear_head(make())
    model = copy.deepcopy(plain)
    with pytest.warns(UserWarning, match=rf"{f'0.{name}' if name else '0'} \({kind}\)"):
        bioprop.wrap(model, rule="fa", strict=False)
    sites = bioprop.rule_of(model).sites
    assert [site.name for site in sites] == (["0.linear1", "0.linear2", "1"] if case == "transformer-layer" else ["1"])
    refused = getattr(model[0], name) if name else model[0]
    assert not any(n.endswith("feedback_weight") for n, _ in refused.named_buffers())  # out_proj untouched
    x = torch.randn(4, 2, 6)
    with torch.no_grad():
        for site in sites:
            site.stored.copy_(site.weight)  # B = W: what the covered layers do is backprop too
    for net in (plain, model):
        net(x).square().sum().backward()
    for (key, expected), got in zip(plain.named_parameters(), model.parameters()):
        assert torch.equal(got.grad, expected.grad), key  # on backprop, as the warning says


def test_local_layers_learn_from_autograd_without_a_word():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Embedding(10, 6), nn.LayerNorm(6), nn.Linear(6, 8), nn.PReLU(),
                          nn.Unflatten(2, (2, 4)), nn.GroupNorm(1, 3), nn.Flatten(1), nn.Linear(24, 8),
                          nn.Unflatten(1, (2, 4)), nn.BatchNorm1d(2), nn.InstanceNorm1d(2, affine=True),
                          nn.Flatten(1), nn.RMSNorm(8) if hasattr(nn, "RMSNorm") else nn.Identity(), nn.Linear(8, 3))
    coverage = layer_coverage(plain)
    assert [name for name, _ in coverage.feedback] == ["2", "7", "13"] and not coverage.refused
    assert [type(m).__name__ for _, m in coverage.local][:5] == ["Embedding", "LayerNorm", "PReLU", "GroupNorm",
                                                                "BatchNorm1d"]
    model = copy.deepcopy(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bioprop.wrap(model, rule="fa")
    with torch.no_grad():
        for site in bioprop.rule_of(model).sites:
            site.stored.copy_(site.weight)
    tokens = torch.randint(0, 10, (5, 3))
    for net in (plain, model):
        net(tokens).square().sum().backward()
    for (key, expected), got in zip(plain.named_parameters(), model.parameters()):
        assert torch.equal(got.grad, expected.grad), key

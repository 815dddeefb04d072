"""The transposed maps behind the TP inverses: ``AffineOps.transpose`` is the adjoint of the
forward map for every layer type (known answer: <W x, y> = <x, W^T y>), equals ``input_grad``,
and is differentiable w.r.t. its input and its free weight."""

import pytest
import torch
from torch import nn

from bioprop.nn import Conv2dSame
from bioprop.nn import LocallyConnected2d
from bioprop.nn.affine import affine_ops


def layers():
    torch.manual_seed(0)
    return {
        "linear": nn.Linear(7, 5).double(),
        "conv-stride2-odd": Conv2dSame(3, 4, (7, 9), kernel_size=3, stride=2).double(),  # output_padding > 0
        "conv-stride1": Conv2dSame(2, 3, (6, 6), kernel_size=5, stride=1).double(),
        "lc-stride2": LocallyConnected2d(3, 4, (7, 9), 3, stride=2).double(),
        "lc-stride1": LocallyConnected2d(2, 3, (5, 6), 3, stride=1).double(),
    }


def prepared_input(name, layer, batch=2):
    ops = affine_ops(layer)
    if name == "linear":
        return ops, torch.randn(batch, layer.in_features, dtype=torch.float64)
    x = torch.randn(batch, layer.in_channels, *layer.in_size, dtype=torch.float64)
    return ops, ops.prepare(x)


@pytest.mark.parametrize("name", list(layers()))
def test_transpose_is_the_adjoint_of_the_forward_map(name):
    layer = layers()[name]
    ops, x = prepared_input(name, layer)
    weight = torch.randn_like(layer.weight)  # a free weight of the forward weight's shape
    y = torch.randn_like(ops.forward(x, weight))
    back = ops.transpose(y, weight, x.shape)
    assert back.shape == x.shape
    torch.testing.assert_close((ops.forward(x, weight) * y).sum(), (x * back).sum())
    torch.testing.assert_close(back, ops.input_grad(y, weight, x.shape))


@pytest.mark.parametrize("name", list(layers()))
def test_transpose_is_differentiable_in_input_and_weight(name):
    layer = layers()[name]
    ops, x = prepared_input(name, layer, batch=1)
    weight = (0.1 * torch.randn_like(layer.weight)).requires_grad_()
    y = torch.randn_like(ops.forward(x, weight.detach())).requires_grad_()
    assert torch.autograd.gradcheck(lambda y_, w_: ops.transpose(y_, w_, x.shape), (y, weight), fast_mode=True)


def test_fast_tanh_equals_tanh():
    from bioprop.rules.target_prop.inverses import fast_tanh

    x = torch.cat([torch.linspace(-30, 30, 10001), torch.tensor([0.0, 1e-8, -1e-8, 88.0, -88.0, 1e4, -1e4])])
    torch.testing.assert_close(fast_tanh(x), torch.tanh(x), rtol=0, atol=3e-7)
    assert fast_tanh(torch.tensor([float("inf"), float("-inf")])).tolist() == [1.0, -1.0]
    x64 = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    torch.testing.assert_close(fast_tanh(x64), torch.tanh(x64), rtol=0, atol=1e-15)
    x.requires_grad_()
    (grad,) = torch.autograd.grad(fast_tanh(x).sum(), x)
    torch.testing.assert_close(grad, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-6)

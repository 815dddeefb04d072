"""The Glorot helpers from explicit fans agree with torch's, which reads the fans off the shape."""

import math

import pytest
import torch
from torch import nn

from bioprop.nn import LocallyConnected2d
from bioprop.nn.init import glorot_normal_std, glorot_uniform_, glorot_uniform_bound


@pytest.mark.parametrize("shape", [(256, 784), (10, 256), (64, 32, 3, 3)])
def test_glorot_uniform_draws_what_torch_draws_for_the_same_fans(shape):
    expected = torch.empty(shape)
    torch.manual_seed(3)
    nn.init.xavier_uniform_(expected)
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(expected)
    ours = torch.empty(shape)
    torch.manual_seed(3)
    glorot_uniform_(ours, fan_in, fan_out)
    assert torch.equal(ours, expected)


def test_the_bound_and_the_std_are_glorots():
    assert glorot_uniform_bound(784, 256) == math.sqrt(6 / 1040)
    assert glorot_normal_std(784, 256) == math.sqrt(2 / 1040)
    # a uniform on (-b, b) has variance b^2 / 3: the Gaussian keeps it
    assert glorot_uniform_bound(30, 50) ** 2 / 3 == pytest.approx(glorot_normal_std(30, 50) ** 2)


def test_a_locally_connected_layer_uses_the_conv_fans_of_its_kernel():
    layer = LocallyConnected2d(3, 8, in_size=(6, 6), kernel_size=3, stride=1, padding="same")
    bound = glorot_uniform_bound(3 * 9, 8 * 9)
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(layer.bias) == 0

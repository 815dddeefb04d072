"""Batches of random inputs for any model, and small FC networks with exact inverses, shared by the
rule tests (tests/rules/)."""

import math

import torch
from torch import nn

from bioprop.models.network import Block, Network


def batch(model, size=4, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, *model.input_shape, generator=generator, dtype=dtype)
    y = torch.randint(0, model.num_classes or 10, (size,), generator=generator)  # (an autoencoder ignores y)
    return x, y


def fc_network(widths, activation="tanh", classes=3, dtype=torch.float64, seed=0):
    """A small FC network ``widths[0] -> ... -> classes`` with well-conditioned square-ish weights."""
    torch.manual_seed(seed)
    blocks, sizes = [], list(widths) + [classes]
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = nn.Linear(fan_in, fan_out).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(0.6 * torch.randn(fan_out, fan_in, dtype=dtype) / math.sqrt(fan_in))
            if fan_in == fan_out:
                layer.weight.add_(torch.eye(fan_in, dtype=dtype))
            layer.bias.uniform_(-0.1, 0.1)
        last = index == len(sizes) - 2
        blocks.append(Block(layer, "identity" if last else activation, flatten=index == 0))
    return Network(blocks, (1, 1, widths[0]), classes, name="test-fc")


class ExactInverse(nn.Module):
    """The true inverse of a square tanh (or identity) FC block: W^{-1} (atanh(h) - b)."""

    def __init__(self, block):
        super().__init__()
        self.block = [block]  # not a submodule

    def forward(self, h):
        layer = self.block[0].layer
        pre = torch.atanh(h) if self.block[0].activation == "tanh" else h
        return torch.linalg.solve(layer.weight, (pre - layer.bias).t()).t()

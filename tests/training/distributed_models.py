"""User modules for the data-parallel tests, loaded by path as ``--model path/to/file.py:function``
would load them (tests/training/test_distributed_buffers.py)."""

import os

import torch
from torch import nn


class ConvBatchNorm(nn.Module):
    """Two strided convolutions (no bias: batch norm removes it) with batch norm and ReLU, pooled into a
    linear classifier (CIFAR shape)."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, x):
        return self.body(x)


def conv_batchnorm() -> nn.Module:
    return ConvBatchNorm()


def conv_batchnorm_unseeded() -> nn.Module:
    """Initialised, as a user's module may be, from a generator of its own: different in every process."""
    model = ConvBatchNorm()
    generator = torch.Generator().manual_seed(os.getpid())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


class RankBranch(nn.Module):
    """A layer that only process 0 uses: its gradient is None on the other processes."""

    def __init__(self):
        super().__init__()
        self.first, self.extra, self.last = nn.Linear(3 * 32 * 32, 16), nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x):
        h = torch.tanh(self.first(x.flatten(1)))
        if os.environ.get("RANK", "0") == "0":
            h = h + torch.tanh(self.extra(h))
        return self.last(h)


def rank_branch() -> nn.Module:
    return RankBranch()

"""``nn.Conv2d`` with TensorFlow's SAME padding: the paper's convolutional layer, the weight-shared
twin of :class:`~bioprop.nn.LocallyConnected2d` (same output size for any stride)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bioprop.nn.locally_connected import same_padding


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's SAME padding (possibly asymmetric) for any stride.

    The padding is applied with ``F.pad`` before an unpadded convolution, so the output is
    ``ceil(in / stride)`` wide, exactly like the locally-connected twin of the layer.
    """

    def __init__(self, in_channels: int, out_channels: int, in_size: tuple[int, int],
                 kernel_size: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)
        self.in_size = tuple(in_size)
        self.same_pad = same_padding(self.in_size, self.kernel_size, self.stride)  # (top, bottom, left, right)
        self.out_size = tuple(math.ceil(size / s) for size, s in zip(self.in_size, self.stride))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self.same_pad
        return F.pad(x, (left, right, top, bottom)) if any(self.same_pad) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))

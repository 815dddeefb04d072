"""A small ResNet for 3x32x32 images, the kind of model a user brings to bioprop (no torchvision).

Conv + BatchNorm + ReLU stem, two residual stages (the second strided, with a 1x1 projection on
the skip path), global average pooling and a linear classifier: about 20k parameters.

    bioprop train --model examples/small_resnet.py:small_resnet --rule kp --data cifar10 ...

trains it with Kolen-Pollack: the backward pass of every Conv2d and Linear goes through the
rule's feedback weights, batch norm, pooling and the skip connections are left to autograd.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(nn.Module):
    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = ResidualBlock(width, width)
        self.stage2 = ResidualBlock(width, 2 * width, stride=2)
        self.head = nn.Linear(2 * width, self.num_classes)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def small_resnet() -> SmallResNet:
    return SmallResNet()

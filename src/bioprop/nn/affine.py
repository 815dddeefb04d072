"""The three linear-algebra primitives of every affine layer type a model may use.

Learning rules never special-case layer types: they ask :func:`affine_ops` for an
:class:`AffineOps` and call

* ``forward(x, weight)``               the pre-activation without bias, ``a = W x``;
* ``input_grad(grad, weight, x_shape)`` the transposed map ``W^T grad`` (the adjoint);
* ``transpose(y, weight, x_shape)``     the same map as a differentiable op (for learned inverses);
* ``parameter_grads(x, grad, bias)``    ``(dL/dW, dL/db)`` given ``grad = dL/da``;
* ``add_bias(a, bias)``.

Feedback alignment calls ``input_grad`` with a feedback weight ``B`` in place of ``W``; target
propagation builds a layer's inverse from ``input_grad`` with free weights of the forward
weight's shape (a transposed linear, convolution or LC map). ``x`` is the layer's input after
:meth:`AffineOps.prepare` (e.g. SAME padding for convolutions). The primitives are the same
kernels autograd uses, so a backward assembled from them with ``B = W`` equals autograd's
bit for bit. Adding a layer type means registering one more ``AffineOps`` here.
"""

from __future__ import annotations

from functools import singledispatch

import torch
import torch.nn.functional as F
from torch import nn

from bioprop.nn.locally_connected import (LocallyConnected2d, lc_input_grad, lc_weight_grad, locally_connected2d,
                                          locally_connected2d_transpose)


class AffineOps:
    """Primitives of ``nn.Linear``: ``a = x W^T``."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x.mm(weight.t())

    def input_grad(self, grad: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        return grad.mm(weight)

    def transpose(self, y: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """The transposed map ``W^T y`` as a differentiable op (w.r.t. ``y`` and ``weight``): target
        propagation's inverses use it with their own free weights of the forward weight's shape."""
        return y.mm(weight)

    def parameter_grads(self, x: torch.Tensor, grad: torch.Tensor, bias: torch.Tensor | None):
        return grad.t().mm(x), None if bias is None else grad.sum(0)

    def add_bias(self, pre_activation: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return pre_activation if bias is None else pre_activation + bias

    def fans(self) -> tuple[int, int]:
        """``(fan_in, fan_out)`` as Glorot initialisation counts them (kernel area included)."""
        out_features, in_features = self.layer.weight.shape
        return in_features, out_features


class ConvOps(AffineOps):
    """Primitives of :class:`~bioprop.models.Conv2dSame`: SAME padding, then an unpadded strided convolution."""

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.pad(x)

    def forward(self, x, weight):
        return F.conv2d(x, weight, None, self.layer.stride)

    def _backward(self, grad, x, weight, bias, mask):
        """aten's convolution backward: the very kernels autograd runs for ``F.conv2d``."""
        bias_sizes = None if bias is None else list(bias.shape)
        return torch.ops.aten.convolution_backward(
            grad, x, weight, bias_sizes, list(self.layer.stride), [0, 0], [1, 1], False, [0, 0], 1, mask)

    def input_grad(self, grad, weight, x_shape):
        return self._backward(grad, grad.new_empty(x_shape), weight, None, [True, False, False])[0]

    def transpose(self, y, weight, x_shape):
        """Transposed convolution onto the *padded* input shape ``x_shape`` (differentiable)."""
        stride = self.layer.stride
        output_padding = [x_shape[-2 + i] - ((y.shape[-2 + i] - 1) * stride[i] + weight.shape[-2 + i])
                          for i in range(2)]
        return F.conv_transpose2d(y, weight, None, stride, 0, output_padding)

    def parameter_grads(self, x, grad, bias):
        _, grad_weight, grad_bias = self._backward(grad, x, self.layer.weight, bias, [False, True, bias is not None])
        return grad_weight, grad_bias

    def add_bias(self, pre_activation, bias):
        return pre_activation if bias is None else pre_activation + bias.view(1, -1, 1, 1)

    def fans(self):
        out_channels, in_channels, kernel_h, kernel_w = self.layer.weight.shape
        return in_channels * kernel_h * kernel_w, out_channels * kernel_h * kernel_w


class LocallyConnectedOps(AffineOps):
    """Primitives of :class:`~bioprop.nn.LocallyConnected2d` (its own fast kernels)."""

    def forward(self, x, weight):
        return locally_connected2d(x, weight, None, self.layer.stride, self.layer.padding)

    def input_grad(self, grad, weight, x_shape):
        return lc_input_grad(grad, weight, self.layer.in_size, self.layer.stride, self.layer.padding)

    def transpose(self, y, weight, x_shape):
        """Transposed LC map (differentiable w.r.t. ``y`` and ``weight``)."""
        return locally_connected2d_transpose(y, weight, self.layer.in_size, self.layer.stride, self.layer.padding)

    def parameter_grads(self, x, grad, bias):
        grad_weight = lc_weight_grad(x, grad, self.layer.kernel_size, self.layer.stride, self.layer.padding)
        return grad_weight, None if bias is None else grad.sum(0)

    def fans(self):
        *_, out_channels, in_channels, kernel_h, kernel_w = self.layer.weight.shape
        return in_channels * kernel_h * kernel_w, out_channels * kernel_h * kernel_w


@singledispatch
def affine_ops(layer: nn.Module) -> AffineOps:
    raise TypeError(f"no affine primitives registered for {type(layer).__name__}")


@affine_ops.register
def _(layer: nn.Linear) -> AffineOps:
    return AffineOps(layer)


@affine_ops.register
def _(layer: nn.Conv2d) -> AffineOps:
    if not hasattr(layer, "pad"):
        raise TypeError("only bioprop.models.Conv2dSame convolutions are supported (SAME padding, no dilation/groups)")
    return ConvOps(layer)


@affine_ops.register
def _(layer: LocallyConnected2d) -> AffineOps:
    return LocallyConnectedOps(layer)

"""The three linear-algebra primitives of every affine layer type a model may use.

Learning rules never special-case layer types: they ask :func:`affine_ops` for an
:class:`AffineOps` and call

* ``forward(x, weight)``               the pre-activation without bias, ``a = W x``;
* ``input_grad(grad, weight, x_shape)`` the transposed map ``W^T grad`` (the adjoint);
* ``transpose(y, weight, x_shape)``     the same map as a differentiable op (for learned inverses);
* ``parameter_grads(x, grad, bias)``    ``(dL/dW, dL/db)`` given ``grad = dL/da``;
* ``add_bias(a, bias)``.

Supported: ``nn.Linear`` (2-D inputs), :class:`~bioprop.models.Conv2dSame`, any ``nn.Conv2d`` and
:class:`~bioprop.nn.LocallyConnected2d`.

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

    def positions_per_weight(self, pre_activation: torch.Tensor) -> int:
        """How many output positions of one example share each weight (a convolution's map size; 1 otherwise)."""
        return 1


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

    def positions_per_weight(self, pre_activation):
        return pre_activation.shape[-2] * pre_activation.shape[-1]


class Conv2dOps(ConvOps):
    """Primitives of any ``nn.Conv2d``: padding (numbers, ``"same"``/``"valid"``, any ``padding_mode``),
    stride, dilation and groups. Zero numeric padding goes to the convolution itself; string padding
    and non-zero padding modes are applied by :meth:`prepare`, as ``nn.Conv2d`` itself does."""

    def __init__(self, layer: nn.Conv2d):
        super().__init__(layer)
        explicit = isinstance(layer.padding, str) or layer.padding_mode != "zeros"
        self.pre_pad = tuple(layer._reversed_padding_repeated_twice) if explicit else None
        self.padding = [0, 0] if explicit else list(layer.padding)

    def prepare(self, x):
        if self.pre_pad is None or not any(self.pre_pad):
            return x
        mode = "constant" if self.layer.padding_mode == "zeros" else self.layer.padding_mode
        return F.pad(x, self.pre_pad, mode=mode)

    def forward(self, x, weight):
        layer = self.layer
        return F.conv2d(x, weight, None, layer.stride, self.padding, layer.dilation, layer.groups)

    def _backward(self, grad, x, weight, bias, mask):
        layer = self.layer
        bias_sizes = None if bias is None else list(bias.shape)
        return torch.ops.aten.convolution_backward(
            grad, x, weight, bias_sizes, list(layer.stride), self.padding, list(layer.dilation), False, [0, 0],
            layer.groups, mask)

    def transpose(self, y, weight, x_shape):
        layer = self.layer
        output_padding = [x_shape[-2 + i] - ((y.shape[-2 + i] - 1) * layer.stride[i] - 2 * self.padding[i]
                                             + layer.dilation[i] * (weight.shape[-2 + i] - 1) + 1) for i in range(2)]
        return F.conv_transpose2d(y, weight, None, layer.stride, self.padding, output_padding, layer.groups,
                                  layer.dilation)


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
    return ConvOps(layer) if hasattr(layer, "pad") else Conv2dOps(layer)  # Conv2dSame pads itself


@affine_ops.register
def _(layer: LocallyConnected2d) -> AffineOps:
    return LocallyConnectedOps(layer)

"""The linear-algebra primitives of every affine layer type a model may use.

Learning rules never special-case layer types: they ask :func:`affine_ops` for an
:class:`AffineOps` and call

* ``affine(x, weight, bias)``          the layer's own forward with these tensors (the same kernels);
* ``forward(x, weight)``               the pre-activation without bias, ``a = W x``;
* ``input_grad(grad, weight, x_shape)`` the transposed map ``W^T grad`` (the adjoint);
* ``transpose(y, weight, x_shape)``     the same map as a differentiable op (for learned inverses);
* ``parameter_grads(x, grad, bias)``    ``(dL/dW, dL/db)`` given ``grad = dL/da``;
* ``add_bias(a, bias)``.

Supported (:data:`FEEDBACK_LAYER_TYPES`): ``nn.Linear`` (inputs of any shape ``(..., features)``),
every convolution — ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d`` with any padding (numbers,
``"same"``/``"valid"``, any ``padding_mode``), stride, dilation, groups and output padding, batched
or not — including :class:`~bioprop.nn.Conv2dSame`, and :class:`~bioprop.nn.LocallyConnected2d`.
Each is a linear map of its input whose transpose is its own input gradient.

Feedback alignment calls ``input_grad`` with a feedback weight ``B`` in place of ``W``; target
propagation builds a layer's inverse from ``transpose`` with free weights of the forward
weight's shape (a transposed linear, convolution or LC map). ``x`` is the layer's input after
:meth:`AffineOps.prepare` (padding the layer applies before its kernel: a ``padding_mode`` other than
zeros, the asymmetric part of ``padding="same"``, SAME padding of ``Conv2dSame``). ``affine`` calls
the very functional the layer's ``forward`` calls and the gradients are the kernels autograd runs
for it (``aten.convolution_backward``, the ``mm`` of ``addmm``'s derivative), so a backward assembled
from them with ``B = W`` equals autograd's bit for bit. Adding a layer type means registering one
more ``AffineOps`` here.
"""

from __future__ import annotations

import copy
import math
from functools import singledispatch

import torch
import torch.nn.functional as F
from torch import nn

from bioprop.nn.locally_connected import (LocallyConnected2d, lc_input_grad, lc_weight_grad, locally_connected2d,
                                          locally_connected2d_transpose)

#: the layer types with primitives here: linear maps of their input with their own transpose
FEEDBACK_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                        nn.ConvTranspose3d, LocallyConnected2d)
_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_TRANSPOSED_CONVOLUTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class AffineOps:
    """Primitives of ``nn.Linear``: ``a = x W^T`` over the last dimension of ``x``."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def for_call(self, x: torch.Tensor, *args, **kwargs) -> "AffineOps":
        """The primitives for one call ``layer(x, *args, **kwargs)`` (a transposed convolution's
        ``output_size`` sets its output padding); for most layers ``self``."""
        return self

    def unbatched(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is one example without a batch dimension (a convolution's ``(C, L...)``)."""
        return False

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def affine(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``W x + b``: the functional the layer's own ``forward`` calls, with these tensors."""
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight)

    def input_grad(self, grad: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        return grad.reshape(-1, grad.shape[-1]).mm(weight).view(x_shape)

    def transpose(self, y: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """The transposed map ``W^T y`` as a differentiable op (w.r.t. ``y`` and ``weight``): target
        propagation's inverses use it with their own free weights of the forward weight's shape."""
        return y.mm(weight)

    def parameter_grads(self, x: torch.Tensor, grad: torch.Tensor, bias: torch.Tensor | None,
                        weight: torch.Tensor | None = None):
        """``(dL/dW, dL/db)`` (``dL/db`` None without a bias); ``weight``: the weight the forward used
        (default the layer's), for its shape and dtype."""
        grad, x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        return grad.t().mm(x), None if bias is None else grad.sum(0)

    def add_bias(self, pre_activation: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return pre_activation if bias is None else pre_activation + bias

    def fans(self) -> tuple[int, int]:
        """``(fan_in, fan_out)`` as Glorot initialisation counts them (kernel area included)."""
        out_features, in_features = self.layer.weight.shape
        return in_features, out_features

    def positions_per_weight(self, pre_activation: torch.Tensor) -> int:
        """How many output positions of one example share each weight: a convolution's map size, the
        positions of a linear layer's ``(N, ..., features)`` input (1 for ``(N, features)``)."""
        return math.prod(pre_activation.shape[1:-1])


class ConvOps(AffineOps):
    """Primitives of every ``torch.nn`` convolution, plain or transposed, in 1, 2 or 3 dimensions.

    The padding is split as the layer's forward splits it: a ``padding_mode`` other than zeros is
    applied by :meth:`prepare` (``F.pad``) before an unpadded convolution, as ``nn.ConvNd`` does;
    ``padding="same"`` gives the convolution its symmetric part and :meth:`prepare` the extra right
    padding of an even kernel, as ATen's ``convolution_same`` does; numbers go to the convolution."""

    def __init__(self, layer: nn.Module):
        super().__init__(layer)
        self.dims = len(layer.kernel_size)
        self.transposed = bool(layer.transposed)
        self.stride, self.dilation, self.groups = list(layer.stride), list(layer.dilation), layer.groups
        self.output_padding = list(layer.output_padding)
        self.padding, self.pre_pad, self.pad_mode = self._split_padding(layer)

    def _split_padding(self, layer):
        """(the convolution's numeric padding, the ``F.pad`` padding applied before it or None, its mode)."""
        zeros = [0] * self.dims
        if layer.padding_mode != "zeros":
            return zeros, tuple(layer._reversed_padding_repeated_twice), layer.padding_mode
        if layer.padding == "valid":
            return zeros, None, "constant"
        if layer.padding == "same":
            pairs = layer._reversed_padding_repeated_twice  # (left, right) per dimension, last dimension first
            left = [pairs[2 * (self.dims - 1 - d)] for d in range(self.dims)]
            extra = []
            for d in reversed(range(self.dims)):
                extra += [0, pairs[2 * (self.dims - 1 - d) + 1] - left[d]]
            return left, tuple(extra) if any(extra) else None, "constant"
        return list(layer.padding), None, "constant"

    def for_call(self, x, output_size=None):
        if not self.transposed or output_size is None:
            return self
        ops = copy.copy(self)
        ops.output_padding = list(self.layer._output_padding(
            x, output_size, list(self.stride), list(self.layer.padding), list(self.layer.kernel_size), self.dims,
            list(self.dilation)))
        return ops

    def unbatched(self, x):
        return x.dim() == self.dims + 1

    def prepare(self, x):
        return x if self.pre_pad is None else F.pad(x, self.pre_pad, mode=self.pad_mode)

    def affine(self, x, weight, bias):
        if self.transposed:
            return _TRANSPOSED_CONVOLUTIONS[self.dims](x, weight, bias, self.stride, self.padding, self.output_padding,
                                                       self.groups, self.dilation)
        return _CONVOLUTIONS[self.dims](x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x, weight):
        return self.affine(x, weight, None)

    def _backward(self, grad, x, weight, bias, mask):
        """aten's convolution backward: the very kernels autograd runs for the convolution."""
        bias_sizes = None if bias is None else list(bias.shape)
        return torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, self.stride, self.padding,
                                                   self.dilation, self.transposed, self.output_padding, self.groups,
                                                   mask)

    def input_grad(self, grad, weight, x_shape):
        return self._backward(grad, grad.new_empty(x_shape), weight, None, [True, False, False])[0]

    def transpose(self, y, weight, x_shape):
        """The adjoint map onto the (prepared) input shape ``x_shape``, differentiable: a transposed
        convolution (a convolution for a transposed layer)."""
        if self.transposed:
            return _CONVOLUTIONS[self.dims](y, weight, None, self.stride, self.padding, self.dilation, self.groups)
        spatial = range(self.dims)
        output_padding = [x_shape[2 + i] - ((y.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                                            + self.dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in spatial]
        return _TRANSPOSED_CONVOLUTIONS[self.dims](y, weight, None, self.stride, self.padding, output_padding,
                                                   self.groups, self.dilation)

    def parameter_grads(self, x, grad, bias, weight=None):
        weight = self.layer.weight if weight is None else weight
        _, grad_weight, grad_bias = self._backward(grad, x, weight, bias, [False, True, bias is not None])
        return grad_weight, grad_bias

    def add_bias(self, pre_activation, bias):
        return pre_activation if bias is None else pre_activation + bias.view(1, -1, *[1] * self.dims)

    def fans(self):
        channels_out, channels_in, *kernel = self.layer.weight.shape
        area = math.prod(kernel)
        return channels_in * area, channels_out * area

    def positions_per_weight(self, pre_activation):
        return math.prod(pre_activation.shape[2:])


class SamePaddedConvOps(ConvOps):
    """Primitives of :class:`~bioprop.nn.Conv2dSame`: its SAME padding (``layer.pad``), then an
    unpadded strided convolution."""

    def prepare(self, x):
        return self.layer.pad(x)


class LocallyConnectedOps(AffineOps):
    """Primitives of :class:`~bioprop.nn.LocallyConnected2d` (its own fast kernels)."""

    def affine(self, x, weight, bias):
        return locally_connected2d(x, weight, bias, self.layer.stride, self.layer.padding)

    def forward(self, x, weight):
        return locally_connected2d(x, weight, None, self.layer.stride, self.layer.padding)

    def input_grad(self, grad, weight, x_shape):
        return lc_input_grad(grad, weight, self.layer.in_size, self.layer.stride, self.layer.padding)

    def transpose(self, y, weight, x_shape):
        """Transposed LC map (differentiable w.r.t. ``y`` and ``weight``)."""
        return locally_connected2d_transpose(y, weight, self.layer.in_size, self.layer.stride, self.layer.padding)

    def parameter_grads(self, x, grad, bias, weight=None):
        grad_weight = lc_weight_grad(x, grad, self.layer.kernel_size, self.layer.stride, self.layer.padding)
        return grad_weight, None if bias is None else grad.sum(0)

    def fans(self):
        *_, out_channels, in_channels, kernel_h, kernel_w = self.layer.weight.shape
        return in_channels * kernel_h * kernel_w, out_channels * kernel_h * kernel_w

    def positions_per_weight(self, pre_activation):
        return 1  # every output position has weights of its own


@singledispatch
def affine_ops(layer: nn.Module) -> AffineOps:
    raise TypeError(f"no affine primitives registered for {type(layer).__name__}")


@affine_ops.register
def _(layer: nn.Linear) -> AffineOps:
    return AffineOps(layer)


@affine_ops.register(nn.Conv1d)
@affine_ops.register(nn.Conv2d)
@affine_ops.register(nn.Conv3d)
@affine_ops.register(nn.ConvTranspose1d)
@affine_ops.register(nn.ConvTranspose2d)
@affine_ops.register(nn.ConvTranspose3d)
def _(layer) -> AffineOps:
    return SamePaddedConvOps(layer) if hasattr(layer, "pad") else ConvOps(layer)  # Conv2dSame pads itself


@affine_ops.register
def _(layer: LocallyConnected2d) -> AffineOps:
    return LocallyConnectedOps(layer)

"""Learned inverses ``g_l`` for target propagation, built automatically per forward layer type.

The inverse of block ``l`` maps its output ``h_l`` back to the block's *input* ``h_{l-1}`` (with
that activation's unflattened shape) and has the forward layer's form, transposed
(Bartunov et al. 2018, §2.1 and App. 5.4):

    g_l(h_l) = tanh(V_l^T h_l + c_l)

where ``V_l`` is a free weight of the *forward* weight's shape, used by the layer type's
transposed map (:meth:`bioprop.nn.affine.AffineOps.transpose`):

* ``nn.Linear``            ``h_l V_l`` (a linear map out -> in), ``c_l`` of the input's size;
* :class:`Conv2dSame`       a transposed convolution with its own kernel (out -> padded in, then the
                            SAME padding is cropped), one bias per input channel (weight sharing,
                            like the forward convolution);
* ``LocallyConnected2d``    the transposed LC map with its own free weights (the sparsity pattern of
                            ``W^T``, no weight sharing), a bias per input unit ``c_l`` (C, H, W).

``V_l`` is Glorot-uniform with the forward layer's fans (the same bound as the forward weight),
``c_l`` starts at zero. An inverse shares no parameter with the forward layer: it keeps the forward
layer's ``AffineOps`` (for the geometry: stride, padding, sizes) as a plain attribute, so the forward
layer is not a submodule of the inverse and its weights are never read.

:class:`OutputInverse` is the inverse of the output layer used by SDTP, AO-SDTP and vanilla TP:
``tanh([p, z] V + c)`` from the task's prediction ``p`` (the class probabilities of a classifier,
the output h_L itself of an autoencoder) and, for AO-SDTP, the auxiliary features ``z``, back to
the penultimate activation.
"""

from __future__ import annotations

import math
from functools import singledispatch

import torch
from torch import nn

from bioprop.models.network import Block
from bioprop.nn import Conv2dSame, LocallyConnected2d
from bioprop.nn.affine import AffineOps, affine_ops
from bioprop.nn.init import glorot_uniform_


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)``, computed on CPU as ``2 sigmoid(2x) - 1``.

    On CPU ``torch.sigmoid`` is vectorised and ``torch.tanh`` is 3-4x slower (61 vs 23 us for a
    100 x 256 tensor, 1350 vs 340 us for 100 x 6272, torch 2.13, AVX-512); the inverses and the
    noisy forward passes of target propagation evaluate tanh on 3-4 batches per layer, so this is
    3-5 % of a TP step on MNIST shapes (measured). The two agree to 2e-7 (float32). Elsewhere (CUDA)
    ``torch.tanh``.
    """
    if x.device.type != "cpu":
        return torch.tanh(x)
    return torch.sigmoid(x * 2).mul(2).sub(1)


class Inverse(nn.Module):
    """``g(h) = tanh(transposed_map(h; V) + c)`` reshaped to the block input's shape ``in_shape``."""

    def __init__(self, block: Block, in_shape: tuple[int, ...]):
        super().__init__()
        self.in_shape = tuple(in_shape)  # h_{l-1} without the batch dimension
        self._ops = affine_ops(block.layer)  # a plain attribute: the forward layer is *not* a submodule
        forward_weight = block.layer.weight
        self.weight = nn.Parameter(torch.empty(forward_weight.shape, dtype=forward_weight.dtype,
                                               device=forward_weight.device))
        glorot_uniform_(self.weight, *self._ops.fans())
        self.bias = nn.Parameter(torch.zeros(self.bias_shape(), dtype=forward_weight.dtype,
                                             device=forward_weight.device))

    @property
    def ops(self) -> AffineOps:
        return self._ops

    def bias_shape(self) -> tuple[int, ...]:
        return (math.prod(self.in_shape),)

    def pre_activation(self, h: torch.Tensor) -> torch.Tensor:
        # = self._ops.transpose(h, self.weight, None) + self.bias, fused into one kernel
        return torch.addmm(self.bias, h, self.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return fast_tanh(self.pre_activation(h)).reshape(h.shape[0], *self.in_shape)


class ConvInverse(Inverse):
    """Transposed convolution onto the padded input, SAME padding cropped, per-channel bias."""

    def bias_shape(self):
        return (self.in_shape[0], 1, 1)

    def pre_activation(self, h):
        layer = self._ops.layer
        top, bottom, left, right = layer.same_pad
        channels, height, width = self.in_shape
        padded = (h.shape[0], channels, height + top + bottom, width + left + right)
        x = self._ops.transpose(h, self.weight, padded)
        return x[:, :, top:top + height, left:left + width] + self.bias


class LocallyConnectedInverse(Inverse):
    """Transposed LC map with free weights; a bias per input unit."""

    def bias_shape(self):
        return self.in_shape

    def pre_activation(self, h):
        return self._ops.transpose(h, self.weight, None) + self.bias


@singledispatch
def _inverse_class(layer: nn.Module) -> type[Inverse]:
    raise TypeError(f"target propagation has no inverse for layer type {type(layer).__name__}")


@_inverse_class.register
def _(layer: nn.Linear):
    return Inverse


@_inverse_class.register
def _(layer: Conv2dSame):
    return ConvInverse


@_inverse_class.register
def _(layer: LocallyConnected2d):
    return LocallyConnectedInverse


def build_inverse(block: Block, in_shape: tuple[int, ...]) -> Inverse:
    """The inverse of ``block`` (mapping its output to its input of shape ``in_shape``)."""
    return _inverse_class(block.layer)(block, in_shape)


class OutputInverse(nn.Module):
    """Inverse of the output layer: ``tanh(u V + c)`` with ``u = p`` (SDTP, TP) or ``[p, z]`` (AO-SDTP),
    ``p`` the task's prediction (class probabilities, or the output h_L for reconstruction).

    ``V`` is ``(in_features, out_shape units)`` Glorot-uniform, ``c`` zero; the result is reshaped to
    the penultimate activation's shape ``out_shape``.
    """

    def __init__(self, in_features: int, out_shape: tuple[int, ...], like: torch.Tensor):
        super().__init__()
        self.out_shape = tuple(out_shape)
        units = math.prod(self.out_shape)
        self.weight = nn.Parameter(torch.empty(in_features, units, dtype=like.dtype, device=like.device))
        glorot_uniform_(self.weight, in_features, units)
        self.bias = nn.Parameter(torch.zeros(units, dtype=like.dtype, device=like.device))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return fast_tanh(torch.addmm(self.bias, u, self.weight)).reshape(u.shape[0], *self.out_shape)

    def target_difference(self, u: torch.Tensor, best: torch.Tensor, units: int) -> torch.Tensor:
        """``g(û) - g(u)``, where ``û`` is ``u`` with its first ``units`` columns (the prediction p)
        replaced by its minimiser: the one-hot labels when ``best`` holds class labels ``y`` (integers),
        else the dense ``(N, units)`` ``best`` itself (reconstruction: the input x). The pre-activations
        differ by ``V[y] - p V_units`` (dense: ``(best - p) V_units``), so the second call costs no
        product with the auxiliary columns of ``V`` (AO-SDTP)."""
        pre = torch.addmm(self.bias, u, self.weight)
        head = self.weight[:units]
        if best.is_floating_point():
            pre_target = pre + (best.to(u.dtype) - u[:, :units]).mm(head)
        else:
            pre_target = pre + (head.index_select(0, best) - u[:, :units].mm(head))
        return (fast_tanh(pre_target) - fast_tanh(pre)).reshape(u.shape[0], *self.out_shape)

"""A Network's blocks as maps in both directions, for the energy-based rules (predictive coding,
equilibrium propagation), whose inference runs every layer forwards and through its transpose.

For block ``l`` with affine layer ``a_l = W_l z + b_l`` (``z`` the block's input after its
flatten and the layer's own padding) and activation ``f_l``:

* :meth:`LayeredMaps.pre_activation` ``a_l(z)``: the layer's own forward (bias included), and
  :meth:`LayeredMaps.linear` ``W_l z`` without the bias;
* :meth:`LayeredMaps.transpose` ``W_lᵀ y`` onto ``z``'s shape (no bias): the layer type's
  transposed map (``affine_ops(layer).transpose``: ``yW`` for ``nn.Linear``, a transposed
  convolution, the transposed LC map), then the adjoint of the block's flatten and padding;
* :meth:`LayeredMaps.parameter_grads` ``(Σ_n y_n z_nᵀ, Σ_n y_n)``: the layer's weight and bias
  gradients for ``dL/da = y``, again by the layer type's own kernels;
* :meth:`LayeredMaps.activation_derivative` ``f_l'(a_l)`` from ``h_l = f_l(a_l)``.

Every map is differentiable (autograd can run through an inference), and no layer type is named:
a layer type with an ``AffineOps`` (:mod:`bioprop.nn.affine`) works here unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from bioprop.errors import BiopropError
from bioprop.models import Network
from bioprop.nn.affine import AffineOps, affine_ops
from bioprop.rules.base import LearningRule


class LayeredRule(LearningRule):
    """Base of the rules that run a Network's blocks both ways: refuses other models by name and holds
    the blocks' maps (:class:`LayeredMaps`) as ``self.maps``."""

    wrap_refusal = ("it relaxes every layer's activity through the layer's transposed map (Wᵀ, a transposed "
                    "convolution or LC map), which it takes from a bioprop Network's blocks")

    def __init__(self, model, options=None, seed: int = 0):
        super().__init__(model, options, seed)
        check_layered_network(self.name, model)
        self.maps = LayeredMaps(model)


def check_layered_network(rule_name: str, model) -> None:
    """Refuses, naming the rule, a model that is not a bioprop Network with a hidden layer."""
    if not isinstance(model, Network):
        raise BiopropError(f"rule {rule_name!r} needs a bioprop Network (a stack of blocks, e.g. --model mnist-fc), "
                           f"got {type(model).__name__}")
    if len(model.blocks) < 2:
        raise BiopropError(f"rule {rule_name!r} needs a network with at least one hidden layer")


@contextmanager
def full_precision(x: torch.Tensor):
    """Autocast off: inference of the energy-based rules subtracts nearby states (errors, phases),
    which bf16's 8-bit mantissa would turn into noise; it runs in the parameters' dtype."""
    with torch.autocast(x.device.type, enabled=False):
        yield


class LayeredMaps:
    """The maps of ``network``'s blocks (see the module docstring); ``index`` counts blocks from 0."""

    def __init__(self, network: Network):
        self.blocks = list(network.blocks)
        self.ops: list[AffineOps] = [affine_ops(block.layer) for block in self.blocks]
        self._prepared_shapes: dict[tuple[int, tuple[int, ...]], torch.Size] = {}

    def __len__(self) -> int:
        return len(self.blocks)

    def pre_activation(self, index: int, z: torch.Tensor) -> torch.Tensor:
        block = self.blocks[index]
        return block.layer(block.layer_input(z))

    def linear(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """``W_l z``: the pre-activation without the bias (the map is linear in ``z``)."""
        return self.ops[index].forward(self._prepare(index, z), self.blocks[index].layer.weight)

    def activate(self, index: int, a: torch.Tensor) -> torch.Tensor:
        return self.blocks[index].activate(a)

    def activation_change(self, index: int, a: torch.Tensor, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``f(a + d) - f(a)`` given ``h = f(a)``, without the cancellation of the plain difference: for tanh,
        ``tanh(d) (1 - h tanh(a + d))``, whose rounding error is a rounding of ``tanh(d)``'s size."""
        if self.blocks[index].activation == "tanh":
            return torch.tanh(d) * (1 - h * torch.tanh(a + d))
        return d

    def activation_derivative(self, index: int, h: torch.Tensor) -> torch.Tensor | None:
        """``f'(a)`` written with ``h = f(a)``: ``1 - h²`` for tanh, None (one) for the identity."""
        return 1 - h * h if self.blocks[index].activation == "tanh" else None

    def _prepare(self, index: int, z: torch.Tensor) -> torch.Tensor:
        return self.ops[index].prepare(self.blocks[index].layer_input(z))

    def _has_padding(self, index: int) -> bool:
        return type(self.ops[index]).prepare is not AffineOps.prepare

    def prepared_shape(self, index: int, z_shape: torch.Size) -> torch.Size:
        """The shape of block ``index``'s input ``z`` after flatten and padding (measured on meta storage)."""
        key = (index, tuple(z_shape))
        if key not in self._prepared_shapes:
            self._prepared_shapes[key] = self._prepare(index, torch.empty(z_shape, device="meta")).shape
        return self._prepared_shapes[key]

    def transpose(self, index: int, y: torch.Tensor, z_shape: torch.Size) -> torch.Tensor:
        """``W_indexᵀ y`` on the shape ``z_shape`` of the block's input (the adjoint of ``a(z) - b``)."""
        ops, weight = self.ops[index], self.blocks[index].layer.weight
        g = ops.transpose(y, weight, self.prepared_shape(index, z_shape))
        if not self._has_padding(index):
            return g.reshape(z_shape)  # the adjoint of a flatten
        # the adjoint of the padding (zero padding: a crop; other modes: their backward), by autograd
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            z = g.new_zeros(z_shape, requires_grad=True)
            (adjoint,) = torch.autograd.grad(self._prepare(index, z), z, g, create_graph=differentiable)
        return adjoint

    def parameter_grads(self, index: int, z: torch.Tensor, y: torch.Tensor, bias: bool = True):
        """``(dW, db)`` of block ``index`` for the error ``y = dL/da`` at input ``z`` (summed over the batch;
        ``db`` None when ``bias`` is False or the layer has none)."""
        layer_bias = self.blocks[index].layer.bias if bias else None
        return self.ops[index].parameter_grads(self._prepare(index, z), y, layer_bias)

    def accumulate(self, index: int, z: torch.Tensor, y: torch.Tensor, bias: bool = True) -> None:
        """Adds :meth:`parameter_grads` into the ``.grad`` of block ``index``'s weight (and bias)."""
        layer = self.blocks[index].layer
        grad_weight, grad_bias = self.parameter_grads(index, z, y, bias)
        for parameter, grad in ((layer.weight, grad_weight), (layer.bias, grad_bias)):
            if parameter is None or grad is None or not parameter.requires_grad:
                continue
            grad = grad.detach().to(parameter.dtype).reshape(parameter.shape)
            if parameter.grad is None:
                parameter.grad = grad
            else:
                parameter.grad += grad

"""The backprop / DTP hybrid that Bartunov et al. (2018, NeurIPS, App. 5.6) suggest.

With a linear g_bp(h̃) = (∂h_{l+1}/∂h_l)^T h̃, the transposed Jacobian of block l+1 at the current
activations, DTP's difference correction ĥ_l = h_l - g(h_{l+1}) + g(ĥ_{l+1}) is exactly backprop
(ĥ_l - h_l = -α ∂L/∂h_l for the penultimate target h_{L-1} - α ∂L/∂h_{L-1}). The hybrid mixes that
feedback with DTP's learned inverse g_inv:

    g = γ g_bp + (1 - γ) g_inv,
    ĥ_l = h_l + γ (∂h_{l+1}/∂h_l)^T (ĥ_{l+1} - h_{l+1}) + (1 - γ) (g_inv(ĥ_{l+1}) - g_inv(h_{l+1})),

on top of DTP (``dtp``: its penultimate target, α and ``target_reduction``, no inverse of the output
layer, noise-preserving inverse loss by default, the output layer on the task loss: the
cross-entropy, or ½||h_L - x||² for an autoencoder, :mod:`bioprop.tasks`). γ = 1 is
backprop's update direction: each hidden block's local gradient is α times backprop's gradient of
the batch-mean loss (``target_reduction=sum``; α/B with ``mean``), the output block's is backprop's;
γ = 0 is DTP, computed by DTP's own code (bit-identical). The inverses learn for every γ (their
loss does not depend on γ). The transposed Jacobian is a vector-Jacobian product by autograd through
the block (weight transport, as in backprop), so every layer type (FC, conv, LC) is supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bioprop.checks import check_number
from bioprop.rules.base import register_rule
from bioprop.rules.target_prop.variants import DifferenceTargetProp


@register_rule("hybrid")
class HybridTargetProp(DifferenceTargetProp):
    """DTP whose feedback is γ times the transposed Jacobian plus (1 - γ) times the learned inverse."""

    label = "BP-DTP hybrid"
    preset_column = "dtp-parallel"

    @dataclass
    class Options(DifferenceTargetProp.Options):
        gamma: float = field(default=0.5, metadata={
            "help": "hybrid: weight of backprop's transposed Jacobian in the feedback g = gamma g_bp + "
                    "(1 - gamma) g_inverse (1: backprop's direction, 0: dtp)",
            "search": ("uniform", 0.0, 1.0)})

    @classmethod
    def check_options(cls, o):
        check_number(o.gamma, "gamma", minimum=0, maximum=1)
        super().check_options(o)

    def transposed_jacobian(self, index: int, below: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """(∂h_index/∂h_{index-1})^T vector at h_{index-1} = ``below`` (0-based blocks)."""
        with torch.enable_grad():
            # differentiate w.r.t. a non-leaf view: module hooks (e.g. FlopCounterMode's tracker in
            # `bioprop plan`) cannot handle a leaf input inside autograd.grad
            below = below.detach().requires_grad_().view_as(below)
            above = self.model.blocks[index](below)
            (shift,) = torch.autograd.grad(above, below, grad_outputs=vector.to(above.dtype))
        return shift

    def propagate_target(self, index, h, target):
        gamma = float(self.options.gamma)
        if gamma == 0:
            return super().propagate_target(index, h, target)
        bp_shift = self.transposed_jacobian(index, h[index - 1], target - h[index])
        if gamma == 1:
            return h[index - 1] + bp_shift
        g = self.inverse(index)
        inverse_shift = g(target) - g(h[index])
        return h[index - 1] + (gamma * bp_shift + (1 - gamma) * inverse_shift)

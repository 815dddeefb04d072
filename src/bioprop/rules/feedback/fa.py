"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nature Communications 7:13276).

Backprop's backward pass with every transposed forward weight replaced by a fixed random
matrix ``B_l`` of the same shape:

    delta_L = dL/da_L,   delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l),   dW_l = delta_l h_{l-1}^T

For convolutional and locally-connected layers ``B_l`` is a fixed random kernel of the forward
kernel's shape, used by the layer's own transposed map (so the feedback has the forward
layer's sparsity). ``B_l`` is drawn Glorot-uniform like ``W_l`` (the paper does not state a
scale), from a generator seeded per layer, and stored as a buffer: it is saved in checkpoints,
moves with ``.to(device)`` and never receives an update.

Subclasses change only :meth:`FeedbackAlignment.feedback_weight` (sign symmetry) or let
``B`` learn (Kolen-Pollack, weight mirrors).
"""

from __future__ import annotations

import math

import torch

from bioprop.nn.affine import AffineOps, affine_ops
from bioprop.rules.base import LearningRule, StepResult, register_rule, task_loss


class FeedbackAffine(torch.autograd.Function):
    """``a = W x + b`` whose backward sends the error through ``feedback_weight`` instead of ``W``."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback_weight, ops: AffineOps):
        ctx.ops = ops
        ctx.save_for_backward(x, feedback_weight, bias)
        return ops.add_bias(ops.forward(x, weight), bias)

    @staticmethod
    def backward(ctx, grad):
        x, feedback_weight, bias = ctx.saved_tensors
        grad_x = ctx.ops.input_grad(grad, feedback_weight, x.shape) if ctx.needs_input_grad[0] else None
        grad_weight, grad_bias = ctx.ops.parameter_grads(x, grad, bias)
        return grad_x, grad_weight, grad_bias, None, None


def glorot_uniform_like(weight: torch.Tensor, ops: AffineOps, generator: torch.Generator) -> torch.Tensor:
    fan_in, fan_out = ops.fans()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    sample = torch.rand(weight.shape, generator=generator, dtype=weight.dtype)
    return ((2 * sample - 1) * bound).to(weight.device)


@register_rule("fa")
class FeedbackAlignment(LearningRule):
    def __init__(self, model, options=None, seed=0):
        super().__init__(model, options, seed)
        self.ops = [affine_ops(layer) for layer in model.layers]
        for index, (layer, ops) in enumerate(zip(model.layers, self.ops)):
            self.register_buffer(f"feedback_{index}", glorot_uniform_like(layer.weight, ops, self.layer_generator(index)))

    def feedback_weight(self, index: int) -> torch.Tensor:
        """The matrix that carries the error backwards through layer ``index``."""
        return getattr(self, f"feedback_{index}")

    def feedback_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's forward pass, with each layer's backward routed through its feedback weight."""
        for index, (block, ops) in enumerate(zip(self.model.blocks, self.ops)):
            layer_input = ops.prepare(block.prepare(x))
            pre_activation = FeedbackAffine.apply(
                layer_input, block.layer.weight, block.layer.bias, self.feedback_weight(index), ops)
            x = block.activate(pre_activation)
        return x

    def compute_gradients(self, x, y, groups):
        logits = self.feedback_forward(x)
        loss = task_loss(logits, y)
        loss.backward()
        return StepResult(loss.detach(), logits.detach())

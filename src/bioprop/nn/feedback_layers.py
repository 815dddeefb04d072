"""An affine layer whose backward pass sends the error through a feedback weight ``B`` instead of ``W``.

:func:`feedback_affine` computes the layer's output exactly as the layer itself does (the same
functional, :meth:`~bioprop.nn.affine.AffineOps.affine`), and its backward pass returns

    grad_x = B^T grad  (the layer's own transposed map, with B),   grad_W, grad_b  as backprop's,

and, for rules that learn ``B``, ``B``'s gradient from ``feedback_gradient(x, grad_W)``. With ``B = W``
every gradient equals autograd's bit for bit.

Mixed precision follows ``torch.autocast`` as the replaced layer does: under autocast the input,
weight and bias are cast to the autocast dtype by differentiable casts before the kernel runs
(floating tensors other than float64, as autocast's own casts), so the output has the native layer's
dtype, the gradients reach the float32 leaves through the casts, and ``backward()`` may run outside
the autocast region (with or without ``GradScaler``). ``B`` is cast to the error's dtype in the
backward pass only; a learned ``B``'s gradient comes back in ``B``'s own dtype.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from bioprop.nn.affine import AffineOps
from bioprop.nn.locally_connected import autocast_dtype


class FeedbackAffine(torch.autograd.Function):
    """``a = W x + b`` (the layer's own kernel) whose backward sends the error through ``feedback``.

    ``feedback_gradient(x, grad_weight)``, when given and ``feedback`` requires a gradient, returns
    ``B``'s gradient (Kolen-Pollack: ``W``'s own; weight mirrors: the mirror step's)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, ops: AffineOps, feedback_gradient: Callable | None = None):
        ctx.ops, ctx.feedback_gradient = ops, feedback_gradient
        ctx.save_for_backward(x, weight, bias, feedback)
        return ops.affine(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, feedback = ctx.saved_tensors
        ops = ctx.ops
        autocast_off = torch.autocast(grad.device.type, enabled=False) \
            if autocast_dtype(grad.device.type) is not None else contextlib.nullcontext()
        with autocast_off:  # the kernels run in the forward's dtypes, whatever region backward() is called in
            grad_x = ops.input_grad(grad, feedback.to(grad.dtype), x.shape) if ctx.needs_input_grad[0] else None
            learns_feedback = ctx.needs_input_grad[3] and ctx.feedback_gradient is not None
            grad_weight = grad_bias = grad_feedback = None
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2] or learns_feedback:
                grad_weight, grad_bias = ops.parameter_grads(x, grad, bias, weight=weight)
            if learns_feedback:
                grad_feedback = ctx.feedback_gradient(x, grad_weight).to(feedback.dtype)
        return grad_x, grad_weight, grad_bias, grad_feedback, None, None


def _autocast_cast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """What autocast does to an operand of a lower-precision op: floating tensors other than float64
    to ``dtype``, differentiably."""
    if tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(dtype)


def feedback_affine(ops: AffineOps, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    feedback: torch.Tensor, feedback_gradient: Callable | None = None) -> torch.Tensor:
    """The layer's output for the prepared input ``x`` (:meth:`AffineOps.prepare`), back-propagating
    through ``feedback``; follows autocast and unbatched inputs as the layer's own forward does."""
    unbatched = ops.unbatched(x)
    if unbatched:
        x = x.unsqueeze(0)
    dtype = autocast_dtype(x.device.type)
    if dtype is None:
        out = FeedbackAffine.apply(x, weight, bias, feedback, ops, feedback_gradient)
    else:
        x, weight, bias = (_autocast_cast(t, dtype) for t in (x, weight, bias))
        with torch.autocast(x.device.type, enabled=False):
            out = FeedbackAffine.apply(x, weight, bias, feedback, ops, feedback_gradient)
    return out.squeeze(0) if unbatched else out

"""``rule(x)`` of a rule whose update has no autograd form (target propagation): an output whose
backward pass raises, saying what to call, instead of silently giving backprop's gradients.

The check costs nothing where no graph is built: under ``torch.no_grad()`` (evaluation,
``bioprop.evaluate``) and inside ``rule.true_backprop()`` the model's output is returned as it is.
"""

from __future__ import annotations

import torch

from bioprop.errors import BiopropError


class RefuseBackward(torch.autograd.Function):
    """Identity on the output; its backward raises :class:`~bioprop.errors.BiopropError` with the message."""

    @staticmethod
    def forward(ctx, output, message: str):
        ctx.message = message
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        raise BiopropError(ctx.message)


def no_autograd_message(rule) -> str:
    return (f"rule {rule.name!r} has no autograd form: a backward pass through rule(x) would give backprop's "
            f"gradients, not {rule.label}'s. Train it with rule.compute_gradients(x, y, groups) for each groups "
            f"in rule.passes() (docs/own-loop.md). For backprop's gradients on purpose, differentiate inside "
            f"`with rule.true_backprop():`; evaluation under torch.no_grad() is unaffected")


def refuse_backward(output, rule):
    """``output`` with a backward pass that raises (when autograd would differentiate it at all)."""
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return output
    return RefuseBackward.apply(output, no_autograd_message(rule))

"""Kolen-Pollack learning (Kolen & Pollack 1994; as a deep-learning rule: Akrout, Wilson, Humphreys,
Lillicrap & Tweed 2019, NeurIPS "Deep Learning without Weight Transport").

Feedback alignment's backward pass with a *learned* feedback weight ``B_l`` of ``W_l``'s shape that
receives the same update as ``W_l``, plus the same weight decay:

    dW_l = delta_l h_{l-1}^T,   dB_l = dW_l,
    W_l <- (1 - lr*wd) W_l - lr * Adam(dW_l),   B_l <- (1 - lr*wd) B_l - lr * Adam(dB_l),

so ``B_l - W_l`` shrinks by ``(1 - lr*wd)`` every step and ``B_l`` converges to ``W_l`` (transposed
in the paper's convention, where ``B`` maps layer l+1 back to layer l). As in bioflax's
``RandomDenseLinearKP`` the backward pass returns ``W``'s gradient as ``B``'s, so an ordinary optimiser
moves ``B``: here the parameter group "feedback", whose Adam settings (decay included) default to the
forward group's. ``B`` starts Glorot-uniform like FA's.
"""

from __future__ import annotations

from bioprop.rules.base import register_rule
from bioprop.rules.feedback.fa import FeedbackAlignment


def same_as_weight_gradient(x, grad_weight):
    return grad_weight.clone()  # a tensor of its own: W's and B's .grad must not alias


@register_rule("kp")
class KolenPollack(FeedbackAlignment):
    """Kolen-Pollack (Akrout et al. 2019): ``grad_B = grad_W``; with equal optimiser settings and weight
    decay ``B - W`` decays geometrically."""

    label = "KP"
    groups = ("forward", "feedback")
    group_defaults = {"feedback": "forward"}
    preset_column = "fa"
    feedback_trainable = True

    def feedback_gradient(self, site):
        return same_as_weight_gradient

"""A feedback site: one layer of a wrapped model whose backward pass goes through a feedback weight.

While a site is installed, the layer's ``forward`` is an instance attribute that runs the rule's
:meth:`~bioprop.rules.feedback.fa.FeedbackAlignment.site_forward` (the layer's own kernel, whose
backward sends the error through ``B``: :func:`bioprop.nn.feedback_layers.feedback_affine`). Where no
graph is built (``torch.no_grad()``, evaluation) and inside ``rule.true_backprop()`` it runs the
layer's own ``forward``: the same numbers, at full speed.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from bioprop.nn.affine import affine_ops


class FeedbackSite:
    """One feedback layer: the layer, its name (``layer1`` .. for a Network, the module name otherwise),
    its path in the model (``state_dict`` keys), its index (the seed of its draws), its primitives, and
    whether it stores ``feedback_weight`` (rules that compute ``B`` from ``W`` store nothing)."""

    def __init__(self, rule, name: str, path: str, index: int, layer: nn.Module):
        self.rule, self.name, self.path, self.index, self.layer = rule, name, path, index, layer
        self.ops = affine_ops(layer)
        self.stores = False

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def stored(self) -> torch.Tensor | None:
        """The layer's ``feedback_weight`` (buffer or parameter), or None."""
        return self.layer.feedback_weight if self.stores else None

    @property
    def key(self) -> str:
        """The stored tensor's key in the model's ``state_dict``."""
        return f"{self.path}.feedback_weight" if self.path else "feedback_weight"

    def install(self) -> None:
        self.layer.__dict__["_feedback_site"] = self
        self.layer.__dict__["forward"] = types.MethodType(_site_forward, self.layer)

    def uninstall(self) -> None:
        self.layer.__dict__.pop("_feedback_site", None)
        self.layer.__dict__.pop("forward", None)


def is_feedback_site(layer: nn.Module) -> bool:
    return "_feedback_site" in layer.__dict__


def _site_forward(layer: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward of an installed layer (a bound method, so a deep copy of the module stays wired)."""
    site = layer.__dict__["_feedback_site"]
    if site.rule.in_true_backprop or not torch.is_grad_enabled():
        return type(layer).forward(layer, x, *args, **kwargs)
    return site.rule.site_forward(site, x, *args, **kwargs)

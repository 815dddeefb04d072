"""Glorot & Bengio (2010) initialisation from explicit fan counts, for the weights whose fans
``torch.nn.init`` cannot read off the shape: a locally-connected layer's per-location weight, a
learned inverse, a feedback weight shaped like its forward weight. (Layers whose shape says their
fans, ``nn.Linear`` and convolutions, use ``nn.init.xavier_uniform_``: ``models/zoo.py``.)
"""

from __future__ import annotations

import math

import torch


def glorot_uniform_bound(fan_in: int, fan_out: int) -> float:
    """``sqrt(6 / (fan_in + fan_out))``: Glorot-uniform samples from U(-bound, bound)."""
    return math.sqrt(6.0 / (fan_in + fan_out))


def glorot_normal_std(fan_in: int, fan_out: int) -> float:
    """``sqrt(2 / (fan_in + fan_out))``: Glorot-uniform's variance, for a Gaussian."""
    return math.sqrt(2.0 / (fan_in + fan_out))


def glorot_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Fills ``weight`` in place from U(-bound, bound) with the global generator (as
    ``nn.init.xavier_uniform_`` does for the fans it reads off the shape)."""
    bound = glorot_uniform_bound(fan_in, fan_out)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)

"""The one model structure every learning rule understands: a stack of blocks.

A :class:`Block` is ``(optional flatten) -> affine layer -> activation``, where the affine
layer is an ``nn.Linear``, a :class:`~bioprop.nn.Conv2dSame` or a
:class:`~bioprop.nn.LocallyConnected2d`. A :class:`Network` is a list of blocks whose last
block produces the output (identity activation): logits for a classifier, the reconstructed
input for an autoencoder (its ``task``, :mod:`bioprop.tasks`). Every network of Bartunov et al.
(2018) has this form (no pooling, no normalisation, tanh between layers), which is what lets a
learning rule drive the forward pass block by block: feedback alignment swaps the
backward of each affine layer, DFA cuts the graph between blocks, target propagation
trains each block on a local loss.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """``h = activation(layer(flatten(x)))``; the output block uses no activation (logits)."""

    def __init__(self, layer: nn.Module, activation: str = "tanh", flatten: bool = False):
        super().__init__()
        if activation not in ("tanh", "identity"):
            raise ValueError(f"activation must be 'tanh' or 'identity', got {activation!r}")
        self.layer = layer
        self.activation = activation
        self.flatten = flatten

    def layer_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input: ``x`` flattened to ``(N, features)`` where the block needs it."""
        return x.flatten(1) if self.flatten else x

    def activate(self, pre_activation: torch.Tensor) -> torch.Tensor:
        return torch.tanh(pre_activation) if self.activation == "tanh" else pre_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.layer(self.layer_input(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation}, flatten={self.flatten}"


class Network(nn.Module):
    """A stack of :class:`Block` s mapping ``(N, *input_shape)`` images to ``(N, output_units)`` outputs.

    ``task`` names what it is trained for (:data:`bioprop.tasks.TASKS`): ``"classification"``
    (``num_classes`` logits) or ``"reconstruction"`` (the flattened input again; ``num_classes``
    is None)."""

    def __init__(self, blocks: list[Block], input_shape: tuple[int, int, int], num_classes: int | None,
                 name: str = "", task: str = "classification"):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.name = name
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def hidden_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[h_1, ..., h_L]``: the output of every block, the network's output last."""
        activations = []
        for block in self.blocks:
            x = block(x)
            activations.append(x)
        return activations

    @property
    def layers(self) -> list[nn.Module]:
        return [block.layer for block in self.blocks]

    def output_shapes(self) -> list[tuple[int, ...]]:
        """Every block's output shape without the batch dimension: ``(units,)`` for a linear layer,
        ``(channels, height, width)`` for a map (``Conv2dSame``, ``LocallyConnected2d``: their
        ``out_size``)."""
        return [(layer.out_features,) if isinstance(layer, nn.Linear) else (layer.out_channels, *layer.out_size)
                for layer in self.layers]

    @property
    def output_units(self) -> int:
        """Width of the output layer (the classes of a classifier)."""
        return self.layers[-1].out_features

    def num_weights(self) -> int:
        """Number of weights, biases excluded (the count the paper's architecture table uses)."""
        return sum(layer.weight.numel() for layer in self.layers)

    def num_parameters(self) -> int:
        """Number of parameters: the weights and the biases (what ``bioprop plan`` counts and Adam
        keeps moments for)."""
        return sum(parameter.numel() for parameter in self.parameters())

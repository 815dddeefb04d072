"""Direct feedback alignment (Nøkland 2016, NeurIPS; "broadcast FA", Samadi et al. 2017).

The output error goes straight to every hidden layer through a fixed random matrix:

    e = dL/da_L,   delta_l = (B_l e) * f'(a_l),   dW_l = delta_l h_{l-1}^T  (l < L),

and the output layer learns from its true gradient. ``B_l`` maps the error to the *whole*
activation of layer l (dense DFA), also for convolutional and locally-connected layers.

Memory: instead of one ``classes x units_l`` matrix per layer (the sum over layers, which ran
out of memory on ImageNet in the paper), a single shared matrix ``M`` of shape
``(classes + hidden_layers - 1, max_l units_l)`` with entries uniform in [-1, 1) is stored, and
layer l uses the window ``B_l = s_l * M[l : l + classes, : units_l]`` (a view, no copy), with
the Glorot scale ``s_l = sqrt(6 / (classes + units_l))``. Shifting the row window per layer
keeps layers of equal width from sharing one feedback matrix. Memory grows with the largest
layer only (after TinyDFA, Launay et al. 2020).

Implementation: the graph is cut between blocks (each block sees a detached input), so a
single backward call pushes the true gradient into the output block and ``B_l e`` into each
hidden block's output; autograd then applies ``f'(a_l)`` and forms the local weight gradients.
"""

from __future__ import annotations

import math

import torch

from bioprop.rules.base import LearningRule, StepResult, register_rule, task_loss


@register_rule("dfa")
class DirectFeedbackAlignment(LearningRule):
    def __init__(self, model, options=None, seed=0):
        super().__init__(model, options, seed)
        classes = model.num_classes
        self.hidden_sizes = _hidden_sizes(model)
        rows = classes + max(len(self.hidden_sizes) - 1, 0)
        sample = torch.rand(rows, max(self.hidden_sizes, default=1), generator=self.layer_generator(0))
        self.register_buffer("feedback_matrix", 2 * sample - 1)

    def feedback_weight(self, index: int) -> torch.Tensor:
        """``B_l`` (classes x units) for hidden layer ``index``, already scaled: a view plus a scale."""
        classes, units = self.model.num_classes, self.hidden_sizes[index]
        return self.feedback_matrix[index: index + classes, :units] * math.sqrt(6.0 / (classes + units))

    def project_error(self, error: torch.Tensor, index: int) -> torch.Tensor:
        """``B_l e`` for a batch of output errors ``(N, classes)`` -> ``(N, units_l)``."""
        classes, units = self.model.num_classes, self.hidden_sizes[index]
        window = self.feedback_matrix[index: index + classes, :units]
        return error.mm(window) * math.sqrt(6.0 / (classes + units))

    def compute_gradients(self, x, y, groups):
        hidden = []
        for block in self.model.blocks[:-1]:
            x = block(x)
            hidden.append(x)
            x = x.detach()
        logits = self.model.blocks[-1](x)
        loss = task_loss(logits, y)
        (error,) = torch.autograd.grad(loss, logits, retain_graph=True)
        signals = [self.project_error(error, i).view_as(h) for i, h in enumerate(hidden)]
        torch.autograd.backward([loss, *hidden], [torch.ones_like(loss), *signals])
        return StepResult(loss.detach(), logits.detach())


def _hidden_sizes(model) -> list[int]:
    """Number of units in each hidden block's output (width x height x channels for maps)."""
    sizes = []
    for layer in model.layers[:-1]:
        if hasattr(layer, "out_size"):
            sizes.append(layer.out_channels * math.prod(layer.out_size))
        else:
            sizes.append(layer.out_features)
    return sizes

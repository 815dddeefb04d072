"""Direct random target projection (Frenkel, Lefebvre & Bol 2021, Frontiers in Neuroscience, "Learning
without feedback: fixed random learning signals allow for feedforward training of deep neural
networks").

DFA (:mod:`bioprop.rules.direct.dfa`) with the one-hot target y* in place of the output error: for a
classifier, the sign of e = softmax(a_L) − y* is known from y* alone (negative at the true class,
positive elsewhere), so the target, projected by a fixed random matrix, serves as the error, and
the hidden layers need neither the output nor a backward pass:

    delta_l = (B_l y*) / N * f'(a_l),    dW_l = delta_l h_{l-1}^T      (l < L)
    delta_L = dL/da_L = (softmax(a_L) - y*) / N                         (the output layer's true local gradient)

The hidden updates are DFA's with y*/N in place of e/N (N the batch size, as DFA's e is the
gradient of the batch-mean loss): the same shared feedback matrix M, windowed and Glorot-scaled per
layer (``B_l = s_l M[l : l + classes, : units_l]``), drawn from the rule's seed. A rule built from a
DFA rule's ``feedback_matrix`` gives exactly DFA's hidden gradients for a loss whose output error is
y* (tested). Each block sees a detached input, so every layer's update is local; the hidden
layers' updates can be computed during the forward pass, before the output is known. Classification
only: for other tasks the target carries no sign of the error (refused by name).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bioprop.nn.init import glorot_uniform_bound
from bioprop.rules.base import LearningRule, StepResult, register_rule
from bioprop.rules.forward_only import require_network


@register_rule("drtp")
class DirectRandomTargetProjection(LearningRule):
    """DRTP (Frenkel et al. 2021): delta_l = (B_l y*) * f'(a_l) for hidden layers, the true gradient at the output."""

    label = "DRTP"
    preset_column = "fa"
    # Adam's lr chosen among 3e-4, 1e-3, 3e-3 on the validation error after one epoch of MNIST-FC (seed 0;
    # docs/results/beyond-families/README.md)
    preset_settings = {"lr": 3e-3}
    wrap_refusal = ("it projects the labels, which a wrapped module's loss.backward() does not carry (dfa, which "
                    "projects the output's gradient, wraps)")
    tasks = ("classification",)

    def __init__(self, model, options=None, seed=0):
        super().__init__(model, options, seed)
        require_network(self, model)
        self.num_classes = model.output_units
        self.hidden_sizes = [math.prod(shape) for shape in model.output_shapes()[:-1]]
        rows = self.num_classes + max(len(self.hidden_sizes) - 1, 0)
        sample = torch.rand(rows, max(self.hidden_sizes), generator=self.layer_generator(0))
        reference = model.layers[0].weight
        self.register_buffer("feedback_matrix", (2 * sample - 1).to(reference.device))

    def project_target(self, signal: torch.Tensor, index: int) -> torch.Tensor:
        """``B_l t`` for a batch ``(N, classes)`` -> ``(N, units_l)``, ``B_l`` DFA's window of the shared
        matrix, ``s_l M[l : l + classes, : units_l]``, s_l = sqrt(6 / (classes + units_l))."""
        classes, units = self.num_classes, self.hidden_sizes[index]
        window = self.feedback_matrix[index: index + classes, :units].to(signal.dtype)
        return signal.mm(window) * glorot_uniform_bound(classes, units)

    def compute_gradients(self, x, y, groups):
        target = self.task.target(x, y)
        hidden = []
        for block in self.model.blocks[:-1]:
            x = block(x)
            hidden.append(x)
            x = x.detach()
        logits = self.model.blocks[-1](x)
        loss = self.task.loss(logits, target)
        if "forward" in groups:
            signal = F.one_hot(target, self.num_classes).to(logits.dtype) / len(target)   # y* / N
            signals = [self.project_target(signal, i).view_as(h) for i, h in enumerate(hidden)]
            torch.autograd.backward([loss, *hidden], [torch.ones_like(loss), *signals])
        return StepResult(loss.detach(), logits.detach())


"""Backpropagation (Rumelhart, Hinton & Williams 1986).

    delta_L = dL/da_L,   delta_l = (W_{l+1}^T delta_{l+1}) * f'(a_l),   dW_l = delta_l h_{l-1}^T

The reference every other rule is measured against: autograd's exact gradient of the model's
task loss L (:mod:`bioprop.tasks`: the batch-mean cross-entropy of a classifier, ½||h_L - x||²
averaged over the batch for an autoencoder; delta_L = dL/da_L = e / N with e = softmax - y* or
h_L - x).
"""

from __future__ import annotations

from bioprop.rules.base import LearningRule, StepResult, register_rule, rule_options
from bioprop.rules.wrapping import backprop_of


@register_rule("bp")
class Backprop(LearningRule):
    """Backprop: autograd's gradient of the task loss. It leaves the model as it is; on a model that
    another rule wraps (``bioprop.wrap``) it runs with that rule switched off (its ``true_backprop()``),
    so ``bp`` is backprop on any model."""

    trains_through_autograd = True
    runs_on_wrapped_model = True

    def forward(self, x):
        with backprop_of(self.model):
            return self.model(x)

    def compute_gradients(self, x, y, groups):
        with backprop_of(self.model):
            logits = self.model(x)
            loss = self.task.loss(logits, self.task.target(x, y))
            loss.backward()
        return StepResult(loss.detach(), logits.detach())

    @classmethod
    def wrap(cls, module, seed=0, strict=True, **options):
        """Backprop on any module is autograd itself: the module is returned unchanged."""
        rule_options(cls.name, **options)
        return module

"""Backpropagation (Rumelhart, Hinton & Williams 1986).

    delta_L = dL/da_L,   delta_l = (W_{l+1}^T delta_{l+1}) * f'(a_l),   dW_l = delta_l h_{l-1}^T

The reference every other rule is measured against: autograd's exact gradient of the model's
task loss L (:mod:`bioprop.tasks`: the batch-mean cross-entropy of a classifier, ½||h_L - x||²
averaged over the batch for an autoencoder; delta_L = dL/da_L = e / N with e = softmax - y* or
h_L - x).
"""

from __future__ import annotations

from bioprop.rules.base import LearningRule, StepResult, register_rule, rule_options


@register_rule("bp")
class Backprop(LearningRule):
    def compute_gradients(self, x, y, groups):
        logits = self.model(x)
        loss = self.task.loss(logits, self.task.target(x, y))
        loss.backward()
        return StepResult(loss.detach(), logits.detach())

    @classmethod
    def wrap(cls, module, seed=0, **options):
        """Backprop on any module is autograd itself: the module is returned unchanged."""
        rule_options(cls.name, **options)
        return module

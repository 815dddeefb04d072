"""Backpropagation (Rumelhart, Hinton & Williams 1986).

    delta_L = dL/da_L,   delta_l = (W_{l+1}^T delta_{l+1}) * f'(a_l),   dW_l = delta_l h_{l-1}^T

The reference every other rule is measured against: autograd's exact gradient of the
batch-mean cross-entropy.
"""

from __future__ import annotations

from bioprop.rules.base import LearningRule, StepResult, register_rule, rule_options, task_loss


@register_rule("bp")
class Backprop(LearningRule):
    def compute_gradients(self, x, y, groups):
        logits = self.model(x)
        loss = task_loss(logits, y)
        loss.backward()
        return StepResult(loss.detach(), logits.detach())

    @classmethod
    def wrap(cls, module, seed=0, **options):
        """Backprop on any module is autograd itself: the module is returned unchanged."""
        rule_options(cls.name, **options)
        return module

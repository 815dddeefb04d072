"""Alignment with backprop, per layer, for every rule: why a rule works or fails, layer by layer.

On the batch just used for a step (``--alignment-every N``: every N-th step of each pass that
trains the forward weights; 0, the default, measures nothing and costs nothing):

* ``update_angle/<layer>``: the angle (degrees) between the rule's gradient of the layer's weight
  (what ``compute_gradients`` left in ``.grad``, before any all-reduce or optimiser step) and
  backprop's exact gradient of the batch-mean task loss (cross-entropy; ½||h_L - x||² for an
  autoencoder, :mod:`bioprop.tasks`), computed with the *same* parameters
  on the same batch by autograd (no copy of the model: the rule's ``true_backprop()`` context
  turns off whatever the rule changed in the backward pass). The loss is that of the network's
  output, or, for a rule that defines its own inference (``LearningRule.predict``: Forward-Forward's
  label sweep, equilibrium propagation's free phase), of that prediction, differentiated through it.
  0° is backprop's direction, 90° is no better than chance, > 90° goes uphill;
* ``update_norm_ratio/<layer>``: ||rule gradient|| / ||backprop gradient||;
* ``feedback_angle/<layer>`` and ``feedback_norm_ratio/<layer>`` (rules with feedback weights B of
  W's shape): the angle between B and W, and ||B|| / ||W||.

The measurement leaves training untouched: it draws no random numbers from the training streams
(``torch.random.fork_rng``), restores the model's buffers (batch-norm statistics of a user's
module), and reads the gradients without changing them (tested: a run with alignment on ends
with the same parameters as one with it off). In data-parallel runs it is measured on the first
process's shard. Values are averaged per pass like the rules' diagnostics and written per epoch
in ``metrics.jsonl`` (``diagnostics``); ``bioprop report`` plots them per rule and layer.
"""

from __future__ import annotations

import torch

from bioprop.rules.base import LearningRule
from bioprop.rules.base import angle_degrees as example_angles


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between ``a`` and ``b`` (flattened), in degrees, computed in float64.

    Identical directions give 0, opposite ones 180, orthogonal ones 90; a zero vector has no
    direction and gives 90 (uninformative)."""
    return float(example_angles(a.reshape(1, -1), b.reshape(1, -1))[0])


def norm_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a|| / ||b|| (inf when b is zero and a is not, 1 when both are)."""
    numerator, denominator = float(a.detach().double().norm()), float(b.detach().double().norm())
    if denominator == 0:
        return 1.0 if numerator == 0 else float("inf")
    return numerator / denominator


def reference_output(rule: LearningRule, x: torch.Tensor) -> torch.Tensor:
    """What backprop's reference differentiates: the rule's own ``predict`` when it defines one (what it
    is scored on), else the network's forward pass ``rule.model(x)``."""
    if type(rule).predict is not LearningRule.predict:
        return rule.predict(x)
    return rule.model(x)


def backprop_gradients(rule: LearningRule, x: torch.Tensor, y: torch.Tensor,
                       weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backprop's exact gradient of the batch-mean task loss for each of ``weights``, with the
    rule's current parameters, leaving the model's buffers and the random streams as they were."""
    model = rule.model
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad(), rule.true_backprop():
        with torch.autocast(x.device.type, enabled=False):
            loss = rule.task.loss(reference_output(rule, x), rule.task.target(x, y))
        gradients = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    return {name: torch.zeros_like(weight) if gradient is None else gradient
            for (name, weight), gradient in zip(weights.items(), gradients)}


def measure(rule: LearningRule, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The alignment metrics of the module docstring for one batch, right after ``compute_gradients``."""
    weights = {name: weight for name, weight in rule.layer_weights().items() if weight.grad is not None}
    values: dict[str, float] = {}
    if weights:
        true = backprop_gradients(rule, x, y, weights)
        for name, weight in weights.items():
            values[f"update_angle/{name}"] = angle_degrees(weight.grad, true[name])
            values[f"update_norm_ratio/{name}"] = norm_ratio(weight.grad, true[name])
    for name, (forward_weight, feedback_weight) in rule.feedback_pairs().items():
        values[f"feedback_angle/{name}"] = angle_degrees(feedback_weight, forward_weight)
        values[f"feedback_norm_ratio/{name}"] = norm_ratio(feedback_weight, forward_weight)
    return values

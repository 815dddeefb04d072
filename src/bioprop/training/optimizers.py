"""Optimisers and learning-rate schedules: one of each per parameter group of a rule.

Every group (``forward``, ``inverse``, ``feedback``) has its own settings
(:class:`~bioprop.training.config.OptimizerConfig`), so its own optimiser and schedule:

* :func:`make_optimizer` builds Adam, AdamW or SGD (with momentum, optionally Nesterov's) with the
  chosen kernel, and for Adam's ``eps_convention="tensorflow"`` the step pre-hook that moves ε to
  where TensorFlow adds it.
* :func:`make_scheduler` builds the group's learning-rate schedule (``None`` for a constant rate):
  a :class:`torch.optim.lr_scheduler.LambdaLR` whose factor is a :class:`LearningRateFactor` of the
  number of steps the group's optimiser has taken. Durations are given in epochs and converted
  with the *group's* steps per epoch, so a group that trains only in some passes (the inverses
  under target propagation's alternating schedule) follows the same epoch-based schedule.

The schedule is stepped once after every step of its optimiser. Its ``state_dict`` holds the
step count, the base rates and the factor's fields (the horizon in steps included), so a
restored schedule continues the saved sequence exactly; restore the optimiser's state first,
then the schedule's (see :func:`make_scheduler`). Formulas: ``docs/optimizers.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from bioprop.training.config import OptimizerConfig


def make_optimizer(parameters: list, settings: OptimizerConfig, implementation: str = "plain",
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimiser ``settings.optimizer`` names, over ``parameters``, with the chosen kernel:
    ``fused`` (one kernel over all tensors), ``foreach`` (batched ops), ``plain`` (a loop over
    tensors), or ``auto`` (fused where the device supports it). The three compute the same update
    to float rounding (tested).

    * ``adam``: Adam; with ``weight_decay`` > 0 AdamW's decoupled decay (as before the ``optimizer``
      field existed, so older configs train bit for bit as they did);
    * ``adamw``: AdamW (decoupled decay θ ← θ(1 - lr·weight_decay) before the Adam step);
    * ``sgd``: SGD with ``momentum`` (dampening 0), Nesterov's variant with ``nesterov``, and
      ``weight_decay`` as an L2 term added to the gradient (torch's SGD).
    """
    kernel = {}
    if implementation == "auto":
        implementation = "fused" if device is not None and device.type in ("cpu", "cuda") else "plain"
    if implementation == "fused":
        kernel = {"fused": True}
    elif implementation == "foreach":
        kernel = {"foreach": True}
    elif implementation == "plain":
        kernel = {"foreach": False}
    if settings.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum, dampening=0.0,
                               nesterov=settings.nesterov, weight_decay=settings.weight_decay, **kernel)
    betas = (settings.beta1, settings.beta2)
    if settings.optimizer == "adamw" or settings.weight_decay > 0:
        optimizer = torch.optim.AdamW(parameters, lr=settings.lr, betas=betas, eps=settings.eps,
                                      weight_decay=settings.weight_decay, **kernel)
    else:
        optimizer = torch.optim.Adam(parameters, lr=settings.lr, betas=betas, eps=settings.eps, **kernel)
    if settings.eps_convention == "tensorflow":
        optimizer.register_step_pre_hook(functools.partial(_tensorflow_epsilon, eps=settings.eps))
    return optimizer


def _tensorflow_epsilon(optimizer: torch.optim.Optimizer, args, kwargs, eps: float) -> None:
    """Before step t of each group: ε_t = ε / √(1 - β2ᵗ), which turns PyTorch's update into
    TensorFlow's (ε added to the uncorrected √v; :class:`~bioprop.training.config.OptimizerConfig`).
    The step count lives in the group, so it is saved in checkpoints with the optimiser state."""
    for group in optimizer.param_groups:
        group["tensorflow_step"] = group.get("tensorflow_step", 0) + 1
        group["eps"] = eps / math.sqrt(1.0 - group["betas"][1] ** group["tensorflow_step"])


#: the most elements of a weight :func:`adam_step_scale` reads (evenly spaced beyond that)
STEP_SCALE_SAMPLE = 1 << 20


def adam_step_scale(optimizer: torch.optim.Optimizer, names: dict[torch.Tensor, str]) -> dict[str, float]:
    """How much Adam's ε shrinks each weight's steps: the median over its elements of
    √v̂ / (√v̂ + ε), the factor between Adam's step and the step it would take with ε = 0 (1: ε is
    negligible; 0.01: the steps are a hundredth of what the gradients ask, as when a loss averaged
    over thousands of units gives gradients far below ε). ``names``: parameter -> name; only
    tensors with two or more dimensions (weights) that have taken a step are measured. ``{}`` for
    SGD. Uses the group's current ε (under ``eps_convention="tensorflow"``, the last step's). A weight
    of more than :data:`STEP_SCALE_SAMPLE` elements is read at that many evenly spaced ones (an
    ImageNet-LC layer's temporaries would otherwise be gigabytes, once an epoch)."""
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return {}
    scales = {}
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if parameter.dim() < 2 or "exp_avg_sq" not in state or parameter not in names:
                continue
            step = float(state["step"])
            second_moment = state["exp_avg_sq"].detach().flatten()
            if second_moment.numel() > STEP_SCALE_SAMPLE:  # evenly spaced elements: bounded memory and time
                second_moment = second_moment[:: second_moment.numel() // STEP_SCALE_SAMPLE + 1]
            root = (second_moment.float() / (1.0 - beta2 ** step)).sqrt()
            scales[names[parameter]] = float((root / (root + eps)).median())
    return scales


@dataclass
class LearningRateFactor:
    """The factor f(s) by which the base learning rate is multiplied at the group's step s
    (s = 0 for its first optimiser step), as a product of a warm-up and a decay:

    * warm-up: (s + 1) / W for s < W, else 1 (W = ``warmup_steps``; none when W = 0), so the
      first step uses lr / W and step W - 1 the full rate;
    * ``constant``: 1;
    * ``cosine``: r + (1 - r) · ½ (1 + cos(π p)) with p = min(1, (s - W) / (T - W)) after the warm-up
      (p = 0 during it), r = ``min_lr_ratio``, T = ``total_steps``: 1 when the warm-up ends, (1 + r) / 2
      half-way through the rest, r after the last step (and beyond, if training runs longer);
    * ``step``: γ^⌊s / P⌋, γ = ``step_gamma``, P = ``step_steps``: the rate is multiplied by γ every
      P steps, counted from the first step (epochs 30, 60, ... for 30 epochs), warm-up or not.

    A callable object rather than a function, so that :class:`~torch.optim.lr_scheduler.LambdaLR`
    saves its fields in its ``state_dict`` and a restored schedule keeps the horizon it started with.
    """

    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    min_lr_ratio: float = 0.0
    step_steps: int = 1
    step_gamma: float = 1.0

    def __call__(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            progress = min(1.0, max(0.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)))
            factor *= self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.schedule == "step":
            factor *= self.step_gamma ** (step // self.step_steps)
        return factor


def learning_rate_factor(settings: OptimizerConfig, steps_per_epoch: int, epochs: int) -> LearningRateFactor:
    """The :class:`LearningRateFactor` of ``settings`` for a group that steps ``steps_per_epoch`` times
    an epoch over ``epochs`` epochs (durations in epochs rounded to whole steps; a step period of at
    least one step)."""
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    return LearningRateFactor(schedule=settings.lr_schedule,
                              warmup_steps=round(settings.warmup_epochs * steps_per_epoch),
                              total_steps=epochs * steps_per_epoch,
                              min_lr_ratio=float(settings.min_lr_ratio),
                              step_steps=max(1, round(settings.step_epochs * steps_per_epoch)),
                              step_gamma=float(settings.step_gamma))


def make_scheduler(optimizer: torch.optim.Optimizer, settings: OptimizerConfig, steps_per_epoch: int,
                   epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of ``settings`` over ``optimizer``, or ``None`` for a constant rate
    without warm-up (nothing to step: the update is the one without any schedule, bit for bit).

    ``steps_per_epoch``: how many times this group's optimiser steps in one epoch (the batches of
    every pass that trains the group); ``epochs``: the run's length. Build it right after the
    optimiser (it sets the optimiser's ``lr`` to the rate of step 0), call its ``step()`` after each
    ``optimizer.step()``, save its ``state_dict()`` with the optimiser's, and on resume load the
    optimiser's state, then the schedule's: the rates continue where they stopped.
    """
    if settings.lr_schedule == "constant" and settings.warmup_epochs == 0:
        learning_rate_factor(settings, steps_per_epoch, epochs)  # the same checks of the arguments
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(settings, steps_per_epoch, epochs))

"""Feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nature Communications 7:13276),
and the machinery every feedback-weight rule shares.

Backprop's backward pass with every transposed forward weight replaced by a matrix ``B_l`` of the
same shape:

    delta_L = dL/da_L,   delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l),   dW_l = delta_l h_{l-1}^T

with L the model's task loss (:mod:`bioprop.tasks`: cross-entropy, or ½||h_L - x||² for an
autoencoder); the error enters through the task, the feedback is the same for every task.

For convolutional and locally-connected layers ``B_l`` is a kernel of the forward kernel's shape,
used by the layer's own transposed map (so the feedback has the forward layer's sparsity). In FA,
``B_l`` is fixed and random, drawn Glorot-uniform like ``W_l`` (the paper does not state a scale)
from a generator seeded per layer (:meth:`LearningRule.layer_generator`), and stored as a buffer:
it is saved in checkpoints, moves with ``.to(device)`` and never receives an update.

The mechanism: every affine layer (``nn.Linear``, any ``nn.Conv2d``, ``LocallyConnected2d``) is a
:class:`FeedbackSite`. While a site is *installed*, the layer's ``forward`` is replaced by
:class:`FeedbackAffine`, whose backward sends the error through the site's feedback weight and,
for rules that learn ``B`` (Kolen-Pollack, weight mirrors), returns ``B``'s gradient too; all else
(activations, normalisation, pooling, skip connections) is left to autograd.

* On a :class:`~bioprop.models.Network` (``create_rule("fa", net)``) the feedback weights belong
  to the rule (``feedback_0`` .. ``feedback_{L-1}``) and the sites are installed only during
  :meth:`compute_gradients`, so the network itself is never changed (several rules may share it).
* On any other ``nn.Module`` (``bioprop.wrap(module, rule="fa")``, or a user's model named by
  ``--model package.module:function``) the sites are installed in place for good and each layer
  holds its own ``feedback_weight`` (buffer, or parameter for rules that learn it), so the module's
  ``state_dict`` and ``.to()`` carry it; :meth:`true_backprop` switches the sites off for a while.

Subclasses change :meth:`FeedbackAlignment.initial_feedback` and :meth:`feedback_weight` (sign
symmetry), or let ``B`` learn through :meth:`feedback_gradient` (Kolen-Pollack, weight mirrors).
"""

from __future__ import annotations

import math
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, ClassVar

import torch
from torch import nn

from bioprop.checks import check_number
from bioprop.errors import BiopropError
from bioprop.models import Network
from bioprop.nn.affine import AffineOps, affine_ops
from bioprop.rules.base import AFFINE_LAYERS, LearningRule, StepResult, register_rule, rule_options



class FeedbackAffine(torch.autograd.Function):
    """``a = W x + b`` whose backward sends the error through ``feedback_weight`` instead of ``W``.

    ``feedback_gradient(x, grad_weight)``, when given and ``feedback_weight`` requires a gradient,
    returns ``B``'s gradient (Kolen-Pollack: ``W``'s own; weight mirrors: the mirror step's)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback_weight, ops: AffineOps, feedback_gradient: Callable | None = None):
        ctx.ops, ctx.feedback_gradient = ops, feedback_gradient
        ctx.save_for_backward(x, feedback_weight, bias)
        return ops.add_bias(ops.forward(x, weight), bias)

    @staticmethod
    def backward(ctx, grad):
        x, feedback_weight, bias = ctx.saved_tensors
        grad_x = ctx.ops.input_grad(grad, feedback_weight, x.shape) if ctx.needs_input_grad[0] else None
        grad_weight, grad_bias = ctx.ops.parameter_grads(x, grad, bias)
        grad_feedback = None
        if ctx.needs_input_grad[3] and ctx.feedback_gradient is not None:
            grad_feedback = ctx.feedback_gradient(x, grad_weight)
        return grad_x, grad_weight, grad_bias, grad_feedback, None, None


def glorot_uniform_like(weight: torch.Tensor, ops: AffineOps, generator: torch.Generator) -> torch.Tensor:
    fan_in, fan_out = ops.fans()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    sample = torch.rand(weight.shape, generator=generator, dtype=weight.dtype)
    return ((2 * sample - 1) * bound).to(weight.device)


def glorot_normal_like(weight: torch.Tensor, ops: AffineOps, generator: torch.Generator) -> torch.Tensor:
    """N(0, 2 / (fan_in + fan_out)): Glorot-uniform's variance, Gaussian."""
    fan_in, fan_out = ops.fans()
    sample = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)
    return (sample * math.sqrt(2.0 / (fan_in + fan_out))).to(weight.device)


FEEDBACK_INITS = {"glorot-uniform": glorot_uniform_like, "glorot-normal": glorot_normal_like}


@dataclass
class FeedbackInitOptions:
    """How a stored random feedback weight ``B`` is drawn (neither paper states it)."""

    feedback_init: str = field(default="glorot-uniform", metadata={
        "help": "distribution of the random feedback weights B: 'glorot-uniform' (as W) or 'glorot-normal' "
                "(the same variance, Gaussian)",
        "choices": list(FEEDBACK_INITS)})
    feedback_scale: float = field(default=1.0, metadata={
        "help": "factor on the random feedback weights B (> 0); under Adam it matters only through eps, as "
                "it scales layer l's update by feedback_scale^(layers above l)"})


class FeedbackSite:
    """One affine layer whose backward pass goes through a feedback weight: the layer, its name
    (``layer1`` .. for a Network, the module name otherwise), its primitives, and where its stored
    feedback tensor lives (``holder.key``; ``key`` is None for rules that compute ``B`` from ``W``)."""

    def __init__(self, rule: "FeedbackAlignment", name: str, index: int, layer: nn.Module, holder: nn.Module,
                 key: str | None):
        self.rule, self.name, self.index, self.layer = rule, name, index, layer
        self.ops = affine_ops(layer)
        self.holder, self.key = holder, key
        self.enabled = True  # False within ``true_backprop()``

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    @property
    def stored(self) -> torch.Tensor | None:
        return getattr(self.holder, self.key) if self.key is not None else None

    def install(self) -> None:
        if "_feedback_site" in self.layer.__dict__:
            raise BiopropError(f"layer {self.name!r} ({type(self.layer).__name__}) is already wrapped by a "
                               f"feedback rule")
        self.layer.__dict__["_feedback_site"] = self
        self.layer.__dict__["forward"] = types.MethodType(_site_forward, self.layer)

    def uninstall(self) -> None:
        self.layer.__dict__.pop("_feedback_site", None)
        self.layer.__dict__.pop("forward", None)


def _site_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward of an installed layer (a bound method, so a deep copy of the module stays wired)."""
    site = layer.__dict__["_feedback_site"]
    if not site.enabled:
        return type(layer).forward(layer, x)
    return site.rule.site_forward(site, x)


@register_rule("fa")
class FeedbackAlignment(LearningRule):
    """Feedback alignment: ``delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l)`` with a fixed random ``B``
    (Lillicrap et al. 2016), drawn Glorot-uniform per layer."""

    Options = FeedbackInitOptions
    #: whether ``B`` is an ``nn.Parameter`` (group "feedback") rather than a fixed buffer
    feedback_trainable: ClassVar[bool] = False

    def __init__(self, model: nn.Module, options=None, seed: int = 0, in_place: bool | None = None):
        super().__init__(model, options, seed)
        #: in place: sites installed for good, feedback tensors held by the layers (any nn.Module)
        self.in_place = not isinstance(model, Network) if in_place is None else in_place
        self.feedback_step = 0  # mini-batches seen: seeds per-batch draws (brsf, mirror noise)
        self.feedback_learning = True  # whether B's gradient is computed ("feedback" in the groups)
        self.sites: list[FeedbackSite] = []
        for index, (name, layer) in enumerate(self._affine_layers(model)):
            holder, key = (layer, "feedback_weight") if self.in_place else (self, f"feedback_{index}")
            site = FeedbackSite(self, name, index, layer, holder, key)
            stored = self.initial_feedback(site)
            if stored is None:
                site.key = None
            elif self.feedback_trainable:
                holder.register_parameter(key, nn.Parameter(stored))
            else:
                holder.register_buffer(key, stored)
            self.sites.append(site)
        if self.in_place:
            for site in self.sites:
                site.install()

    def _affine_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        if isinstance(model, Network):
            return [(f"layer{index + 1}", layer) for index, layer in enumerate(model.layers)]
        layers = [(name, module) for name, module in model.named_modules() if isinstance(module, AFFINE_LAYERS)]
        if not layers:
            raise BiopropError(f"rule {self.name!r}: {type(model).__name__} has no nn.Linear, nn.Conv2d or "
                               f"LocallyConnected2d layer whose backward pass it could replace")
        return layers

    # -- what subclasses change ---------------------------------------------------------------
    @classmethod
    def check_options(cls, o) -> None:
        if hasattr(o, "feedback_scale"):
            check_number(o.feedback_scale, "feedback_scale", minimum=0, low_open=True)
        super().check_options(o)

    def initial_feedback(self, site: FeedbackSite) -> torch.Tensor | None:
        """The tensor stored for ``site`` (buffer or parameter), or None when ``B`` is computed from ``W``:
        drawn as ``feedback_init`` says, times ``feedback_scale``."""
        draw = FEEDBACK_INITS[self.options.feedback_init]
        feedback = draw(site.weight, site.ops, self.layer_generator(site.index))
        scale = float(self.options.feedback_scale)
        return feedback if scale == 1.0 else feedback * scale

    def feedback_weight(self, site: FeedbackSite | int) -> torch.Tensor:
        """The matrix that carries the error backwards through ``site`` (or layer index)."""
        site = self.sites[site] if isinstance(site, int) else site
        return site.stored

    def feedback_gradient(self, site: FeedbackSite) -> Callable | None:
        """``(x, grad_weight) -> grad_B`` for rules that learn ``B``; None for fixed feedback."""
        return None

    # -- the forward pass of an installed layer -------------------------------------------------
    def site_forward(self, site: FeedbackSite, x: torch.Tensor) -> torch.Tensor:
        flat_shape = x.shape if isinstance(site.layer, nn.Linear) and x.dim() != 2 else None
        if flat_shape is not None:  # nn.Linear on (..., features): fold the leading dimensions
            x = x.reshape(-1, flat_shape[-1])
        gradient = self.feedback_gradient(site) if self.feedback_learning else None
        out = FeedbackAffine.apply(site.ops.prepare(x), site.layer.weight, site.layer.bias,
                                   self.feedback_weight(site), site.ops, gradient)
        return out if flat_shape is None else out.reshape(*flat_shape[:-1], out.shape[-1])

    @contextmanager
    def feedback_installed(self):
        """Within this context the model's layers back-propagate through their feedback weights."""
        if self.in_place:
            yield
            return
        for site in self.sites:
            site.install()
        try:
            yield
        finally:
            for site in self.sites:
                site.uninstall()

    # -- the interface the training loop uses -------------------------------------------------
    def parameter_groups(self):
        groups = {"forward": list(self.model.parameters())}
        if "feedback" in self.groups:
            feedback = [site.stored for site in self.sites if site.key is not None]
            known = {id(p) for p in feedback}
            groups = {"forward": [p for p in groups["forward"] if id(p) not in known], "feedback": feedback}
        return groups

    def compute_gradients(self, x, y, groups):
        self.feedback_step += 1
        self.feedback_learning = "feedback" in groups
        try:
            with self.feedback_installed():
                logits = self.model(x)
                loss = self.task.loss(logits, self.task.target(x, y))
                loss.backward()
        finally:
            self.feedback_learning = True
        return StepResult(loss.detach(), logits.detach())

    # -- what alignment metrics read --------------------------------------------------------------
    def layer_weights(self):
        return {site.name: site.weight for site in self.sites}

    def feedback_pairs(self):
        with torch.no_grad():
            return {site.name: (site.weight, self.feedback_weight(site).detach()) for site in self.sites}

    @contextmanager
    def true_backprop(self):
        previous = [site.enabled for site in self.sites]
        for site in self.sites:
            site.enabled = False
        try:
            yield
        finally:
            for site, enabled in zip(self.sites, previous):
                site.enabled = enabled

    # -- any nn.Module ----------------------------------------------------------------------------
    @classmethod
    def wrap(cls, module: nn.Module, seed: int = 0, **options) -> nn.Module:
        """``module`` itself, each affine layer now back-propagating through its feedback weight (a
        ``feedback_weight`` buffer or parameter on the layer). The rule is ``module.bioprop_rule``;
        its batch counter advances on every forward call in training mode with gradients enabled."""
        if not isinstance(module, nn.Module):
            raise BiopropError(f"rule {cls.name!r}: bioprop.wrap needs an nn.Module, got {type(module).__name__}")
        rule = cls(module, rule_options(cls.name, **options), seed=seed, in_place=True)
        module.__dict__["bioprop_rule"] = rule  # not a submodule: the module's state_dict stays its own
        module.register_forward_pre_hook(rule.count_batch)  # bound methods: deep copies stay wired
        if isinstance(rule, CountsBatches):  # the draw counter and seed travel in the module's state_dict
            add_state_dict_hook, add_load_hook = state_dict_hook_registrars(module)
            add_state_dict_hook(partial(CountsBatches.save_counter, rule))
            add_load_hook(partial(CountsBatches.load_counter, rule))
        return module

    def count_batch(self, module: nn.Module, inputs) -> None:
        """Forward pre-hook of a wrapped module: one more training mini-batch."""
        if module.training and torch.is_grad_enabled():
            self.feedback_step += 1


class CountsBatches:
    """Mixin: what seeds the per-batch draws, the seed and the batch counter, is saved with the rule's
    ``state_dict`` (``_extra_state``), so a resumed run draws what the uninterrupted run would have."""

    def get_extra_state(self):
        return {"feedback_step": self.feedback_step, "seed": self.seed}

    def set_extra_state(self, state):
        self.feedback_step = int(state["feedback_step"])
        self.seed = int(state.get("seed", self.seed))

    #: the key of that state in a wrapped module's ``state_dict``
    wrapped_state_key = "bioprop_feedback_state"

    def save_counter(self, module, state_dict, prefix, local_metadata):
        state_dict[prefix + self.wrapped_state_key] = self.get_extra_state()

    def load_counter(self, module, state_dict, prefix, *args):
        state = state_dict.pop(prefix + self.wrapped_state_key, None)
        if state is not None:
            self.set_extra_state(state)


def state_dict_hook_registrars(module: nn.Module):
    """``module``'s registrars of a state-dict post hook ``hook(module, state_dict, prefix, metadata)``
    and a load pre hook ``hook(module, state_dict, prefix, ...)``: public from torch 2.5, private (the
    same hooks) in torch 2.4."""
    if hasattr(module, "register_state_dict_post_hook"):
        return module.register_state_dict_post_hook, module.register_load_state_dict_pre_hook
    return module._register_state_dict_hook, partial(module._register_load_state_dict_pre_hook, with_module=True)


def mixed_seed(base: int, *values: int) -> int:
    """A 63-bit generator seed from a base seed and counters (layer index, batch, rank)."""
    seed = base
    for value in values:
        seed = (seed * 1_000_033 + value) % (2 ** 63)
    return seed

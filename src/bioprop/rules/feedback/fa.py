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

The mechanism: every feedback layer of the model (``nn.Linear``, every convolution, ``LocallyConnected2d``:
:mod:`bioprop.rules.feedback.coverage`, which refuses the layers it cannot cover by name) becomes a
:class:`~bioprop.rules.feedback.sites.FeedbackSite`: its ``forward`` runs the layer's own kernel whose
backward sends the error through ``B`` (:func:`bioprop.nn.feedback_layers.feedback_affine`, which
follows autocast exactly as the layer does) and, for rules that learn ``B`` (Kolen-Pollack, weight
mirrors), returns ``B``'s gradient too; all else (activations, normalisation, pooling, skip
connections) is left to autograd.

The rule wraps its model in place, however it is applied (``create_rule("fa", net)`` on a bioprop
Network, ``bioprop.wrap(module, rule="fa")`` or ``--model package.module:function`` on any module;
:mod:`bioprop.rules.wrapping`): each layer holds its own ``feedback_weight`` (a buffer, or a parameter
for rules that learn it), so ``model.parameters()``, ``model.state_dict()``, ``.to()`` and deep copies
carry it, and the rule is the model's ``bioprop_rule``. ``rule(x)``, ``model(x)`` and a backward pass
through either are the rule's update, equal to :meth:`compute_gradients`; :meth:`true_backprop` switches
the sites off for a while, ``bioprop.unwrap`` for good.

Subclasses change :meth:`FeedbackAlignment.initial_feedback` and :meth:`feedback_weight` (sign
symmetry), or let ``B`` learn through :meth:`feedback_gradient` (Kolen-Pollack, weight mirrors).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, ClassVar

import torch
from torch import nn

from bioprop.checks import check_number
from bioprop.errors import BiopropError
from bioprop.models import Network
from bioprop.nn.affine import AffineOps
from bioprop.nn.feedback_layers import feedback_affine
from bioprop.nn.init import glorot_normal_std, glorot_uniform_bound
from bioprop.rules.base import LearningRule, StepResult, register_rule, rule_options
from bioprop.rules.feedback.coverage import FEEDBACK_LAYERS_TEXT, SUPPORTED, layer_coverage
from bioprop.rules.feedback.sites import FeedbackSite, is_feedback_site
from bioprop.rules.wrapping import WrapsModel, remove_tensor, state_dict_hook_registrars


def glorot_uniform_like(weight: torch.Tensor, ops: AffineOps, generator: torch.Generator) -> torch.Tensor:
    bound = glorot_uniform_bound(*ops.fans())
    sample = torch.rand(weight.shape, generator=generator, dtype=weight.dtype)
    return ((2 * sample - 1) * bound).to(weight.device)


def glorot_normal_like(weight: torch.Tensor, ops: AffineOps, generator: torch.Generator) -> torch.Tensor:
    """N(0, 2 / (fan_in + fan_out)): Glorot-uniform's variance, Gaussian."""
    sample = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)
    return (sample * glorot_normal_std(*ops.fans())).to(weight.device)


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


@register_rule("fa")
class FeedbackAlignment(WrapsModel, LearningRule):
    """Feedback alignment: ``delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l)`` with a fixed random ``B``
    (Lillicrap et al. 2016), drawn Glorot-uniform per layer."""

    Options = FeedbackInitOptions
    #: whether ``B`` is an ``nn.Parameter`` (group "feedback") rather than a fixed buffer
    feedback_trainable: ClassVar[bool] = False
    trains_through_autograd = True

    def __init__(self, model: nn.Module, options=None, seed: int = 0, strict: bool = True):
        super().__init__(model, options, seed)
        self.feedback_step = 0  # training mini-batches seen: seeds per-batch draws (brsf, mirror noise)
        self.feedback_learning = True  # whether B's gradient is computed ("feedback" in the groups)
        layers = self._feedback_layers(model, strict)
        for name, _, layer in layers:
            if is_feedback_site(layer) or hasattr(layer, "feedback_weight"):
                raise BiopropError(f"layer {name!r} ({type(layer).__name__}) is already wrapped by a feedback rule")
        self.sites = [FeedbackSite(self, name, path, index, layer) for index, (name, path, layer) in enumerate(layers)]
        initial = [self.initial_feedback(site) for site in self.sites]
        self.attach_to_model()  # every check passed: from here on the model changes
        for site, stored in zip(self.sites, initial):
            if stored is not None:
                self.add_tensor(site.layer, "feedback_weight", stored, parameter=self.feedback_trainable)
                site.stores = True
            site.install()
        self.keep_hook(model.register_forward_pre_hook(self.count_batch))  # bound methods: deep copies stay wired
        if isinstance(self, CountsBatches):
            self.add_counter_hooks()
        self._register_load_state_dict_pre_hook(self._read_old_checkpoint)

    def _feedback_layers(self, model: nn.Module, strict: bool) -> list[tuple[str, str, nn.Module]]:
        """``(name, path in the model, layer)`` of every layer the error goes back through by ``B``."""
        if isinstance(model, Network):
            paths = {id(module): path for path, module in model.named_modules()}
            return [(f"layer{index + 1}", paths[id(layer)], layer) for index, layer in enumerate(model.layers)]
        coverage = layer_coverage(model)
        if coverage.refused:
            text = (f"rule {self.name!r} cannot send the error through a feedback weight in these layers of "
                    f"{type(model).__name__}, which would train by backprop: {coverage.describe_refused()}. "
                    f"It covers {SUPPORTED}")
            if strict:
                raise BiopropError(text + "; bioprop.wrap(..., strict=False) keeps them on backprop, with a warning")
            warnings.warn(text + " (strict=False: they train by backprop)", stacklevel=4)
        if not coverage.feedback:
            raise BiopropError(f"rule {self.name!r}: {type(model).__name__} has no layer whose backward pass it "
                               f"could replace (none of {FEEDBACK_LAYERS_TEXT})")
        return [(name, name, layer) for name, layer in coverage.feedback]

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
    def site_forward(self, site: FeedbackSite, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        ops = site.ops.for_call(x, *args, **kwargs)
        gradient = self.feedback_gradient(site) if self.feedback_learning else None
        return feedback_affine(ops, ops.prepare(x), site.layer.weight, site.layer.bias, self.feedback_weight(site),
                               gradient)

    def count_batch(self, module: nn.Module, inputs) -> None:
        """Forward pre-hook of the model: one more training mini-batch (training mode, gradients on)."""
        if module.training and torch.is_grad_enabled() and not self.in_true_backprop:
            self.feedback_step += 1

    # -- the interface the training loop uses -------------------------------------------------
    def parameter_groups(self):
        groups = {"forward": list(self.model.parameters())}
        if "feedback" in self.groups:
            feedback = [site.stored for site in self.sites if site.stores]
            known = {id(p) for p in feedback}
            groups = {"forward": [p for p in groups["forward"] if id(p) not in known], "feedback": feedback}
        return groups

    def compute_gradients(self, x, y, groups):
        self.feedback_learning = "feedback" in groups
        try:
            logits = self(x)
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

    # -- wrapping ---------------------------------------------------------------------------------
    @classmethod
    def wrap(cls, module: nn.Module, seed: int = 0, strict: bool = True, **options) -> nn.Module:
        """``module`` itself, each feedback layer now back-propagating through its feedback weight (a
        ``feedback_weight`` buffer or parameter on the layer); the rule is ``bioprop.rule_of(module)``. A
        layer with parameters that the rule cannot cover is refused by name, or with ``strict=False``
        left on backprop with a warning."""
        cls(module, rule_options(cls.name, **options), seed=seed, strict=strict)
        return module

    def release_model(self) -> None:
        for site in self.sites:
            site.uninstall()
            if site.stores:
                remove_tensor(site.layer, "feedback_weight")
                site.stores = False

    def _read_old_checkpoint(self, state_dict, prefix, *args) -> None:
        """Load pre hook of the rule: checkpoints written before the layout was one (issue 17) held a
        Network's feedback weights on the rule as ``feedback_<index>``, and brsf's and wm's batch counter
        as the rule's ``_extra_state``; both move to where they live now."""
        for site in self.sites:
            old = f"{prefix}feedback_{site.index}"
            if old in state_dict:
                state_dict[f"{prefix}model.{site.key}"] = state_dict.pop(old)
        extra = state_dict.get(prefix + "_extra_state")
        if isinstance(extra, dict) and "feedback_step" in extra:
            state_dict[f"{prefix}model.{CountsBatches.state_key}"] = state_dict.pop(prefix + "_extra_state")


class CountsBatches:
    """Mixin: what seeds the per-batch draws, the seed and the training batch counter, travels in the
    model's ``state_dict`` as ``bioprop_feedback_state`` (int64 ``[batches, seed]``), so a resumed run
    draws what the uninterrupted run would have. A ``state_dict`` without it leaves both as they are."""

    #: the key of that state in the model's ``state_dict``
    state_key = "bioprop_feedback_state"

    def add_counter_hooks(self) -> None:
        save, load = state_dict_hook_registrars(self.model)  # partials: the public API marks its hooks
        self.keep_hook(save(partial(CountsBatches._save_counter, self)))
        self.keep_hook(load(partial(CountsBatches._load_counter, self)))

    def _save_counter(self, module, state_dict, prefix, local_metadata):
        state_dict[prefix + self.state_key] = torch.tensor([self.feedback_step, self.seed], dtype=torch.int64)

    def _load_counter(self, module, state_dict, prefix, *args):
        state = state_dict.pop(prefix + self.state_key, None)
        if isinstance(state, dict):  # written by bioprop before the counter became a tensor
            state = (state["feedback_step"], state.get("seed", self.seed))
        if state is not None:
            self.feedback_step, self.seed = (int(value) for value in state)


def mixed_seed(base: int, *values: int) -> int:
    """A 63-bit generator seed from a base seed and counters (layer index, batch, rank)."""
    seed = base
    for value in values:
        seed = (seed * 1_000_033 + value) % (2 ** 63)
    return seed

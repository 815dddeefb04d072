"""The learning-rule interface and its registry.

A learning rule is an ``nn.Module`` that wraps a :class:`~bioprop.models.Network` (the feedback
rules and DFA: any ``nn.Module``) as its submodule ``model`` and holds everything the rule adds to
it: learned inverses and auxiliary weights on the rule; feedback weights on the model itself, where
``bioprop.wrap`` puts them too (:mod:`bioprop.rules.wrapping`). Its ``state_dict`` therefore holds
the whole learning state of a run, which is what checkpoints save and what data-parallel training
replicates.

The training loop talks to every rule through four methods and never branches on the rule; your
own loop can do the same (``docs/own-loop.md``)::

    rule = create_rule("dtp", network, seed=0, schedule="alternating")    # task=... for your own loss
    optimizers = {group: torch.optim.Adam(params, lr=1e-3) for group, params in rule.parameter_groups().items()}
    for epoch in range(epochs):
        for groups in rule.passes():                  # (("inverse",), ("forward",)) when alternating
            for x, y in loader:
                for group in groups:
                    optimizers[group].zero_grad()
                step = rule.compute_gradients(x, y, groups)   # the rule's update, in .grad
                for group in groups:
                    optimizers[group].step()

* ``parameter_groups()`` -> ``{"forward": [...], "inverse": [...]}``: each group gets its own
  optimiser (the paper uses separate Adam settings for forward and inverse weights);
* ``passes()``: what one epoch is, as a sequence of passes over the training data, each naming
  the groups it trains: one pass training every group (the default), or, for the alternating
  schedule of target propagation, an inverse pass followed by a forward pass;
* ``compute_gradients(x, y, groups)``: fills ``.grad`` of the parameters in ``groups`` for one
  mini-batch and returns a :class:`StepResult`; the loop then steps the optimisers. Keeping
  "compute gradients" separate from "apply them" is what lets gradients be all-reduced across
  processes, compared with backprop's for alignment metrics, or clipped, for any rule;
* ``forward(x)``: the network's output (logits). A backward pass through it never trains as
  backprop by accident: for the rules whose update autograd can compute (``trains_through_autograd``:
  BP, the feedback rules, DFA, which wrap their model in place, :mod:`bioprop.rules.wrapping`) it *is*
  the rule's update, equal to ``compute_gradients``'s; for the others (target propagation) it raises,
  naming ``compute_gradients`` and ``passes()`` (:mod:`bioprop.rules.no_autograd`). Evaluation under
  ``torch.no_grad()`` runs the plain model at full speed.
* ``predict(x)``: the rule's inference, what evaluation scores: by default the network's forward pass
  (``self(x)``); a rule whose prediction is not one forward pass defines its own (Forward-Forward
  tries every label, equilibrium propagation relaxes to the free phase's fixed point). Evaluation
  (``bioprop.evaluate``, the trainer's metrics rows and the task's samples, also under ``torchrun``),
  the reports built from them and ``bioprop plan``'s evaluation cost call it; alignment measures such
  a rule against backprop through its ``predict``.

The loss is the rule's task (:mod:`bioprop.tasks`, ``self.task``): ``self.task.loss(output,
self.task.target(x, y))``, softmax cross-entropy against the labels y for classification, ½||h_L - x||²
for reconstruction, or your own (``create_rule(..., task=LossTask(my_loss))`` or ``rule.task = ...``);
by default the model's task. A rule that cannot serve a task lists the ones it can in ``tasks`` and is
refused by name on any other.

Adding a rule means one new file (anywhere under ``rules/``: the package imports every module)
with a subclass decorated ``@register_rule("name")``. Everything else asks the class:

* ``groups``: its parameter groups, each with its own optimiser settings ``config.optimizers[group]``
  (``--lr`` for ``forward``, ``--GROUP-lr`` for the others); ``group_defaults`` names groups whose
  settings default to another group's (Kolen-Pollack's feedback weights follow the forward ones);
* ``Options``: a dataclass whose fields become ``--flags``; a field's ``metadata["search"]``
  (e.g. ``("uniform", 0.01, 0.3)``) puts it in ``bioprop search``'s space;
* ``preset_column``: for rules the paper did not run, the Table 5 column whose settings its
  presets borrow, and ``preset_settings`` what they set otherwise (a searched learning rate);
  ``label``: its name in tables;
* ``tasks``: the tasks it can train (None: every task of :data:`bioprop.tasks.TASKS`);
* ``trains_through_autograd``: whether ``loss(rule(x)).backward()`` is the rule's update (False by
  default: a backward pass through ``rule(x)`` then raises instead of giving backprop's gradients).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bioprop.checks import check_bool, check_choice, check_int, check_number, suggest
from bioprop.errors import BiopropError
from bioprop.models import Network
from bioprop.nn.affine import FEEDBACK_LAYER_TYPES
from bioprop.registry import Registry
from bioprop.rules.no_autograd import refuse_backward
from bioprop.rules.wrapping import wrapping_rule
from bioprop.tasks import Task, as_task, task_of

RULES: Registry = Registry("learning rule")
#: the affine layer types: those the feedback rules wrap, and whose weights alignment metrics report
AFFINE_LAYERS = FEEDBACK_LAYER_TYPES


def register_rule(name: str):
    """Class decorator: registers a :class:`LearningRule` subclass under ``name``."""

    def add(cls):
        cls.name = name
        if not cls.__dict__.get("label"):
            cls.label = name.upper()
        return RULES.register(name)(cls)

    return add


@dataclass
class StepResult:
    """What one mini-batch step reports: the detached task loss and output of the rule's prediction
    on the batch (``logits``: the logits of a classifier, the reconstruction of an autoencoder; the
    network's forward pass unless the rule defines :meth:`LearningRule.predict`, whose output it then
    is, so that the running train error scores what evaluation scores), per-batch diagnostics, and the
    rule's own losses by name (e.g. ``inverse_loss/layer2``), which the trainer checks are finite."""

    loss: torch.Tensor
    logits: torch.Tensor
    diagnostics: dict[str, float] = field(default_factory=dict)
    local_losses: dict[str, torch.Tensor] = field(default_factory=dict)


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (degrees, float64) between ``a[i]`` and ``b[i]`` for every example ``i`` (dims 1.. flattened).

    A zero vector has no direction: its angle is reported as 90 degrees (uninformative).
    """
    a, b = a.detach().flatten(1).double(), b.detach().flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    cosine = torch.where(norms > 0, (a * b).sum(1) / norms.clamp_min(torch.finfo(torch.float64).tiny),
                         torch.zeros_like(norms))
    return torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The classification task's objective: softmax cross-entropy, averaged over the batch (rules use
    their model's task, ``self.task.loss``; see :mod:`bioprop.tasks`)."""
    return F.cross_entropy(logits, labels)


class LearningRule(nn.Module):
    """Base class; subclasses override :meth:`compute_gradients` (and more where they add state)."""

    name: ClassVar[str] = ""
    #: how tables name the rule (default: the registered name in capitals)
    label: ClassVar[str] = ""
    #: the parameter groups :meth:`parameter_groups` returns, each trained by its own optimiser
    groups: ClassVar[tuple[str, ...]] = ("forward",)
    #: groups whose optimiser settings default to another group's, e.g. ``{"feedback": "forward"}``
    group_defaults: ClassVar[dict[str, str]] = {}
    #: rules beyond the paper: the Table 5 column (``"fa"``, ``"dtp-parallel"``) their presets borrow
    preset_column: ClassVar[str | None] = None
    #: settings of those presets over the column's: ``forward`` optimiser fields (``"lr"``) and rule
    #: options, e.g. ``{"lr": 1e-3}`` where the rule's own search chose them (say where, in a comment)
    preset_settings: ClassVar[dict[str, object]] = {}
    #: the tasks (:mod:`bioprop.tasks`) the rule can train; None: every task
    tasks: ClassVar[tuple[str, ...] | None] = None
    #: the task set with ``rule.task = ...`` / ``create_rule(task=...)``; None: the model's
    _task: Task | None = None
    #: why :meth:`wrap` refuses a user's ``nn.Module`` (rules that cannot wrap one say what they need)
    wrap_refusal: ClassVar[str] = "it needs a bioprop Network's blocks (each block's input and output)"
    #: whether a backward pass through ``rule(x)`` is the rule's update (else it raises)
    trains_through_autograd: ClassVar[bool] = False
    #: whether the rule may run on a model another rule wraps (``bp``: with that rule switched off)
    runs_on_wrapped_model: ClassVar[bool] = False
    #: True inside :meth:`true_backprop`
    in_true_backprop: bool = False

    @dataclass
    class Options:
        """Rule-specific options (none for the base rule)."""

    def __init__(self, model: Network, options: "LearningRule.Options | None" = None, seed: int = 0):
        super().__init__()
        holder = wrapping_rule(model)
        if holder is not None and not self.runs_on_wrapped_model:
            raise BiopropError(f"{type(model).__name__} is already wrapped by rule {holder.name!r}: rule "
                               f"{self.name!r} needs a model of its own (bioprop.unwrap(model) first, or a copy made "
                               f"before wrapping)")
        self.model = model
        self.options = options if options is not None else self.Options()
        self.seed = seed
        self.validate_options()
        self.check_task(model)

    def check_task(self, model: nn.Module, task: Task | None = None) -> None:
        """Refuses, by name, a task (default: the model's) that the rule cannot train (``tasks``)."""
        task = task_of(model) if task is None else task
        if self.tasks is not None and task.name not in self.tasks:
            raise BiopropError(f"rule {self.name!r} cannot train a {task.name} task (model "
                               f"{getattr(model, 'name', '') or type(model).__name__}): it serves only "
                               f"{', '.join(self.tasks)}")

    @property
    def task(self) -> Task:
        """What the rule trains the network to do (:mod:`bioprop.tasks`): the loss, its target, the
        output error. The task given to ``create_rule(task=...)`` or set here, else the model's.

        Set it to a registered name, a :class:`~bioprop.tasks.Task` (e.g. ``LossTask(my_loss)``) or a
        bare loss function ``loss(output, target)`` (:func:`~bioprop.tasks.as_task`); ``rule.task =
        None`` returns to the model's. ``compute_gradients``, alignment metrics and
        ``bioprop.evaluate(rule, ...)`` use it; the model's own ``task`` attribute is not changed."""
        return self._task if self._task is not None else task_of(self.model)

    @task.setter
    def task(self, value) -> None:
        task = None if value is None else as_task(value)
        if task is not None:
            self.check_task(self.model, task)
        self._task = task

    # -- options -------------------------------------------------------------------------
    @classmethod
    def check_options(cls, options) -> None:
        """Raises :class:`BiopropError` naming the option when one has the wrong type or an
        out-of-range value. The base checks each field's type (that of its default: a float
        option takes any finite number, an int option an integer, a str option one of its
        ``choices``); rules add their ranges by extending this classmethod."""
        for option in dataclasses.fields(cls.Options):
            value = getattr(options, option.name)
            kind = type(option.default) if option.default is not None else str
            optional = option.default is None
            if optional and value is None:
                continue
            if option.metadata.get("choices") is not None:
                check_choice(value, option.name, option.metadata["choices"], optional=optional)
            elif kind is float:
                check_number(value, option.name)
            elif kind is int:
                check_int(value, option.name)
            elif kind is bool:
                check_bool(value, option.name)
            elif not isinstance(value, kind):
                raise BiopropError(f"{option.name} must be a {kind.__name__}, got {value!r}")

    def validate_options(self) -> None:
        type(self).check_options(self.options)

    # -- the interface the training loop uses ------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output. Unless the rule ``trains_through_autograd``, a backward pass through it
        raises (outside :meth:`true_backprop`), naming ``compute_gradients``."""
        output = self.model(x)
        if self.trains_through_autograd or self.in_true_backprop or not torch.is_grad_enabled():
            return output
        return refuse_backward(output, self)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The rule's prediction for ``x``: logits of a classifier (or any scores whose argmax is the
        class; the evaluation's loss is the task's loss of them), the reconstruction of an autoencoder.

        Default: the network's forward pass, ``self(x)``. Override it when the rule's inference is not
        one forward pass (Forward-Forward's label sweep, equilibrium propagation's free phase);
        evaluation, the trainer's metrics and alignment then use it. Called under ``torch.no_grad()``
        in eval mode for evaluation, and with gradients inside :meth:`true_backprop` for alignment."""
        return self(x)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters the rule trains, by group: ``{group: [parameters]}``, keys as :attr:`groups`.

        ``forward``: the network's own weights and biases; ``inverse``: the learned inverses of the
        target-propagation family; ``feedback``: learned feedback weights (Kolen-Pollack, weight mirrors).
        Every trained parameter is in exactly one group; fixed random feedback weights and other
        fixed tensors are buffers, in none. Give each group its own optimiser, built once::

            optimizers = {group: torch.optim.Adam(params, lr=...) for group, params in rule.parameter_groups().items()}

        (the paper uses separate Adam settings for forward and inverse weights; a group in
        :attr:`group_defaults`, e.g. ``feedback``, takes the settings of the group it names by
        default). The lists hold the live ``nn.Parameter`` objects, which ``rule.to(device)`` keeps."""
        return {"forward": list(self.model.parameters())}

    def passes(self) -> tuple[tuple[str, ...], ...]:
        """One epoch as passes over the training data, each the tuple of groups it trains.

        Every group of :meth:`parameter_groups` is trained by at least one pass. Default: a single
        pass, ``(("forward", ...every group),)``, training every group on every mini-batch (BP, the
        feedback rules, DFA, target propagation with ``schedule="parallel"``). Target propagation with
        ``schedule="alternating"`` returns ``(("inverse",), ("forward",))``: a full pass over the data
        training only the inverses, then a full pass training only the forward weights. A loop runs
        ``for groups in rule.passes(): for x, y in data: ...compute_gradients(x, y, groups)...``,
        stepping only the optimisers of ``groups``."""
        return (tuple(self.parameter_groups()),)

    def compute_gradients(self, x: torch.Tensor, y: torch.Tensor, groups: tuple[str, ...]) -> StepResult:
        """The rule's update for one mini-batch, written into ``.grad``; the caller steps the optimisers.

        * ``x``: a batch of inputs ``(N, ...)`` on the rule's device; ``y``: its labels, or whatever the
          task's target is made from (``self.task.target(x, y)``: ``y`` for classification and
          regression, ``x`` itself for reconstruction).
        * ``groups``: names of :meth:`parameter_groups` to train on this batch, normally one entry of
          :meth:`passes` (``("forward", "inverse")``, or ``("inverse",)`` then ``("forward",)``).
          Exactly the parameters of these groups receive gradients; every other parameter's ``.grad``
          is left untouched (losses of other groups are not even computed). This holds for every
          entry of :meth:`passes` and for ``("forward",)`` alone; Kolen-Pollack and weight mirrors
          learn ``B`` from the forward weights' backward pass, so ``("feedback",)`` alone writes the
          forward gradients too (no pass asks for it).
        * Gradients are *accumulated* into ``.grad``, as ``loss.backward()`` does. Zeroing is the
          caller's job (``optimizer.zero_grad()`` for the optimisers of ``groups`` before each call);
          the rule never zeroes and never steps. Between this call and ``optimizer.step()`` the
          caller may all-reduce, clip or inspect the gradients.
        * Returns a :class:`StepResult`: ``loss``, the detached batch-mean task loss of the network's
          output before the update; ``logits``, the detached output h_L (logits, or the
          reconstruction); ``local_losses``, the rule's own losses by name (target propagation:
          ``forward_loss/layer2``, ``inverse_loss/layer3``, ...; empty for BP, the feedback rules and
          DFA); ``diagnostics``, ``{name: float}`` measured on some batches (target propagation every
          ``diagnostics_every`` calls), else empty.
        * Each call is one training step for the rule's own state (the batch counters that seed noise
          draws and diagnostics advance), and uses the modules' training mode (``rule.train()``).

        For the rules that ``trains_through_autograd``, ``self.task.loss(rule(x), target).backward()``
        gives the same gradients; for the others a backward pass through ``rule(x)`` raises."""
        raise NotImplementedError

    def set_data_parallel(self, rank: int, world_size: int) -> None:
        """Called by a data-parallel trainer: this process sees rows ``rank::world_size`` of each
        global mini-batch. Rules that draw per-example noise or reduce over the batch use it to
        agree with a single process that sees the whole batch (see :meth:`global_batch_size`)."""
        self.rank, self.world_size = rank, world_size

    rank: int = 0
    world_size: int = 1

    def global_batch_size(self, local_batch_size: int) -> int:
        return local_batch_size * self.world_size

    # -- what alignment metrics read (bioprop.training.alignment) ---------------------------
    def layer_weights(self) -> dict[str, nn.Parameter]:
        """The forward weight of every affine layer, by layer name: ``layer1`` .. ``layerL`` for a
        :class:`~bioprop.models.Network` (as in the diagnostics), module names for other models."""
        if isinstance(self.model, Network):
            return {f"layer{index + 1}": layer.weight for index, layer in enumerate(self.model.layers)}
        return {name: module.weight for name, module in self.model.named_modules()
                if isinstance(module, AFFINE_LAYERS) and isinstance(getattr(module, "weight", None), nn.Parameter)}

    def feedback_pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer name: (W, B)}`` for the layers whose error is carried back by a feedback weight B of
        W's shape (feedback-weight rules); empty for rules without one."""
        return {}

    @contextmanager
    def true_backprop(self):
        """Within this context, ``self.model(x)``, ``rule(x)`` and autograd give backprop's exact gradients
        with the current parameters (alignment measurements use it). Rules that wrap their model (the
        feedback-weight rules, DFA) turn their change off here; a graph built inside stays backprop's."""
        previous, self.in_true_backprop = self.in_true_backprop, True
        try:
            yield
        finally:
            self.in_true_backprop = previous

    # -- any nn.Module ---------------------------------------------------------------------
    @classmethod
    def wrap(cls, module: nn.Module, seed: int = 0, **options) -> nn.Module:
        """``bioprop.wrap(module, rule=NAME)``: ``module`` itself, wrapped in place so that autograd's
        backward pass is this rule's (the rule: ``bioprop.rule_of(module)``). Rules that need more than
        a backward pass refuse, by name, with their reason (:attr:`wrap_refusal`)."""
        raise BiopropError(f"rule {cls.name!r} cannot wrap an arbitrary nn.Module: {cls.wrap_refusal}; train it "
                           f"on a bioprop Network (--model mnist-fc, ..., or a bioprop.models.Network of Blocks); "
                           f"the rules that can wrap: {', '.join(wrappable_rules()) or 'none'}")

    # -- helpers -------------------------------------------------------------------------
    def layer_generator(self, index: int) -> torch.Generator:
        """A CPU generator seeded from ``(seed, rule name, layer index)``: fixed random weights are
        reproducible per layer and independent of how many other layers or rules exist."""
        digest = sum((i + 1) * ord(c) for i, c in enumerate(self.name))
        return torch.Generator().manual_seed(self.seed * 1_000_003 + digest * 1_009 + index)

    @staticmethod
    def seeded_draw(kind: str, shape: tuple[int, ...], seed: int, device, dtype) -> torch.Tensor:
        """Per-batch random numbers (``kind`` "uniform" on [0, 1) or "normal") that depend only on
        ``seed``: drawn by a generator on ``device``, so weight-sized draws every batch never cross
        to the host. CPU (MT19937) and CUDA (Philox) generators give different streams: such draws
        are reproducible per device type, not across them (fixed weights use :meth:`layer_generator`)."""
        generator = torch.Generator(device=device).manual_seed(seed)
        draw = torch.rand if kind == "uniform" else torch.randn
        return draw(shape, generator=generator, device=device, dtype=dtype)


def rule_options(name: str, **options) -> "LearningRule.Options":
    """The checked ``Options`` of the registered rule ``name``: an unknown rule or option name, a
    wrong type or an out-of-range value is a :class:`BiopropError` naming it (and suggesting the
    closest names), without building any network."""
    rule_class = RULES.get(name)
    known = sorted(f.name for f in dataclasses.fields(rule_class.Options))
    unknown = sorted(set(options) - set(known), key=str)
    if unknown:
        accepted = ", ".join(known) or "none"
        hint = suggest(unknown[0], known) if len(unknown) == 1 else ""
        raise BiopropError(f"rule {name!r} has no option {', '.join(map(repr, unknown))}{hint} "
                           f"(its options: {accepted})")
    values = rule_class.Options(**options)
    try:
        rule_class.check_options(values)
    except BiopropError as error:
        raise BiopropError(f"rule {name!r}: {error}") from None
    return values


def create_rule(name: str, model: Network, seed: int = 0, *, task=None, **options) -> LearningRule:
    """Wraps ``model`` in the registered rule ``name``; ``options`` are the rule's ``Options`` fields.

    ``task``: what to train for, when not the model's task (:attr:`LearningRule.task`): a registered
    name, a :class:`~bioprop.tasks.Task` such as ``LossTask(my_loss)``, or a loss function
    ``loss(output, target)`` averaged over the batch."""
    rule = RULES.get(name)(model, rule_options(name, **options), seed=seed)
    if task is not None:
        rule.task = task
    return rule


def list_rules() -> list[str]:
    return RULES.names()


def wrappable_rules() -> list[str]:
    """Rules that apply to any ``nn.Module`` (they override :meth:`LearningRule.wrap`)."""
    return [name for name in RULES.names() if RULES.get(name).wrap.__func__ is not LearningRule.wrap.__func__]


def searchable_options(name: str) -> dict[str, tuple]:
    """``{option: ("uniform" | "log-uniform", low, high)}``: the options of rule ``name`` that
    ``bioprop search`` draws, from the ``search`` metadata of its ``Options`` fields."""
    return {option.name: tuple(option.metadata["search"])
            for option in dataclasses.fields(RULES.get(name).Options) if "search" in option.metadata}

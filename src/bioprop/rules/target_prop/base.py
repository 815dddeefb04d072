"""Shared machinery of the target-propagation family (TP, DTP, SDTP, AO-SDTP; DRL, L-DRL and the
BP/DTP hybrid in :mod:`~bioprop.rules.target_prop.drl` and :mod:`~bioprop.rules.target_prop.hybrid`).

Every rule of the family trains each block on *local* losses only (Bartunov et al. 2018, §2.1):

* forward loss of hidden block l:   ½ ||f_l(h_{l-1}) - ĥ_l||²   (ĥ_l and h_{l-1} held constant);
* output block L:                    the task loss L (:mod:`bioprop.tasks`: the batch-mean
                                     cross-entropy, or ½||h_L - x||² averaged over the batch
                                     for an autoencoder; the delta rule; its input is held
                                     constant, so no gradient reaches block L-1;
                                     hook :meth:`TargetPropagationRule.output_loss`);
* inverse loss of block l (l >= 2):  ½ ||r - g_l(f_l(h̃_{l-1}))||²,  h̃_{l-1} = h_{l-1} + σ ε,
                                     r = h̃_{l-1} (noise-preserving) or h_{l-1} (denoising);
                                     f_l is evaluated without a graph, so only g_l learns from it
                                     (DRL and L-DRL override :meth:`TargetPropagationRule.inverse_losses`).

Squared norms are summed over units and averaged over the batch by default (Lee et al.'s code);
options ``forward_reduction`` and ``inverse_reduction`` average over every element instead
(:data:`REDUCTIONS`: under Adam this matters only through ε). The rules differ only in
the targets ĥ_l (:meth:`TargetPropagationRule.penultimate_target` and
:meth:`TargetPropagationRule.propagate_target`) and in whether the output block has an inverse.

Implementation (one mini-batch, :meth:`TargetPropagationRule.compute_gradients`):

1. one block-by-block forward pass, each block on its predecessor's *detached* output: it gives
   every h_l and, at the same time, the one-block graphs of the local forward losses;
2. the targets, top-down, without a graph (the two inverse calls of a difference correction,
   g(ĥ) and g(h), run as one call on the concatenated batch);
3. the inverse losses on noisy copies (f without a graph, g with one);
4. a single backward call over all local losses: each loss's graph reaches only its own
   block's (or inverse's) parameters, so the sum gives exactly the local gradients.

Schedules: ``parallel`` trains both parameter groups on every mini-batch; with ``alternating``
one epoch is a full pass over the data training the inverses, then a full pass training the
forward weights (as an epoch of Lee et al.'s DTP code, ``conti_dtp.py``). Only the losses of the groups being trained
are computed.

Diagnostics (every ``diagnostics_every`` training batches, written per epoch by the trainer):
``reconstruction_error/layer{l}`` = ||h_{l-1} - g_l(f_l(h_{l-1}))||² / ||h_{l-1}||² over the batch
(clean, relative), ``inverse_loss/layer{l}`` and ``forward_loss/layer{l}`` (the trained losses), and
``target_angle/layer{l}``, the angle (degrees) between the target shift ĥ_l - h_l and the negative
backprop gradient -dL/dh_l of the task loss (batch-mean), both flattened over the whole batch
(so examples weigh by the size of their error; per-example angles of well-classified examples are
dominated by float32 rounding of p - y*), computed by autograd with the same parameters on the
same batch. Layers are numbered from 1 (h_l is the
output of block l).

Tasks (:mod:`bioprop.tasks`): ``y`` in the methods below is the task's target for the batch, the
class labels of a classifier or the flattened input x of an autoencoder (``task.target(x, y)``).
The output inverse of SDTP, AO-SDTP and TP reads the task's *prediction* p = ``task.prediction(h_L)``
(softmax probabilities; the output h_L itself for reconstruction), and the first target is its
minimiser ĥ_L = argmin_p L = ``task.best_prediction`` (the one-hot label; the input x itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bioprop.checks import check_int, check_number
from bioprop.errors import BiopropError
from bioprop.models import Network
from bioprop.rules.base import LearningRule, StepResult, angle_degrees, task_loss  # noqa: F401 (re-exported)
from bioprop.rules.target_prop.inverses import OutputInverse, _inverse_class, build_inverse, fast_tanh

SCHEDULES = ("parallel", "alternating")
INVERSE_LOSSES = ("noise-preserving", "denoising")
#: How a squared-error local loss ½||a - b||² is reduced over a mini-batch (the papers write no
#: convention): "unit-sum" sums over units and averages over the batch (Lee et al.'s DTP code,
#: ``((x-y)**2).sum(axis=1).mean()``); "element-mean" averages over every element
#: (``tf.reduce_mean`` / ``F.mse_loss``), i.e. "unit-sum" divided by the units of the layer.
#: Under Adam the two differ only through ε, which Table 5 sets as large as 1e-3.
REDUCTIONS = ("unit-sum", "element-mean")


@dataclass
class TPOptions:
    """Options shared by every target-propagation rule."""

    schedule: str = field(default="parallel", metadata={
        "help": "target propagation's order of updates (not the learning-rate schedule, which is --lr-schedule): "
                "'parallel' (forward and inverse losses every mini-batch) or 'alternating' (each epoch: a full pass "
                "training the inverses, then one training the forward weights)",
        "choices": list(SCHEDULES)})
    noise: float = field(default=0.2, metadata={
        "help": "target propagation: standard deviation sigma of the Gaussian noise added to h_{l-1} "
                "when training the inverses",
        "search": ("uniform", 0.01, 0.3)})  # Table 4
    inverse_loss: str | None = field(default=None, metadata={
        "help": "target propagation: inverse training loss, 'noise-preserving' ||h~ - g(f(h~))||^2 or "
                "'denoising' ||h - g(f(h~))||^2 (default: noise-preserving for dtp, denoising for the others)",
        "choices": list(INVERSE_LOSSES)})
    forward_reduction: str = field(default="unit-sum", metadata={
        "help": "target propagation: reduction of the hidden layers' forward losses 1/2||h - target||^2 over a "
                "mini-batch: 'unit-sum' (sum over units, mean over the batch; Lee et al.'s code) or "
                "'element-mean' (mean over every element)",
        "choices": list(REDUCTIONS)})
    inverse_reduction: str = field(default="unit-sum", metadata={
        "help": "target propagation: reduction of the inverse losses over a mini-batch: 'unit-sum' or "
                "'element-mean' (as --forward-reduction)",
        "choices": list(REDUCTIONS)})
    diagnostics_every: int = field(default=20, metadata={
        "help": "target propagation: compute reconstruction errors and target/backprop angles every N "
                "training batches (0: never)"})


@dataclass
class LocalLosses:
    """The local losses of one mini-batch, by 0-based block index, and what they were built from."""

    forward: dict[int, torch.Tensor]   # hidden blocks: ½||h_l - ĥ_l||²; the output block: the task loss
    inverse: dict[int, torch.Tensor]   # blocks with an inverse: the inverse loss
    hidden: list[torch.Tensor]         # detached h_1 .. h_L (h_L: the network's output, logits)
    targets: list[torch.Tensor] | None  # ĥ_1 .. ĥ_{L-1} (None when not computed)
    task_loss: torch.Tensor            # detached task loss (batch mean)

    def all(self) -> list[torch.Tensor]:
        return [*self.forward.values(), *self.inverse.values()]


def squared_error(output: torch.Tensor, target: torch.Tensor, reduction: str = "unit-sum") -> torch.Tensor:
    """½ ||output - target||², summed over units and averaged over the batch ("unit-sum"), or
    averaged over every element ("element-mean"); see :data:`REDUCTIONS`."""
    count = output.shape[0] if reduction == "unit-sum" else output.numel()
    return F.mse_loss(output, target, reduction="sum") * (0.5 / count)


def gaussian_noise(like: torch.Tensor, sigma: float) -> torch.Tensor:
    """N(0, sigma²) noise with ``like``'s shape *and memory layout*, drawn in one contiguous pass.

    ``torch.randn_like`` on the batch-innermost (permuted) activations of LC layers takes a slow
    strided path on CPU (several times slower); filling the dense storage directly does not.
    Drawn in float32 at least: under bf16 autocast these are the numbers a float32 run draws (the
    generators give other numbers for bf16), and the noisy input h + noise keeps float32 precision.
    """
    dtype = torch.promote_types(like.dtype, torch.float32)
    noise = torch.empty_like(like, dtype=dtype)  # same strides for dense tensors, else contiguous
    noise.as_strided((noise.numel(),), (1,)).normal_(0.0, sigma)
    return noise


def empty_with_layout(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` whose dimensions are ordered in memory as ``like``'s."""
    order = sorted(range(like.dim()), key=lambda dim: -like.stride(dim))
    storage = torch.empty([shape[dim] for dim in order], dtype=like.dtype, device=like.device)
    return storage.permute([order.index(dim) for dim in range(like.dim())])


class TargetPropagationRule(LearningRule):
    """Base class of the family. Defaults are SDTP's: the output layer has a learned inverse
    from the task's prediction (class probabilities), and targets use the difference correction."""

    Options = TPOptions
    groups = ("forward", "inverse")
    default_inverse_loss: ClassVar[str] = "denoising"
    has_output_inverse: ClassVar[bool] = True
    wrap_refusal = "it learns an inverse per block of a bioprop Network and sends targets down through them"

    def __init__(self, model, options=None, seed=0):
        super().__init__(model, options, seed)  # checks the options
        self.check_network(model)
        blocks = model.blocks
        self.shapes = model.output_shapes()
        self.inverses = nn.ModuleDict()
        for index in range(1, len(blocks) - 1):
            self.inverses[self.layer_name(index)] = build_inverse(blocks[index], self.shapes[index - 1])
        if self.has_output_inverse:
            self.inverses[self.layer_name(len(blocks) - 1)] = self.build_output_inverse()
        self.batches_seen = 0

    def check_network(self, model) -> None:
        """Refuses, naming the rule (and the layer type), a model the family cannot train: not a
        bioprop :class:`~bioprop.models.Network`, no hidden layer, a hidden layer type without a
        learned inverse (:mod:`~bioprop.rules.target_prop.inverses`), a non-linear output layer."""
        if not isinstance(model, Network):
            raise BiopropError(f"rule {self.name!r} needs a bioprop Network (a stack of blocks, e.g. --model "
                               f"mnist-fc), got {type(model).__name__}")
        blocks = model.blocks
        if len(blocks) < 2:
            raise BiopropError(f"rule {self.name!r} needs a network with at least one hidden layer")
        supported = ", ".join(kind.__name__ for kind in _inverse_class.registry if kind is not object)
        for index, block in enumerate(blocks[:-1]):
            if _inverse_class.dispatch(type(block.layer)) is _inverse_class.registry[object]:
                raise BiopropError(f"rule {self.name!r} has no inverse for layer type {type(block.layer).__name__} "
                                   f"({self.layer_name(index)}); target propagation supports: {supported}")
        if not isinstance(blocks[-1].layer, nn.Linear):
            raise BiopropError(f"rule {self.name!r} needs a fully-connected output layer, got layer type "
                               f"{type(blocks[-1].layer).__name__}")

    def build_output_inverse(self) -> nn.Module:
        """The inverse of the output block (rules with ``has_output_inverse``); default: from the task's
        prediction (class probabilities; the output for reconstruction) and any auxiliary features to
        h_{L-1}, :class:`OutputInverse`."""
        return OutputInverse(self.output_feature_count(), self.shapes[-2], self.model.blocks[-1].layer.weight)

    # -- options -----------------------------------------------------------------------
    @classmethod
    def check_options(cls, o) -> None:
        check_number(o.noise, "noise", minimum=0)
        check_int(o.diagnostics_every, "diagnostics_every", minimum=0)
        super().check_options(o)  # the other types and the choices

    @property
    def inverse_loss_kind(self) -> str:
        return self.options.inverse_loss or self.default_inverse_loss

    # -- the interface the training loop uses ------------------------------------------------
    def parameter_groups(self):
        return {"forward": list(self.model.parameters()), "inverse": list(self.inverses.parameters())}

    def passes(self) -> tuple[tuple[str, ...], ...]:
        """Parallel: one pass training both groups. Alternating: a full pass training the inverses,
        then a full pass training the forward weights (one epoch of Lee et al.'s ``conti_dtp.py``)."""
        if self.options.schedule == "alternating":
            return (("inverse",), ("forward",))
        return (("forward", "inverse"),)

    def compute_gradients(self, x, y, groups):
        every = self.options.diagnostics_every
        diagnose = every > 0 and self.batches_seen % every == 0
        self.batches_seen += 1
        y = self.task.target(x, y)  # from here on y is what the loss compares h_L with
        losses = self.local_losses(x, y, forward="forward" in groups, inverse="inverse" in groups,
                                   targets=diagnose)
        terms = losses.all()
        if terms:
            torch.autograd.backward(terms)
        diagnostics = self.diagnostics(x, y, losses) if diagnose else {}
        named = {f"forward_loss/{self.layer_name(i)}": loss.detach() for i, loss in losses.forward.items()}
        named.update({f"inverse_loss/{self.layer_name(i)}": loss.detach() for i, loss in losses.inverse.items()})
        return StepResult(losses.task_loss, losses.hidden[-1], diagnostics, named)

    # -- state that is not a tensor: saved in checkpoints with the weights ----------------------
    def get_extra_state(self) -> dict:
        return {"batches_seen": self.batches_seen}

    def set_extra_state(self, state: dict) -> None:
        self.batches_seen = int(state["batches_seen"])

    def noise_like(self, clean: torch.Tensor, sigma: float) -> torch.Tensor:
        """N(0, sigma²) noise for ``clean``. Data-parallel: every process draws the noise of the whole
        global batch (same generator state everywhere) and keeps its own rows, so the run equals a
        single process with the global batch."""
        if self.world_size == 1:
            return gaussian_noise(clean, sigma)
        full = empty_with_layout(clean, (clean.shape[0] * self.world_size, *clean.shape[1:]))
        return gaussian_noise(full, sigma)[self.rank::self.world_size]

    # -- names and inverses ---------------------------------------------------------------
    @staticmethod
    def layer_name(index: int) -> str:
        """``layer{l}`` for the 0-based block ``index`` (layers count from 1, as h_l)."""
        return f"layer{index + 1}"

    def inverse(self, index: int) -> nn.Module:
        """g of block ``index``: maps h_index back to h_{index-1} (0-based blocks)."""
        return self.inverses[self.layer_name(index)]

    def inverse_indices(self) -> list[int]:
        return [int(name[len("layer"):]) - 1 for name in self.inverses]

    # -- the output layer as its inverse sees it (SDTP, AO-SDTP, TP) ---------------------------
    def output_feature_count(self) -> int:
        return self.model.output_units

    def output_features(self, penultimate: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """f_L(h_{L-1}) as the output inverse reads it: the task's prediction p (the softmax
        probabilities of a classifier; the output itself for reconstruction)."""
        return self.task.prediction(logits)

    def output_target(self, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The first target in feature space: argmin_p L in place of p (the one-hot label
        distribution; the input x for reconstruction)."""
        target = features.clone()
        units = self.model.output_units
        target[:, :units] = self.task.best_prediction(y, units, features.dtype)
        return target

    # -- targets -----------------------------------------------------------------------------
    @staticmethod
    def difference(g: nn.Module, below: torch.Tensor, above: torch.Tensor, target_above: torch.Tensor):
        """``below - g(above) + g(target_above)``.

        For flat activations both inverse calls run as one call on the concatenated batch (one
        larger matrix product); feature maps go in two calls, because concatenating the
        batch-innermost LC activations along the batch costs a layout change (measured slower).
        """
        if above.dim() > 2:
            return below + (g(target_above) - g(above))
        n = above.shape[0]
        both = g(torch.cat([target_above, above]))
        return below + (both[:n] - both[n:])

    def penultimate_target(self, h: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """ĥ_{L-1}; default (SDTP): h_{L-1} - g_L(p) + g_L(argmin_p L), i.e. g_L(one-hot) for a
        classifier and g_L(x) for an autoencoder (AO-SDTP: with z in both calls)."""
        features = self.output_features(h[-2], h[-1])
        return h[-2] + self.inverse(len(h) - 1).target_difference(features, y, self.model.output_units)

    def propagate_target(self, index: int, h: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """ĥ_{index-1} from ĥ_index (0-based blocks); default: the difference correction."""
        return self.difference(self.inverse(index), h[index - 1], h[index], target)

    @torch.no_grad()
    def targets(self, h: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        """[ĥ_1, ..., ĥ_{L-1}] from the detached activations ``h`` = [h_1, ..., h_L].

        Always in float32, also under bf16 autocast: the difference correction g(ĥ) - g(h) is a
        small difference of two close numbers, which bf16's 8-bit mantissa would mostly round away."""
        with torch.autocast(h[0].device.type, enabled=False):
            return self._targets([t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in h], y)

    def _targets(self, h: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        targets = [None] * (len(h) - 1)
        targets[-1] = self.penultimate_target(h, y)
        for index in range(len(h) - 2, 0, -1):
            targets[index - 1] = self.propagate_target(index, h, targets[index])
        return targets

    # -- losses ------------------------------------------------------------------------------
    def forward_blocks(self, x: torch.Tensor, grad: bool = True) -> list[torch.Tensor]:
        """[h_1, ..., h_L], each block run on the detached output of the one below."""
        hidden = []
        with torch.set_grad_enabled(grad):
            for block in self.model.blocks:
                x = block(x.detach())
                hidden.append(x)
        return hidden

    @torch.no_grad()
    def block_without_graph(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """f_l(x) = block(x) of the 0-based block ``index``, without a graph, with the faster tanh."""
        block = self.model.blocks[index]
        above = block.layer(block.layer_input(x))
        return fast_tanh(above) if block.activation == "tanh" else above

    def output_loss(self, logits: torch.Tensor, h: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """The output block's local loss; default: the task loss (the delta rule on the batch-mean
        cross-entropy, or on ½||h_L - x||²)."""
        return self.task.loss(logits, y)

    def inverse_losses(self, h: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        sigma, preserving = float(self.options.noise), self.inverse_loss_kind == "noise-preserving"
        last = len(h) - 1
        losses = {}
        for index in self.inverse_indices():
            clean = h[index - 1]
            noisy = clean + self.noise_like(clean, sigma) if sigma > 0 else clean
            with torch.no_grad():
                above = self.block_without_graph(index, noisy)
                if index == last:
                    above = self.output_features(noisy, above)
            losses[index] = squared_error(self.inverse(index)(above), noisy if preserving else clean,
                                          self.options.inverse_reduction)
        return losses

    def local_losses(self, x, y, forward: bool = True, inverse: bool = True, targets: bool = False) -> LocalLosses:
        """Every local loss of one mini-batch (forward ones if ``forward``, inverse ones if ``inverse``)."""
        hidden = self.forward_blocks(x, grad=forward)
        h = [t.detach() for t in hidden]
        forward_losses: dict[int, torch.Tensor] = {}
        target_list = self.targets(h, y) if forward or targets else None
        if forward:
            for index, target in enumerate(target_list):
                forward_losses[index] = squared_error(hidden[index], target, self.options.forward_reduction)
            forward_losses[len(h) - 1] = self.output_loss(hidden[-1], h, y)
        loss = self.task.loss(h[-1], y)
        inverse_losses = self.inverse_losses(h) if inverse else {}
        return LocalLosses(forward_losses, inverse_losses, h, target_list, loss)

    # -- diagnostics ---------------------------------------------------------------------------
    def backprop_gradients(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """dL/dh_l (the batch-mean task loss; ``y`` its target) for every hidden layer, by autograd,
        same parameters."""
        with torch.enable_grad():
            hidden = self.model.hidden_activations(x)
            return list(torch.autograd.grad(self.task.loss(hidden[-1], y), hidden[:-1]))

    @torch.no_grad()
    def diagnostics(self, x, y, losses: LocalLosses) -> dict[str, float]:
        h, last = losses.hidden, len(losses.hidden) - 1
        values: dict[str, torch.Tensor] = {}
        for index in self.inverse_indices():
            above = h[index] if index < last else self.output_features(h[index - 1], h[index])
            below = h[index - 1]
            error = (self.inverse(index)(above) - below).pow(2).sum() / below.pow(2).sum().clamp_min(1e-30)
            values[f"reconstruction_error/{self.layer_name(index)}"] = error
        for index, loss in losses.inverse.items():
            values[f"inverse_loss/{self.layer_name(index)}"] = loss.detach()
        for index, loss in losses.forward.items():
            if index < last:
                values[f"forward_loss/{self.layer_name(index)}"] = loss.detach()
        if losses.targets is not None:
            gradients = self.backprop_gradients(x, y)
            for index, (target, gradient) in enumerate(zip(losses.targets, gradients)):
                # one angle for the whole batch (flattened): examples weigh by the size of their error
                angle = angle_degrees((target - h[index]).reshape(1, -1), -gradient.reshape(1, -1))[0]
                values[f"target_angle/{self.layer_name(index)}"] = angle
        if not values:
            return {}
        numbers = torch.stack([v.double() for v in values.values()]).tolist()  # one device sync
        return dict(zip(values, numbers))

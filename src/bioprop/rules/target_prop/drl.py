"""Difference target propagation with feedback trained on difference reconstruction losses:
L-DRL (Ernoult, Normandin, Moudgil, Spinney, Belilovsky, Rish, Richards & Bengio 2022, ICML,
"Towards Scaling Difference Target Propagation by Learning Backprop Targets") and DRL
(Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020, NeurIPS, "A Theoretical Framework
for Target Propagation", DTP-DRL).

Both rules share the targets and forward losses of Ernoult et al. (not Bartunov et al.'s DTP):

* first target on the logits s_L:  t_L = s_L - β (softmax(s_L) - y*)   (= s_L - β ∂CE_sum/∂s_L;
                                    in general s_L - β e with e = ∂(Σ_n L_n)/∂s_L the task's
                                    output error, :mod:`bioprop.tasks`: s_L - β (s_L - x) for
                                    an autoencoder);
* below:                            t_{l-1} = s_{l-1} + G_l(t_l) - G_l(s_l)   (DTP's difference
                                    correction), so the *output layer has an inverse* G_L from the
                                    logits to h_{L-1} (the usual learned inverse of a linear layer,
                                    tanh(s_L V_L + c_L));
* **every** block, the classifier included, learns from ½||s_l - t_l||² (summed over units,
  averaged over the batch; s_l = f_l(s_{l-1}) on the detached s_{l-1}, t_l held constant). For the
  classifier this is β²/2 ||p - y*||², unlike Bartunov et al.'s DTP, which trains the last layer on
  the cross-entropy. The output layer's inverse has the family's form (tanh of an affine map);
  Ernoult et al.'s own networks (VGG, ELU, max-unpooling) differ.

Their feedback G_l (l = 2 .. L, i.e. layer2 .. layerL) learns from a difference reconstruction
loss instead of DTP's reconstruction loss (option ``inverse_loss`` is refused). With δx ~ N(0, σ²)
of h_{l-1}'s shape and δy ~ N(0, σ²) of h_l's shape (σ = ``noise``, one for every layer), sums
over units and means over the batch:

``l-drl`` (Ernoult et al. 2022, the local DRL, in the form the reference notes give from their code,
scalingDTP's ``target_prop/feedback_loss.py``), with x = h_{l-1}, F = f_l (no graph), G = G_l:

    L_l = -2 <δx, G(F(x + δx)) - G(F(x))> + ||G(F(x) + δy) - G(F(x))||²

  Gradients flow through all three calls of G. To second order in σ its expectation is
  σ² (||J_G - J_F^T||² - ||J_F||²): minimising it makes G's Jacobian the transpose of F's, so the
  targets approach backprop's.

``drl`` (Meulemans et al. 2020, DTP-DRL): the noise is injected at h_{l-1}, propagated forward
through *all* the blocks above, h̃_L = f_L(... f_l(h_{l-1} + δx)), and brought back down the
difference-corrected feedback chain, g^diff_{L→l-1}(h̃_L) = the target t_{l-1} that
t_L = h̃_L propagates to. The feedback G_l is trained to reconstruct the noisy activation:

    L_l = ½ ||g^diff_{L→l-1}(h̃_L) - (h_{l-1} + δx)||²
          + λ ½ ||g^diff_{L→l-1}(s_L + δy_L) - h_{l-1}||²,     δy_L ~ N(0, σ²) at the logits,

  where only G_l's parameters learn from L_l: the chain above it, G_{l+1} .. G_L, runs without a
  graph (each layer's loss trains its own feedback; a choice made here, so that the losses stay
  local like the family's). The first term asks the chain G_l .. G_L to invert f_l .. f_L around
  the current activations (so that targets are Gauss-Newton targets); the second, weighted by
  λ = ``drl_damping`` (default 0: off), penalises the chain's Jacobian, a Tikhonov damping whose
  minimiser is a damped pseudo-inverse. Simplifications, or not checked against the paper's text
  (only the reference notes, §5.2, were available): one noise scale for all layers; ½ in front of
  both terms and no 1/σ² normalisation (the family's squared-error convention); the damping term's
  form (the same difference chain from noise at the logits); the first target on the logits with
  Ernoult et al.'s β (the paper's output target step size is not in the notes).

Option ``noise_samples`` (default 1, so a step stays cheap) averages the feedback loss over that
many independent noise draws per mini-batch. Ernoult et al. take several feedback *optimiser
steps* per mini-batch (20-55 per layer on CIFAR-10); a rule here only fills ``.grad`` for the
trainer's optimisers, so that is not available: averaging noise draws lowers the variance of the
one step instead. Cost: l-drl adds three feedback calls and one forward call per layer; drl sends
each layer's noise through all blocks above and back, O(L²) block and feedback calls per step.

Schedules, diagnostics and layer types (FC, conv, LC) are the family's
(:mod:`bioprop.rules.target_prop.base`); ``reconstruction_error/layerL`` reads the output
inverse on the logits. These feedback losses can be negative (L-DRL) or zero at the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bioprop.checks import check_int, check_number
from bioprop.errors import BiopropError
from bioprop.rules.base import register_rule
from bioprop.rules.target_prop.base import TargetPropagationRule, TPOptions, squared_error
from bioprop.rules.target_prop.inverses import build_inverse

MAX_NOISE_SAMPLES = 64


def feedback_shifts(g: nn.Module, base: torch.Tensor, points: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[g(p) - g(base) for p in points]``; flat activations go through ``g`` in one call on the
    concatenated batch (feature maps in separate calls: see ``TargetPropagationRule.difference``)."""
    if base.dim() > 2:
        reference = g(base)
        return [g(point) - reference for point in points]
    n = base.shape[0]
    outputs = g(torch.cat([*points, base]))
    reference = outputs[len(points) * n:]
    return [outputs[i * n:(i + 1) * n] - reference for i in range(len(points))]


def local_difference_reconstruction_loss(g: nn.Module, output: torch.Tensor, noisy_output: torch.Tensor,
                                         dx: torch.Tensor, dy: torch.Tensor, reduction: str = "unit-sum") -> torch.Tensor:
    """Ernoult et al.'s L-DRL of feedback ``g`` for ``output`` = F(x), ``noisy_output`` = F(x + dx):
    ``-2 <dx, g(F(x + dx)) - g(F(x))> + ||g(F(x) + dy) - g(F(x))||²``, summed over units and averaged
    over the batch ("unit-sum"), or averaged over every element of g's output ("element-mean")."""
    shift_x, shift_y = feedback_shifts(g, output, [noisy_output, output + dy])
    count = shift_x.shape[0] if reduction == "unit-sum" else shift_x.numel()
    return (shift_y.pow(2).sum() - 2 * (dx * shift_x).sum()) / count


@dataclass
class LogitTargetOptions(TPOptions):
    """TP options plus the first target's step on the logits and the feedback noise draws."""

    beta: float = field(default=0.7, metadata={
        "help": "l-drl, drl: step of the first target on the logits, t_L = logits - beta (softmax - onehot)"})
    noise_samples: int = field(default=1, metadata={
        "help": "l-drl, drl: independent noise draws the feedback loss averages over per mini-batch"})


class LogitTargetRule(TargetPropagationRule):
    """Ernoult et al.'s DTP: first target on the logits, an inverse of the output layer from the logits,
    every block trained on ½||s_l - t_l||²; subclasses give the feedback loss (:meth:`feedback_losses`)."""

    Options = LogitTargetOptions
    preset_column = "dtp-parallel"
    has_output_inverse = True

    @classmethod
    def check_options(cls, o) -> None:
        check_number(o.beta, "beta", minimum=0, low_open=True)
        check_number(o.noise, "noise", minimum=0, low_open=True)  # σ = 0 makes the feedback loss vanish
        check_int(o.noise_samples, "noise_samples", minimum=1, maximum=MAX_NOISE_SAMPLES)
        if o.inverse_loss is not None:
            raise BiopropError(f"inverse_loss does not apply to rule {cls.name!r}: its feedback learns from "
                               f"its difference reconstruction loss (leave inverse_loss unset)")
        super().check_options(o)

    # -- the output layer: its inverse reads the logits -----------------------------------------------
    def build_output_inverse(self) -> nn.Module:
        return build_inverse(self.model.blocks[-1], self.shapes[-2])

    def output_features(self, penultimate, logits):
        return logits

    def logit_target(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """t_L = s_L - β e, e the task's output error (softmax(s_L) - y*; s_L - x for reconstruction)."""
        error = self.task.output_error(logits, y)
        return logits - self.options.beta * error

    def penultimate_target(self, h, y):
        last = len(h) - 1
        return self.difference(self.inverse(last), h[-2], h[-1], self.logit_target(h[-1], y))

    def output_loss(self, logits, h, y):
        return squared_error(logits, self.logit_target(h[-1], y), self.options.forward_reduction)

    # -- feedback losses ---------------------------------------------------------------------------
    def inverse_losses(self, h):
        """The feedback losses, in float32 also under bf16 autocast: they are differences of nearby
        feedback outputs (G(F(x + δx)) - G(F(x))), which bf16 would mostly round away (as the targets)."""
        with torch.autocast(h[0].device.type, enabled=False):
            return self._inverse_losses([t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in h])

    def _inverse_losses(self, h):
        samples = self.options.noise_samples
        total: dict[int, torch.Tensor] = {}
        for _ in range(samples):
            for index, loss in self.feedback_losses(h).items():
                total[index] = total[index] + loss if index in total else loss
        return total if samples == 1 else {index: loss / samples for index, loss in total.items()}

    def feedback_losses(self, h: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """One noise draw of every feedback layer's loss, by 0-based block index."""
        raise NotImplementedError


@register_rule("l-drl")
class LocalDifferenceReconstruction(LogitTargetRule):
    """L-DRL (Ernoult et al. 2022): each feedback layer's Jacobian is trained toward its forward layer's transpose."""

    label = "L-DRL"

    def feedback_losses(self, h):
        sigma = float(self.options.noise)
        losses = {}
        for index in self.inverse_indices():
            below, above = h[index - 1], h[index]
            dx, dy = self.noise_like(below, sigma), self.noise_like(above, sigma)
            noisy_above = self.block_without_graph(index, below + dx)
            losses[index] = local_difference_reconstruction_loss(self.inverse(index), above, noisy_above, dx, dy,
                                                                 self.options.inverse_reduction)
        return losses


@register_rule("drl")
class DifferenceReconstruction(LogitTargetRule):
    """DTP-DRL (Meulemans et al. 2020): the feedback chain learns to reconstruct noise sent through the network."""

    label = "DRL"

    @dataclass
    class Options(LogitTargetOptions):
        drl_damping: float = field(default=0.0, metadata={
            "help": "drl: weight lambda of the damping term ||g_diff(s_L + noise) - h||^2 of the difference "
                    "reconstruction loss (0: none)"})

    @classmethod
    def check_options(cls, o):
        check_number(o.drl_damping, "drl_damping", minimum=0)
        super().check_options(o)

    @torch.no_grad()
    def chain_down(self, h: list[torch.Tensor], clean: dict[int, torch.Tensor], target: torch.Tensor,
                   stop: int) -> torch.Tensor:
        """The difference chain from a target of the logits down to a target of h[stop] (0-based):
        t_{k-1} = h_{k-1} + G_k(t_k) - G_k(h_k), ``clean[k]`` = G_k(h_k); no graph."""
        for index in range(len(h) - 1, stop, -1):
            target = h[index - 1] + (self.inverse(index)(target) - clean[index])
        return target

    def feedback_losses(self, h):
        sigma, damping, last = float(self.options.noise), float(self.options.drl_damping), len(h) - 1
        with torch.no_grad():
            clean = {index: self.inverse(index)(h[index]) for index in self.inverse_indices() if index > 1}
        losses = {}
        for index in self.inverse_indices():
            dx = self.noise_like(h[index - 1], sigma)
            noisy = h[index - 1] + dx
            with torch.no_grad():
                for block in range(index, last + 1):
                    noisy = self.block_without_graph(block, noisy)  # h̃_L
            points = [self.chain_down(h, clean, noisy, index)]
            if damping > 0:
                points.append(self.chain_down(h, clean, h[last] + self.noise_like(h[last], sigma), index))
            shifts = feedback_shifts(self.inverse(index), h[index], points)  # t_{l-1} - h_{l-1}
            reduction = self.options.inverse_reduction
            losses[index] = squared_error(shifts[0], dx, reduction)
            if damping > 0:
                losses[index] = losses[index] + damping * squared_error(shifts[1], torch.zeros_like(shifts[1]),
                                                                        reduction)
        return losses

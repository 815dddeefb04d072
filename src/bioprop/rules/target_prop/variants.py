"""Target propagation: vanilla TP, difference TP (Lee, Zhang, Fischer & Bengio 2015, ECML-PKDD),
simplified DTP and auxiliary-output SDTP (Bartunov, Santoro, Richards, Marris, Hinton &
Lillicrap 2018, NeurIPS, §2 and Algorithms 1-2).

Each hidden layer l learns from ½||f_l(h_{l-1}) - ĥ_l||² toward a target ĥ_l; the output layer
learns from the task loss L (:mod:`bioprop.tasks`); each inverse g_l (l >= 2) from a noisy
reconstruction loss (see :mod:`bioprop.rules.target_prop.base` for the losses, schedules and
diagnostics, and :mod:`bioprop.rules.target_prop.inverses` for the inverses). The rules differ in
the targets (p = softmax(h_L) are the class probabilities, y* the one-hot label distribution):

``tp``       ĥ_{L-1} = g_L(y*),                       ĥ_l = g_{l+1}(ĥ_{l+1})
``dtp``      ĥ_{L-1} = h_{L-1} - α dL/dh_{L-1},        ĥ_l = h_l + g_{l+1}(ĥ_{l+1}) - g_{l+1}(h_{l+1})
             (no inverse of the output layer; L is the cross-entropy *summed* over the batch by
             default, i.e. the per-example gradient, option ``target_reduction``:
             dL/dh_{L-1} = (p - y*) W_L)
``sdtp``     ĥ_{L-1} = h_{L-1} - g_L(p) + g_L(y*),      lower layers as DTP
``ao-sdtp``  ĥ_{L-1} = h_{L-1} - g_L(p, z) + g_L(y*, z), lower layers as DTP,
             z = tanh(R flatten(h_{L-1})), R fixed random (Glorot-uniform, seeded, a buffer)

Reconstruction (the MNIST autoencoder, App. 5.5): L = ½||h_L - x||² per example (linear output),
whose minimiser is the input itself, ĥ_L = x, and whose output error is h_L - x. The output
inverse reads h_L directly (p = h_L instead of softmax probabilities), so

``tp``       ĥ_{L-1} = g_L(x)
``dtp``      ĥ_{L-1} = h_{L-1} - α (h_L - x) W_L        (``target_reduction`` as above: per example)
``sdtp``     ĥ_{L-1} = h_{L-1} - g_L(h_L) + g_L(x)
``ao-sdtp``  ĥ_{L-1} = h_{L-1} - g_L(h_L, z) + g_L(x, z)

and the output layer learns on ½||h_L - x||² (the delta rule), the hidden layers as above.

Default inverse losses: noise-preserving ||h̃ - g(f(h̃))||² for DTP (as Lee et al.), denoising
||h - g(f(h̃))||² for SDTP, AO-SDTP and TP (as Bartunov et al.); ``inverse_loss`` overrides.
Vanilla TP was described but not run by Bartunov et al.; here it uses SDTP's output target and
output inverse (no gradient anywhere), so every example of a class gets the same target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bioprop.checks import check_int, check_number
from bioprop.nn.init import glorot_uniform_bound
from bioprop.rules.base import register_rule
from bioprop.rules.target_prop.inverses import fast_tanh
from bioprop.rules.target_prop.base import TargetPropagationRule, TPOptions

TARGET_REDUCTIONS = ("sum", "mean")
MAX_AUX_UNITS = 65536  # a fixed aux_units x units random matrix is allocated; the paper sweeps 0..1024


@register_rule("sdtp")
class SimplifiedDTP(TargetPropagationRule):
    """SDTP: simplified DTP, the penultimate target h - g(p) + g(y*) from a learned inverse g of the output layer."""

    Options = TPOptions


@register_rule("tp")
class TargetProp(TargetPropagationRule):
    """Vanilla TP: targets are the inverses' images of the targets above, without correction."""

    Options = TPOptions

    def penultimate_target(self, h, y):
        features = self.output_features(h[-2], h[-1])
        return self.inverse(len(h) - 1)(self.output_target(features, y))

    def propagate_target(self, index, h, target):
        return self.inverse(index)(target)


@register_rule("dtp")
class DifferenceTargetProp(TargetPropagationRule):
    """DTP: a one-layer gradient step gives the penultimate target; no inverse of the output layer."""

    @dataclass
    class Options(TPOptions):
        alpha: float = field(default=0.15, metadata={
            "help": "dtp: step size of the penultimate target h_{L-1} - alpha dL/dh_{L-1}",
            "search": ("uniform", 0.01, 0.2)})  # Table 4
        target_reduction: str = field(default="sum", metadata={
            "help": "dtp: batch reduction of the cross-entropy L in the penultimate target: 'sum' "
                    "(per-example gradient) or 'mean' (1/batch of it, as Lee et al.'s code)",
            "choices": list(TARGET_REDUCTIONS)})

    default_inverse_loss = "noise-preserving"
    has_output_inverse = False

    @classmethod
    def check_options(cls, o):
        check_number(o.alpha, "alpha", minimum=0, low_open=True)
        super().check_options(o)  # also target_reduction, from its choices

    def penultimate_target(self, h, y):
        logits, below = h[-1], h[-2]
        error = self.task.output_error(logits, y)  # dL/dh_L per example: softmax - one-hot, or h_L - x
        batch = self.global_batch_size(logits.shape[0])
        scale = self.options.alpha / (batch if self.options.target_reduction == "mean" else 1)
        gradient = error.mm(self.model.blocks[-1].layer.weight.detach())  # dL/dh_{L-1}: one layer of backprop
        return below - scale * gradient.reshape(below.shape)


@register_rule("ao-sdtp")
class AuxiliaryOutputSDTP(TargetPropagationRule):
    """AO-SDTP: the output layer is [o, z] with z fixed random features of h_{L-1}."""

    @dataclass
    class Options(TPOptions):
        aux_units: int = field(default=512, metadata={
            "help": "ao-sdtp: number of auxiliary output units z (fixed random tanh features of h_{L-1}); "
                    "0 is SDTP"})

    def __init__(self, model, options=None, seed=0):
        super().__init__(model, options, seed)
        units = math.prod(self.shapes[-2])
        weight = model.blocks[-1].layer.weight
        bound = glorot_uniform_bound(units, self.options.aux_units)
        sample = torch.rand(self.options.aux_units, units, generator=self.layer_generator(len(model.blocks)),
                            dtype=weight.dtype)
        self.register_buffer("aux_weight", ((2 * sample - 1) * bound).to(weight.device))

    @classmethod
    def check_options(cls, o):
        check_int(o.aux_units, "aux_units", minimum=0, maximum=MAX_AUX_UNITS)
        super().check_options(o)

    def output_feature_count(self):
        return self.model.output_units + self.options.aux_units

    def auxiliary(self, penultimate: torch.Tensor) -> torch.Tensor:
        """z = tanh(R flatten(h_{L-1})), R fixed."""
        return fast_tanh(penultimate.flatten(1).mm(self.aux_weight.t()))

    def output_features(self, penultimate, logits):
        return torch.cat([self.task.prediction(logits), self.auxiliary(penultimate)], dim=1)

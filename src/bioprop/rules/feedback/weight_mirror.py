"""Weight mirrors (Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, NeurIPS "Deep Learning without
Weight Transport").

Feedback alignment's backward pass with a learned feedback weight ``B_l`` of ``W_l``'s shape. Besides
the task backward pass (which trains ``W_l`` as FA does), every mini-batch runs a *mirror step* at
each layer: white noise at the layer's input, sent through the forward weight (no bias), teaches
``B_l`` the input-output correlation of the layer:

    x ~ N(0, sigma^2 I),   y = W_l x,   grad_B_l = -(y x^T) / (N P) + lambda * B_l,

with ``N`` noise samples (the mini-batch size), ``P`` the output positions sharing each weight (a
convolution's output map size; 1 for linear and locally-connected layers), ``sigma`` =
``mirror_noise`` and ``lambda`` = ``mirror_decay``. Its fixed point is ``B_l = (sigma^2 / lambda) W_l``
(exactly for linear layers): ``B_l`` becomes proportional to ``W_l`` without weight transport. ``B``
is in the parameter group "feedback" (Adam settings default to the forward group's); the mirror
gradient is computed in the same backward call, only when that group is trained.

The noise has the shape of the layer's (padded) input and comes from a generator seeded by
``(seed, layer, batch counter)``, drawn for the whole global batch, of which each data-parallel rank
keeps its own rows, so ranks together compute what one process does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch

from bioprop.checks import check_number
from bioprop.rules.base import register_rule
from bioprop.rules.feedback.fa import CountsBatches, FeedbackAlignment, FeedbackInitOptions, FeedbackSite, mixed_seed


@register_rule("wm")
class WeightMirror(CountsBatches, FeedbackAlignment):
    """Weight mirrors (Akrout et al. 2019): ``grad_B = -(W x) x^T / N + mirror_decay * B`` with
    ``x ~ N(0, mirror_noise^2)``, so ``B -> (mirror_noise^2 / mirror_decay) W``."""

    label = "WM"
    groups = ("forward", "feedback")
    group_defaults = {"feedback": "forward"}
    preset_column = "fa"
    feedback_trainable = True

    @dataclass
    class Options(FeedbackInitOptions):
        mirror_noise: float = field(default=1.0, metadata={
            "help": "standard deviation sigma of the mirror step's input noise (> 0)"})
        mirror_decay: float = field(default=1.0, metadata={
            "help": "weight decay lambda of the mirror step (> 0); B tends to (sigma^2 / lambda) W",
            "search": ("log-uniform", 0.1, 10.0)})

    @classmethod
    def check_options(cls, o) -> None:
        check_number(o.mirror_noise, "mirror_noise", minimum=0, low_open=True)
        check_number(o.mirror_decay, "mirror_decay", minimum=0, low_open=True)
        super().check_options(o)

    def feedback_gradient(self, site):
        return partial(self.mirror_gradient, site)

    def mirror_noise(self, site: FeedbackSite, x: torch.Tensor) -> torch.Tensor:
        """Noise of ``x``'s shape: this rank's rows of the global batch's noise."""
        seed = mixed_seed(self.layer_generator(site.index).initial_seed(), self.feedback_step, 1)
        rows = self.global_batch_size(x.shape[0])
        noise = self.seeded_draw("normal", (rows, *x.shape[1:]), seed, x.device, x.dtype)
        return noise[self.rank::self.world_size] * self.options.mirror_noise

    def mirror_gradient(self, site: FeedbackSite, x: torch.Tensor, grad_weight: torch.Tensor) -> torch.Tensor:
        """``-(y x^T) / (N P) + lambda * B`` for noise ``x`` at the layer's input and ``y = W x``."""
        # float32 also under bf16 autocast: the correlation is a mean over many small products
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            noise = self.mirror_noise(site, x.to(site.weight.dtype))
            response = site.ops.forward(noise, site.weight)
            correlation, _ = site.ops.parameter_grads(noise, response, None)
            samples = noise.shape[0] * site.ops.positions_per_weight(response)
            return -correlation / samples + self.options.mirror_decay * site.stored.detach()

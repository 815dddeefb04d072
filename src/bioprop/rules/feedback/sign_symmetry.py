"""Sign-concordant feedback (Liao, Leibo & Poggio 2016, AAAI "How important is weight symmetry in
backpropagation?"; variants named as in BioTorch, Sanfiz & Akrout 2021, arXiv 2108.13446).

Feedback alignment's backward pass (:mod:`bioprop.rules.feedback.fa`) with a feedback weight that
shares the *signs* of the current forward weight, element by element, but not its magnitudes:

    uSF:   B_l = s_l * sign(W_l),          s_l = mean |W_l|   (recomputed from the current W_l)
    brSF:  B_l = |M_{l,t}| o sign(W_l),    M_{l,t} redrawn for every mini-batch t
    frSF:  B_l = |M_l| o sign(W_l),        M_l fixed

``M`` is drawn Glorot-uniform like ``W`` (so ``|M|`` is uniform in ``[0, sqrt(6 / (fan_in +
fan_out))]``). ``B`` follows ``W``'s signs as ``W`` learns, but never receives an update itself.
"""

from __future__ import annotations

import torch

from bioprop.nn.init import glorot_uniform_bound
from bioprop.rules.base import LearningRule, register_rule
from bioprop.rules.feedback.fa import CountsBatches, FeedbackAlignment, FeedbackSite, mixed_seed


@register_rule("usf")
class UniformSignFeedback(FeedbackAlignment):
    """Uniform sign-concordant feedback (Liao et al. 2016): ``B_l = mean|W_l| * sign(W_l)``.

    The per-layer scale ``mean|W_l|`` (recomputed every batch from the current ``W_l``) gives ``B_l``
    the size of ``W_l`` (equal L1 norms); nothing is stored."""

    label = "uSF"
    preset_column = "fa"
    Options = LearningRule.Options  # nothing random is drawn

    def initial_feedback(self, site):
        return None

    def feedback_weight(self, site):
        site = self.sites[site] if isinstance(site, int) else site
        with torch.no_grad():
            weight = site.weight
            return torch.sign(weight) * weight.abs().mean()


@register_rule("brsf")
class BatchwiseRandomSignFeedback(CountsBatches, FeedbackAlignment):
    """Batchwise random-magnitude sign-concordant feedback: ``B_l = |M_{l,t}| o sign(W_l)``.

    ``M_{l,t}`` is Glorot-uniform, redrawn for every mini-batch from a generator (on ``W``'s device)
    seeded by ``(seed, layer, batch counter)``: every data-parallel rank draws the same matrix, and
    the counter is saved with the rule's state, so a resumed run draws what an uninterrupted one does."""

    label = "brSF"
    preset_column = "fa"
    Options = LearningRule.Options  # magnitudes redrawn Glorot-uniform every batch

    def initial_feedback(self, site):
        return None

    def magnitudes(self, site: FeedbackSite) -> torch.Tensor:
        """``|M_{l,t}|`` for the current batch counter ``t``."""
        weight = site.weight
        seed = mixed_seed(self.layer_generator(site.index).initial_seed(), self.feedback_step)
        bound = glorot_uniform_bound(*site.ops.fans())
        return self.seeded_draw("uniform", weight.shape, seed, weight.device, weight.dtype) * bound

    def feedback_weight(self, site):
        site = self.sites[site] if isinstance(site, int) else site
        with torch.no_grad():
            return self.magnitudes(site) * torch.sign(site.weight)


@register_rule("frsf")
class FixedRandomSignFeedback(FeedbackAlignment):
    """Fixed random-magnitude sign-concordant feedback: ``B_l = |M_l| o sign(W_l)``, with ``M_l`` a fixed
    Glorot-uniform buffer drawn per layer (as FA's ``B``); only the signs follow ``W_l``."""

    label = "frSF"
    preset_column = "fa"

    def feedback_weight(self, site):
        site = self.sites[site] if isinstance(site, int) else site
        with torch.no_grad():
            return site.stored.abs() * torch.sign(site.weight)

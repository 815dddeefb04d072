"""Forward-Forward, supervised (Hinton 2022, "The Forward-Forward algorithm: some preliminary
investigations", arXiv 2212.13345, §3.3).

The label is part of the input: the first ``classes`` numbers of the (flattened) image are replaced
by the one-hot label, scaled to the example's largest pixel value. *Positive* data carries the true
label, *negative* data the same image with a wrong label drawn uniformly. Every hidden layer is
trained on its own, to give positive data a high and negative data a low *goodness*

    G_l(x) = Σ_j h_{l,j}²,        p_l(positive | x) = σ(G_l − θ_l),        θ_l = threshold · units_l

    L_l = mean_n [ softplus(θ_l − G_l(x_n⁺)) + softplus(G_l(x_n⁻) − θ_l) ]     (−log p⁺ − log(1 − p⁻))

The next layer sees the layer's activity with its length removed, ĥ_l = h_l / rms(h_l) (Hinton's
layer normalisation without mean subtraction, here to unit root-mean-square rather than unit
length, which keeps bioprop's Glorot-initialised tanh layers in range), and no gradient crosses
layers: each block's input is detached. With ``threshold`` in units of h² per unit, θ_l scales with
the layer's width; tanh units have h² < 1, so the threshold must be below 1.

Prediction tries every label (:meth:`ForwardForward.predict`): the score of label c is the goodness
accumulated over the hidden layers for the input carrying c, all hidden layers but the first when
there are two or more (Hinton's choice), each layer's goodness per unit, G_l / units_l (so that a wide
locally-connected layer does not outweigh the others), and the predicted class is the label with the
highest score. The evaluation's "loss" is the cross-entropy of these scores.

The network's output layer takes no part in the goodness: it is trained as a linear softmax
readout on ĥ_{L-1} of the input carrying a *neutral* label (every label unit at 1/classes of the
on-value), by its exact local gradient; ``prediction="readout"`` predicts with it (one pass instead
of one per class; Hinton's cheaper alternative). ``StepResult.logits`` (the running train error) is
the prediction the rule's ``predict`` makes, on the batch before the update.

Convolutional and locally-connected layers are trained alike: goodness sums over every unit of the
feature map and ĥ_l is normalised over all of them. Classification only (the label is part of the
input), refused by name for other tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bioprop.checks import check_number
from bioprop.errors import BiopropError
from bioprop.rules.base import LearningRule, StepResult, register_rule
from bioprop.rules.forward_only import StepSeeded, require_network

PREDICTIONS = ("goodness", "readout")


def goodness(h: torch.Tensor) -> torch.Tensor:
    """G = Σ_j h_j² per example, over every unit (of a vector or a feature map), in float32 or wider."""
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    return h.pow(2).flatten(1).sum(1)


def normalise(h: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """ĥ = h / rms(h), per example over every unit: the length (the goodness) removed, the direction kept."""
    rms = h.pow(2).flatten(1).mean(1).add(eps).sqrt()
    return h / rms.view(-1, *([1] * (h.dim() - 1))).to(h.dtype)


@register_rule("ff")
class ForwardForward(StepSeeded, LearningRule):
    """Forward-Forward (Hinton 2022): per-layer goodness of positive and negative data; predict by trying every label."""

    label = "FF"
    preset_column = "fa"
    # Adam's lr chosen among 3e-4, 1e-3, 3e-3 on the validation error after one epoch of MNIST-FC (seed 0;
    # docs/results/beyond-families/README.md)
    preset_settings = {"lr": 1e-3}
    wrap_refusal = ("it embeds the label in the input and trains every block on its own goodness of positive "
                    "and negative data: there is no backward pass to replace")
    tasks = ("classification",)

    @dataclass
    class Options:
        threshold: float = field(default=0.5, metadata={"help": (
            "Forward-Forward: the goodness threshold per unit, theta_l = threshold * units_l (tanh units: "
            "between 0 and 1)"), "search": ("uniform", 0.05, 0.95)})
        prediction: str = field(default="goodness", metadata={"choices": PREDICTIONS, "help": (
            "Forward-Forward: predict by the accumulated goodness of every label ('goodness', one pass per "
            "class) or by the softmax readout on a neutral label ('readout', one pass)")})

    @classmethod
    def check_options(cls, options) -> None:
        check_number(options.threshold, "threshold", minimum=0)
        super().check_options(options)

    def __init__(self, model, options=None, seed=0):
        super().__init__(model, options, seed)
        require_network(self, model)
        self.classes = model.output_units
        if self.classes > math.prod(model.input_shape):
            raise BiopropError(f"rule 'ff' embeds the label in the first {self.classes} input numbers, but "
                               f"{model.name or type(model).__name__} has only {math.prod(model.input_shape)}")
        hidden = len(model.blocks) - 1
        #: the hidden layers (0-based) whose goodness the prediction accumulates
        self.scored = list(range(1, hidden)) if hidden >= 2 else [0]

    # -- the label in the input -------------------------------------------------------------------
    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``x`` with its first ``classes`` numbers replaced by ``labels`` (N x classes: one-hot rows, or
        the neutral 1/classes), scaled to each example's largest value."""
        flat = x.flatten(1)
        scale = flat.amax(1, keepdim=True)
        return torch.cat([labels.to(flat.dtype) * scale, flat[:, self.classes:]], 1).view_as(x)

    def one_hot(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.classes).to(like.dtype)

    def neutral(self, like: torch.Tensor) -> torch.Tensor:
        return torch.full((len(like), self.classes), 1.0 / self.classes, dtype=like.dtype, device=like.device)

    def thresholds(self, h: torch.Tensor) -> float:
        return self.options.threshold * h[0].numel()

    # -- inference ----------------------------------------------------------------------------------
    def hidden_pass(self, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """h_1 .. h_{L-1} for ``x`` carrying ``labels``, each block fed the normalised activity below."""
        h, hidden = self.embed(x, labels), []
        for index, block in enumerate(self.model.blocks[:-1]):
            h = block(h if index == 0 else normalise(h))
            hidden.append(h)
        return hidden

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer on ĥ_{L-1} of ``x`` carrying the neutral label: softmax logits."""
        return self.model.blocks[-1](normalise(self.hidden_pass(x, self.neutral(x))[-1]))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, classes): for each label c, the goodness accumulated over the scored hidden layers
        for ``x`` carrying c (``prediction="goodness"``); the readout's logits otherwise."""
        if self.options.prediction == "readout":
            return self.readout(x)
        scores = []
        for label in range(self.classes):
            labels = torch.full((len(x),), label, dtype=torch.long, device=x.device)
            hidden = self.hidden_pass(x, self.one_hot(labels, x))
            scores.append(sum(goodness(hidden[index]) / hidden[index][0].numel() for index in self.scored))
        return torch.stack(scores, 1)

    # -- training -----------------------------------------------------------------------------------
    def compute_gradients(self, x, y, groups):
        target = self.task.target(x, y)
        with torch.no_grad():
            prediction = self.predict(x)
            loss = self.task.loss(prediction, target)
        step = self.next_step()
        if "forward" not in groups:
            return StepResult(loss.detach(), prediction.detach())
        generator = self.generator(x.device, step)
        wrong = (target + self.global_integers(1, self.classes, len(target), x.device, generator)) % self.classes
        count = len(x)
        h = torch.cat([self.embed(x, self.one_hot(target, x)), self.embed(x, self.one_hot(wrong, x))])
        losses = {}
        for index, block in enumerate(self.model.blocks[:-1]):
            h = block(h if index == 0 else normalise(h).detach())
            g = goodness(h)
            theta = self.thresholds(h)
            losses[f"goodness_loss/layer{index + 1}"] = (F.softplus(theta - g[:count]).mean()
                                                         + F.softplus(g[count:] - theta).mean())
        with torch.no_grad():
            features = normalise(self.hidden_pass(x, self.neutral(x))[-1])
        readout = self.task.loss(self.model.blocks[-1](features), target)
        losses[f"readout_loss/layer{len(self.model.blocks)}"] = readout
        torch.autograd.backward(list(losses.values()))
        return StepResult(loss.detach(), prediction.detach(), local_losses={k: v.detach() for k, v in losses.items()})

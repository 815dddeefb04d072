"""Predictive coding (Whittington & Bogacz 2017, Neural Computation 29(5):1229), standard and under
the fixed-prediction assumption (Millidge, Tschantz & Buckley 2022, Neural Computation 34(6):1329).

Every hidden layer l = 1..L-1 has value nodes v_l (v_0 = x, clamped); block l predicts
mu_l = f_l(a_l), a_l = W_l v_{l-1} + b_l, and eps_l = v_l - mu_l is its prediction error. Each example's
energy, with the output's weight gamma (``output_weight``, the error weighting)::

    F = sum_{l<L} ½||eps_l||² + gamma L(mu_L, y)          output_energy="loss": the task loss at the output
    F = sum_{l<L} ½||eps_l||² + gamma ½||y* - mu_L||²     output_energy="clamped": output node clamped to y*

(y* = ``task.best_prediction``: the one-hot label, or the input of an autoencoder). Write
eps_L = -gamma dL/dmu_L (resp. gamma (y* - mu_L)) for the output's error. Inference starts from the
forward pass (v_l = h_l, every eps_l = 0) and takes T = ``inference_steps`` steps of rate
eta = ``inference_rate`` down the energy, every layer at once::

    v_l <- v_l - eta dF/dv_l = v_l - eta (eps_l - W_{l+1}^T (f'_{l+1} * eps_{l+1}))        l = 1..L-1

Then the weights learn from the errors where the inference stopped, locally and Hebbian (error
times presynaptic activity), with the gradient normalised by gamma and the batch size N::

    grad W_l = (1 / (N gamma)) sum_n dF_n/dW_l = -(1 / (N gamma)) sum_n (eps_l * f'_l) v_{l-1}^T

(grad b_l likewise; for convolutional and locally-connected layers the products are the layer's
own weight-gradient map, and W^T its transposed map, :mod:`bioprop.rules.layered`).

``pc``, the standard rule, recomputes mu_l, f'_l and the Jacobians from the current v at every
step. At equilibrium eps_l = W_{l+1}^T (f'_{l+1} * eps_{l+1}) with everything evaluated at v, not at
the forward pass, so the update is backprop's only approximately; the approximation improves as
gamma -> 0 (the value nodes stay near the forward pass and eps_l / gamma tends to -dL/dh_l), and
tested: its angle to backprop's gradient falls as the inference converges (more steps) and as
gamma falls.

``pc-fixed`` holds every prediction mu_l, every f'_l and every input at the forward pass's values
(the fixed-prediction assumption). The inference then reads::

    eps_l <- (1 - eta) eps_l + eta W_{l+1}^T (f'_{l+1} * eps_{l+1}),   grad W_l = -(1 / (N gamma)) sum_n (eps_l * f'_l) h_{l-1}^T

With eta = 1 (its default) the error moves down one layer per step, so after T >= L - 1 steps
eps_l = -gamma dL/dh_l in every layer and the update *is* backprop's gradient (tested to float64
rounding on FC, LC and convolutional networks; T = 0, its default, means T = L - 1). With fewer
steps the lowest layers have received no error yet and get a zero update.

The whole step runs in the parameters' precision (autocast off): the errors of the standard rule
are differences of nearby activities. ``StepResult`` reports the forward pass (the inference's
starting point, to which PC's free inference returns: it is the network's prediction) and, as the
local loss ``energy``, the batch mean of F where the inference stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bioprop.checks import check_int, check_number
from bioprop.rules.base import StepResult, register_rule
from bioprop.rules.layered import LayeredRule, full_precision

OUTPUT_ENERGIES = ("loss", "clamped")


HELP = {
    "inference_steps": "predictive coding: inference steps T on the prediction errors before the weights learn "
                       "(pc-fixed: 0, its default, means one per hidden layer, L-1, where rate 1 gives backprop's "
                       "gradients exactly)",
    "inference_rate": "predictive coding: step eta of the value nodes down the energy, v <- v - eta dF/dv (pc-fixed's "
                      "default: 1); standard PC's inference diverges above about 2 / (1 + ||W f'||²): 0.35 on "
                      "MNIST-FC at initialisation",
    "output_weight": "predictive coding: the error weighting gamma, the output term's weight in the energy relative "
                     "to the hidden errors' (the update is divided by it); gamma -> 0 brings standard PC to backprop",
    "output_energy": "predictive coding: the energy's output term, 'loss' (gamma times the task loss of the "
                     "prediction) or 'clamped' (the output node clamped to the target: gamma ½||y* - mu_L||²)",
}


@dataclass
class PredictiveCodingOptions:
    inference_steps: int = field(default=20, metadata={"help": HELP["inference_steps"]})
    inference_rate: float = field(default=0.1, metadata={"help": HELP["inference_rate"],
                                                         "search": ("log-uniform", 0.02, 0.3)})
    output_weight: float = field(default=1.0, metadata={"help": HELP["output_weight"],
                                                         "search": ("log-uniform", 0.01, 1.0)})
    output_energy: str = field(default="loss", metadata={"help": HELP["output_energy"],
                                                         "choices": list(OUTPUT_ENERGIES)})


@register_rule("pc")
class PredictiveCoding(LayeredRule):
    """Predictive coding, standard (Whittington & Bogacz 2017): T steps of
    ``v_l <- v_l - eta (eps_l - W_{l+1}^T (f'_{l+1} * eps_{l+1}))`` with predictions recomputed from
    the current value nodes, then ``grad W_l = -(eps_l * f'_l) v_{l-1}^T / (N gamma)``."""

    label = "PC"
    preset_column = "fa"
    # Adam's lr chosen among 3e-4, 1e-3, 3e-3 on the validation error after one epoch of MNIST-FC (seed 0;
    # docs/results/beyond-families/README.md)
    preset_settings = {"lr": 1e-3}
    Options = PredictiveCodingOptions
    #: hold predictions, their derivatives and the layers' inputs at the forward pass (pc-fixed)
    fixed_prediction: ClassVar[bool] = False

    @classmethod
    def check_options(cls, o) -> None:
        super().check_options(o)
        check_int(o.inference_steps, "inference_steps", minimum=0)
        check_number(o.inference_rate, "inference_rate", minimum=0, low_open=True)
        check_number(o.output_weight, "output_weight", minimum=0, low_open=True)

    # -- the pieces --------------------------------------------------------------------------
    def steps(self) -> int:
        return int(self.options.inference_steps)

    def output_error(self, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """eps_L = -dF/dmu_L: -gamma dL_n/dmu_L (the task loss), or gamma (y* - mu_L) (clamped)."""
        gamma = float(self.options.output_weight)
        if self.options.output_energy == "clamped":
            return gamma * (self.task.best_prediction(target, mu.shape[1], mu.dtype) - mu)
        return -gamma * self.task.output_error(mu, target)

    def output_energy(self, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The output term of F summed over the batch (gamma L_n, or gamma ½||y* - mu_L||²)."""
        gamma = float(self.options.output_weight)
        if self.options.output_energy == "clamped":
            best = self.task.best_prediction(target, mu.shape[1], mu.dtype)
            return gamma * 0.5 * (best - mu).pow(2).sum()
        return gamma * self.task.loss(mu, target) * mu.shape[0]

    def predictions(self, values: list[torch.Tensor]):
        """``(mu_1..mu_L, f'_1..f'_L)`` of every block from the value nodes ``[x, v_1, ..., v_{L-1}]``."""
        mus, slopes = [], []
        for index, z in enumerate(values):
            mu = self.maps.activate(index, self.maps.pre_activation(index, z))
            mus.append(mu)
            slopes.append(self.maps.activation_derivative(index, mu))
        return mus, slopes

    def backward_errors(self, errors, slopes, values) -> list[torch.Tensor]:
        """``W_{l+1}^T (f'_{l+1} * eps_{l+1})`` for every hidden layer l, on the shape of v_l (``values``:
        ``[x, v_1, ..., v_{L-1}]``, block l's input at index l-1)."""
        sent = []
        for index in range(1, len(errors)):
            delta = errors[index] if slopes[index] is None else errors[index] * slopes[index]
            sent.append(self.maps.transpose(index, delta, values[index].shape))
        return sent

    # -- one step ----------------------------------------------------------------------------
    def compute_gradients(self, x, y, groups):
        with full_precision(x), torch.no_grad():
            target = self.task.target(x, y)
            values = [x]  # the forward pass: v_l = h_l
            for index in range(len(self.maps) - 1):
                values.append(self.maps.activate(index, self.maps.pre_activation(index, values[-1])))
            mus, slopes = self.predictions(values)
            logits = mus[-1]
            loss = self.task.loss(logits, target)
            if self.fixed_prediction:
                errors, inputs = self.fixed_inference(values, mus, slopes, target)
            else:
                errors, slopes, inputs, mus = self.inference(values, target)
            count = x.shape[0]
            energy = (sum(0.5 * e.pow(2).sum() for e in errors[:-1]) + self.output_energy(mus[-1], target)) / count
            if "forward" in groups:
                scale = -1.0 / (count * float(self.options.output_weight))
                for index, (error, slope, z) in enumerate(zip(errors, slopes, inputs)):
                    delta = error if slope is None else error * slope
                    self.maps.accumulate(index, z, delta * scale)
        return StepResult(loss.detach(), logits.detach(), local_losses={"energy": energy.detach()})

    def inference(self, values, target):
        """Standard PC: every step recomputes the predictions from the current value nodes."""
        values = list(values)
        rate = float(self.options.inference_rate)
        for step in range(self.steps() + 1):
            mus, slopes = self.predictions(values)
            errors = [v - mu for v, mu in zip(values[1:], mus[:-1])] + [self.output_error(mus[-1], target)]
            if step == self.steps():
                break  # the errors where the inference stopped
            sent = self.backward_errors(errors, slopes, values)
            values = [values[0]] + [v - rate * (e - s) for v, e, s in zip(values[1:], errors[:-1], sent)]
        return errors, slopes, values, mus

    def fixed_inference(self, values, mus, slopes, target):
        """Fixed prediction: mu, f' and the Jacobians stay those of the forward pass.

        The error moves down one layer per step, so step t changes only the layers it has reached,
        l >= L - t (the others stay exactly zero), and with rate 1 only the newest of them (those
        above already hold their final value): pc-fixed then costs one transposed map per layer, as
        backprop's backward pass does."""
        rate = float(self.options.inference_rate)
        errors = [torch.zeros_like(v) for v in values[1:]] + [self.output_error(mus[-1], target)]
        hidden = len(errors) - 1  # errors[j] is that of v_{j+1}; errors[hidden] the output's
        for step in range(1, self.steps() + 1):
            reached = range(max(hidden - step, 0), hidden)
            if rate == 1.0:
                reached = reached[:1] if hidden - step >= 0 else range(0)
            updated = list(errors)
            for j in reached:
                delta = errors[j + 1] if slopes[j + 1] is None else errors[j + 1] * slopes[j + 1]
                sent = self.maps.transpose(j + 1, delta, values[j + 1].shape)
                updated[j] = sent if rate == 1.0 else (1 - rate) * errors[j] + rate * sent
            errors = updated
        return errors, values


@dataclass
class FixedPredictionOptions(PredictiveCodingOptions):
    """pc-fixed: by default exactly backprop (nothing to search)."""

    inference_steps: int = field(default=0, metadata={"help": HELP["inference_steps"]})
    inference_rate: float = field(default=1.0, metadata={"help": HELP["inference_rate"]})
    output_weight: float = field(default=1.0, metadata={"help": HELP["output_weight"]})


@register_rule("pc-fixed")
class FixedPredictionPC(PredictiveCoding):
    """Predictive coding under the fixed-prediction assumption (Millidge et al. 2022): predictions,
    derivatives and inputs of the forward pass throughout; ``eps_l <- (1 - eta) eps_l + eta W_{l+1}^T
    (f'_{l+1} * eps_{l+1})``. With eta = 1 and T >= L - 1 its update equals backprop's gradient."""

    label = "PC-fixed"
    # backprop's gradients: backprop's Table 5 settings, so its presets' runs are BP's
    preset_column = "bp"
    preset_settings = {}
    Options = FixedPredictionOptions
    fixed_prediction = True

    def steps(self) -> int:
        steps = int(self.options.inference_steps)
        return steps if steps > 0 else len(self.maps) - 1

"""Equilibrium propagation (Scellier & Bengio 2017, Frontiers in Computational Neuroscience 11:24) with
centred (symmetric) nudging (Laborieux, Ernoult, Scellier, Bengio, Grollier & Querlioz 2021,
Frontiers in Neuroscience 15:633674).

The hidden layers of the network (l = 1..L-1, states s_l, s_0 = x clamped) form a layered Hopfield
network whose couplings are the network's own affine maps, used in both directions: for fully-
connected layers W_l and W_l^T, for convolutional and locally-connected ones the layer's map and its
transposed map (:mod:`bioprop.rules.layered`). The output layer is a readout o = W_L s_{L-1} + b_L
outside the energy (Laborieux et al. 2021's cross-entropy readout), and the task loss L(o, y) nudges::

    Phi(s)     = sum_{l<L} <s_l, W_l s_{l-1} + b_l>
    E_beta(s)  = sum_{l<L} sum_i G(s_{l,i}) - Phi(s) + beta L(W_L s_{L-1} + b_L, y),     G' = f^{-1}

(f the hidden activation, tanh: G(s) = s atanh(s) + ½ log(1 - s²)). Its stationary points are the
fixed points of s_l = f(dPhi/ds_l - beta dL/ds_l), with
dPhi/ds_l = W_l s_{l-1} + b_l + W_{l+1}^T s_{l+1} (no W_{l+1}^T term for l = L-1, which feels the
nudge instead). The relaxation updates the pre-activations u_l (s_l = f(u_l)), first the odd
layers, then the even ones (each group depends only on the other), with step eps =
``relaxation_step``::

    u_l <- (1 - eps) u_l + eps (dPhi/ds_l - beta dL/ds_l)

For beta = 0 the energy is convex in each unit given the other layers, with its minimum at
u_l = dPhi/ds_l: eps = 1 minimises it exactly over the layers being updated, and any eps in (0, 1]
moves every unit towards that minimum, so the free phase descends the energy monotonically (tested).
The default eps = 0.5 damps the relaxation: on the paper's deep networks eps = 1 made training
chaotic (a relative perturbation of 1e-7 of the initial weights changed the parameters after three
Adam steps on MNIST-FC by 10 % of their update, against 0.08 % with eps = 0.5).

Phases: the free phase (beta = 0, ``free_steps`` steps from the forward pass's activations) gives s^0
and the prediction o^0 = W_L s^0_{L-1} + b_L (:meth:`EquilibriumPropagation.predict`, what evaluation
scores; autograd runs through the relaxation, so its gradient is the loss's at the free phase); the
nudged phases start from s^0 and take ``nudged_steps`` steps at +beta and, centred, at -beta
(``nudging``). With Phi_n the term of example n and N the batch size::

    centred:    grad theta_l = -(1 / (2 beta N)) sum_n [dPhi_n/dtheta_l(s^{+beta}) - dPhi_n/dtheta_l(s^{-beta})]
    one-sided:  grad theta_l = -(1 / (beta N))   sum_n [dPhi_n/dtheta_l(s^{+beta}) - dPhi_n/dtheta_l(s^0)]
    dPhi/dW_l = s_l s_{l-1}^T,  dPhi/db_l = s_l                       (contrastive Hebbian, local)
    readout:    grad theta_L = dL/dtheta_L at the free phase, (1 / N) sum_n (dL_n/do) s^0_{L-1}^T

As beta -> 0 at converged phases this is the gradient of the loss at the free fixed point,
dL(o^0(theta), y)/dtheta (Scellier & Bengio 2017); the one-sided estimate's error is
O(beta), the centred one's O(beta²) (Laborieux et al. 2021). Both are tested against that gradient
computed independently by implicit differentiation of the fixed-point equations.

The nudged phases are relaxed as deviations from the free state and the update is assembled from
those deviations (:meth:`EquilibriumPropagation.relax`, :meth:`EquilibriumPropagation.accumulate_update`),
so the difference of two nearby phases never subtracts states of size one: float32 phases give it to
float32 precision (a batch split in two changes it by ~1e-6 relative, not 2e-5). The whole step runs in
the parameters' precision (autocast off). ``StepResult`` reports the free phase's output and its
loss, what :meth:`EquilibriumPropagation.predict` gives, so the running train error scores the
rule's own prediction, as evaluation does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bioprop.checks import check_int, check_number
from bioprop.rules.base import StepResult, register_rule
from bioprop.rules.layered import LayeredRule, full_precision

NUDGINGS = ("centred", "one-sided")


@dataclass
class EquilibriumOptions:
    nudge_strength: float = field(default=0.2, metadata={
        "help": "equilibrium propagation: the nudging strength beta of the loss in the energy (the phases at "
                "+beta and, centred, -beta)",
        "search": ("log-uniform", 0.01, 1.0)})
    nudging: str = field(default="centred", metadata={
        "help": "equilibrium propagation: 'centred' (phases at +beta and -beta, error O(beta²); Laborieux et al. "
                "2021) or 'one-sided' (the free phase and +beta, error O(beta); Scellier & Bengio 2017)",
        "choices": list(NUDGINGS)})
    free_steps: int = field(default=30, metadata={
        "help": "equilibrium propagation: relaxation steps of the free phase (each: the odd layers, then the even "
                "ones), from the forward pass"})
    nudged_steps: int = field(default=10, metadata={
        "help": "equilibrium propagation: relaxation steps of each nudged phase, from the free phase's state"})
    relaxation_step: float = field(default=0.5, metadata={
        "help": "equilibrium propagation: step eps in (0, 1] of the relaxation, u <- (1 - eps) u + eps dPhi/ds (1: "
                "each half-step minimises the energy over the layers it updates; smaller: damped, less sensitive "
                "to rounding on deep networks)"})


@register_rule("ep")
class EquilibriumPropagation(LayeredRule):
    """Equilibrium propagation with centred nudging: free and +-beta phases of the layered energy
    ``E = sum G(s) - sum <s_l, W_l s_{l-1} + b_l> + beta L``, then
    ``grad W_l = -(s_l^+ s_{l-1}^{+T} - s_l^- s_{l-1}^{-T}) / (2 beta N)`` (Scellier & Bengio 2017;
    Laborieux et al. 2021)."""

    label = "EP"
    preset_column = "fa"
    # Adam's lr chosen among 3e-4, 1e-3, 3e-3 on the validation error after one epoch of MNIST-FC (seed 0;
    # docs/results/beyond-families/README.md)
    preset_settings = {"lr": 3e-4}
    Options = EquilibriumOptions

    @classmethod
    def check_options(cls, o) -> None:
        super().check_options(o)
        check_number(o.nudge_strength, "nudge_strength", minimum=0, low_open=True)
        check_int(o.free_steps, "free_steps", minimum=0)
        check_int(o.nudged_steps, "nudged_steps", minimum=0)
        check_number(o.relaxation_step, "relaxation_step", minimum=0, maximum=1, low_open=True)

    # -- the relaxation ----------------------------------------------------------------------
    def forward_pass(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pre-activations u_l of the hidden layers in the network's forward pass."""
        states, z = [], x
        for index in range(len(self.maps) - 1):
            u = self.maps.pre_activation(index, z)
            states.append(u)
            z = self.maps.activate(index, u)
        return states

    def readout(self, top: torch.Tensor) -> torch.Tensor:
        return self.maps.pre_activation(len(self.maps) - 1, top)

    def drive(self, x: torch.Tensor, s: list[torch.Tensor], index: int) -> torch.Tensor:
        """dPhi/ds_l = W_l s_{l-1} + b_l + W_{l+1}^T s_{l+1} (no top-down term for the top hidden layer)."""
        drive = self.maps.pre_activation(index, x if index == 0 else s[index - 1])
        if index < len(s) - 1:
            drive = drive + self.maps.transpose(index + 1, s[index + 1], s[index].shape)
        return drive

    def relax(self, x: torch.Tensor, base: list[torch.Tensor], steps: int, beta: float = 0.0,
              target: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``steps`` steps of the relaxation at nudging ``beta`` from the pre-activations ``base``, returned as
        the deviations d_l = u_l - base_l (autograd runs through it when enabled). Each step updates
        layers 1, 3, 5, ... then 2, 4, ....

        The relaxation runs on the deviations: the drive is affine in s, so with s = s_b + D (D_l =
        f(base_l + d_l) - f(base_l), :meth:`LayeredMaps.activation_change`) the step reads
        ``d_l <- (1 - eps) d_l + eps (r_l + W_l D_{l-1} + W_{l+1}^T D_{l+1} - beta W_L^T dL/do)`` with
        r_l = dPhi/ds_l(s_b) - base_l, the base's own residual. The nudged phases start from the free
        state, so their difference (the update) is computed from small deviations, without the
        cancellation of subtracting two states of size one: float32 phases give it to float32 precision."""
        maps, eps = self.maps, float(self.options.relaxation_step)
        top = len(base) - 1
        s_base = [maps.activate(index, u) for index, u in enumerate(base)]
        residual = [self.drive(x, s_base, index) - base[index] for index in range(len(base))]
        output = self.readout(s_base[-1]) if beta != 0.0 else None
        d = [torch.zeros_like(u) for u in base]
        change = [torch.zeros_like(u) for u in base]
        for _ in range(steps):
            for parity in (0, 1):
                for index in range(parity, len(base), 2):
                    total = residual[index]
                    if index > 0:
                        total = total + maps.linear(index, change[index - 1])
                    if index < top:
                        total = total + maps.transpose(index + 1, change[index + 1], base[index].shape)
                    elif beta != 0.0:
                        nudged = output + maps.linear(top + 1, change[index])
                        error = self.task.output_error(nudged, target)  # dL_n/do
                        total = total - beta * maps.transpose(top + 1, error, base[index].shape)
                    d[index] = total if eps == 1.0 else (1 - eps) * d[index] + eps * total
                    change[index] = maps.activation_change(index, base[index], s_base[index], d[index])
        return d

    def free_phase(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The free phase's pre-activations u^0_l, relaxed from the forward pass."""
        start = self.forward_pass(x)
        return [u + d for u, d in zip(start, self.relax(x, start, int(self.options.free_steps)))]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The rule's prediction: the readout of the free phase's fixed point, o^0 = W_L s^0_{L-1} + b_L."""
        with full_precision(x):
            u = self.free_phase(x)
            return self.readout(self.maps.activate(len(u) - 1, u[-1]))

    # -- one step ----------------------------------------------------------------------------
    def compute_gradients(self, x, y, groups):
        maps = self.maps
        beta = float(self.options.nudge_strength)
        with full_precision(x), torch.no_grad():
            target = self.task.target(x, y)
            free = self.free_phase(x)
            free_s = [maps.activate(index, u) for index, u in enumerate(free)]
            output = self.readout(free_s[-1])  # what predict(x) gives: the running train error scores it
            loss = self.task.loss(output, target)
            if "forward" in groups:
                self.accumulate_update(x, free, free_s, beta, target)
                error = self.task.output_error(output, target) / x.shape[0]
                maps.accumulate(len(maps) - 1, free_s[-1], error)
        return StepResult(loss.detach(), output.detach())

    def accumulate_update(self, x, free, free_s, beta, target) -> None:
        """The hidden layers' update from the nudged phases' deviations D^+- from the free state s (D^- = 0
        one-sided), without forming the phases themselves::

            s_l^+ s_{l-1}^{+T} - s_l^- s_{l-1}^{-T} = (D_l^+ - D_l^-) s_{l-1}^T + (s_l + D_l^+) D_{l-1}^{+T}
                                                      - (s_l + D_l^-) D_{l-1}^{-T},    bias: D_l^+ - D_l^-"""
        maps, steps = self.maps, int(self.options.nudged_steps)
        count = x.shape[0]

        def changes(d):
            return [maps.activation_change(index, u, s, dev) for index, (u, s, dev) in enumerate(zip(free, free_s, d))]

        plus = changes(self.relax(x, free, steps, beta, target))
        centred = self.options.nudging == "centred"
        minus = changes(self.relax(x, free, steps, -beta, target)) if centred else None
        factor = -1.0 / ((2 * beta if centred else beta) * count)
        for index in range(len(free)):
            below = x if index == 0 else free_s[index - 1]
            maps.accumulate(index, below, (plus[index] - minus[index] if centred else plus[index]) * factor)
            if index > 0:
                deviations, above = plus[index - 1], free_s[index] + plus[index]
                if centred:
                    deviations = torch.cat([deviations, minus[index - 1]])
                    above = torch.cat([above, -(free_s[index] + minus[index])])
                maps.accumulate(index, deviations, above * factor, bias=False)

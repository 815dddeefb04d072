"""Forward-only rules: credit assignment with forward passes alone, no backward pass through the network.

==========================  ======================================================================
``forward_gradient.py``     ``fg``: forward gradients from directional derivatives (``torch.func.jvp``)
                            along random weight or activity perturbations (Baydin et al. 2022;
                            Ren et al. 2023)
``pepita.py``               ``pepita``: a second forward pass on the input modulated by the projected
                            output error; updates from the difference of the two passes
                            (Dellaferrera & Kreiman 2022)
``drtp.py``                 ``drtp``: DFA's direct feedback with the one-hot target in place of the
                            error (Frenkel et al. 2021)
``forward_forward.py``      ``ff``: per-layer goodness of positive (true label) and negative (wrong
                            label) data, prediction by trying every label (Hinton 2022)
==========================  ======================================================================

What the modules share lives here: the check that the model is a bioprop
:class:`~bioprop.models.Network` (each rule drives it block by block and refuses any other module by
name), and the per-step random draws (seeded by the rule's seed and a step counter saved with its
state, drawn for the whole global batch under data parallelism, so that two processes at batch B/2
draw what one process at batch B does).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from bioprop.errors import BiopropError
from bioprop.models import Network
from bioprop.rules.feedback.fa import mixed_seed


def require_network(rule, model: nn.Module) -> None:
    """Refuses, naming the rule, a model that is not a bioprop Network with at least one hidden block."""
    if not isinstance(model, Network):
        raise BiopropError(f"rule {rule.name!r} needs a bioprop Network (a stack of blocks, e.g. --model mnist-fc), "
                           f"got {type(model).__name__}")
    if len(model.blocks) < 2:
        raise BiopropError(f"rule {rule.name!r} needs a network with at least one hidden layer")


class StepSeeded:
    """Mixin for rules that draw random numbers every step: the draws depend only on ``(seed, step,
    keys)`` (a generator on the tensors' device; CPU and CUDA streams differ), and the step counter and
    seed are saved in the rule's ``state_dict`` (``_extra_state``), so a resumed run draws what an
    uninterrupted one does. The counter advances once per :meth:`next_step`."""

    steps: int = 0

    def get_extra_state(self):
        return {"steps": self.steps, "seed": self.seed}

    def set_extra_state(self, state):
        self.steps = int(state["steps"])
        self.seed = int(state.get("seed", self.seed))

    def next_step(self) -> int:
        step, self.steps = self.steps, self.steps + 1
        return step

    def generator(self, device, *keys: int) -> torch.Generator:
        """A generator on ``device`` seeded by the rule's seed, its name and ``keys`` (step, sample, ...)."""
        seed = mixed_seed(self.layer_generator(0).initial_seed(), *keys)
        return torch.Generator(device=device).manual_seed(seed)

    def global_normal(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise shaped like ``like`` (N first), float32 or wider: one process draws
        the noise of the whole global batch and keeps its rows ``rank::world_size``."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        shape = (like.shape[0] * self.world_size, *like.shape[1:])
        noise = torch.randn(shape, generator=generator, device=like.device, dtype=dtype)
        return noise[self.rank::self.world_size] if self.world_size > 1 else noise

    def global_integers(self, low: int, high: int, size: int, device, generator: torch.Generator) -> torch.Tensor:
        """Integers in [low, high) for the ``size`` local examples, drawn for the whole global batch."""
        draw = torch.randint(low, high, (size * self.world_size,), generator=generator, device=device)
        return draw[self.rank::self.world_size] if self.world_size > 1 else draw


@contextmanager
def full_precision(x: torch.Tensor):
    """Autocast off, for computations that subtract nearby values (PEPITA's two passes), which bf16's
    8-bit mantissa would turn into noise: they run in the parameters' dtype."""
    with torch.autocast(x.device.type, enabled=False):
        yield


def accumulate_grad(parameter: nn.Parameter, gradient: torch.Tensor) -> None:
    """Adds ``gradient`` to ``parameter.grad`` (creating it in the parameter's dtype and layout), as
    ``backward`` does: the rules accumulate, the caller zeroes."""
    gradient = gradient.reshape(parameter.shape)
    if parameter.grad is None:
        parameter.grad = torch.empty_like(parameter).copy_(gradient)
    else:
        parameter.grad.add_(gradient.to(parameter.grad.dtype))

"""``bioprop.wrap(module, rule=...)``: a learning rule on any PyTorch model.

    import bioprop
    net = bioprop.wrap(my_resnet, rule="kp", seed=0)   # the same module, its layers' backward replaced
    loss = F.cross_entropy(net(x), y)
    loss.backward()                                    # gradients as Kolen-Pollack computes them
    optimizer.step()

Each rule says what wrapping means for it (:meth:`bioprop.rules.LearningRule.wrap`); the rules that
need bioprop's block structure (target propagation) refuse with a message naming the rule.
"""

from __future__ import annotations

from torch import nn

from bioprop.errors import BiopropError
from bioprop.rules import RULES


def wrap(module: nn.Module, rule: str, seed: int = 0, **options) -> nn.Module:
    """``module`` trained by learning rule ``rule`` when called and back-propagated as usual;
    ``options`` are the rule's ``Options`` fields (and, for DFA, where the error is delivered)."""
    if not isinstance(module, nn.Module):
        raise BiopropError(f"bioprop.wrap needs an nn.Module, got {type(module).__name__}")
    return RULES.get(rule).wrap(module, seed=seed, **options)

"""``bioprop.wrap(module, rule=...)``: a learning rule on any PyTorch model, in place.

    import bioprop
    net = bioprop.wrap(my_resnet, rule="kp", seed=0)   # the same module, its backward pass now the rule's
    loss = F.cross_entropy(net(x), y)
    loss.backward()                                    # gradients as Kolen-Pollack computes them
    optimizer.step()
    rule = bioprop.rule_of(net)                        # the rule: true_backprop(), compute_gradients, ...
    plain = bioprop.unwrap(net)                        # the module as it was (same object)

``wrap`` returns the module for every rule that can wrap one (``bp`` leaves it as it is; the
feedback rules replace the backward pass of each feedback layer; ``dfa`` delivers the error at
``deliver_at``); the rules that need bioprop's block structure (target propagation) refuse with a
message naming the rule. What a rule adds to the module, and how ``state_dict`` and ``unwrap`` treat
it: :mod:`bioprop.rules.wrapping`.
"""

from __future__ import annotations

from torch import nn

from bioprop.errors import BiopropError
from bioprop.rules import RULES
from bioprop.rules.wrapping import rule_of, unwrap


def wrap(module: nn.Module, rule: str, seed: int = 0, *, strict: bool = True, **options) -> nn.Module:
    """``module`` itself, trained by learning rule ``rule`` when called and back-propagated as usual;
    ``options`` are the rule's ``Options`` fields (and, for DFA, where the error is delivered).

    ``strict`` (feedback rules): a layer with parameters that the rule cannot cover (attention,
    recurrent layers, a module's own ``nn.Parameter`` s, ...) is refused by name; with ``strict=False``
    such layers stay on backprop and one warning names them."""
    if not isinstance(module, nn.Module):
        raise BiopropError(f"bioprop.wrap needs an nn.Module, got {type(module).__name__}")
    return RULES.get(rule).wrap(module, seed=seed, strict=strict, **options)


__all__ = ["rule_of", "unwrap", "wrap"]

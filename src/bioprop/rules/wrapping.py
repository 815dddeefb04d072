"""How a rule wraps its model in place, and lets go of it: ``bioprop.rule_of``, ``bioprop.unwrap``.

The rules that change what autograd computes for a model (the feedback-weight rules and DFA) do so
*in place*, whether applied with ``bioprop.wrap(module, rule)`` or ``create_rule(rule, model)``:

* the rule is the model's ``bioprop_rule`` attribute (a plain attribute, not a submodule: the
  model's ``parameters()`` and ``state_dict()`` stay the model's), read by :func:`rule_of`;
* what the rule adds lives on the model, so ``model.to()``, ``copy.deepcopy(model)`` and
  ``model.state_dict()`` carry it: each feedback layer's ``feedback_weight`` (a buffer, or a
  parameter for rules that learn it), DFA's ``feedback_matrix`` on the model itself, and
  ``bioprop_feedback_state`` (an int64 tensor ``[batches seen, seed]``) for the rules that draw per
  batch (``brsf``, ``wm``);
* a ``state_dict`` without them (a plain model's, a pretrained checkpoint) loads strictly: what is
  absent keeps its current value;
* :func:`unwrap` (``rule.unwrap()``) removes all of it, hooks included: the module is plain again and
  its ``state_dict`` has the keys it had before wrapping.

A model carries at most one such rule: a second one is refused by name. ``bp`` leaves the model as it
is and measures backprop with the attached rule switched off (:meth:`LearningRule.true_backprop`).
"""

from __future__ import annotations

import contextlib
from functools import partial

from torch import nn

from bioprop.errors import BiopropError

#: the attribute of a wrapped model that holds its rule
RULE_ATTRIBUTE = "bioprop_rule"


def wrapping_rule(module: nn.Module):
    """The rule that wraps ``module`` in place, or None."""
    return module.__dict__.get(RULE_ATTRIBUTE) if isinstance(module, nn.Module) else None


def rule_of(module: nn.Module):
    """The learning rule ``module`` was wrapped with (``bioprop.wrap`` or ``create_rule``)."""
    rule = wrapping_rule(module)
    if rule is None:
        raise BiopropError(f"{type(module).__name__} is not wrapped by a bioprop rule that changes its backward pass "
                           f"(bioprop.wrap(module, rule='fa'), or create_rule; bp and target propagation leave the "
                           f"model as it is)")
    return rule


def unwrap(module: nn.Module) -> nn.Module:
    """``module`` plain again (its rule's hooks, feedback weights and state removed); a module that is not
    wrapped is returned as it is."""
    rule = wrapping_rule(module)
    return module if rule is None else rule.unwrap()


def backprop_of(model: nn.Module):
    """A context in which ``model`` differentiates as backprop: its rule's ``true_backprop()`` if it is wrapped."""
    rule = wrapping_rule(model)
    return contextlib.nullcontext() if rule is None else rule.true_backprop()


def state_dict_hook_registrars(module: nn.Module):
    """``module``'s registrars of a state-dict post hook ``hook(module, state_dict, prefix, metadata)``
    and a load pre hook ``hook(module, state_dict, prefix, ...)``: public from torch 2.5, private (the
    same hooks) in torch 2.4."""
    if hasattr(module, "register_state_dict_post_hook"):
        return module.register_state_dict_post_hook, module.register_load_state_dict_pre_hook
    return module._register_state_dict_hook, partial(module._register_load_state_dict_pre_hook, with_module=True)


def keep_absent_entries(names, module, state_dict, prefix, *args) -> None:
    """Load pre hook: a ``state_dict`` without ``module``'s tensors ``names`` (a plain model's) keeps their
    current values, so it loads strictly."""
    for name in names:
        current = getattr(module, name, None)
        if current is not None and prefix + name not in state_dict:
            state_dict[prefix + name] = current


class WrapsModel:
    """Mixin of the rules that wrap their model in place (module docstring). The rule records every
    hook it registers (:meth:`keep_hook`) and undoes what it added in :meth:`release_model`."""

    def attach_to_model(self) -> None:
        """Makes the rule the model's ``bioprop_rule``; call after every check, before changing the model."""
        self._hooks = []
        self.model.__dict__[RULE_ATTRIBUTE] = self

    def keep_hook(self, handle):
        self._hooks.append(handle)
        return handle

    def add_tensor(self, module: nn.Module, name: str, tensor, parameter: bool = False) -> None:
        """Registers ``module.name`` (buffer or parameter); a state_dict without it keeps its value."""
        if parameter:
            module.register_parameter(name, nn.Parameter(tensor))
        else:
            module.register_buffer(name, tensor)
        self.keep_hook(state_dict_hook_registrars(module)[1](partial(keep_absent_entries, (name,))))

    def release_model(self) -> None:
        """Removes what the rule added to the model (subclasses: feedback tensors, replaced forwards)."""

    def unwrap(self) -> nn.Module:
        """The model plain again: hooks removed, :meth:`release_model`, ``bioprop_rule`` deleted. The rule can
        no longer be used."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self.release_model()
        if self.model.__dict__.get(RULE_ATTRIBUTE) is self:
            del self.model.__dict__[RULE_ATTRIBUTE]
        return self.model

    def require_wrapped(self) -> None:
        """Refuses to run a rule whose model was unwrapped (it would silently train as backprop)."""
        if wrapping_rule(self.model) is not self:
            raise BiopropError(f"rule {self.name!r} no longer wraps its model (bioprop.unwrap was called): its "
                               f"backward pass would be backprop's; create the rule again")

    def forward(self, x):
        self.require_wrapped()
        return super().forward(x)


def remove_tensor(module: nn.Module, name: str) -> None:
    module._parameters.pop(name, None)
    module._buffers.pop(name, None)

"""Learning rules, by mechanism family, and their registry.

=====================  ================================================================
``bp.py``              backpropagation, the reference
``feedback/``          feedback-weight rules: backprop's backward pass with each transposed
                       forward weight replaced by a feedback weight B (FA, sign symmetry,
                       Kolen-Pollack, weight mirrors)
``direct/``            direct feedback: the output error sent straight to every layer (DFA)
``target_prop/``       target propagation: local losses toward targets from learned inverses
                       (TP, DTP, SDTP, AO-SDTP, DRL, L-DRL, the BP/DTP hybrid)
``forward_only/``      no backward pass through the network: forward gradients (FG), PEPITA,
                       DRTP, Forward-Forward (FF)
``predictive_coding/`` inference on the layers' prediction errors, then local Hebbian updates
                       (PC, standard and fixed-prediction)
``equilibrium/``       equilibrium propagation: free and nudged relaxations of an energy, updates
                       from their difference (EP)
``layered.py``         the blocks' maps both ways, for the last two
=====================  ================================================================

Importing this package imports every module under it, and each module registers its rules
with ``@register_rule``: adding a rule is adding one file, named nowhere else.
"""

import importlib
import pkgutil

from bioprop.rules.base import (RULES, LearningRule, StepResult, create_rule, list_rules, register_rule, rule_options,
                               task_loss)


def _import_all() -> None:
    for module in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        importlib.import_module(module.name)


_import_all()

__all__ = ["RULES", "LearningRule", "StepResult", "create_rule", "list_rules", "register_rule", "rule_options",
           "task_loss"]

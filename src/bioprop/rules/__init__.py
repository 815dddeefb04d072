"""Learning-rule registry. Importing this package registers every rule in it."""

from bioprop.rules import bp, dfa, fa  # noqa: F401  (registration side effects)
from bioprop.rules import target_prop  # noqa: F401  (registers tp, dtp, sdtp, ao-sdtp)
from bioprop.rules.base import (RULES, LearningRule, StepResult, create_rule, list_rules, register_rule, rule_options,
                               task_loss)

__all__ = ["RULES", "LearningRule", "StepResult", "create_rule", "list_rules", "register_rule", "rule_options",
           "task_loss"]

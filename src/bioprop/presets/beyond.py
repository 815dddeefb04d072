"""Presets for the rules the paper did not run, on the paper's networks and data.

Every registered rule whose class names a ``preset_column`` gets one preset per network of the
paper (MNIST and Fashion-MNIST FC and LC, CIFAR-10 FC and LC, ImageNet LC), named
``<dataset>-<arch>-<rule>`` (``mnist-fc-kp``, ``cifar-lc-l-drl``). Its settings are the Table 5
column the rule names: the FA column for the feedback-weight rules, the DTP-parallel column for
the target-propagation rules, with the rule's ``preset_settings`` on top (the forward-only and
energy-based rules: Adam's learning rate from a small search on MNIST-FC, since their papers give
none for these networks and Adam). The paper never tuned these rules, so these are starting points,
stated as such (:data:`DECISIONS`), not tuned baselines: ``bioprop search`` tunes them.

Nothing here names a rule: a new rule with a ``preset_column`` gets its presets by being registered.
"""

from __future__ import annotations

import dataclasses

from bioprop.presets.paper import Decision, PaperNumbers, make_config

#: (dataset, arch) of every network the presets cover, in table order
NETWORKS: list[tuple[str, str]] = [("mnist", "fc"), ("mnist", "lc"), ("cifar10", "fc"), ("cifar10", "lc"),
                                   ("imagenet", "lc"), ("fashion-mnist", "fc"), ("fashion-mnist", "lc")]

DECISIONS: list[Decision] = [
    Decision("settings of rules beyond the paper", "not in the paper",
             "the Table 5 column the rule names (FA's for feedback-weight rules, DTP-parallel's for the "
             "target-propagation rules), on the same networks, data and epoch budget as the paper's cells",
             "a like-for-like starting point that favours no rule; the published settings of these rules are "
             "for other networks (ResNets, VGG) and optimisers (SGD)"),
    Decision("learning rate of the forward-only and energy-based rules", "not in the paper",
             "the rule's preset_settings over FA's column: Adam's lr chosen among 3e-4, 1e-3 and 3e-3 on the "
             "validation error after one epoch of MNIST-FC, seed 0 (docs/results/beyond-families)",
             "FA's learning rate (1.68e-4) leaves these rules far from trained within a short budget; their "
             "papers' settings are for SGD or other networks"),
]


def rules_beyond() -> list[str]:
    """Registered rules that have presets here (those naming a ``preset_column``)."""
    from bioprop.rules import RULES

    return [name for name in RULES.names() if RULES.get(name).preset_column]


def label(rule: str) -> str:
    from bioprop.rules import RULES

    return RULES.get(rule).label


def config(dataset: str, arch: str, rule: str):
    from bioprop.rules import RULES

    rule_class = RULES.get(rule)
    config = make_config(dataset, arch, rule, rule=rule, column=rule_class.preset_column)
    optimizer_fields = {f.name for f in dataclasses.fields(config.optimizers["forward"])}
    for key, value in rule_class.preset_settings.items():
        if key in rule_class.Options.__dataclass_fields__:
            config.rule_options[key] = value
        elif key in optimizer_fields:
            config.optimizers["forward"] = dataclasses.replace(config.optimizers["forward"], **{key: value})
        else:
            raise ValueError(f"rule {rule!r}: preset_settings names {key!r}, neither one of its options nor an "
                             f"optimiser setting ({', '.join(sorted(optimizer_fields))})")
    return config


def numbers() -> PaperNumbers:
    return PaperNumbers(source="not in the paper")

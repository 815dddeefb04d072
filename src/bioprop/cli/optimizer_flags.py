"""The optimiser and learning-rate-schedule flags of ``bioprop train``, one set per parameter group.

Every field of :class:`~bioprop.training.config.OptimizerConfig` but ``eps_convention`` (one flag for
every group, ``--eps-convention``) is a flag: ``--FIELD`` for the forward weights (``--lr``,
``--optimizer``, ``--lr-schedule``) and ``--GROUP-FIELD`` for each other group some rule trains
(``--inverse-lr``, ``--inverse-lr-schedule``, ``--feedback-momentum``). The learning-rate schedule is
``--lr-schedule``; target propagation's order of updates is the rule option ``--schedule``, and each
refuses the other's values with a pointer to the right flag.
"""

from __future__ import annotations

import argparse
import dataclasses

from bioprop.cli.args import finite_float
from bioprop.errors import BiopropError
from bioprop.rules import RULES
from bioprop.training.config import LR_SCHEDULES, OPTIMIZERS, OptimizerConfig, rule_group_names

#: field -> what its flag sets (for the help; {p} is the group's flag prefix, "--" or "--inverse-"); the
#: flags' order in ``--help``
OPTIMIZER_FLAGS = {
    "optimizer": "optimiser: adam (with AdamW's decoupled decay when weight decay > 0), adamw, or sgd (see "
                 "{p}momentum, {p}nesterov)",
    "lr": "learning rate (the base rate of the learning-rate schedule)",
    "beta1": "Adam beta1", "beta2": "Adam beta2", "eps": "Adam epsilon",
    "weight_decay": "weight decay: decoupled (AdamW) for adam and adamw, an L2 term in the gradient for sgd",
    "momentum": "SGD momentum, dampening 0 (sgd only)",
    "nesterov": "Nesterov's momentum (sgd with momentum > 0 only)",
    "lr_schedule": "learning-rate schedule of the optimiser: constant; cosine (down to {p}min-lr-ratio times lr "
                   "at the end of training); step (times {p}step-gamma every {p}step-epochs epochs); each after a "
                   "linear warm-up of {p}warmup-epochs. Not target propagation's order of forward and inverse "
                   "updates, which is --schedule",
    "warmup_epochs": "epochs over which the learning rate first rises linearly to lr, before the schedule (0: "
                     "no warm-up)",
    "min_lr_ratio": "cosine schedule: the final learning rate as a fraction of lr",
    "step_epochs": "step schedule: epochs between two decays of the learning rate",
    "step_gamma": "step schedule: the factor applied to the learning rate at each decay",
}
CHOICES = {"optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES}

#: values of one flag that belong to another, with the pointer given instead of "invalid choice"
LR_SCHEDULE_HINTS = {value: f"{value!r} is an order of target propagation's updates, set by --schedule; "
                            f"--lr-schedule is the learning rate's schedule ({', '.join(LR_SCHEDULES)})"
                     for value in ("parallel", "alternating")}
RULE_OPTION_HINTS = {"schedule": {value: f"{value!r} is a learning-rate schedule, set by --lr-schedule "
                                         f"(--GROUP-lr-schedule for other groups); --schedule is target "
                                         f"propagation's order of updates"
                                  for value in LR_SCHEDULES}}


def hinted(kind, hints: dict[str, str]):
    """argparse ``type``: ``kind``, except that the values of ``hints`` are refused with their message."""
    def convert(value: str):
        if value in hints:
            raise argparse.ArgumentTypeError(hints[value])
        return kind(value)
    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


def other_groups() -> list[str]:
    """The parameter groups besides ``forward`` that some rule trains; each gets ``--GROUP-lr`` etc."""
    return [group for group in rule_group_names() if group != "forward"]


def _shown_default(field: str) -> str:
    value = {f.name: f.default for f in dataclasses.fields(OptimizerConfig)}[field]
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add(parser, flag: str, field: str, help_text: str) -> None:
    if field == "nesterov":
        parser.add_argument(flag, dest=flag[2:].replace("-", "_"), action=argparse.BooleanOptionalAction,
                            default=None, help=help_text)
    elif field in CHOICES:
        kind = hinted(str, LR_SCHEDULE_HINTS) if field == "lr_schedule" else str
        parser.add_argument(flag, choices=CHOICES[field], type=kind, help=help_text)
    else:
        parser.add_argument(flag, type=finite_float, metavar="X", help=help_text)


def add_optimizer_flags(parser: argparse.ArgumentParser) -> None:
    """``--FIELD`` (forward weights) and ``--GROUP-FIELD`` (every other group) for each optimiser setting."""
    for field, meaning in OPTIMIZER_FLAGS.items():
        _add(parser, f"--{field.replace('_', '-')}", field,
             f"forward-weights {meaning.format(p='--')} (default: {_shown_default(field)}, or the preset's)")
    for group in other_groups():
        rules = ", ".join(name for name in RULES.names() if group in RULES.get(name).groups)
        followed = {RULES.get(name).group_defaults.get(group) for name in RULES.names()} - {None}
        fallback = f"the {', '.join(sorted(followed))} group's for rules that follow it" if followed else ""
        for field, meaning in OPTIMIZER_FLAGS.items():
            default = _shown_default(field) + (f", {fallback}" if fallback else "")
            _add(parser, f"--{group}-{field.replace('_', '-')}", field,
                 f"{group}-weights {meaning.format(p=f'--{group}-')} ({rules}) (default: {default}, or the "
                 f"preset's)")


def given_settings(args, group: str) -> dict:
    """The optimiser settings of ``group`` given on the command line, by field."""
    prefix = "" if group == "forward" else f"{group}_"
    return {field: getattr(args, prefix + field) for field in OPTIMIZER_FLAGS
            if getattr(args, prefix + field, None) is not None}


def apply_optimizer_flags(args, config) -> None:
    """Sets, in ``config`` (a :class:`~bioprop.training.config.TrainConfig`), the optimiser settings given
    for each group; flags of a group the rule does not train are an error naming them."""
    for group in ("forward", *other_groups()):
        given = given_settings(args, group)
        prefix = "" if group == "forward" else f"{group}_"
        if given and group not in RULES.get(config.rule).groups:
            flags = ", ".join(f"--{prefix + field}".replace("_", "-") for field in given)
            raise BiopropError(f"{flags}: rule {config.rule!r} has no {group!r} parameter group (its groups: "
                               f"{', '.join(RULES.get(config.rule).groups)})")
        if given or group not in config.optimizers and group == "forward":
            config.optimizers[group] = dataclasses.replace(config.optimizers.get(group, OptimizerConfig()), **given)

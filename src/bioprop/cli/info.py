"""``bioprop models`` and ``bioprop rules``: what is registered."""

from __future__ import annotations

import dataclasses
import inspect
import sys

import torch

from bioprop.models import create_model, list_models
from bioprop.rules import RULES


def add_parser(subparsers) -> None:
    models = subparsers.add_parser("models", help="list the registered networks",
                                   description="List the networks (--model names) with their input shape, "
                                               "outputs (classes, or the input's units for an autoencoder), "
                                               "task, weights (biases excluded, the paper's count), parameters "
                                               "(weights and biases, what `bioprop plan` counts) and layers.")
    models.set_defaults(func=show_models)
    rules = subparsers.add_parser("rules", help="list the registered learning rules and their options",
                                  description="List the learning rules (--rule names), each with its options "
                                              "(flags of `bioprop train`) and their defaults.")
    rules.set_defaults(func=show_rules)


COUNTS_LEGEND = ("weights: biases excluded (the paper's count); parameters: weights and biases "
                 "(what `bioprop plan` counts)")


def show_models(args) -> int:
    print(f"{'model':<17} {'input':<14} {'outputs':>7} {'task':<14} {'weights':>12} {'parameters':>12}  layers")
    for name in list_models():
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = create_model(name)
        layers = " -> ".join(type(layer).__name__.replace("LocallyConnected2d", "LC") for layer in model.layers)
        shape = "x".join(map(str, model.input_shape))
        print(f"{name:<17} {shape:<14} {model.output_units:>7} {model.task:<14} {model.num_weights():>12,} "
              f"{model.num_parameters():>12,}  {layers}")
    print(f"\n{COUNTS_LEGEND}")
    return 0


def show_rules(args) -> int:
    for name in RULES.names():
        rule_class = RULES.get(name)
        # the rule class's own docstring, else its module's (one file per rule)
        summary = rule_class.__dict__.get("__doc__") or inspect.getdoc(sys.modules[rule_class.__module__]) or ""
        summary = inspect.cleandoc(summary)
        first_paragraph = " ".join(inspect.cleandoc(summary).split("\n\n")[0].split()).replace("``", "") if summary else ""
        print(f"{name:<9} {first_paragraph}")
        for option in dataclasses.fields(rule_class.Options):
            value = option.default
            if value is None:  # a default that depends on the rule (inverse_loss)
                value = getattr(rule_class, f"default_{option.name}", None)
            default = f" (default {value})" if value is not None else ""
            print(f"{'':<9}   --{option.name.replace('_', '-')}{default} {option.metadata.get('help', '')}")
    return 0

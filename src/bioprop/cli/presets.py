"""``bioprop presets``: the named table cells, their paper numbers, and the open decisions."""

from __future__ import annotations

import json
import textwrap

from bioprop.checks import suggest
from bioprop.cli.args import name
from bioprop.errors import BiopropError
from bioprop.presets import DECISIONS, GROUPS, PRESETS, get_preset, group_names, list_presets


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "presets", help="list the presets (one per cell of the paper's Tables 1 and 2)",
        description="List the presets (--preset names of `bioprop train`, targets of `bioprop reproduce`) with "
                    "the paper's numbers; groups: " + "; ".join(f"{k} ({v})" for k, v in GROUPS.items()))
    parser.add_argument("pattern", nargs="?", type=name, help="only presets matching this group, glob or substring "
                        "(e.g. mnist, 'cifar-lc-*', dtp) (default: all)")
    parser.add_argument("--show", metavar="PRESET", type=name,
                        help="print one preset's full config (JSON) and paper numbers")
    parser.add_argument("--decisions", action="store_true",
                        help="print the decisions the paper left open and what every preset chose")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.decisions:
        for d in DECISIONS:
            print(f"* {d.topic}\n  paper:  {d.paper}\n  chosen: {d.choice}")
            print(textwrap.fill(d.why, width=100, initial_indent="  why:    ", subsequent_indent="          "))
        return 0
    if args.show:
        preset = get_preset(args.show)
        paper = preset.paper
        print(f"# {preset.name}: {preset.label}, {preset.cell.arch.upper()}, {preset.dataset} "
              f"({paper.source or 'no paper number'})")
        if paper.test_error is not None:
            print(f"# paper: test error {paper.test_error}%"
                  + (f", train error {paper.train_error}%" if paper.train_error is not None else "")
                  + (f", top-5 test error {paper.test_top5_error}%" if paper.test_top5_error is not None else ""))
        if preset.cell.published is not None:
            print(f"# published: test error {preset.cell.published.test_error}% ({preset.cell.published.source})")
        print(json.dumps(preset.config().to_dict(), indent=2))
        return 0
    presets = list_presets(args.pattern)
    if not presets:
        hint = suggest(args.pattern, group_names() + PRESETS.names())
        raise BiopropError(f"no preset matches {args.pattern!r}{hint} "
                           f"(groups: {', '.join(GROUPS)}; a glob such as 'cifar-lc-*' or a part of a name such as "
                           "dtp also works)")
    print(f"{'preset':<38} {'paper test':>10} {'paper train':>11}  {'rule':<8} {'model':<17} schedule")
    for p in presets:
        numbers = p.paper if p.paper.test_error is not None else None
        test = f"{numbers.test_error:.2f}" if numbers else "–"
        train = f"{numbers.train_error:.2f}" if numbers and numbers.train_error is not None else "–"
        config = p.config()
        print(f"{p.name:<38} {test:>10} {train:>11}  {config.rule:<8} {config.model:<17} "
              f"{config.rule_options.get('schedule', '')}")
    print(f"\n{len(presets)} presets. Groups for `bioprop reproduce`: "
          + "; ".join(f"{name} ({what})" for name, what in GROUPS.items()))
    print("Run one: bioprop train --preset NAME [--epochs N] [--seed S]; details: bioprop presets --show NAME; "
          "open decisions: bioprop presets --decisions")
    return 0

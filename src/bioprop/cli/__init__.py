"""``bioprop`` command line: one sub-command per module, each adding its own parser.

SIGINT or SIGTERM during training writes a checkpoint and exits with 130 or 143, saying how to
resume. Bad input is refused before any work starts, with one line on stderr and exit status 2:
``bioprop COMMAND: error: ...`` for what argparse cannot parse (an unknown flag, a missing
value, ``--lr nan``), ``bioprop: error: ...`` for a :class:`~bioprop.errors.BiopropError`
raised by the checks that follow (unknown names, out-of-range values, unusable folders).
"""

from __future__ import annotations

import sys

from bioprop.cli import data, info, plan, presets, report, reproduce, search, train
from bioprop.cli.args import Parser, UsageError, printable
from bioprop.errors import BiopropError
from bioprop.training import DivergenceError, TrainingInterrupted
from bioprop.training.distributed import is_main_process, leave_process_group

COMMANDS = [train, data, info, presets, reproduce, report, search, plan]

DESCRIPTION = ("Biologically-motivated learning rules (backprop, feedback alignment, target propagation) "
               "on the networks of Bartunov et al. 2018: train one run, reproduce the paper's tables, "
               "search hyperparameters, report. `bioprop COMMAND --help` describes each command.")


def build_parser() -> Parser:
    parser = Parser(prog="bioprop", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                                       help="one of these (each has its own --help):")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def parse_args(argv: list[str] | None = None):
    """The parsed command line; raises :class:`UsageError` for anything argparse refuses."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        args.command_parser.unrecognized(extras)
    return args


def main(argv: list[str] | None = None) -> int:
    finished = False
    try:
        args = parse_args(argv)
        code = args.func(args) or 0
        finished = code == 0
        return code
    except UsageError as error:
        print(f"{error.prog}: error: {printable(error)}", file=sys.stderr)
        return 2
    except DivergenceError as error:  # a result, not bad input: its own exit status
        print(f"bioprop: diverged: {error}", file=sys.stderr)
        return 3
    except BiopropError as error:
        print(f"bioprop: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except TrainingInterrupted as stopped:  # a checkpoint was written: say how to go on
        if is_main_process():
            print(f"bioprop: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("bioprop: interrupted", file=sys.stderr)
        return 130
    finally:
        leave_process_group(together=finished)


if __name__ == "__main__":
    sys.exit(main())

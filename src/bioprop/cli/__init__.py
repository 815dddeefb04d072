"""``bioprop`` command line: one sub-command per module, each adding its own parser.

A :class:`~bioprop.errors.BiopropError` anywhere becomes ``bioprop: error: ...`` on stderr and
exit status 2, before any training starts where the error is in the input.
"""

from __future__ import annotations

import argparse
import sys

from bioprop.cli import data, info, plan, presets, report, reproduce, search, train
from bioprop.errors import BiopropError
from bioprop.training import DivergenceError

COMMANDS = [train, data, info, presets, reproduce, report, search, plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bioprop", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except DivergenceError as error:  # a result, not bad input: its own exit status
        print(f"bioprop: diverged: {error}", file=sys.stderr)
        return 3
    except BiopropError as error:
        print(f"bioprop: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("bioprop: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun: leave the process group cleanly (a process exiting with gloo's threads still
    running aborts with "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

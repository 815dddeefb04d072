"""The command line's parser class, argument types and help wording.

* :class:`Parser` turns every argparse error (an unknown flag, a missing value, a bad number)
  into one line ``bioprop COMMAND: error: ...`` and exit status 2, like bad input found later
  (:class:`~bioprop.errors.BiopropError`), and suggests the closest flag for a mistyped one.
  Flags are never abbreviated: ``--sched`` is refused with ``--schedule`` suggested.
* The types reject what ``float`` and ``int`` would let through or garble: ``nan`` and ``inf``
  by name, fractional integers, empty strings.
"""

from __future__ import annotations

import argparse
import difflib
import math
import textwrap

from bioprop.checks import MAX_SEED
from bioprop.errors import BiopropError


class UsageError(BiopropError):
    """A command line argparse could not parse; ``prog`` is the (sub)command it belongs to."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline in a garbage argument) escaped."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, without breaking lines inside hyphenated names (fashion-mnist)."""

    def _split_lines(self, text, width):
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(self._whitespace_matcher.sub(" ", text).strip(), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


#: flags easily taken for one another, with what each means, shown when one is suggested for a mistyped flag
FLAG_GLOSSES = {"--schedule": "target propagation's order of updates",
                "--lr-schedule": "the learning-rate schedule"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, raised as :class:`UsageError` (exit status 2
    in :func:`bioprop.cli.main`), and which records on the namespace which (sub)parser parsed it.
    Sub-command parsers are of this class too (argparse creates them with the parent's class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        # no abbreviated flags: with them --sched meant --schedule (target propagation's order of updates)
        # and --lr-sched --lr-schedule, and every new flag could change what a short form means
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse's name
        raise UsageError(self.prog, f"{message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if not hasattr(namespace, "command_parser"):  # the innermost sub-command parses first
            namespace.command_parser = self
        return namespace, extras

    def unrecognized(self, extras: list[str]) -> None:
        """Refuses arguments no flag took, suggesting the closest flag for a mistyped one."""
        flags = sorted(s for action in self._actions for s in action.option_strings if s.startswith("--"))
        hints = []
        for token in extras:
            if token.startswith("--"):
                close = difflib.get_close_matches(token.split("=", 1)[0], flags, n=2, cutoff=0.6)
                if close:
                    close = [f"{flag} ({FLAG_GLOSSES[flag]})" if flag in FLAG_GLOSSES else flag for flag in close]
                    hints.append(f"{token.split('=', 1)[0]}: did you mean {' or '.join(close)}?")
        shown = " ".join(repr(token) if not token.isprintable() or not token or " " in token else token
                         for token in extras)
        self.error(f"unrecognized arguments: {shown}" + (f" ({'; '.join(hints)})" if hints else ""))


def _number(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r} (nan and inf are not accepted)")
    return value


def _integer(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # "1e4", "100.0"
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")


def number(minimum: float | None = None, maximum: float | None = None, *, low_open: bool = False,
           high_open: bool = False):
    """argparse ``type``: a finite float, optionally within a range."""
    def convert(text: str) -> float:
        value = _number(text)
        if minimum is not None and (value <= minimum if low_open else value < minimum) or \
                maximum is not None and (value >= maximum if high_open else value > maximum):
            low = "" if minimum is None else f"{'>' if low_open else '>='} {minimum}"
            high = "" if maximum is None else f"{'<' if high_open else '<='} {maximum}"
            raise argparse.ArgumentTypeError(f"expected a number {' and '.join(p for p in (low, high) if p)}, "
                                             f"got {text!r}")
        return value
    convert.__name__ = "number"
    return convert


def integer(minimum: int | None = None, maximum: int | None = None):
    """argparse ``type``: an integer, optionally within [minimum, maximum]."""
    def convert(text: str) -> int:
        value = _integer(text)
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            if maximum is None:
                expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            elif minimum is None:
                expected = f"an integer <= {maximum}"
            else:
                expected = f"an integer in {minimum}..{maximum}"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    convert.__name__ = "integer"
    return convert


def boolean(text: str) -> bool:
    """argparse ``type``: true/false (also yes/no, on/off, 1/0); ``bool("False")`` would be True."""
    value = str(text).strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


finite_float = number()
any_int = integer()
positive_int = integer(1)
nonnegative_int = integer(0)
seed_int = integer(0, MAX_SEED)


def text(kind: str):
    """argparse ``type``: a non-empty string without NUL characters (a name or a path)."""
    def convert(value: str) -> str:
        if not value or "\0" in value:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value!r}")
        return value
    convert.__name__ = kind
    return convert


name = text("a name")
path = text("a path")

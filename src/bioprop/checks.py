"""Checks of user-given values, shared by the configs, the learning rules and the command line.

Each check raises :class:`~bioprop.errors.BiopropError` with a message that names the field
and says what was expected, e.g. ``epochs must be a positive integer, got 0`` or
``noise must be a finite number >= 0, got nan``. Booleans are not numbers here (``True`` is an
``int`` in Python, but ``epochs=True`` is a mistake), and integers too large for a float are
not finite numbers.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Iterable

from bioprop.errors import BiopropError

MAX_SEED = 2**32 - 1  # seeds are mixed into 64-bit generator seeds; 32 bits keep that exact


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, shortened in the middle when it is long (a 400-digit number, a huge list)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 25]}...{text[-20:]}"


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _bounds(minimum, maximum, low_open: bool = False, high_open: bool = False) -> str:
    low = None if minimum is None else f"{'>' if low_open else '>='} {minimum}"
    high = None if maximum is None else f"{'<' if high_open else '<='} {maximum}"
    if low and high:
        return f" in {'(' if low_open else '['}{minimum}, {maximum}{')' if high_open else ']'}"
    return f" {low or high}" if (low or high) else ""


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None,
              optional: bool = False) -> None:
    """``value`` is an integer in [minimum, maximum] (or None when ``optional``)."""
    if optional and value is None:
        return
    if minimum == 1 and maximum is None:
        expected = "a positive integer"
    else:
        expected = "an integer" + _bounds(minimum, maximum)
    if (not is_int(value) or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise BiopropError(f"{name} must be {expected}{' or unset' if optional else ''}, got {shown(value)}")


def check_number(value: object, name: str, minimum: float | None = None, maximum: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """``value`` is a finite int or float in the given range (open or closed at either end)."""
    expected = "a finite number" + _bounds(minimum, maximum, low_open, high_open)
    if not is_finite_number(value):
        raise BiopropError(f"{name} must be {expected}, got {shown(value)}")
    if minimum is not None and (value <= minimum if low_open else value < minimum) or \
            maximum is not None and (value >= maximum if high_open else value > maximum):
        raise BiopropError(f"{name} must be {expected}, got {shown(value)}")


def check_choice(value: object, name: str, choices: Iterable[str], optional: bool = False) -> None:
    choices = list(choices)
    if optional and value is None:
        return
    if not isinstance(value, str) or value not in choices:
        raise BiopropError(f"{name} must be one of {', '.join(choices)}{' (or unset)' if optional else ''}, "
                           f"got {shown(value)}{suggest(value, choices)}")


def check_bool(value: object, name: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, bool):
        raise BiopropError(f"{name} must be true or false{' (or unset)' if optional else ''}, got {shown(value)}")


def _plain(text: str) -> str:
    """Lower case without dashes and underscores: ``'MNIST_fc'`` and ``'mnist-fc'`` read alike."""
    return text.lower().replace("-", "").replace("_", "")


def _by_similarity(name: str, names: list[str]) -> list[str]:
    """``names`` ordered from the most to the least similar to ``name`` (difflib's ratio)."""
    return difflib.get_close_matches(name, names, n=len(names), cutoff=0.0) if names else []


def _extensions(name: str, known: list[str]) -> list[str]:
    """The names that start with ``name``, then those that contain it (each ordered by similarity),
    ignoring case and reading ``_`` as ``-``; containment only from three characters on, where it is
    not chance."""
    key = name.lower().replace("_", "-")
    if not key.strip("-"):
        return []
    lowered = {k: k.lower().replace("_", "-") for k in known}
    starting = [k for k in known if lowered[k].startswith(key)]
    containing = [k for k in known if len(key) >= 3 and key in lowered[k] and k not in starting]
    return _by_similarity(name, starting) + _by_similarity(name, containing)


def _similarity(name: str, candidate: str) -> tuple[float, float]:
    """How alike ``name`` and ``candidate`` are (difflib's ratio, 0 to 1): the better of the whole
    names' ratio and that of ``name`` with as much of ``candidate``'s beginning (a typo in a name
    typed in part, ``mnist-fc-dtpp`` for ``mnist-fc-dtp-parallel``), then the whole names' ratio."""
    whole = difflib.SequenceMatcher(None, name, candidate).ratio()
    beginning = difflib.SequenceMatcher(None, name, candidate[:len(name)]).ratio()
    return max(whole, beginning), whole


def _close_matches(name: str, known: list[str], n: int, cutoff: float = 0.6) -> list[str]:
    """The ``n`` names of ``known`` most similar to ``name`` (at least ``cutoff``), or, failing
    those, the same comparing plain letters (a different case or a missing dash)."""
    for key, plain in ((name, {k: k for k in known}), (_plain(name), {_plain(k): k for k in known})):
        if not key:  # nothing to compare (a lone dash): two empty strings would count as equal
            continue
        ranked = sorted(((_similarity(key, k), k) for k in plain), reverse=True)
        matches = [plain[k] for (score, _), k in ranked if score >= cutoff][:n]
        if matches:
            return matches
    return []


def suggest(name: object, known: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'mnist'?"`` for the names among ``known`` that ``name`` most likely meant,
    else ``""``: the names it is the beginning of, then those containing it (``mnist-fc-dtp`` ->
    ``mnist-fc-dtp-parallel``, ``mnist-fc-dtp-alternating``), and only when there are none, its
    close matches by spelling (``mnst`` -> ``mnist``); at most ``n`` of them."""
    if not isinstance(name, str):
        return ""
    known = list(known)
    matches = (_extensions(name, known) or _close_matches(name, known, n))[:n]
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"


def check_path_text(value: object, name: str) -> str:
    """A non-empty path without NUL characters (which no file system accepts), as a string."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise BiopropError(f"{name} must be a non-empty path, got {shown(value)}")
    if "\0" in value:
        raise BiopropError(f"{name} {value!r} contains a NUL character; expected a path")
    return value


def check_readable_folder(value: object, name: str) -> Path:
    """An existing folder that this user may list and read."""
    path = Path(check_path_text(value, name)).expanduser()
    if not path.exists():
        raise BiopropError(f"{name} {str(path)!r} does not exist; expected a folder")
    if not path.is_dir():
        raise BiopropError(f"{name} {str(path)!r} is a file; expected a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BiopropError(f"{name} {str(path)!r} cannot be read (permission denied); expected a folder "
                           "you can read")
    return path


def check_output_folder(value: object, name: str) -> Path:
    """A folder to write into: an existing folder, or a new one whose nearest existing parent is a
    folder this user may write in. An existing *file* there is refused (it is not a folder)."""
    path = Path(check_path_text(value, name)).expanduser()
    if path.exists() and not path.is_dir():
        raise BiopropError(f"{name} {str(path)!r} is a file; expected a folder (new or existing)")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise BiopropError(f"{name} {str(path)!r}: {str(existing)!r} is a file; expected a folder")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise BiopropError(f"{name} {str(path)!r}: cannot write in {str(existing)!r} (permission denied)")
    return path

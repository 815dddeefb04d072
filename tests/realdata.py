"""Where the tests find the genuine MNIST and Fashion-MNIST: ``$BIOPROP_SHARED_DATA``,
``$BIOPROP_DATA``, the ``shared/data`` folder beside the repository, then the user's cache that
``bioprop data fetch`` (and ``make demo`` / ``make test``) fills, as the library resolves it
(``$BIOPROP_CACHE``, ``$XDG_CACHE_HOME/bioprop``, ``~/.cache/bioprop``).

The places are taken once, from the real environment, when this module is first imported (by
``tests/conftest.py``, while pytest collects): many tests then point ``$BIOPROP_CACHE`` at a
temporary folder to keep their own writes isolated, and that must not hide the data that
``make test`` has just fetched into the user's cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bioprop.data import cache_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _places() -> list[Path]:
    roots = [os.environ.get("BIOPROP_SHARED_DATA"), os.environ.get("BIOPROP_DATA"), SHARED, cache_dir()]
    return [Path(root) for root in roots if root]


PLACES = _places()  # resolved at import, before any test isolates the cache


def real_data_root(*names: str) -> Path | None:
    """The first folder holding every dataset in ``names`` (e.g. "mnist"), or None."""
    for root in PLACES:
        if all((root / name).is_dir() for name in names):
            return root
    return None


def missing_reason(*names: str) -> str:
    looked = ", ".join(str(root) for root in PLACES)
    return (f"genuine {'/'.join(names)} not found (looked in {looked}); run `bioprop data fetch "
            f"{' && bioprop data fetch '.join(names)}` or `make test`, which fetches them")


def require_real_data(*names: str) -> Path:
    """The folder holding ``names``; the test is skipped, naming where it looked, when none does."""
    root = real_data_root(*names)
    if root is None:
        pytest.skip(missing_reason(*names))
    return root


"""Where the tests find the genuine MNIST and Fashion-MNIST: ``$BIOPROP_SHARED_DATA``,
``$BIOPROP_DATA``, the ``shared/data`` folder beside the repository, then the cache that
``bioprop data fetch`` (and ``make demo`` / ``make test``) fills. Resolved once, at import, from
the real environment (before any test isolates its cache)."""

from __future__ import annotations

import os
from pathlib import Path

from bioprop.data import cache_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def candidates() -> list[Path]:
    roots = [os.environ.get("BIOPROP_SHARED_DATA"), os.environ.get("BIOPROP_DATA"), SHARED, cache_dir()]
    return [Path(root) for root in roots if root]


def real_data_root(*names: str) -> Path | None:
    """The first folder holding every dataset in ``names`` (e.g. "mnist"), or None."""
    for root in candidates():
        if all((root / name).is_dir() for name in names):
            return root
    return None


def missing_reason(*names: str) -> str:
    looked = ", ".join(str(root) for root in candidates())
    return (f"genuine {'/'.join(names)} not found (looked in {looked}); run `bioprop data fetch "
            f"{' && bioprop data fetch '.join(names)}` or `make test`, which fetches them")


MNIST = real_data_root("mnist")

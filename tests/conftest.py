"""Shared fixtures: the genuine datasets in ../shared/data beside the repository."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"genuine MNIST not found at {SHARED_DATA}")
    return SHARED_DATA

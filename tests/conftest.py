"""Shared fixtures: the genuine datasets (see ``realdata.py`` for where they are looked for)."""

from pathlib import Path

import pytest

from realdata import real_data_root, missing_reason


@pytest.fixture
def shared_data() -> Path:
    root = real_data_root("mnist")
    if root is None:
        pytest.skip(missing_reason("mnist"))
    return root

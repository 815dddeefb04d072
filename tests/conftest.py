"""Shared fixtures: the genuine datasets (see ``realdata.py`` for where they are looked for)."""

from pathlib import Path

import pytest

from realdata import require_real_data


@pytest.fixture
def shared_data() -> Path:
    return require_real_data("mnist")

"""The install prints no warnings of our own making: setuptools reads pyproject.toml without a
deprecation, and `make install` gives the editable install the setuptools that pyproject.toml asks for."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_setuptools_reads_pyproject_without_warnings():
    setuptools_config = pytest.importorskip("setuptools.config.pyprojecttoml")
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setuptools_config.apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught] == []


def test_make_install_has_the_setuptools_the_build_needs():
    """``--no-build-isolation`` builds with the virtual environment's own setuptools: the Makefile
    installs at least the version pyproject.toml requires, before that step."""
    required = re.search(r'requires = \["setuptools>=([\d.]+)"\]', (ROOT / "pyproject.toml").read_text()).group(1)
    recipe = (ROOT / "Makefile").read_text()
    upgrade = recipe.index(f'"setuptools>={required}"')
    assert upgrade < recipe.index("--no-build-isolation -e .")


def test_readme_says_where_the_command_line_is():
    quick_start = (ROOT / "README.md").read_text().split("## Quick start")[1].split("\n## ")[0]
    assert ".venv/bin/bioprop" in quick_start and "source .venv/bin/activate" in quick_start


def test_the_exported_runs_of_a_committed_report_are_not_ignored():
    """``bioprop report --out docs/results/X`` writes ``X/runs/<run>/seed<k>.json``, from which the report
    is rebuilt; .gitignore keeps only the top-level ``runs/`` (the README's ``--out runs/...``) out."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0

    assert not ignored("docs/results/mnist-fc-100/runs/mnist-fc-bp/seed0.json")
    assert ignored("runs/mnist/mnist-fc-bp/seed0/checkpoint.pt")

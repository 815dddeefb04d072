"""Named presets: one :class:`~bioprop.training.TrainConfig` per cell of the paper's tables.

``PRESETS`` is a :class:`~bioprop.registry.Registry` of :class:`Preset` objects, named
``<dataset>-<arch>-<method>``: ``mnist-fc-dtp-alternating``, ``cifar-lc-bp-conv``,
``imagenet-lc-fa``, ``fashion-mnist-lc-sdtp-parallel``. The cells, the paper's numbers and the
decisions the paper left open are in :mod:`bioprop.presets.paper`.

    >>> from bioprop.presets import get_preset
    >>> preset = get_preset("mnist-fc-dtp-alternating")
    >>> preset.paper.test_error
    1.83
    >>> config = preset.config(epochs=20, seed=1)   # a fresh TrainConfig, overrides applied

Groups for ``bioprop reproduce``: ``mnist``, ``fashion-mnist``, ``cifar10``, ``imagenet`` (and
``mnist-fc`` style dataset-architecture groups); glob patterns (``"mnist-*-bp*"``) also work.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from bioprop.checks import suggest
from bioprop.errors import BiopropError
from bioprop.presets import paper
from bioprop.presets.paper import DECISIONS, Cell, Decision, PaperNumbers
from bioprop.registry import Registry
from bioprop.training import TrainConfig

PRESETS: Registry = Registry("preset", listing="the names are listed by `bioprop presets`")


@dataclass(frozen=True)
class Preset:
    """A named, documented training configuration for one table cell."""

    name: str
    cell: Cell
    build: Callable[[], TrainConfig]

    def config(self, **overrides) -> TrainConfig:
        """A fresh copy of the preset's config with ``overrides`` (TrainConfig fields) applied."""
        config = self.build()
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise BiopropError(f"preset {self.name!r}: TrainConfig has no field {key!r}")
            setattr(config, key, value)
        return config

    @property
    def paper(self) -> PaperNumbers:
        return self.cell.paper

    @property
    def dataset(self) -> str:
        return self.cell.dataset

    @property
    def rule(self) -> str:
        return self.build().rule

    @property
    def model(self) -> str:
        return self.build().model

    @property
    def label(self) -> str:
        return self.cell.label

    def groups(self) -> list[str]:
        """Group names this preset belongs to (for ``bioprop reproduce GROUP``)."""
        prefix = paper.PRESET_PREFIX[self.cell.dataset]
        return [self.cell.dataset, f"{prefix}-{self.cell.arch}", f"{self.cell.dataset}-{self.cell.arch}"]


def register_preset(name: str, cell: Cell, build: Callable[[], TrainConfig]) -> Preset:
    return PRESETS.register(name)(Preset(name, cell, build))


def _register_paper_cells() -> None:
    for cell in paper.cells():
        register_preset(cell.name, cell,
                        lambda cell=cell: paper.make_config(cell.dataset, cell.arch, cell.method))


_register_paper_cells()

#: The group names ``select_presets`` understands, with what they hold.
GROUPS: dict[str, str] = {
    "mnist": "Table 1(a): every MNIST cell (FC and LC)",
    "fashion-mnist": "the Table 1(a) cells on Fashion-MNIST (no paper column)",
    "cifar10": "Table 1(b): every CIFAR-10 cell (FC and LC)",
    "imagenet": "Table 2: every ImageNet cell",
}


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)


def list_presets(pattern: str | None = None) -> list[Preset]:
    """All presets in table order (dataset, architecture, paper row), optionally filtered."""
    presets = [PRESETS.get(name) for name in PRESETS.names()]
    if pattern:
        presets = [p for p in presets if fnmatch.fnmatch(p.name, pattern) or pattern in p.groups()
                   or pattern in p.name]
    return sorted(presets, key=sort_key)


def group_names() -> list[str]:
    """Every group name a preset belongs to (``mnist``, ``mnist-fc``, ``cifar-lc``, ...)."""
    return sorted({group for name in PRESETS.names() for group in PRESETS.get(name).groups()})


def sort_key(preset: Preset) -> tuple:
    datasets = list(paper.PRESET_PREFIX)
    methods = list(paper.METHODS)
    return (datasets.index(preset.dataset), preset.cell.arch, methods.index(preset.cell.method))


def select_presets(tokens: list[str]) -> list[Preset]:
    """Presets for a list of group names, preset names and glob patterns, in table order."""
    if not tokens or not all(isinstance(token, str) and token for token in tokens):
        raise BiopropError(f"name at least one preset or group ({', '.join(GROUPS)}); see `bioprop presets`")
    chosen: dict[str, Preset] = {}
    for token in tokens:
        if token in PRESETS:
            matches = [PRESETS.get(token)]
        else:
            everything = list_presets()
            matches = [p for p in everything if token in p.groups()]
            if not matches and any(ch in token for ch in "*?["):
                matches = [p for p in everything if fnmatch.fnmatch(p.name, token)]
        if not matches:
            raise BiopropError(f"unknown preset or group {token!r}{suggest(token, group_names() + PRESETS.names())} "
                               f"(groups: {', '.join(GROUPS)}; presets: see `bioprop presets`)")
        for preset in matches:
            chosen.setdefault(preset.name, preset)
    return sorted(chosen.values(), key=sort_key)


__all__ = ["DECISIONS", "GROUPS", "PRESETS", "Cell", "Decision", "PaperNumbers", "Preset", "get_preset",
           "list_presets", "register_preset", "select_presets", "sort_key"]

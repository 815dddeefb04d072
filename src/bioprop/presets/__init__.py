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
The MNIST autoencoder of App. 5.5 (Figs. 6-7) has its own presets, ``mnist-ae-dtp-parallel``,
``mnist-ae-sdtp-parallel`` and ``mnist-ae-bp`` (group ``autoencoder``;
:mod:`bioprop.presets.autoencoder`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from bioprop.checks import suggest
from bioprop.errors import BiopropError
from bioprop.presets import autoencoder, beyond, paper
from bioprop.presets.paper import Cell, Decision, PaperNumbers
from bioprop.presets.paper import DECISIONS as PAPER_DECISIONS

DECISIONS = PAPER_DECISIONS + beyond.DECISIONS + autoencoder.DECISIONS
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

    @property
    def beyond(self) -> bool:
        """A rule the paper did not run (:mod:`bioprop.presets.beyond`)."""
        return self.cell.table == "beyond"

    @property
    def autoencoder(self) -> bool:
        """One of the MNIST autoencoder runs of App. 5.5 (:mod:`bioprop.presets.autoencoder`)."""
        return self.cell.table == autoencoder.TABLE

    def groups(self) -> list[str]:
        """Group names this preset belongs to (for ``bioprop reproduce GROUP``): the paper's cells are
        in ``mnist``, ``mnist-fc``, ...; the rules beyond the paper in ``beyond``, ``mnist-beyond``,
        ``mnist-fc-beyond``, ...; the autoencoder runs in ``autoencoder`` and ``mnist-ae``."""
        prefix = paper.PRESET_PREFIX[self.cell.dataset]
        if self.autoencoder:
            return [autoencoder.TABLE, f"{prefix}-{self.cell.arch}"]
        names = [self.cell.dataset, f"{prefix}-{self.cell.arch}", f"{self.cell.dataset}-{self.cell.arch}"]
        if self.beyond:
            return ["beyond"] + [f"{name}-beyond" for name in dict.fromkeys(names)]
        return names


def register_preset(name: str, cell: Cell, build: Callable[[], TrainConfig]) -> Preset:
    return PRESETS.register(name)(Preset(name, cell, build))


def _register_paper_cells() -> None:
    for cell in paper.cells():
        register_preset(cell.name, cell,
                        lambda cell=cell: paper.make_config(cell.dataset, cell.arch, cell.method))


def _register_beyond_cells() -> None:
    for rule in beyond.rules_beyond():
        for dataset, arch in beyond.NETWORKS:
            cell = Cell(dataset, arch, rule, "beyond", beyond.numbers())
            register_preset(cell.name, cell, lambda cell=cell: beyond.config(cell.dataset, cell.arch, cell.method))


def _register_autoencoder_cells() -> None:
    for method in autoencoder.METHODS:
        cell = Cell(autoencoder.DATASET, autoencoder.ARCH, method, autoencoder.TABLE, autoencoder.numbers())
        register_preset(cell.name, cell, lambda method=method: autoencoder.config(method))


_register_paper_cells()
_register_beyond_cells()
_register_autoencoder_cells()

#: The group names ``select_presets`` understands, with what they hold.
GROUPS: dict[str, str] = {
    "mnist": "Table 1(a): every MNIST cell (FC and LC)",
    "fashion-mnist": "the Table 1(a) cells on Fashion-MNIST (no paper column)",
    "cifar10": "Table 1(b): every CIFAR-10 cell (FC and LC)",
    "imagenet": "Table 2: every ImageNet cell",
    "beyond": "the rules the paper did not run, on its networks (also mnist-beyond, mnist-fc-beyond, ...)",
    "autoencoder": "App. 5.5 (Figs. 6-7): the MNIST autoencoder by DTP-parallel, SDTP-parallel and BP "
                   "(also mnist-ae)",
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
    """Table order: dataset, architecture, the paper's rows, then the rules beyond the paper by name;
    the autoencoder runs (a figure, not a table) last, in Fig. 6's order."""
    if preset.autoencoder:
        return (len(paper.PRESET_PREFIX), "", autoencoder.METHODS.index(preset.cell.method), preset.cell.method)
    datasets = list(paper.PRESET_PREFIX)
    methods = list(paper.METHODS)
    row = methods.index(preset.cell.method) if preset.cell.method in paper.METHODS else len(methods)
    return (datasets.index(preset.dataset), preset.cell.arch, row, preset.cell.method)


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

"""Run configuration: one dataclass tree, saved verbatim as the run's ``config.json``.

Every value that changes a result lives here (data split, normalisation, optimiser settings
per parameter group, rule options, seed), so a run folder is enough to reproduce a run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bioprop.data import DataConfig
from bioprop.errors import BiopropError


@dataclass
class AdamConfig:
    """Adam (Kingma & Ba 2015) settings for one parameter group."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def validate(self, group: str) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BiopropError(f"{group} optimiser: {name} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise BiopropError(f"{group} optimiser: learning rate must be > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise BiopropError(f"{group} optimiser: {name} must be in [0, 1), got {getattr(self, name)}")
        if self.eps <= 0:
            raise BiopropError(f"{group} optimiser: eps must be > 0, got {self.eps}")


PRECISIONS = ("fp32", "tf32", "bf16")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "plain")


def parse_checkpoint_every(value: str | None) -> tuple[str, float] | None:
    """``"500"`` -> ("steps", 500); ``"30min"`` -> ("minutes", 30.0); None -> None."""
    if value is None:
        return None
    text = str(value).strip().lower()
    try:
        if text.endswith("min"):
            minutes = float(text[:-3])
            if math.isfinite(minutes) and minutes > 0:
                return "minutes", minutes
        elif int(text) >= 1:
            return "steps", int(text)
    except ValueError:
        pass
    raise BiopropError(f"checkpoint_every must be a number of steps (e.g. 500) or minutes (e.g. 30min), "
                       f"got {value!r}")


def _default_optimizers() -> dict[str, AdamConfig]:
    return {"forward": AdamConfig(), "inverse": AdamConfig()}


@dataclass
class TrainConfig:
    data: DataConfig
    model: str
    rule: str = "bp"
    rule_options: dict[str, Any] = field(default_factory=dict)
    optimizers: dict[str, AdamConfig] = field(default_factory=_default_optimizers)
    epochs: int = 20
    batch_size: int = 100
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    limit_batches: int | None = None       # cap on training batches per pass (smoke runs, tests)
    limit_eval_batches: int | None = None  # cap on batches per evaluation split
    train_eval_size: int | None = None     # evaluated train error on a fixed subset of this size (None: all)
    precision: str = "fp32"                # fp32, tf32 (CUDA matmuls), bf16 (autocast; fp32 master weights)
    optimizer_impl: str = "auto"           # Adam kernel: auto (fused where supported), fused, foreach, plain
    checkpoint_every: str | None = None    # also checkpoint within a pass: "N" steps or "Nmin" minutes

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BiopropError(f"{name} must be a positive integer, got {value!r}")
        for name in ("limit_batches", "limit_eval_batches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BiopropError(f"{name} must be a positive integer or unset, got {value!r}")
        if self.train_eval_size is not None and (not isinstance(self.train_eval_size, int)
                                                 or self.train_eval_size < 1):
            raise BiopropError(f"train_eval_size must be a positive integer or unset, got {self.train_eval_size!r}")
        if self.precision not in PRECISIONS:
            raise BiopropError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.optimizer_impl not in OPTIMIZER_IMPLS:
            raise BiopropError(f"optimizer_impl must be one of {', '.join(OPTIMIZER_IMPLS)}, "
                               f"got {self.optimizer_impl!r}")
        parse_checkpoint_every(self.checkpoint_every)
        for group, adam in self.optimizers.items():
            adam.validate(group)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BiopropError(f"unknown config field(s) {', '.join(unknown)}; expected: {', '.join(sorted(known))}")
        values["data"] = DataConfig(**values["data"])
        values["optimizers"] = {group: AdamConfig(**adam) for group, adam in values.get("optimizers", {}).items()}
        return cls(**values)

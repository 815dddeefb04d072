"""Run configuration: one dataclass tree, saved verbatim as the run's ``config.json``.

Every value that changes a result lives here (data split, normalisation, optimiser settings
per parameter group, rule options, seed), so a run folder is enough to reproduce a run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bioprop.checks import MAX_SEED, check_choice, check_int, is_finite_number, shown, suggest
from bioprop.data import DataConfig
from bioprop.errors import BiopropError


EPS_CONVENTIONS = ("pytorch", "tensorflow")


OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass
class OptimizerConfig:
    """The optimiser and learning-rate schedule of one parameter group (``docs/optimizers.md``).

    ``optimizer``:

    * ``"adam"``: Adam (Kingma & Ba 2015); with ``weight_decay`` > 0, AdamW's decoupled decay
      (Loshchilov & Hutter 2019): every step also multiplies the weights by 1 - lr * weight_decay.
      This is what every config meant before the field existed, so older runs resume and repeat
      bit for bit; Adam with an L2 term in the gradient is not offered.
    * ``"adamw"``: AdamW, said explicitly (the same update as ``"adam"`` with ``weight_decay`` > 0).
    * ``"sgd"``: SGD with ``momentum`` μ (dampening 0): b ← μ b + g, θ ← θ - lr · b (b = g at the first
      step), or with ``nesterov`` θ ← θ - lr · (g + μ b); ``weight_decay`` λ adds λ θ to g (L2).
      ``beta1``, ``beta2``, ``eps`` are Adam's and unused.

    ``eps_convention`` says where Adam's ε enters the step (the paper's code was TensorFlow; Table 5's
    ε reach 1e-3, large against these gradients, so this can matter):

    * ``"pytorch"``: θ -= lr · m̂ / (√v̂ + ε), with the bias-corrected moments m̂, v̂ (PyTorch; the
      algorithm as printed in Kingma & Ba);
    * ``"tensorflow"``: θ -= lr · √(1-β2ᵗ)/(1-β1ᵗ) · m / (√v + ε), ε added to the *uncorrected* √v
      (``tf.train.AdamOptimizer``, Keras; "ε̂" in Kingma & Ba §2). That is PyTorch's update with
      ε / √(1-β2ᵗ) at step t: larger early on, the same once β2ᵗ is small.

    ``lr_schedule`` (the learning rate over training; not target propagation's ``schedule``, the
    order of forward and inverse updates): ``"constant"``, ``"cosine"`` (to ``min_lr_ratio`` · lr at
    the end of training) or ``"step"`` (× ``step_gamma`` every ``step_epochs`` epochs), each after a
    linear warm-up of ``warmup_epochs`` epochs (0: none). Factors by step:
    :class:`bioprop.training.optimizers.LearningRateFactor`.

    A setting that does not apply to the chosen optimiser or schedule (``momentum`` for Adam,
    ``min_lr_ratio`` for a step schedule) must keep its default: :meth:`validate` refuses it rather
    than ignore it.
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    eps_convention: str = "pytorch"
    optimizer: str = "adam"
    momentum: float = 0.0
    nesterov: bool = False
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    step_epochs: float = 30.0
    step_gamma: float = 0.1

    #: fields that are not numbers
    CHOICES = {"eps_convention": EPS_CONVENTIONS, "optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES}
    #: settings that only some optimisers or schedules use: (the field that chooses, the values that use it)
    APPLIES = {"momentum": ("optimizer", ("sgd",)), "nesterov": ("optimizer", ("sgd",)),
               "eps_convention": ("optimizer", ("adam", "adamw")),
               "min_lr_ratio": ("lr_schedule", ("cosine",)),
               "step_epochs": ("lr_schedule", ("step",)), "step_gamma": ("lr_schedule", ("step",))}

    def validate(self, group: str) -> None:
        where = f"{group} optimiser"
        for name, choices in self.CHOICES.items():
            check_choice(getattr(self, name), f"{where}: {name}", choices)
        if not isinstance(self.nesterov, bool):
            raise BiopropError(f"{where}: nesterov must be true or false, got {shown(self.nesterov)}")
        for name, value in asdict(self).items():
            if name not in self.CHOICES and name != "nesterov" and not is_finite_number(value):
                raise BiopropError(f"{where}: {name} must be a finite number, got {shown(value)}")
        if self.lr <= 0:
            raise BiopropError(f"{where}: learning rate must be > 0, got {shown(self.lr)}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise BiopropError(f"{where}: {name} must be in [0, 1), got {shown(getattr(self, name))}")
        if self.eps <= 0:
            raise BiopropError(f"{where}: eps must be > 0, got {shown(self.eps)}")
        if not 0 <= self.weight_decay * self.lr < 1:
            raise BiopropError(f"{where}: weight_decay must be >= 0 with lr * weight_decay < 1, "
                               f"got {shown(self.weight_decay)}")
        if self.warmup_epochs < 0:
            raise BiopropError(f"{where}: warmup_epochs must be >= 0, got {shown(self.warmup_epochs)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise BiopropError(f"{where}: min_lr_ratio must be in [0, 1], got {shown(self.min_lr_ratio)}")
        if self.step_epochs <= 0:
            raise BiopropError(f"{where}: step_epochs must be > 0, got {shown(self.step_epochs)}")
        if not 0 < self.step_gamma <= 1:
            raise BiopropError(f"{where}: step_gamma must be in (0, 1], got {shown(self.step_gamma)}")
        defaults = OptimizerConfig()
        for name, (chooser, users) in self.APPLIES.items():
            if getattr(self, chooser) not in users and getattr(self, name) != getattr(defaults, name):
                raise BiopropError(f"{where}: {name} {shown(getattr(self, name))} applies to {chooser} "
                                   f"{' or '.join(users)} only, not {getattr(self, chooser)!r} (leave it at "
                                   f"{shown(getattr(defaults, name))})")
        if self.nesterov and self.momentum == 0:
            raise BiopropError(f"{where}: nesterov needs momentum > 0, got momentum {shown(self.momentum)}")


#: the name of :class:`OptimizerConfig` before it held SGD and schedules; kept for imports and pickles
AdamConfig = OptimizerConfig


PRECISIONS = ("fp32", "tf32", "bf16")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "plain")
DEVICE_PATTERN = r"auto|cpu|(cuda|mps|xpu)(:[0-9]{1,4})?"


def parse_checkpoint_every(value: str | None) -> tuple[str, float] | None:
    """``"500"`` -> ("steps", 500); ``"30min"`` -> ("minutes", 30.0); None -> None."""
    if value is None:
        return None
    text = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    try:
        if text.endswith("min"):
            minutes = float(text[:-3])
            if math.isfinite(minutes) and minutes > 0:
                return "minutes", minutes
        elif text.isdigit() and int(text) >= 1:
            return "steps", int(text)
    except ValueError:
        pass
    raise BiopropError(f"checkpoint_every must be a number of steps (e.g. 500) or minutes (e.g. 30min), "
                       f"got {shown(value)}")


def _default_optimizers() -> dict[str, OptimizerConfig]:
    return {"forward": OptimizerConfig()}


@dataclass
class TrainConfig:
    data: DataConfig
    model: str
    rule: str = "bp"
    rule_options: dict[str, Any] = field(default_factory=dict)
    optimizers: dict[str, OptimizerConfig] = field(default_factory=_default_optimizers)
    epochs: int = 20
    batch_size: int = 100
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    limit_batches: int | None = None       # cap on training batches per pass (smoke runs, tests)
    limit_eval_batches: int | None = None  # cap on batches per evaluation split
    train_eval_size: int | None = None     # evaluated train error on a fixed subset of this size (None: all)
    precision: str = "fp32"                # fp32, tf32 (CUDA matmuls), bf16 (autocast; fp32 master weights)
    optimizer_impl: str = "auto"           # optimiser kernel: auto (fused where supported), fused, foreach, plain
    checkpoint_every: str | None = None    # also checkpoint within a pass: "N" steps or "Nmin" minutes
    alignment_every: int = 0               # alignment with backprop every N steps (0: off), see training/alignment.py
    sync_batchnorm: bool = False           # batch-norm statistics over the global batch (training/sync_batchnorm.py)

    def validate(self) -> None:
        """Raises :class:`BiopropError` naming the first field that is wrong: a type, a range, an
        unknown dataset, model, rule or rule option. Cheap: no data is read, no network built."""
        from bioprop.models import model_factory
        from bioprop.rules import rule_options

        if not isinstance(self.data, DataConfig):
            raise BiopropError(f"data must be a data config (with at least a dataset name), got {shown(self.data)}")
        self.data.validate()
        model_factory(self.model)
        if not isinstance(self.rule_options, dict):
            raise BiopropError(f"rule_options must be a mapping of option names to values, "
                               f"got {shown(self.rule_options)}")
        rule_options(self.rule, **self.rule_options)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.seed, "seed", minimum=0, maximum=MAX_SEED)
        check_int(self.alignment_every, "alignment_every", minimum=0)
        if not isinstance(self.sync_batchnorm, bool):
            raise BiopropError(f"sync_batchnorm must be true or false, got {shown(self.sync_batchnorm)}")
        for name in ("limit_batches", "limit_eval_batches", "train_eval_size"):
            check_int(getattr(self, name), name, minimum=1, optional=True)
        if not isinstance(self.device, str) or not re.fullmatch(DEVICE_PATTERN, self.device):
            raise BiopropError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (also 'mps', 'xpu[:N]'), "
                               f"got {shown(self.device)}")
        check_choice(self.precision, "precision", PRECISIONS)
        check_choice(self.optimizer_impl, "optimizer_impl", OPTIMIZER_IMPLS)
        parse_checkpoint_every(self.checkpoint_every)
        if not isinstance(self.optimizers, dict):
            raise BiopropError(f"optimizers must be a mapping of group names to optimiser settings, "
                               f"got {shown(self.optimizers)}")
        for group, adam in self.optimizers.items():
            if not isinstance(group, str) or not isinstance(adam, OptimizerConfig):
                raise BiopropError(f"optimizers: {shown(group)} must name a parameter group and hold optimiser "
                                   f"settings (lr, beta1, beta2, eps, ...), got {shown(adam)}")
            adam.validate(group)
        known_groups = rule_group_names()
        for group in self.optimizers:
            if group not in known_groups:
                raise BiopropError(f"optimizers: unknown parameter group {group!r}{suggest(group, known_groups)} "
                                   f"(the rules' groups: {', '.join(known_groups)})")

    def optimizer_settings(self, group: str) -> OptimizerConfig:
        """The optimiser settings of parameter group ``group``: its own entry in ``optimizers``, else
        those of the group the rule says it follows (``LearningRule.group_defaults``, e.g. Kolen-Pollack's
        feedback weights follow the forward weights), else the defaults (:class:`OptimizerConfig`:
        Adam, constant learning rate)."""
        from bioprop.rules import RULES

        if group in self.optimizers:
            return self.optimizers[group]
        followed = RULES.get(self.rule).group_defaults.get(group)
        if followed is not None and followed in self.optimizers:
            return self.optimizers[followed]
        return OptimizerConfig()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The config of a ``config.json`` (:meth:`to_dict`); missing fields get their defaults.

        A wrong structure (not a mapping, an unknown or missing field) is a :class:`BiopropError`
        naming the field; the values themselves are checked by :meth:`validate`."""
        if not isinstance(values, dict):
            raise BiopropError(f"a training config must be a mapping of field names to values, got {shown(values)}")
        values = dict(values)
        _check_fields(values, cls, "config")
        if "data" not in values or "model" not in values:
            raise BiopropError("a training config needs the fields data (with the dataset name) and model")
        data = values["data"]
        if not isinstance(data, dict):
            raise BiopropError(f"config field data must be a mapping (name, data_dir, val_size, ...), "
                               f"got {shown(data)}")
        _check_fields(data, DataConfig, "data")
        if "name" not in data:
            raise BiopropError("config field data needs the dataset name (data.name)")
        values["data"] = DataConfig(**data)
        optimizers = values.get("optimizers", {})
        if not isinstance(optimizers, dict):
            raise BiopropError(f"config field optimizers must be a mapping of group names to optimiser settings, "
                               f"got {shown(optimizers)}")
        for group, adam in optimizers.items():
            if not isinstance(adam, dict):
                raise BiopropError(f"optimizers.{group} must be a mapping (lr, beta1, beta2, eps, ...), "
                                   f"got {shown(adam)}")
            _check_fields(adam, OptimizerConfig, f"optimizers.{group}")  # fields added since get their defaults
        values["optimizers"] = {group: OptimizerConfig(**adam) for group, adam in optimizers.items()}
        return cls(**values)


def rule_group_names() -> list[str]:
    """Every parameter group some registered rule trains (``forward``, ``inverse``, ``feedback``, ...)."""
    from bioprop.rules import RULES

    return sorted({group for name in RULES.names() for group in RULES.get(name).groups})


def _check_fields(values: dict, kind, where: str) -> None:
    known = sorted(f.name for f in dataclasses.fields(kind))
    unknown = sorted(map(repr, set(values) - set(known)))
    if unknown:
        hint = suggest(next(iter(set(values) - set(known))), known) if len(unknown) == 1 else ""
        raise BiopropError(f"unknown {where} field(s) {', '.join(unknown)}{hint} (expected: {', '.join(known)})")

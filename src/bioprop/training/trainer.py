"""The training loop: one loop for every rule, model and dataset.

Per mini-batch: zero the gradients of the groups trained this epoch, let the rule compute
them (``rule.compute_gradients``), step one Adam optimiser per group. Per epoch: evaluate
train/validation/test error, append a row to ``metrics.jsonl``, write ``results.json`` and an
atomic checkpoint holding everything needed to continue exactly (rule state with feedback
weights and inverses, optimiser moments, RNG state, metrics so far). Batch order and
augmentation depend only on ``(seed, epoch)``, so a resumed run replays the same batches.
"""

from __future__ import annotations

import time
from itertools import islice
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bioprop.data import DataBundle, load_data
from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import LearningRule, create_rule
from bioprop.training.checkpoint import load_torch, save_json, save_jsonl, save_torch
from bioprop.training.config import AdamConfig, TrainConfig
from bioprop.training.results import summarize

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BiopropError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BiopropError(f"device {name!r} requested but CUDA is not available")
    return device


def make_optimizer(parameters: list, adam: AdamConfig) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=adam.lr, betas=(adam.beta1, adam.beta2), eps=adam.eps)


@torch.no_grad()
def evaluate(rule_or_model: torch.nn.Module, split, batch_size: int = 1000, device="cpu",
             limit_batches: int | None = None) -> dict[str, float]:
    """Error (%), top-5 error (%, when there are more than 10 classes) and mean loss on ``split``."""
    was_training = rule_or_model.training
    rule_or_model.eval()
    # sums stay on the device: one synchronisation per evaluation, not one per batch
    wrong = wrong_top5 = loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = classes = 0
    for x, y in islice(split.batches(batch_size, shuffle=False, device=device), limit_batches):
        logits = rule_or_model(x)
        classes = logits.shape[1]
        loss_sum = loss_sum + torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        wrong = wrong + (logits.argmax(1) != y).sum()
        if classes > 10:
            top5 = logits.topk(5, dim=1).indices
            wrong_top5 = wrong_top5 + (~(top5 == y[:, None]).any(1)).sum()
        seen += len(y)
    rule_or_model.train(was_training)
    result = {"error": 100.0 * wrong.item() / seen, "loss": loss_sum.item() / seen}
    if classes > 10:
        result["top5_error"] = 100.0 * wrong_top5.item() / seen
    return result


class Trainer:
    """Builds data, model, rule and optimisers from a :class:`TrainConfig` and trains.

    ``out`` is the run folder (``None``: nothing is written). ``resume=True`` continues from
    ``out/checkpoint.pt``; an existing checkpoint without ``resume`` is an error, so nothing
    is overwritten by accident.
    """

    def __init__(self, config: TrainConfig, out: str | Path | None = None, resume: bool = False,
                 progress: bool = True, data: DataBundle | None = None, log=print):
        config.validate()
        self.config = config
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.log = log
        self.device = resolve_device(config.device)
        checkpoint = self._find_checkpoint(resume)

        torch.manual_seed(config.seed)
        model = create_model(config.model)  # validates the names before any data is read
        self.rule: LearningRule = create_rule(config.rule, model, seed=config.seed, **config.rule_options)
        missing = sorted(set(self.rule.parameter_groups()) - set(config.optimizers))
        if missing:
            raise BiopropError(f"rule {config.rule!r} needs optimiser settings for group(s) {', '.join(missing)}")
        self.data = data if data is not None else load_data(config.data, seed=config.seed)
        self._check_model_fits_data(model)
        self.rule.to(self.device)
        self.optimizers = {group: make_optimizer(params, config.optimizers[group])
                           for group, params in self.rule.parameter_groups().items() if params}
        self.metrics: list[dict] = []
        self.start_epoch = 0
        if checkpoint is not None:
            self._restore(checkpoint)

    # -- set-up ---------------------------------------------------------------------------
    def _find_checkpoint(self, resume: bool):
        if self.out is None:
            if resume:
                raise BiopropError("--resume needs --out, the run folder to continue")
            return None
        path = self.out / CHECKPOINT
        if not path.exists():
            if resume:
                raise BiopropError(f"--resume: no checkpoint at {path}")
            return None
        if not resume:
            raise BiopropError(f"{self.out} already holds a run ({CHECKPOINT}); pass --resume to continue it "
                               f"or choose another --out")
        checkpoint = load_torch(path)
        saved, current = _comparable(checkpoint["config"]), _comparable(self.config.to_dict())
        changed = [key for key in current if saved.get(key) != current[key]]
        if changed:
            raise BiopropError(f"--resume: the config differs from the saved run in {', '.join(changed)}")
        return checkpoint

    def _check_model_fits_data(self, model) -> None:
        info = self.data.info
        if tuple(model.input_shape) != tuple(info.input_shape) or model.num_classes != info.num_classes:
            raise BiopropError(
                f"model {self.config.model!r} expects inputs {tuple(model.input_shape)} and {model.num_classes} "
                f"classes, but dataset {info.name!r} has {tuple(info.input_shape)} and {info.num_classes}")

    def _restore(self, checkpoint: dict) -> None:
        self.rule.load_state_dict(checkpoint["rule"])
        for group, state in checkpoint["optimizers"].items():
            self.optimizers[group].load_state_dict(state)
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if torch.cuda.is_available() and checkpoint["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        self.metrics = list(checkpoint["metrics"])
        self.start_epoch = checkpoint["epoch"]

    # -- training ----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            run_config = {**self.config.to_dict(), "normalization": self.data.normalization,
                          "resolved_device": str(self.device)}
            save_json(run_config, self.out / "config.json")
        for epoch in range(self.start_epoch, self.config.epochs):
            row = self.train_epoch(epoch)
            self.metrics.append(row)
            self.log(format_row(row, self.config.epochs))
            if self.out is not None:
                self.save(epoch + 1)
        return self.metrics

    def train_epoch(self, epoch: int) -> dict:
        config, rule = self.config, self.rule
        phases = tuple(group for group in rule.phases(epoch) if group in self.optimizers)
        rule.train()
        totals: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)  # diagnostics may be reported on some batches only
        batches = self.data.train.batches(config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                                          augment=self.data.augment, device=self.device)
        total = self.data.train.num_batches(config.batch_size)
        if config.limit_batches is not None:
            total = min(total, config.limit_batches)
        started = time.perf_counter()
        steps = seen = 0
        # running sums stay on the device: no synchronisation per batch
        wrong = loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for x, y in tqdm(islice(batches, total), total=total, desc=f"epoch {epoch + 1}", leave=False,
                         disable=not self.progress):
            for group in phases:
                self.optimizers[group].zero_grad(set_to_none=True)
            step = rule.compute_gradients(x, y, phases)
            for group in phases:
                self.optimizers[group].step()
            loss_sum = loss_sum + step.loss.double() * len(y)
            wrong = wrong + (step.logits.argmax(1) != y).sum()
            seen += len(y)
            for key, value in step.diagnostics.items():
                totals[key] += float(value)
                counts[key] += 1
            steps += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        row = {"epoch": epoch + 1, "phases": list(phases), "train_loss": loss_sum.item() / seen,
               "train_error": 100.0 * wrong.item() / seen}
        row.update(self._evaluate_splits())
        row["seconds"] = seconds
        if totals:
            row["diagnostics"] = {key: value / counts[key] for key, value in sorted(totals.items())}
        return row

    def _evaluate_splits(self) -> dict:
        row = {}
        for name in ("val", "test"):
            split = getattr(self.data, name)
            if split is None:
                row[f"{name}_error"] = None
                continue
            result = evaluate(self.rule, split, self.config.eval_batch_size, self.device,
                              self.config.limit_eval_batches)
            row[f"{name}_error"] = result["error"]
            row[f"{name}_loss"] = result["loss"]
            if "top5_error" in result:
                row[f"{name}_top5_error"] = result["top5_error"]
        return row

    def save(self, epochs_done: int) -> None:
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        save_torch({"epoch": epochs_done, "config": self.config.to_dict(), "rule": self.rule.state_dict(),
                    "optimizers": {group: opt.state_dict() for group, opt in self.optimizers.items()},
                    "rng": rng, "metrics": self.metrics}, self.out / CHECKPOINT)
        save_jsonl(self.metrics, self.out / "metrics.jsonl")
        save_json({"config": self.config.to_dict(), **summarize(self.metrics)}, self.out / "results.json")


def _comparable(config: dict) -> dict:
    """The settings a resumed run must share with the saved one: all but the epoch budget and
    where things run or are read from (device, data folder, loader workers)."""
    config = {key: value for key, value in config.items() if key not in ("epochs", "device")}
    config["data"] = {key: value for key, value in config["data"].items() if key not in ("data_dir", "num_workers")}
    return config


def format_row(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>3}/{epochs}", f"train {row['train_error']:6.2f}%"]
    for name in ("val", "test"):
        if row.get(f"{name}_error") is not None:
            parts.append(f"{name} {row[f'{name}_error']:6.2f}%")
            if f"{name}_top5_error" in row:
                parts.append(f"{name}-top5 {row[f'{name}_top5_error']:6.2f}%")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


def train(config: TrainConfig, out: str | Path | None = None, resume: bool = False, progress: bool = True,
          log=print) -> dict:
    """Trains one run; returns ``{"rule": trained rule, "metrics": [...], "summary": {...}}``."""
    trainer = Trainer(config, out=out, resume=resume, progress=progress, log=log)
    metrics = trainer.fit()
    return {"rule": trainer.rule, "metrics": metrics, "summary": summarize(metrics)}

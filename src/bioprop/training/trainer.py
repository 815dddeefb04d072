"""The training loop: one loop for every rule, model and dataset.

An epoch is the rule's sequence of passes over the training data (``rule.passes()``): one pass
training every parameter group, or, for the alternating schedule of target propagation, an
inverse pass and then a forward pass. Per mini-batch: zero the gradients of the pass's groups,
let the rule compute them (``rule.compute_gradients``), average them over the processes of a
data-parallel job, step one Adam optimiser per group. After the last pass of an epoch: evaluate
the train (the trained network on the training split, not augmented), validation and test
metrics of the model's task (:mod:`bioprop.tasks`: ``{split}_error`` for classification,
``{split}_reconstruction_error`` for reconstruction), append a row to ``metrics.jsonl``, write
``results.json`` and an atomic checkpoint. The last epoch's row of a reconstruction run also
holds a few test images and their reconstructions (``reconstructions``, for Fig. 7).

Checkpoints hold everything needed to continue exactly: rule state (weights, feedback weights,
inverses, counters), optimiser moments, RNG state, the metrics so far and the position in the
epoch (pass and step, with the running sums of the pass). They are written at the end of every
pass and, with ``checkpoint_every``, every N steps or minutes within a pass. Batch order and
augmentation depend only on ``(seed, epoch, pass)`` and the batch index, so a resumed run replays
the same batches from where it stopped.
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bioprop.data import DataBundle, load_data
from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import RULES, LearningRule, create_rule
from bioprop.tasks import Task, task_of, task_of_row
from bioprop.training import alignment, distributed, precision
from bioprop.training.checkpoint import load_checkpoint, remove_stale_temporaries, save_json, save_jsonl, save_torch
from bioprop.training.config import AdamConfig, TrainConfig, parse_checkpoint_every
from bioprop.training.evaluation import evaluate
from bioprop.training.results import summarize

CHECKPOINT = "checkpoint.pt"


class DivergenceError(BiopropError):
    """Training produced a non-finite loss or parameter; the last good checkpoint is kept."""


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


def make_optimizer(parameters: list, adam: AdamConfig, implementation: str = "plain",
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """Adam with the chosen kernel: ``fused`` (one kernel over all tensors), ``foreach`` (batched
    ops), ``plain`` (a loop over tensors), or ``auto`` (fused where the device supports it). The
    three compute the same update to float rounding (tested)."""
    kernel = {}
    if implementation == "auto":
        implementation = "fused" if device is not None and device.type in ("cpu", "cuda") else "plain"
    if implementation == "fused":
        kernel = {"fused": True}
    elif implementation == "foreach":
        kernel = {"foreach": True}
    elif implementation == "plain":
        kernel = {"foreach": False}
    if adam.weight_decay > 0:
        optimizer = torch.optim.AdamW(parameters, lr=adam.lr, betas=(adam.beta1, adam.beta2), eps=adam.eps,
                                      weight_decay=adam.weight_decay, **kernel)
    else:
        optimizer = torch.optim.Adam(parameters, lr=adam.lr, betas=(adam.beta1, adam.beta2), eps=adam.eps, **kernel)
    if adam.eps_convention == "tensorflow":
        optimizer.register_step_pre_hook(functools.partial(_tensorflow_epsilon, eps=adam.eps))
    return optimizer


def _tensorflow_epsilon(optimizer: torch.optim.Optimizer, args, kwargs, eps: float) -> None:
    """Before step t of each group: ε_t = ε / √(1 - β2ᵗ), which turns PyTorch's update into
    TensorFlow's (ε added to the uncorrected √v; :class:`~bioprop.training.config.AdamConfig`). The
    step count lives in the group, so it is saved in checkpoints with the optimiser state."""
    for group in optimizer.param_groups:
        group["tensorflow_step"] = group.get("tensorflow_step", 0) + 1
        group["eps"] = eps / math.sqrt(1.0 - group["betas"][1] ** group["tensorflow_step"])


@dataclass
class PassState:
    """Where a pass stands, with its running sums (saved in mid-pass checkpoints); ``metric_sum`` is
    the task's running metric sum (:meth:`bioprop.tasks.Task.metric_sum`: wrong answers for
    classification)."""

    step: int = 0
    seconds: float = 0.0
    loss_sum: float = 0.0
    metric_sum: float = 0.0
    seen: int = 0
    diagnostic_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    diagnostic_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def to_dict(self) -> dict:
        return {"step": self.step, "seconds": self.seconds, "loss_sum": self.loss_sum,
                "metric_sum": self.metric_sum, "seen": self.seen, "diagnostic_sums": dict(self.diagnostic_sums),
                "diagnostic_counts": dict(self.diagnostic_counts)}

    @classmethod
    def from_dict(cls, values: dict) -> "PassState":
        renamed = {"wrong": "metric_sum"}  # checkpoints written before tasks existed
        state = cls(**{renamed.get(k, k): v for k, v in values.items() if not k.startswith("diagnostic")})
        state.diagnostic_sums.update(values["diagnostic_sums"])
        state.diagnostic_counts.update(values["diagnostic_counts"])
        return state


class Trainer:
    """Builds data, model, rule and optimisers from a :class:`TrainConfig` and trains.

    ``out`` is the run folder (``None``: nothing is written). ``resume=True`` continues from
    ``out/checkpoint.pt``; an existing checkpoint without ``resume`` is an error, so nothing
    is overwritten by accident. Under ``torchrun`` the processes train data-parallel
    (:mod:`bioprop.training.distributed`) and only rank 0 writes.
    """

    def __init__(self, config: TrainConfig, out: str | Path | None = None, resume: bool = False,
                 progress: bool = True, data: DataBundle | None = None, log=print, on_epoch=None):
        config.validate()
        self.config = config
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.log = log
        #: called with each epoch's metrics row once its checkpoint is written (e.g. a search's pruner);
        #: an exception it raises stops training there, the run resumable
        self.on_epoch = on_epoch
        self.parallel, self.device = distributed.from_environment(resolve_device(config.device))
        if config.batch_size % self.parallel.world_size:
            raise BiopropError(f"batch_size {config.batch_size} must be divisible by the number of "
                               f"processes ({self.parallel.world_size})")
        precision.configure(config.precision)
        self.autocast = lambda: precision.autocast(config.precision, self.device)
        self.checkpoint_every = parse_checkpoint_every(config.checkpoint_every)
        checkpoint = self._find_checkpoint(resume)

        torch.manual_seed(config.seed)
        model = create_model(config.model)  # validates the names before any data is read
        self.task: Task = task_of(model)
        self.rule: LearningRule = create_rule(config.rule, model, seed=config.seed, **config.rule_options)
        self.rule.set_data_parallel(self.parallel.rank, self.parallel.world_size)
        settings = {group: config.optimizer_settings(group) for group in self.rule.parameter_groups()}
        self.data = data if data is not None else load_data(config.data, seed=config.seed)
        self._check_model_fits_data(model)
        self._move_data_to_device()
        self.rule.to(self.device)
        self.optimizers = {group: make_optimizer(params, settings[group], config.optimizer_impl, self.device)
                           for group, params in self.rule.parameter_groups().items() if params}
        self.metrics: list[dict] = []
        # the position to start from: epoch, pass, the rows of the epoch's finished passes, the
        # running state of the unfinished one
        self.start_epoch, self.start_pass = 0, 0
        self.pass_rows: list[dict] = []
        self.pass_state = PassState()
        if checkpoint is not None:
            self._restore(checkpoint)
            if self.parallel.is_main:
                where = f" (pass {self.start_pass + 1}, step {self.pass_state.step})" if self.start_pass or \
                    self.pass_state.step else ""
                self.log(f"resuming {self.out} at epoch {self.start_epoch + 1} of {config.epochs}{where}")

    # -- set-up ---------------------------------------------------------------------------
    def _find_checkpoint(self, resume: bool):
        if self.out is None:
            if resume:
                raise BiopropError("--resume needs --out, the run folder to continue")
            return None
        if self.out.exists() and not self.out.is_dir():
            raise BiopropError(f"--out {self.out} is a file; expected a run folder (new or existing)")
        path = self.out / CHECKPOINT
        if self.out.is_dir() and self.parallel.is_main:
            remove_stale_temporaries(self.out)  # of a process killed while writing
        if not path.exists():
            if resume and self.parallel.is_main:  # killed before its first checkpoint, or never run
                self.log(f"no checkpoint in {self.out} yet: starting the run from the beginning")
            return None
        if not resume:
            raise BiopropError(f"{self.out} already holds a run ({CHECKPOINT}); pass --resume to continue it "
                               f"or choose another --out")
        checkpoint = load_checkpoint(path)
        # through from_dict both ways: a run saved by an older version gets the new fields' defaults
        saved = _comparable(TrainConfig.from_dict(checkpoint["config"]).to_dict())
        current = _comparable(self.config.to_dict())
        changed = [key for key in current if saved.get(key) != current[key]]
        if changed:
            raise BiopropError(f"--resume: the config differs from the saved run in {', '.join(changed)}")
        return checkpoint

    def _check_model_fits_data(self, model) -> None:
        """Declared shapes (``input_shape``, ``num_classes``) must match the data; a model that declares
        none (a user's own module) is run once on two examples and must give ``(2, outputs)`` outputs,
        outputs as the task needs them (the classes; the input's units for reconstruction)."""
        info = self.data.info
        outputs = self.task.output_units(info.input_shape, info.num_classes)
        declared = hasattr(model, "input_shape") and hasattr(model, "num_classes")
        if declared and self.task.name == "classification":
            if tuple(model.input_shape) != tuple(info.input_shape) or model.num_classes != info.num_classes:
                raise BiopropError(
                    f"model {self.config.model!r} expects inputs {tuple(model.input_shape)} and {model.num_classes} "
                    f"classes, but dataset {info.name!r} has {tuple(info.input_shape)} and {info.num_classes}")
            return
        if declared and hasattr(model, "output_units"):  # another task: the outputs it needs
            if tuple(model.input_shape) != tuple(info.input_shape) or model.output_units != outputs:
                raise BiopropError(
                    f"model {self.config.model!r} ({self.task.name}) expects inputs {tuple(model.input_shape)} "
                    f"and gives {model.output_units} outputs, but dataset {info.name!r} has inputs "
                    f"{tuple(info.input_shape)}, for which the task needs {outputs}")
            return
        was_training = model.training
        try:
            with torch.no_grad():
                logits = model.eval()(torch.zeros(2, *info.input_shape))
        except Exception as error:  # a user's module: whatever it raises, name the model and the input
            raise BiopropError(f"model {self.config.model!r} fails on inputs of shape (2, "
                               f"{', '.join(map(str, info.input_shape))}) from dataset {info.name!r}: {error}") from None
        finally:
            model.train(was_training)
        if tuple(getattr(logits, "shape", ())) != (2, outputs):
            raise BiopropError(f"model {self.config.model!r} gives outputs of shape "
                               f"{tuple(getattr(logits, 'shape', ()))} for 2 examples; dataset {info.name!r} needs "
                               f"(2, {outputs}) {'logits' if self.task.name == 'classification' else 'outputs'}")

    def _move_data_to_device(self) -> None:
        """In-memory splits go to the accelerator whole (uint8), so batching, augmentation and
        normalisation run there and the host is not the bottleneck."""
        if self.device.type == "cpu":
            return
        moved: dict = {}  # train and val are views of one set of images: one copy of it on the device
        for name in ("train", "val", "test"):
            split = getattr(self.data, name)
            if split is not None and hasattr(split, "to"):
                setattr(self.data, name, split.to(self.device, moved))

    def _restore(self, checkpoint: dict) -> None:
        self.rule.load_state_dict(checkpoint["rule"])
        for group, state in checkpoint["optimizers"].items():
            self.optimizers[group].load_state_dict(state)
        torch.set_rng_state(checkpoint["rng"]["torch"])
        cuda_state = checkpoint["rng"].get("cuda")
        if self.device.type == "cuda" and cuda_state is not None:
            # this run's device only: under torchrun rank 0 saved its device's state, which every rank's
            # device has too (ranks draw the same global-batch noise); a list (the format of earlier
            # checkpoints, one state per visible GPU) contributes its first entry
            state = cuda_state[0] if isinstance(cuda_state, (list, tuple)) else cuda_state
            torch.cuda.set_rng_state(state, self.device)
        self.metrics = list(checkpoint["metrics"])
        self.start_epoch = checkpoint["epoch"]
        position = checkpoint.get("position") or {}
        self.start_pass = position.get("pass", 0)
        self.pass_rows = list(position.get("pass_rows", []))
        self.pass_state = PassState.from_dict(position["state"]) if "state" in position else PassState()

    # -- training ----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        if self.out is not None and self.parallel.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            run_config = {**self.config.to_dict(), "normalization": self.data.normalization,
                          "resolved_device": str(self.device), "world_size": self.parallel.world_size}
            save_json(run_config, self.out / "config.json")
            if self.metrics:  # a run killed between its checkpoint and its metrics files
                self._write_metrics()
        try:
            self._train_epochs()
        except DivergenceError as error:
            if self.out is not None and self.parallel.is_main:
                save_json({"config": self.config.to_dict(), **summarize(self.metrics), "status": "diverged",
                           "reason": str(error)}, self.out / "results.json")
            raise
        return self.metrics

    def _train_epochs(self) -> None:
        for epoch in range(self.start_epoch, self.config.epochs):
            passes = self.rule.passes()
            for index in range(self.start_pass, len(passes)):
                self.pass_rows.append(self.train_pass(epoch, index, passes[index], len(passes)))
                self.pass_state = PassState()
                if index + 1 < len(passes):
                    self.save(epoch, next_pass=index + 1)
            row = self.epoch_row(epoch)
            self.metrics.append(row)
            self.pass_rows, self.start_pass = [], 0
            if self.parallel.is_main:
                self.log(format_row(row, self.config.epochs, self.task))
            self.save(epoch + 1)
            if self.on_epoch is not None:
                self.on_epoch(row)

    def train_pass(self, epoch: int, index: int, groups: tuple[str, ...], passes_per_epoch: int = 1) -> dict:
        """Pass ``index`` of ``passes_per_epoch`` over the training data, training ``groups``; returns its row."""
        config, rule, state = self.config, self.rule, self.pass_state
        groups = tuple(group for group in groups if group in self.optimizers)
        parameters = {group: [p for g in self.optimizers[group].param_groups for p in g["params"]]
                      for group in groups}
        rule.train()
        world = self.parallel.world_size
        local_batch = config.batch_size // world
        total = self.data.train.num_batches(local_batch, world_size=world)
        if config.limit_batches is not None:
            total = min(total, config.limit_batches)
        order_epoch = epoch * passes_per_epoch + index  # a fresh batch order for every pass
        batches = self.data.train.batches(local_batch, shuffle=True, seed=config.seed, epoch=order_epoch,
                                          augment=self.data.augment, device=self.device, rank=self.parallel.rank,
                                          world_size=world, start=state.step)
        # running sums stay on the device: no synchronisation per batch
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        started = last_save = time.perf_counter()
        label = f"epoch {epoch + 1}" + (f" pass {index + 1} ({'+'.join(groups)})" if passes_per_epoch > 1 else "")
        with tqdm(total=total, initial=state.step, desc=label, leave=False,
                  disable=not (self.progress and self.parallel.is_main)) as bar:
            for x, y in batches:
                if state.step >= total:
                    break
                for group in groups:
                    self.optimizers[group].zero_grad(set_to_none=True)
                with self.autocast():
                    step = rule.compute_gradients(x, y, groups)
                if self._align_now(groups, state.step):
                    step.diagnostics = {**step.diagnostics, **alignment.measure(rule, x, y)}
                for group in groups:
                    self.parallel.average_gradients(parameters[group])
                    self.optimizers[group].step()
                checked = torch.stack([step.loss.float(), *(v.float() for v in step.local_losses.values())])
                finite = torch.isfinite(checked).all()
                first_bad_step = torch.where(~finite & (first_bad_step < 0), state.step, first_bad_step)
                loss_sum += step.loss.double() * len(y)
                metric_sum += self.task.metric_sum(step.logits, self.task.target(x, y))
                state.seen += len(y)
                for key, value in step.diagnostics.items():
                    state.diagnostic_sums[key] += float(value)
                    state.diagnostic_counts[key] += 1
                state.step += 1
                bar.update()
                # free on the CPU: stop at once, by name (data-parallel jobs decide together at the pass end)
                if self.device.type == "cpu" and not self.parallel.enabled and not bool(finite):
                    names = ["loss", *step.local_losses]
                    bad = [name for name, value in zip(names, checked.tolist()) if not math.isfinite(value)]
                    raise DivergenceError(f"rule {config.rule!r}: non-finite {', '.join(bad)} in epoch {epoch + 1}, "
                                          f"pass {index + 1}, step {state.step}; the last good checkpoint is kept")
                if self._checkpoint_due(state.step, last_save) and state.step < total:
                    self._check_finite(first_bad_step, epoch, index)
                    state.seconds += time.perf_counter() - started
                    self._fold_sums(state, loss_sum, metric_sum)
                    loss_sum.zero_(), metric_sum.zero_()
                    self.save(epoch, next_pass=index)
                    started = last_save = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        state.seconds += time.perf_counter() - started
        self._check_finite(first_bad_step, epoch, index)
        self._fold_sums(state, loss_sum, metric_sum)
        return self._pass_row(groups, state)

    def _align_now(self, groups: tuple[str, ...], step: int) -> bool:
        """Alignment metrics on this step? (``alignment_every``; passes training the forward weights; process 0)."""
        every = self.config.alignment_every
        return bool(every) and step % every == 0 and "forward" in groups and self.parallel.is_main

    def _checkpoint_due(self, step: int, last_save: float) -> bool:
        if self.checkpoint_every is None or self.out is None:
            return False
        unit, amount = self.checkpoint_every
        if unit == "steps":
            return step % amount == 0
        return self.parallel.any(time.perf_counter() - last_save >= amount * 60)

    def _fold_sums(self, state: PassState, loss_sum: torch.Tensor, metric_sum: torch.Tensor) -> None:
        state.loss_sum += loss_sum.item()
        state.metric_sum += metric_sum.item()

    def _check_finite(self, first_bad_step: torch.Tensor, epoch: int, index: int) -> None:
        """Stops the run if a loss was non-finite, or a parameter is (one device sync, at the end
        of a pass and before a checkpoint, so a diverged state is never saved)."""
        bad_step = int(first_bad_step.item())
        where = f"epoch {epoch + 1}, pass {index + 1}"
        if self.parallel.any(bad_step >= 0):
            step = f"step {bad_step + 1}" if bad_step >= 0 else "a step of another process"
            raise DivergenceError(f"rule {self.config.rule!r}: the training loss became non-finite in {where}, "
                                  f"{step}; the last good checkpoint is kept")
        state = {name: tensor for name, tensor in self.rule.state_dict().items()
                 if torch.is_tensor(tensor) and tensor.is_floating_point()}
        names, tensors = list(state), list(state.values())
        if tensors:
            finite = torch.stack([torch.isfinite(t).all() for t in tensors])
            if self.parallel.any(not bool(finite.all())):
                bad = [name for name, ok in zip(names, finite.tolist()) if not ok]
                raise DivergenceError(f"rule {self.config.rule!r}: non-finite values in {', '.join(bad[:5])} "
                                      f"after {where}; the last good checkpoint is kept")

    def _pass_row(self, groups: tuple[str, ...], state: PassState) -> dict:
        totals = self.parallel.sum(torch.tensor([state.loss_sum, state.metric_sum, float(state.seen)],
                                                dtype=torch.float64, device=self.device)).tolist()
        row = {"groups": list(groups), "steps": state.step, "seconds": state.seconds,
               "train_loss_running": totals[0] / max(totals[2], 1),
               f"train_{self.task.metric}_running": self.task.running_metric(totals[1], totals[2])}
        if state.diagnostic_sums:
            row["diagnostics"] = {key: value / state.diagnostic_counts[key]
                                  for key, value in sorted(state.diagnostic_sums.items())}
        return row

    def epoch_row(self, epoch: int) -> dict:
        """The epoch's metrics: evaluated errors after its last pass, and what each pass did."""
        last, running = self.pass_rows[-1], f"train_{self.task.metric}_running"
        row = {"epoch": epoch + 1, "groups": sorted({g for p in self.pass_rows for g in p["groups"]}),
               "train_loss_running": last["train_loss_running"], running: last[running]}
        started = time.perf_counter()
        row.update(self._evaluate_splits())
        if epoch + 1 == self.config.epochs:  # the end of training: what the task keeps (Fig. 7 images)
            row.update(self.task.samples(self.rule, self.data.test, self.data.normalization, self.device,
                                         self.autocast))
        row["seconds"] = sum(p["seconds"] for p in self.pass_rows)
        row["eval_seconds"] = time.perf_counter() - started
        if len(self.pass_rows) == 1:
            if "diagnostics" in last:
                row["diagnostics"] = last["diagnostics"]
        else:
            row["passes"] = self.pass_rows
        return row

    def _evaluate_splits(self) -> dict:
        config, row = self.config, {}
        for name in ("train", "val", "test"):
            split = getattr(self.data, name)
            if split is None:
                row[f"{name}_{self.task.metric}"] = None
                continue
            result = evaluate(self.rule, split, config.eval_batch_size, self.device, config.limit_eval_batches,
                              size=config.train_eval_size if name == "train" else None, seed=config.seed,
                              autocast=self.autocast, parallel=self.parallel)
            row.update({f"{name}_{key}": value for key, value in result.items()})
        return row

    # -- checkpoints -------------------------------------------------------------------
    def save(self, epochs_done: int, next_pass: int | None = None) -> None:
        """Checkpoint, then the metrics files. ``next_pass``: a checkpoint within epoch
        ``epochs_done`` (0-based), before pass ``next_pass`` or within it at ``pass_state.step``."""
        if self.out is None or not self.parallel.is_main:
            return
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        position = None
        if next_pass is not None:
            position = {"pass": next_pass, "pass_rows": self.pass_rows, "state": self.pass_state.to_dict()}
        save_torch({"epoch": epochs_done, "position": position, "config": self.config.to_dict(),
                    "rule": self.rule.state_dict(),
                    "optimizers": {group: opt.state_dict() for group, opt in self.optimizers.items()},
                    "rng": rng, "metrics": self.metrics}, self.out / CHECKPOINT)
        self._write_metrics()

    def _write_metrics(self) -> None:
        save_jsonl(self.metrics, self.out / "metrics.jsonl")
        save_json({"config": self.config.to_dict(), **summarize(self.metrics)}, self.out / "results.json")


_UNCOMPARED = ("epochs", "device", "checkpoint_every", "alignment_every")  # none changes the parameters


def _comparable(config: dict) -> dict:
    """The settings a resumed run must share with the saved one: all but the epoch budget and
    where things run or are read from (device, data folder, loader workers, JPEG decoder, checkpoint
    interval)."""
    config = {key: value for key, value in config.items() if key not in _UNCOMPARED}
    groups = RULES.get(config["rule"]).groups  # settings of groups the rule does not train change nothing
    config["optimizers"] = {group: adam for group, adam in config["optimizers"].items() if group in groups}
    config["data"] = {key: value for key, value in config["data"].items()
                      if key not in ("data_dir", "num_workers", "decoder")}  # decoders give the same pixels
    return config


def format_row(row: dict, epochs: int, task: Task | None = None) -> str:
    task = task or task_of_row(row)
    parts = [f"epoch {row['epoch']:>3}/{epochs}"]
    for name in ("train", "val", "test"):
        if row.get(f"{name}_{task.metric}") is not None:
            parts.append(f"{name} {task.format_metric(row[f'{name}_{task.metric}'])}")
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

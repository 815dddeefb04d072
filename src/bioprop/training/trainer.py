"""The training loop: one loop for every rule, model and dataset.

An epoch is the rule's sequence of passes over the training data (``rule.passes()``): one pass
training every parameter group, or, for the alternating schedule of target propagation, an
inverse pass and then a forward pass. Per mini-batch: zero the gradients of the pass's groups,
let the rule compute them (``rule.compute_gradients``), average them over the processes of a
data-parallel job, step one optimiser per group (and its learning-rate schedule), then call the
callbacks (:mod:`bioprop.training.callbacks`: progress, TensorBoard, your own). After the last
pass of an epoch: evaluate the train (the trained network on the training split, not augmented),
validation and test metrics of the model's task (:mod:`bioprop.tasks`: ``{split}_error`` for
classification, ``{split}_reconstruction_error`` for reconstruction), append a row to
``metrics.jsonl``, write ``results.json`` and an atomic checkpoint
(:mod:`bioprop.training.run_folder`). The last epoch's row of a reconstruction run also holds a
few test images and their reconstructions (``reconstructions``, for Fig. 7).

Checkpoints hold everything needed to continue exactly: rule state (weights, feedback weights,
inverses, counters), optimiser moments and schedules, RNG state, the metrics so far and the
position in the epoch (pass and step, with the running sums of the pass). They are written at
the end of every pass, with ``checkpoint_every`` every N steps or minutes within a pass, and when
SIGINT or SIGTERM stops training (:mod:`bioprop.training.interrupt`). Batch order and
augmentation depend only on ``(seed, epoch, pass)`` and the batch index, so a resumed run replays
the same batches from where it stopped.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bioprop.data import DataBundle, load_data
from bioprop.errors import BiopropError
from bioprop.models import create_model
from bioprop.rules import LearningRule, StepResult, create_rule
from bioprop.tasks import Task, task_of, task_of_row
from bioprop.training import alignment, distributed, precision
from bioprop.training.callbacks import CallbackList, EpochFunction, StepEvent
from bioprop.training.config import TrainConfig, parse_checkpoint_every
from bioprop.training.device import resolve_device
from bioprop.training.evaluation import evaluate
from bioprop.training.interrupt import AGREE_EVERY, StopRequests, TrainingInterrupted
from bioprop.training.optimizers import adam_step_scale, make_optimizer, make_scheduler
from bioprop.training.progress import progress_callback
from bioprop.training.results import summarize
from bioprop.training.run_folder import CHECKPOINT, RunFolder
from bioprop.training.sync_batchnorm import convert_sync_batchnorm, has_sync_batchnorm

__all__ = ["CHECKPOINT", "DivergenceError", "PassState", "Trainer", "format_row", "make_optimizer",
           "resolve_device", "train"]


class DivergenceError(BiopropError):
    """Training produced a non-finite loss or parameter; the last good checkpoint is kept."""


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


class DeviceSums:
    """A pass's running loss and metric sums and its first non-finite step, kept on the device so
    that a step needs no synchronisation; folded into the :class:`PassState` when it is saved."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.metric = torch.zeros((), dtype=torch.float64, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, result: StepResult, metric_sum: torch.Tensor, batch_size: int, step: int) -> torch.Tensor:
        """Adds one step; returns the step's losses (task loss first, then the local ones) and whether all are finite."""
        checked = torch.stack([result.loss.float(), *(v.float() for v in result.local_losses.values())])
        finite = torch.isfinite(checked).all()
        self.first_bad_step = torch.where(~finite & (self.first_bad_step < 0), step, self.first_bad_step)
        self.loss += result.loss.double() * batch_size
        self.metric += metric_sum
        return checked, finite

    def fold_into(self, state: PassState) -> None:
        state.loss_sum += self.loss.item()
        state.metric_sum += self.metric.item()
        self.loss.zero_(), self.metric.zero_()


#: below this median step scale (:func:`~bioprop.training.optimizers.adam_step_scale`) the log warns: a
#: weight whose steps are a hundredth of what its gradients ask barely trains
STEP_SCALE_WARNING = 0.01


class Trainer:
    """Builds data, model, rule and optimisers from a :class:`TrainConfig` and trains.

    ``out`` is the run folder (``None``: nothing is written). ``resume=True`` continues from
    ``out/checkpoint.pt``; an existing checkpoint without ``resume`` is an error, so nothing
    is overwritten by accident. Under ``torchrun`` the processes train data-parallel
    (:mod:`bioprop.training.distributed`) and only rank 0 writes and prints.

    ``progress``: ``"auto"`` (a bar on a terminal, a line every ``progress_every`` seconds in a
    log), ``"bar"``, ``"log"`` or ``"none"`` (:mod:`bioprop.training.progress`; True is
    ``"auto"``, False ``"none"``). ``callbacks``: objects with the hooks of
    :class:`~bioprop.training.callbacks.Callback`. ``on_epoch``: a function called with each
    epoch's metrics row once its checkpoint is written (an exception it raises stops training
    there, the run resumable). ``log``: where lines go (``print``).
    """

    def __init__(self, config: TrainConfig, out: str | Path | None = None, resume: bool = False,
                 progress="auto", data: DataBundle | None = None, log=print, on_epoch=None,
                 callbacks=(), progress_every: float = 30.0):
        config.validate()
        self.config = config
        self.log = log
        self.parallel, self.device = distributed.from_environment(resolve_device(config.device))
        if config.batch_size % self.parallel.world_size:
            raise BiopropError(f"batch_size {config.batch_size} must be divisible by the number of "
                               f"processes ({self.parallel.world_size})")
        precision.configure(config.precision)
        self.autocast = lambda: precision.autocast(config.precision, self.device)
        self.checkpoint_every = parse_checkpoint_every(config.checkpoint_every)
        self.folder = RunFolder(out, self.parallel.is_main)
        self.out = self.folder.path
        try:
            checkpoint = self.folder.find_checkpoint(resume, config, log)  # holds the folder's lock
            self._build(data)
            shown = progress_callback(progress, every_seconds=progress_every)
            self.callbacks = CallbackList([*([shown] if shown else []), *callbacks,
                                           *([EpochFunction(on_epoch)] if on_epoch is not None else [])])
            self.stop = StopRequests()
            self.metrics: list[dict] = []
            # the position to start from: epoch, pass, the rows of the epoch's finished passes, the
            # running state of the unfinished one
            self.start_epoch, self.start_pass = 0, 0
            self.pass_rows: list[dict] = []
            self.pass_state = PassState()
            self.warned_step_scale = False  # said once per run, the first epoch it happens
            if checkpoint is not None:
                self._restore(checkpoint)
                self._say_where_resumed()
        except BaseException:  # a refused run leaves the folder free (the traceback keeps self alive)
            self.folder.release()
            raise

    # -- set-up ---------------------------------------------------------------------------
    def _build(self, data: DataBundle | None) -> None:
        """Seeds, then builds the model, the rule, the data and one optimiser (and schedule) per group;
        in a data-parallel job every process then takes rank 0's parameters and buffers, and the
        gradients go through a :class:`~bioprop.training.distributed.GradientReducer`."""
        config = self.config
        torch.manual_seed(config.seed)
        model = create_model(config.model)  # validates the names before any data is read
        if config.sync_batchnorm:
            model = convert_sync_batchnorm(model)
        self.task: Task = task_of(model)
        self.rule: LearningRule = create_rule(config.rule, model, seed=config.seed, **config.rule_options)
        self.rule.set_data_parallel(self.parallel.rank, self.parallel.world_size)
        self.data = data if data is not None else load_data(config.data, seed=config.seed)
        self._check_model_fits_data(model)
        self._move_data_to_device()
        self.rule.to(self.device)
        self.parallel.broadcast_state(self.rule)
        self.buffers_differ = False  # a step changed buffers (batch-norm statistics) on each rank on its own
        self.optimizers, self.schedulers = {}, {}
        steps = self.steps_per_pass()
        for group, params in self.rule.parameter_groups().items():
            if not params:
                continue
            settings = config.optimizer_settings(group)
            self.optimizers[group] = make_optimizer(params, settings, config.optimizer_impl, self.device)
            group_steps = steps * sum(group in groups for groups in self.rule.passes())
            scheduler = make_scheduler(self.optimizers[group], settings, group_steps, config.epochs)
            if scheduler is not None:
                self.schedulers[group] = scheduler
        self.reducer = None
        if self.parallel.enabled:  # sync batch norm's own collectives: buckets go at the end, in order
            self.reducer = distributed.GradientReducer(
                self.parallel, {group: [p for g in opt.param_groups for p in g["params"]]
                                for group, opt in self.optimizers.items()},
                overlap=not has_sync_batchnorm(self.rule))

    def steps_per_pass(self) -> int:
        """Optimiser steps in one pass over the training data (this process's share of each batch)."""
        world = self.parallel.world_size
        total = self.data.train.num_batches(self.config.batch_size // world, world_size=world)
        return min(total, self.config.limit_batches) if self.config.limit_batches is not None else total

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
        for group, state in checkpoint.get("schedulers", {}).items():
            self.schedulers[group].load_state_dict(state)
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

    def _say_where_resumed(self) -> None:
        if not self.parallel.is_main:
            return
        if self.finished:
            self.log(f"{self.out} is finished ({self.start_epoch} of {self.config.epochs} epochs done): nothing to "
                     f"train; a larger --epochs continues it")
            return
        where = f" (pass {self.start_pass + 1}, step {self.pass_state.step})" if self.start_pass or \
            self.pass_state.step else ""
        self.log(f"resuming {self.out} at epoch {self.start_epoch + 1} of {self.config.epochs}{where}")

    @property
    def finished(self) -> bool:
        """Every epoch of the budget is done."""
        return self.start_epoch >= self.config.epochs and not self.pass_rows and not self.pass_state.step

    # -- training ----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Trains from where the run stands to the end of its budget; returns the metrics rows.

        SIGINT or SIGTERM stops after the current step with a checkpoint and raises
        :class:`~bioprop.training.interrupt.TrainingInterrupted` (its message says how to resume)."""
        run_config = {**self.config.to_dict(), "normalization": self.data.normalization,
                      "resolved_device": str(self.device), "world_size": self.parallel.world_size}
        self.folder.claim()  # held since __init__, unless an earlier fit() released it
        self.folder.write_config(run_config)
        if self.metrics:  # a run killed between its checkpoint and its metrics files
            self.folder.write_metrics(self.config, self.metrics)
        if self.reducer is not None:
            self.reducer.attach()  # hooked since __init__, unless an earlier fit() closed it
        try:
            with self.stop:
                self.callbacks.on_train_start(self)
                self._train_epochs()
        except DivergenceError as error:
            self.folder.write_metrics(self.config, self.metrics, status="diverged", reason=str(error))
            raise
        finally:
            self.callbacks.close()
            self.folder.release()
            if self.reducer is not None:  # else its hooks keep it and the parameters alive until exit
                self.reducer.close()
        self.callbacks.on_train_end(self, self.metrics)
        return self.metrics

    def _train_epochs(self) -> None:
        for epoch in range(self.start_epoch, self.config.epochs):
            passes = self.rule.passes()
            for index in range(self.start_pass, len(passes)):
                row = self.train_pass(epoch, index, passes[index], len(passes))
                self.pass_rows.append(row)
                self.pass_state = PassState()
                if index + 1 < len(passes):
                    self.save(epoch, next_pass=index + 1)
                self.callbacks.on_pass_end(self, epoch + 1, index + 1, row)
            row = self.epoch_row(epoch)
            self.metrics.append(row)
            self.pass_rows, self.start_pass = [], 0
            if self.parallel.is_main:
                self.log(format_row(row, self.config.epochs, self.task))
            self.save(epoch + 1)
            if self.parallel.any(self.stop.requested):  # a signal during the evaluation: stop here, saved
                raise self._interrupted(f"after epoch {epoch + 1}")
            self.callbacks.on_epoch_end(self, row)

    def train_pass(self, epoch: int, index: int, groups: tuple[str, ...], passes_per_epoch: int = 1) -> dict:
        """Pass ``index`` of ``passes_per_epoch`` over the training data, training ``groups``; returns its row."""
        config, rule, state = self.config, self.rule, self.pass_state
        groups = tuple(group for group in groups if group in self.optimizers)
        rule.train()
        world = self.parallel.world_size
        total = self.steps_per_pass()
        order_epoch = epoch * passes_per_epoch + index  # a fresh batch order for every pass
        batches = self.data.train.batches(config.batch_size // world, shuffle=True, seed=config.seed,
                                          epoch=order_epoch, augment=self.data.augment, device=self.device,
                                          rank=self.parallel.rank, world_size=world, start=state.step)
        sums = DeviceSums(self.device)
        started = last_save = time.perf_counter()
        for x, y in batches:
            if state.step >= total:
                break
            result = self._step(x, y, groups)
            checked, finite = sums.add(result, self.task.metric_sum(result.logits, self.task.target(x, y)),
                                       len(y), state.step)
            state.seen += len(y)
            for key, value in result.diagnostics.items():
                state.diagnostic_sums[key] += float(value)
                state.diagnostic_counts[key] += 1
            state.step += 1
            self.callbacks.on_step_end(self, StepEvent(
                epoch=epoch + 1, epochs=config.epochs, pass_index=index + 1, passes=passes_per_epoch,
                step=state.step, steps=total, global_step=(order_epoch * total) + state.step, groups=groups,
                batch_size=len(y) * world, result=result, seconds=state.seconds + time.perf_counter() - started))
            # free on the CPU: stop at once, by name (data-parallel jobs decide together at the pass end)
            if self.device.type == "cpu" and not self.parallel.enabled and not bool(finite):
                names = ["loss", *result.local_losses]
                bad = [name for name, value in zip(names, checked.tolist()) if not math.isfinite(value)]
                raise DivergenceError(f"rule {config.rule!r}: non-finite {', '.join(bad)} in epoch {epoch + 1}, "
                                      f"pass {index + 1}, step {state.step}; the last good checkpoint is kept")
            stop, checkpoint_due = self._decide(state.step, last_save)
            if stop or (checkpoint_due and state.step < total):
                self._check_finite(sums.first_bad_step, epoch, index)
                state.seconds += time.perf_counter() - started
                sums.fold_into(state)
                self.save(epoch, next_pass=index)
                started = last_save = time.perf_counter()
            if stop:
                raise self._interrupted(f"in epoch {epoch + 1}" + (f", pass {index + 1}" if passes_per_epoch > 1 else "")
                                        + f" at step {state.step} of {total}")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        state.seconds += time.perf_counter() - started
        self._check_finite(sums.first_bad_step, epoch, index)
        sums.fold_into(state)
        return self._pass_row(groups, state)

    def _step(self, x: torch.Tensor, y: torch.Tensor, groups: tuple[str, ...]) -> StepResult:
        """One optimiser step of ``groups``: the rule's gradients, averaged over the processes, applied."""
        for group in groups:
            self.optimizers[group].zero_grad(set_to_none=True)
        if self.reducer is not None:  # buckets are sent as the backward pass accumulates gradients
            self.reducer.start(groups)
        with self.autocast():
            result = self.rule.compute_gradients(x, y, groups)
        if self._align_now(groups, self.pass_state.step):
            result.diagnostics = {**result.diagnostics, **alignment.measure(self.rule, x, y)}
        if self.reducer is not None:
            self.reducer.finish()
            self.buffers_differ = True
        for group in groups:
            self.optimizers[group].step()
            if group in self.schedulers:
                self.schedulers[group].step()
        return result

    def _align_now(self, groups: tuple[str, ...], step: int) -> bool:
        """Alignment metrics on this step? (``alignment_every``; passes training the forward weights; process 0,
        or every process with sync batch norm, whose forward pass needs them all)."""
        every = self.config.alignment_every
        return bool(every) and step % every == 0 and "forward" in groups and (
            self.parallel.is_main or self.config.sync_batchnorm)

    def _decide(self, step: int, last_save: float) -> tuple[bool, bool]:
        """After ``step`` steps of a pass: (stop on a signal?, a mid-pass checkpoint due?). A data-parallel
        job decides together every :data:`AGREE_EVERY` steps (one all-reduce of two flags); a checkpoint
        due by the step count needs no agreement."""
        every = self.checkpoint_every
        by_steps = every is not None and self.out is not None and every[0] == "steps" and step % every[1] == 0
        by_clock = every is not None and self.out is not None and every[0] == "minutes" and \
            time.perf_counter() - last_save >= every[1] * 60
        if not self.parallel.enabled:
            return self.stop.requested, by_steps or by_clock
        if step % AGREE_EVERY:
            return False, by_steps
        # host values on the CPU (gloo, also in CUDA jobs): no device synchronisation
        flags = self.parallel.sum(torch.tensor([float(self.stop.requested), float(by_clock)],
                                               dtype=torch.float64)).tolist()
        return flags[0] > 0, by_steps or flags[1] > 0

    def _interrupted(self, where: str) -> TrainingInterrupted:
        received = self.stop.requested
        checkpoint = str(self.folder.checkpoint) if self.out is not None else None
        return TrainingInterrupted(self.stop.signal_name or "SIGTERM", where, checkpoint,
                                   f"bioprop train --out {self.out} --resume", received)

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
        scales = self._adam_step_scales()
        if scales:
            row["adam_step_scale"] = scales
        if len(self.pass_rows) == 1:
            if "diagnostics" in last:
                row["diagnostics"] = last["diagnostics"]
        else:
            row["passes"] = self.pass_rows
        return row

    def _adam_step_scales(self) -> dict[str, float]:
        """Per weight, ``group/name``: :func:`~bioprop.training.optimizers.adam_step_scale`. The first
        epoch where ε shrinks some weight's steps below :data:`STEP_SCALE_WARNING` says so in the
        log, naming them."""
        names = {parameter: name for name, parameter in self.rule.named_parameters()}
        scales = {f"{group}/{name}": scale for group, optimizer in self.optimizers.items()
                  for name, scale in adam_step_scale(optimizer, names).items()}
        shrunk = {key: scale for key, scale in scales.items() if scale < STEP_SCALE_WARNING}
        if shrunk and not self.warned_step_scale and self.parallel.is_main:
            listed = ", ".join(f"{key} {scale:.2g}" for key, scale in list(shrunk.items())[:6])
            self.log(f"warning: Adam's eps shrinks the steps of {len(shrunk)} weight(s) below "
                     f"{STEP_SCALE_WARNING:g} of what their gradients ask (median sqrt(v)/(sqrt(v)+eps): {listed}): "
                     "their gradients are far below eps, and they barely train; a loss summed rather than "
                     "averaged over units (the rule's forward_reduction or inverse_reduction) or a smaller eps "
                     "for that group lifts them")
            self.warned_step_scale = True
        return scales

    def _agree_on_buffers(self) -> None:
        """Rank 0's buffers on every process, if a step changed them since the last time (before an
        evaluation or a checkpoint: one model scored on every shard, and saved)."""
        if self.buffers_differ:
            self.parallel.broadcast_buffers(self.rule)
            self.buffers_differ = False

    def _evaluate_splits(self) -> dict:
        self._agree_on_buffers()
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
        self._agree_on_buffers()
        if not self.folder.writes:
            return
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        position = None
        if next_pass is not None:
            position = {"pass": next_pass, "pass_rows": self.pass_rows, "state": self.pass_state.to_dict()}
        state = {"epoch": epochs_done, "position": position, "config": self.config.to_dict(),
                 "rule": self.rule.state_dict(),
                 "optimizers": {group: opt.state_dict() for group, opt in self.optimizers.items()},
                 "rng": rng, "metrics": self.metrics}
        if self.schedulers:
            state["schedulers"] = {group: scheduler.state_dict() for group, scheduler in self.schedulers.items()}
        self.folder.save(state, self.config, self.metrics)


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


def train(config: TrainConfig, out: str | Path | None = None, resume: bool = False, progress="auto",
          log=print, callbacks=(), progress_every: float = 30.0) -> dict:
    """Trains one run; returns ``{"rule": trained rule, "metrics": [...], "summary": {...}}``.

    ``progress``: ``"auto"`` (a bar on a terminal, a line every ``progress_every`` seconds in a log),
    ``"bar"``, ``"log"`` or ``"none"``; ``callbacks``: see :mod:`bioprop.training.callbacks`."""
    trainer = Trainer(config, out=out, resume=resume, progress=progress, log=log, callbacks=callbacks,
                      progress_every=progress_every)
    metrics = trainer.fit()
    return {"rule": trainer.rule, "metrics": metrics, "summary": summarize(metrics)}

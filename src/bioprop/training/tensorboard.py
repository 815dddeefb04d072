"""TensorBoard logging as a callback (``--tensorboard DIR``, ``Trainer(callbacks=[TensorBoard(DIR)])``).

TensorBoard is an optional extra (``pip install bioprop[tensorboard]``); the event files are written
by ``torch.utils.tensorboard.SummaryWriter`` on process 0. What goes in, by tag:

* every ``every_steps`` optimiser steps (x axis: the run's global step): ``step/loss`` (the task
  loss of the batch), ``step/local_loss/<name>`` (a rule's local losses, e.g. target propagation's
  per-layer losses) and ``step/lr/<group>`` (the learning rate of each parameter group);
* on every step that has them: the rule's diagnostics and the alignment angles with backprop
  (``step/update_angle/<layer>``, ``step/feedback_angle/<layer>``, ...; ``--alignment-every``);
* every epoch (x axis: the epoch): every number of the metrics row (``epoch/train_error``,
  ``epoch/val_loss``, ``epoch/test_error``, ...) and its diagnostics averaged over the epoch
  (``epoch/update_angle/<layer>``, ...; ``epoch/pass<k>/...`` per pass of an alternating schedule).

A resumed run continues the same event files; events written after the checkpoint it resumes from
(by a process that was killed) are dropped (``purge_step``), so the curves show each step once.
"""

from __future__ import annotations

from pathlib import Path

from bioprop.errors import BiopropError
from bioprop.training.callbacks import Callback, StepEvent


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is missing
        raise BiopropError("--tensorboard needs the tensorboard package: pip install 'bioprop[tensorboard]' "
                           "(or pip install tensorboard)") from None
    return SummaryWriter


class TensorBoard(Callback):
    """Writes the scalars listed in the module docstring to ``log_dir``."""

    def __init__(self, log_dir: str | Path, every_steps: int = 50):
        if not isinstance(every_steps, int) or every_steps < 1:
            raise BiopropError(f"TensorBoard every_steps must be an integer >= 1, got {every_steps!r}")
        self.writer_class = _summary_writer_class()  # fails at once, before any training, when missing
        self.log_dir, self.every_steps = Path(log_dir), every_steps
        self.writer = None

    def on_train_start(self, trainer) -> None:
        if trainer.parallel.is_main:
            passes, steps = len(trainer.rule.passes()), trainer.steps_per_pass()
            steps_done = (trainer.start_epoch * passes + trainer.start_pass) * steps + trainer.pass_state.step
            # a resumed run drops what a killed process wrote after its checkpoint (steps > steps_done)
            self.writer = self.writer_class(str(self.log_dir), purge_step=steps_done + 1 if steps_done else None)

    def on_step_end(self, trainer, step: StepEvent) -> None:
        if self.writer is None:
            return
        result, at = step.result, step.global_step
        if step.global_step % self.every_steps == 0:
            self.writer.add_scalar("step/loss", float(result.loss), at)
            for name, value in result.local_losses.items():
                self.writer.add_scalar(f"step/local_loss/{name}", float(value), at)
            for group, optimizer in trainer.optimizers.items():
                self.writer.add_scalar(f"step/lr/{group}", optimizer.param_groups[0]["lr"], at)
        for name, value in result.diagnostics.items():
            self.writer.add_scalar(f"step/{name}", float(value), at)

    def on_epoch_end(self, trainer, row: dict) -> None:
        if self.writer is None:
            return
        epoch = row["epoch"]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        for name, value in row.get("diagnostics", {}).items():
            self.writer.add_scalar(f"epoch/{name}", value, epoch)
        for index, pass_row in enumerate(row.get("passes", []), start=1):  # alternating schedules: per pass
            for name, value in pass_row.get("diagnostics", {}).items():
                self.writer.add_scalar(f"epoch/pass{index}/{name}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

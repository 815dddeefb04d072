"""Progress that fits where it goes: a bar on a terminal, a line every so often in a log.

``progress_callback(progress)`` turns the ``progress`` argument of ``Trainer`` / ``bioprop.train``
(and ``--progress`` of the CLI) into one of these callbacks:

* ``"auto"`` (or ``True``): a bar when standard error is a terminal, else log lines;
* ``"bar"``: a tqdm bar per pass, removed when the pass ends (the epoch line stays);
* ``"log"``: one line every ``every_seconds`` (or ``every_steps``) through the trainer's ``log``:
  ``epoch 3/100 pass 1/2 (inverse): step 120/469 (26%)  41.3 steps/s  loss 0.2314  pass ETA 0:08``,
  the loss averaged over the steps since the last line;
* ``"none"`` (or ``False``, ``None``): nothing but the epoch lines.

Only process 0 of a data-parallel job shows progress.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from bioprop.checks import check_choice
from bioprop.training.callbacks import Callback, StepEvent

PROGRESS_MODES = ("auto", "bar", "log", "none")
DEFAULT_EVERY_SECONDS = 30.0


def progress_callback(progress, every_seconds: float = DEFAULT_EVERY_SECONDS, every_steps: int | None = None,
                      stream=None) -> Callback | None:
    """The callback for a ``progress`` setting (see the module docstring); None for none."""
    if progress is True:
        progress = "auto"
    if progress is False or progress is None:
        progress = "none"
    check_choice(progress, "progress", PROGRESS_MODES)
    stream = stream if stream is not None else sys.stderr
    if progress == "auto":
        progress = "bar" if stream.isatty() else "log"
    if progress == "bar":
        return ProgressBar(stream)
    if progress == "log":
        return ProgressLog(every_seconds, every_steps)
    return None


def _label(step: StepEvent) -> str:
    label = f"epoch {step.epoch}/{step.epochs}"
    if step.passes > 1:
        label += f" pass {step.pass_index}/{step.passes} ({'+'.join(step.groups)})"
    return label


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar(Callback):
    """A tqdm bar per pass on process 0, closed at the pass end."""

    def __init__(self, stream=None):
        self.stream = stream
        self.bar = None

    def on_step_end(self, trainer, step: StepEvent) -> None:
        if not trainer.parallel.is_main:
            return
        if self.bar is None:
            self.bar = tqdm(total=step.steps, initial=step.step - 1, desc=_label(step), leave=False, file=self.stream)
        self.bar.update()

    def on_pass_end(self, trainer, epoch: int, pass_index: int, row: dict) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ProgressLog(Callback):
    """A line every ``every_seconds`` seconds (or every ``every_steps`` steps, when given) on process 0."""

    def __init__(self, every_seconds: float = DEFAULT_EVERY_SECONDS, every_steps: int | None = None, clock=time.monotonic):
        if every_steps is None and not every_seconds > 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds!r}")
        self.every_seconds, self.every_steps, self.clock = every_seconds, every_steps, clock
        self._reset(None)

    def _reset(self, now: float | None) -> None:
        self.last_time, self.last_step = now, None
        self.loss_sum, self.loss_count = None, 0

    def on_step_end(self, trainer, step: StepEvent) -> None:
        if not trainer.parallel.is_main:
            return
        now = self.clock()
        if self.last_time is None:  # the first step of a pass (or of a resumed one)
            self.last_time, self.last_step = now - step.seconds, step.step - 1
        loss = step.result.loss.detach().double()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss  # on the device: no sync
        self.loss_count += 1
        if self.every_steps is not None:
            due = step.step % self.every_steps == 0
        else:
            due = now - self.last_time >= self.every_seconds
        if due and step.step < step.steps:
            trainer.log(self.line(step, now))
            self.loss_sum, self.loss_count = None, 0
            self.last_time, self.last_step = now, step.step

    def line(self, step: StepEvent, now: float) -> str:
        rate = (step.step - self.last_step) / max(now - self.last_time, 1e-9)
        loss = float(self.loss_sum) / self.loss_count
        eta = (step.steps - step.step) / rate if rate > 0 else float("inf")
        return (f"{_label(step)}: step {step.step}/{step.steps} ({100 * step.step / step.steps:.0f}%)  "
                f"{rate:.1f} steps/s  loss {loss:.4f}  pass ETA {_duration(eta) if eta < 1e7 else '?'}")

    def on_pass_end(self, trainer, epoch: int, pass_index: int, row: dict) -> None:
        self._reset(None)


__all__ = ["PROGRESS_MODES", "ProgressBar", "ProgressLog", "progress_callback"]

"""Callbacks: code of your own that runs inside the training loop without editing it.

A callback is an object with any of the hooks below (subclass :class:`Callback` and override
what you need); pass a list to ``Trainer(callbacks=[...])`` or ``bioprop.train(callbacks=[...])``.
Every hook receives the :class:`~bioprop.training.trainer.Trainer` first (its ``rule``,
``config``, ``optimizers``, ``metrics``, ``out``, ``parallel``), and runs on every process of a
data-parallel job (check ``trainer.parallel.is_main`` to write only once).

* ``on_train_start(trainer)``: before the first step (after a resume: at the resumed position);
* ``on_step_end(trainer, step)``: after every optimiser step, with a :class:`StepEvent` (the rule's
  :class:`~bioprop.rules.StepResult`: the task loss, the output, every local loss and the
  diagnostics, as device tensors: reading one with ``float()`` synchronises with the device, so do
  it every N steps on a GPU);
* ``on_pass_end(trainer, epoch, pass_index, row)``: after each pass over the training data (one per
  epoch, two for alternating target propagation), with the pass's running metrics;
* ``on_epoch_end(trainer, row)``: after an epoch's evaluation, once its checkpoint is written,
  with the row appended to ``metrics.jsonl``. An exception raised here stops training, the run
  resumable (a search's pruner does this);
* ``on_train_end(trainer, metrics)``: after the last epoch (not after an interruption or a
  divergence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from bioprop.rules import StepResult


@dataclass
class StepEvent:
    """One optimiser step as the callbacks see it. Counts are 1-based: ``step`` of ``steps`` in pass
    ``pass_index`` of ``passes`` in ``epoch`` of ``epochs``; ``global_step`` counts every step of the
    run across passes and epochs (as a resumed run continues it)."""

    epoch: int
    epochs: int
    pass_index: int
    passes: int
    step: int
    steps: int
    global_step: int
    groups: tuple[str, ...]
    batch_size: int
    result: "StepResult"
    seconds: float  #: since the pass started (or was resumed)


class Callback:
    """Does nothing at every hook; override the ones you need."""

    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: StepEvent) -> None:
        pass

    def on_pass_end(self, trainer, epoch: int, pass_index: int, row: dict) -> None:
        pass

    def on_epoch_end(self, trainer, row: dict) -> None:
        pass

    def on_train_end(self, trainer, metrics: list[dict]) -> None:
        pass


class EpochFunction(Callback):
    """A plain function of each epoch's metrics row as a callback (``Trainer(on_epoch=...)``)."""

    def __init__(self, function: Callable[[dict], None]):
        self.function = function

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.function(row)


class CallbackList(Callback):
    """Calls each hook of every callback in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise TypeError(f"callback {callback!r} has none of the hooks {', '.join(HOOKS)}")

    def on_train_start(self, trainer) -> None:
        self._call("on_train_start", trainer)

    def on_step_end(self, trainer, step: StepEvent) -> None:
        self._call("on_step_end", trainer, step)

    def on_pass_end(self, trainer, epoch: int, pass_index: int, row: dict) -> None:
        self._call("on_pass_end", trainer, epoch, pass_index, row)

    def on_epoch_end(self, trainer, row: dict) -> None:
        self._call("on_epoch_end", trainer, row)

    def on_train_end(self, trainer, metrics: list[dict]) -> None:
        self._call("on_train_end", trainer, metrics)

    def close(self) -> None:
        """Closes the callbacks that hold something open (a progress bar, an event file)."""
        for callback in self.callbacks:
            if callable(getattr(callback, "close", None)):
                callback.close()

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)


HOOKS = ("on_train_start", "on_step_end", "on_pass_end", "on_epoch_end", "on_train_end")

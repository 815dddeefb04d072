"""Stopping keeps the work: SIGINT (Ctrl-C) and SIGTERM (sent by SLURM, Kubernetes and torchrun
before they kill) become a request to stop.

While :class:`StopRequests` is active, the first SIGINT or SIGTERM only sets ``signal_name``;
the trainer finishes the step it is in, writes a checkpoint at that position, and raises
:class:`TrainingInterrupted`, whose message says where it stopped and how to resume. A second
signal stops at once (Python's ``KeyboardInterrupt``), losing the work since the last
checkpoint. SIGUSR1 is a stop request that never escalates: ``bioprop reproduce --jobs N`` forwards
it to its worker processes when it is stopped (they may have had the terminal's Ctrl-C as well),
and SLURM sends it ahead of a time limit with ``--signal=USR1@SECONDS``. In a data-parallel job the processes decide together (``Trainer`` asks them every
few steps, :data:`AGREE_EVERY`), so every rank stops at the same step even when only one was
signalled. Handlers can only be installed from the main thread; elsewhere signals keep their
default behaviour.
"""

from __future__ import annotations

import signal
import threading

#: in a data-parallel job, the processes agree on stopping (and on a checkpoint due by the clock)
#: every this many steps: one tiny all-reduce, instead of a host synchronisation at every step
AGREE_EVERY = 20

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: a request to stop that a second one does not turn into stopping at once
GENTLE_SIGNALS = (signal.SIGUSR1,) if hasattr(signal, "SIGUSR1") else ()
_GENTLE_NAMES = {number.name for number in GENTLE_SIGNALS}


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint (``checkpoint``; None: no run folder,
    nothing written). ``exit_code`` is the shell's 128 + signal number (130 for SIGINT, 143 for
    SIGTERM); ``resume`` the command that continues the work. A ``KeyboardInterrupt``, so no
    ``except Exception`` swallows it."""

    def __init__(self, signal_name: str, where: str, checkpoint: str | None = None, resume: str | None = None,
                 received: bool = True):
        super().__init__(signal_name, where, checkpoint, resume, received)
        self.signal_name, self.where, self.checkpoint, self.resume = signal_name, where, checkpoint, resume
        self.received = received  #: False: another process of a data-parallel job was signalled
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGINT))

    def with_resume(self, resume: str) -> "TrainingInterrupted":
        """The same stop, resumed by another command (``bioprop reproduce`` resumes all its runs)."""
        return TrainingInterrupted(self.signal_name, self.where, self.checkpoint, resume, self.received)

    def __str__(self) -> str:
        cause = self.signal_name if self.received else "a signal to another process"
        if self.checkpoint is None:
            return f"stopped by {cause} {self.where}; nothing saved (no run folder: --out)"
        return f"stopped by {cause} {self.where}; checkpoint written to {self.checkpoint}; continue with `{self.resume}`"


class StopRequests:
    """A context manager that turns the first SIGINT/SIGTERM into ``signal_name`` (see the module)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS + GENTLE_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number, frame) -> None:
        if number in GENTLE_SIGNALS:
            self.signal_name = self.signal_name or signal.Signals(number).name
            return
        if self.signal_name is not None and self.signal_name not in _GENTLE_NAMES:  # the second signal: stop now
            self.__exit__()
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name

"""A run's folder: the checkpoint to resume from, and the files written as training goes.

``out/config.json`` (the config, with what was resolved at run time), ``out/checkpoint.pt``
(everything needed to continue exactly), ``out/metrics.jsonl`` (a row per epoch) and
``out/results.json`` (the summary). Every file is written atomically
(:mod:`bioprop.training.checkpoint`); only process 0 of a data-parallel job writes.

While a process trains the run it holds an exclusive lock on ``out/.lock`` (``flock``, released when
the process ends, however it ends): a second process on the same folder (two shells, two
``bioprop reproduce`` on one runs folder) is refused by name instead of overwriting the first one's
checkpoint and metrics.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from bioprop.errors import BiopropError
from bioprop.rules import RULES
from bioprop.training.checkpoint import load_checkpoint, remove_stale_temporaries, save_json, save_jsonl, save_torch
from bioprop.training.config import TrainConfig
from bioprop.training.results import summarize

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"

#: settings a resumed run may change: none changes the parameters
_UNCOMPARED = ("epochs", "device", "checkpoint_every", "alignment_every")


class RunFolder:
    """``out`` (None: a run that writes nothing) as seen by process ``is_main`` or another one."""

    def __init__(self, out: str | Path | None, is_main: bool = True):
        self.path = Path(out) if out is not None else None
        self.is_main = is_main
        self._lock = None  # the open lock file while this process holds it

    def claim(self) -> None:
        """Holds the folder's lock (see the module's docstring) until :meth:`release`, or refuses with
        a :class:`~bioprop.errors.BiopropError` naming the process that holds it."""
        if not self.writes or self._lock is not None:
            return
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise BiopropError(f"{self.path} is being trained by another process{f' ({holder})' if holder else ''}: "
                               f"wait for it to finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    @property
    def writes(self) -> bool:
        return self.path is not None and self.is_main

    @property
    def checkpoint(self) -> Path | None:
        return self.path / CHECKPOINT if self.path is not None else None

    def find_checkpoint(self, resume: bool, config: TrainConfig, log=print) -> dict | None:
        """The checkpoint to continue from (``resume``), or None to start afresh. An existing run
        without ``resume``, or a resumed one whose config changed, is an error naming what to do."""
        if self.path is None:
            if resume:
                raise BiopropError("--resume needs --out, the run folder to continue")
            return None
        if self.path.exists() and not self.path.is_dir():
            raise BiopropError(f"--out {self.path} is a file; expected a run folder (new or existing)")
        self.claim()  # before anything is read or removed: another process may be writing here
        if self.path.is_dir() and self.is_main:
            remove_stale_temporaries(self.path)  # of a process killed while writing
        if not self.checkpoint.exists():
            if resume and self.is_main:  # killed before its first checkpoint, or never run
                log(f"no checkpoint in {self.path} yet: starting the run from the beginning")
            return None
        if not resume:
            raise BiopropError(f"{self.path} already holds a run ({CHECKPOINT}); pass --resume to continue it "
                               f"or choose another --out")
        checkpoint = load_checkpoint(self.checkpoint)
        # through from_dict both ways: a run saved by an older version gets the new fields' defaults
        saved = comparable(TrainConfig.from_dict(checkpoint["config"]).to_dict())
        current = comparable(config.to_dict())
        changed = [key for key in current if saved.get(key) != current[key]]
        if changed:
            raise BiopropError(f"--resume: the config differs from the saved run in {', '.join(changed)}")
        return checkpoint

    def write_config(self, run_config: dict) -> None:
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
            save_json(run_config, self.path / "config.json")

    def save(self, state: dict, config: TrainConfig, metrics: list[dict]) -> None:
        """The checkpoint, then the metrics files (so the metrics never run ahead of it)."""
        if self.writes:
            save_torch(state, self.checkpoint)
            self.write_metrics(config, metrics)

    def write_metrics(self, config: TrainConfig, metrics: list[dict], **status) -> None:
        """``metrics.jsonl`` and ``results.json`` (with ``status`` entries, e.g. a divergence)."""
        if self.writes:
            save_jsonl(metrics, self.path / "metrics.jsonl")
            save_json({"config": config.to_dict(), **summarize(metrics), **status}, self.path / "results.json")


def comparable(config: dict) -> dict:
    """The settings a resumed run must share with the saved one: all but the epoch budget and
    where things run or are read from (device, data folder, loader workers, JPEG decoder, checkpoint
    interval)."""
    config = {key: value for key, value in config.items() if key not in _UNCOMPARED}
    groups = RULES.get(config["rule"]).groups  # settings of groups the rule does not train change nothing
    config["optimizers"] = {group: adam for group, adam in config["optimizers"].items() if group in groups}
    config["data"] = {key: value for key, value in config["data"].items()
                      if key not in ("data_dir", "num_workers", "decoder")}  # decoders give the same pixels
    return config

"""Atomic file writes: a crash mid-write never leaves a truncated checkpoint or results file.

Each file is written to a temporary file in the same folder and then moved into place. The
temporary file is created private (``tempfile.mkstemp`` makes it 0600); before the move it gets
the mode any file the user writes gets, ``0o666 & ~umask``, so run folders stay readable by the
user's group (or everyone) exactly as their umask says.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from bioprop.errors import BiopropError


def write_atomically(path: Path, write) -> None:
    """Calls ``write(stream)`` on a binary stream that becomes ``path`` only once it is complete
    (``torch.save``, a figure's ``savefig``, ...)."""
    path = Path(path)
    try:
        _write_replace(path, write)
    except OSError as error:  # a full disk, a read-only folder, ...: the previous file is still intact
        raise BiopropError(f"could not write {path}: {error.strerror or error}") from None


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux
    ``/proc/self/status``); elsewhere set and restored at once, under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def _write_replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            if hasattr(os, "fchmod"):
                os.fchmod(stream.fileno(), new_file_mode())
            else:  # Windows: only the read-only bit means anything
                os.chmod(temporary, new_file_mode())
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    write_atomically(path, lambda stream: torch.save(obj, stream))


def save_json(obj: Any, path: Path) -> None:
    write_atomically(path, lambda stream: stream.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_text(text: str, path: Path) -> None:
    write_atomically(path, lambda stream: stream.write(text.encode()))


def save_csv(rows: list[dict], fieldnames: list[str], path: Path) -> None:
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    save_text(table.getvalue(), path)


def save_jsonl(rows: list[dict], path: Path) -> None:
    write_atomically(path, lambda stream: stream.write("".join(json.dumps(row) + "\n" for row in rows).encode()))


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by the trainer, or a :class:`BiopropError` naming the file."""
    try:
        checkpoint = load_torch(path)
    except Exception as error:  # noqa: BLE001 - truncated, garbage, empty, unreadable: all the same to the user
        raise BiopropError(f"checkpoint {path} cannot be read ({type(error).__name__}: {str(error)[:200]}); "
                           f"it is not a bioprop checkpoint or it is damaged. Move it away to start the run "
                           f"afresh") from None
    required = {"epoch", "config", "rule", "optimizers", "rng", "metrics"}
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        raise BiopropError(f"checkpoint {path} is not a bioprop training checkpoint (expected the keys "
                           f"{', '.join(sorted(required))})")
    return checkpoint


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Deletes the temporary files of atomic writes that a killed process left in ``folder``."""
    removed = []
    for temporary in Path(folder).glob(".*.tmp"):
        temporary.unlink(missing_ok=True)
        removed.append(temporary)
    return removed

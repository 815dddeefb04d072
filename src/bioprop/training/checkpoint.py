"""Atomic file writes: a crash mid-write never leaves a truncated checkpoint or results file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda stream: torch.save(obj, stream))


def save_json(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda stream: stream.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_jsonl(rows: list[dict], path: Path) -> None:
    _atomic_write(path, lambda stream: stream.write("".join(json.dumps(row) + "\n" for row in rows).encode()))


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)

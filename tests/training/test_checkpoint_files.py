"""Run files are created like any file the user writes: mode 0o666 less the umask (the atomic
writer's temporary file is private, 0600, until it is given that mode), never left behind."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from bioprop.training import checkpoint
from bioprop.training.checkpoint import current_umask, new_file_mode, save_json, save_jsonl, save_torch

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture
def umask():
    """Sets the process umask for a test and restores it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mask):
    umask(mask)
    save_json({"a": 1}, tmp_path / "results.json")
    save_jsonl([{"epoch": 1}], tmp_path / "metrics.jsonl")
    save_torch({"epoch": 1}, tmp_path / "checkpoint.pt")
    with open(tmp_path / "plain.txt", "w") as plain:  # what any other file the user writes gets
        plain.write("x")
    expected = 0o666 & ~mask
    for name in ("results.json", "metrics.jsonl", "checkpoint.pt", "plain.txt"):
        assert mode(tmp_path / name) == expected, (name, oct(mode(tmp_path / name)), oct(expected))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl", "plain.txt",
                                                         "results.json"]  # no temporaries left


def test_group_readable_run_files_with_the_usual_umask(tmp_path, umask):
    umask(0o022)
    save_json({}, tmp_path / "config.json")
    assert mode(tmp_path / "config.json") & stat.S_IRGRP and mode(tmp_path / "config.json") & stat.S_IROTH


def test_overwriting_keeps_following_the_umask(tmp_path, umask):
    umask(0o077)
    save_json({"a": 1}, tmp_path / "results.json")
    assert mode(tmp_path / "results.json") == 0o600
    umask(0o002)
    save_json({"a": 2}, tmp_path / "results.json")
    assert mode(tmp_path / "results.json") == 0o664


def test_current_umask_reads_without_changing_it(umask):
    for mask in (0o022, 0o007, 0o077):
        umask(mask)
        assert current_umask() == mask
        assert os.umask(mask) == mask  # unchanged by reading it
        assert new_file_mode() == 0o666 & ~mask


def test_umask_fallback_without_proc(monkeypatch, umask):
    """Where /proc/self/status does not exist (macOS, BSD) the umask is set and restored at once."""
    umask(0o027)
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    results = []
    threads = [threading.Thread(target=lambda: results.append(checkpoint.current_umask())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0o027] * 8
    assert os.umask(0o027) == 0o027

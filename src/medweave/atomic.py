"""Crash-safe writes: a file is written under a temporary name in its folder, flushed to disk
(fsync), then renamed over the final name, and the folder is synced; a process killed at any point
leaves either the old file or the new one, never a half-written one.

A folder of several files (a model: weights + config) is complete when its *marker* file exists:
``begin_folder`` removes the marker before anything else is replaced, the files are written, and
the marker is written last (``write_text``). A reader that finds no marker takes the folder for
incomplete. ``file_sha256`` lets the marker record the other files' hashes, so that a reader also
catches a file changed after the marker was written.

Fault testing: with ``MEDWEAVE_FAULT_LOG=FILE`` every crash point (a temporary file written but not
renamed, a file renamed into place, a marker removed) appends a line to FILE; with
``MEDWEAVE_FAULT_KILL=N`` the process sends itself SIGKILL at the N-th crash point. The fault tests
run real commands with these to kill them at every kind of point (tests/test_atomic.py).
"""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from pathlib import Path
from typing import Callable


_crash_points = 0


def crash_point(what: str) -> None:
    """A point where a crash must leave a consistent state; a no-op unless fault testing is on."""
    global _crash_points
    log, kill = os.environ.get("MEDWEAVE_FAULT_LOG"), os.environ.get("MEDWEAVE_FAULT_KILL")
    if not (log or kill):
        return
    _crash_points += 1
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{_crash_points}\t{what}\n")
    if kill and _crash_points == int(kill):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    """A temporary name beside ``path`` (hidden, unique per call, ending in ``.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` (a library's own save function), then fsync and rename to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        crash_point(f"written, not renamed: {path.name}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    crash_point(f"renamed: {path.name}")
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    def put(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return write_with(path, put)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


def begin_folder(folder: str | Path, marker: str) -> Path:
    """Make ``folder`` and remove its completeness ``marker`` (durably) before its files change."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / marker).exists():
        (folder / marker).unlink()
        _fsync_dir(folder)
        crash_point(f"marker removed: {folder.name}/{marker}")
    for stale in folder.glob(".*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    return folder


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""Durable file writes and a cross-process lock (teacher-output caches, teachers, the tracking store)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    # Makes the renames themselves durable; some filesystems refuse to open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def private_tmp(path: Path) -> Path:
    """A temporary file beside ``path`` that no other process or write uses, renamed into place when whole."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = private_tmp(path)
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def build_lock(path: Path):
    """Serialises builders of the same cache across processes, so a second one waits and reuses."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path.with_suffix(".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

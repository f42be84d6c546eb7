"""One tier-migrate at a time per state dir: an `flock` that the kernel drops when its holder dies.

A pid file alone goes stale after `kill -9`; a lock on an open file does not: the kernel releases
it with the process, so a crashed run never blocks the next one. The pid written into the file is
only for the message a second run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipelines.lifecycle.errors import MigrationLocked


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold the lock at `path` for the block; raise MigrationLocked at once if another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise MigrationLocked(
                f"another nova tier-migrate (pid {holder}) is running on this state dir ({path})",
                hint="wait for it to finish; a crashed run releases the lock by itself",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

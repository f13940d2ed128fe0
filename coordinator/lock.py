"""One coordinator per state directory: an exclusive ``flock`` held for the process's lifetime.

Two coordinators on one ``state_dir`` would interleave rounds in one SQLite file and one model
store. The lock is advisory and released by the kernel when the holder dies (kill -9 included), so
a restart after a crash never finds a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StateDirInUse(RuntimeError):
    """Another live coordinator holds this state directory."""


class StateDirLock:
    """Exclusive lock on ``<state_dir>/coordinator.lock``; the file records the holder's pid."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "coordinator.lock"
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        """Take the lock or raise ``StateDirInUse`` naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirInUse(f"another coordinator (pid {holder}) is running on {self.path.parent}; "
                                "stop it first or give this one its own state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

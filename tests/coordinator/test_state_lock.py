"""One coordinator per state directory; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedquilt.coordinator.lock import StateDirInUse, StateDirLock


def test_second_holder_is_refused_until_release(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path).acquire()
    with pytest.raises(StateDirInUse, match=f"pid {os.getpid()}"):
        StateDirLock(tmp_path).acquire()
    first.release()
    first.release()  # idempotent
    StateDirLock(tmp_path).acquire().release()


def test_lock_of_a_killed_process_is_free_again(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from fedquilt.coordinator.lock import StateDirLock; "
            f"StateDirLock(Path({str(tmp_path)!r})).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        with pytest.raises(StateDirInUse, match=f"pid {proc.pid}"):
            StateDirLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            StateDirLock(tmp_path).acquire().release()
            break
        except StateDirInUse:
            assert time.monotonic() < deadline, "the kernel did not release a dead holder's lock"
            time.sleep(0.05)

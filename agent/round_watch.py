"""Watch the coordinator while local training runs, so a closed round stops training within seconds.

During ``TRAIN`` the coordinator gives a site no new step unless the round ends for it: discarded
(``admin stop`` pauses the federation and discards the round in flight), past its training deadline,
or the federation shut down. ``RoundWatch`` long-polls ``WaitForTask`` on a daemon thread with the
training step as ``after_step``; any newer step sets the event that the trainer checks before every
batch. The polls also keep the site "online" on the coordinator while it trains. The main loop
then polls again and receives the same newest step (the coordinator hands out its newest
assignment, so nothing the watcher saw is lost).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

log = logging.getLogger("fedquilt.agent")


class RoundWatch:
    """``with RoundWatch(transport, step) as stop:`` — ``stop`` is set once the coordinator moves past ``step``."""

    def __init__(self, transport: Any, step: int, poll_seconds: float = 5.0) -> None:
        self.transport, self.step, self.poll_seconds = transport, step, poll_seconds
        self.stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="round-watch", daemon=True)

    def __enter__(self) -> threading.Event:
        self._thread.start()
        return self.stop

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._done.set()  # the thread ends after its current poll; nobody waits for it

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                task = self.transport.wait(self.step, seconds=self.poll_seconds)
            except Exception as exc:  # the main loop will see the same failure and deal with it
                log.debug("round watch: %s", exc)
                if self._done.wait(self.poll_seconds):
                    return
                continue
            if task.step > self.step:
                if not self._done.is_set():
                    log.info("the coordinator moved on (%s); stopping local training", task.message or "new step")
                    self.stop.set()
                return

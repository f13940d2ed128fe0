"""Wake-ups for long polls on the server's event loop: a long-polling site costs a coroutine, not a thread.

The round driver (a thread) calls ``changed()`` after each tick; when any assignment changed since the
last call, every waiting long poll is woken on the event loop and re-reads its site's assignment.
"""

from __future__ import annotations

import asyncio
from typing import Callable


class Wakeups:
    """One asyncio event per generation of assignments, replaced each time it fires."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counter: Callable[[], int]) -> None:
        """Fire on ``loop`` whenever ``counter()`` (the orchestrator's step counter) has moved."""
        self.loop, self.counter = loop, counter
        self._seen = counter()
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next change sets (take it before reading state, then wait on it)."""
        return self._event

    def changed(self, force: bool = False) -> None:
        """Thread-safe: wake every waiter if the counter moved (or ``force``)."""
        now = self.counter()
        if force or now != self._seen:
            self._seen = now
            self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


async def wait_for_change(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds pass (no error either way)."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass

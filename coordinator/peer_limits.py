"""Per-peer budgets of the async edge: calls in flight per certificate, one upload stream per site.

The gRPC server's own ``maximum_concurrent_rpcs`` caps calls across every peer; these budgets stop one
certificate from taking that whole cap. Everything here runs on the server's event loop (one thread),
so plain counters suffice. A call over a budget is refused with ``OverLimit`` (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .errors import TooLarge


class OverLimit(TooLarge):
    """A peer has too many calls (or a second upload stream) in flight."""


class PeerLimits:
    """Counts calls in flight per peer key (the certificate's subject) and upload streams per site."""

    def __init__(self, max_calls_per_peer: int) -> None:
        """Allow ``max_calls_per_peer`` concurrent calls from one certificate."""
        self.max_calls = max_calls_per_peer
        self._calls: dict[str, int] = {}
        self._uploads: set[str] = set()

    @contextmanager
    def call(self, peer: str, method: str) -> Iterator[None]:
        """Hold one of ``peer``'s call slots for the body of the ``with``."""
        held = self._calls.get(peer, 0)
        if held >= self.max_calls:
            raise OverLimit(f"{peer} already has {held} calls in flight (limit {self.max_calls}); {method} refused")
        self._calls[peer] = held + 1
        try:
            yield
        finally:
            left = self._calls[peer] - 1
            if left:
                self._calls[peer] = left
            else:
                del self._calls[peer]

    @contextmanager
    def upload(self, site: str) -> Iterator[None]:
        """Hold ``site``'s only upload slot."""
        if site in self._uploads:
            raise OverLimit(f"{site} already has an upload stream open; one at a time")
        self._uploads.add(site)
        try:
            yield
        finally:
            self._uploads.discard(site)

    def in_flight(self) -> int:
        """Calls in flight across every peer."""
        return sum(self._calls.values())

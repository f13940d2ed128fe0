"""Enrolled sites, the newest step of each, and the long poll: the only threaded part of the round.

Theory of operation
-------------------
Sites pull work. Every enrolled site has one ``SiteRecord`` holding its newest ``Assignment``; the
round machine's ``Assign`` actions replace it (``deliver``), numbering steps from a counter that only
grows, even across coordinator restarts (it starts at the wall clock in microseconds), so a site never
sees a step go back. A site's ``wait`` (thread per poll) or ``poll`` (the async edge, at least once a
second) returns the assignment once it is newer than the step the site last saw.

Liveness: the long poll is the site's heartbeat. ``last_seen`` is refreshed every second while a poll
lasts and not at all once the caller is gone (``alive()`` false, or ``gone()`` from the edge), so a
site turns offline ``online_window`` seconds after its connection did. A site that took its SHUTDOWN
is ``left``: offline at once.

Every method here runs under ``lock`` (re-entrant: the facade holds it around whole calls); ``wake``
wakes threaded long polls after a change.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Protocol

from .errors import NotEnrolled, StaleStep
from .round_record import Assign
from .steps import Assignment, SiteId, Step


@dataclass
class SiteRecord:
    """What the coordinator knows about one enrolled site."""

    site: SiteId
    num_samples: int
    rank: int
    alpha: float
    last_seen: float
    assignment: Assignment = field(default_factory=lambda: Assignment(step=0, kind=Step.IDLE))
    left: bool = False
    """The site took its SHUTDOWN (its agent exits): shown offline at once, not after the online window."""
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """The target modules and (d, k) the site declared."""


class Roster(Protocol):
    """What the round machine reads about the enrolled sites (``Mailbox`` is the implementation)."""

    @property
    def sites(self) -> Mapping[SiteId, SiteRecord]:
        """Every enrolled site."""
        ...

    def online_sites(self, now: float) -> list[SiteId]:
        """The sites polling now, sorted."""
        ...


class Mailbox:
    """Every enrolled site's newest step, handed out by long poll (a ``Roster``)."""

    def __init__(self, clock: Callable[[], float], online_window: float) -> None:
        self.clock = clock
        self.online_window = online_window
        """Seconds after its last poll that a site counts as offline (``FederationConfig.offline_after``)."""
        self.sites: dict[SiteId, SiteRecord] = {}
        self.lock = threading.Condition(threading.RLock())
        self._step = time.time_ns() // 1000  # grows across restarts, so agents never see a step go back

    # ---- membership ---------------------------------------------------------------------------

    def enrol(self, record: SiteRecord) -> int:
        """Add (or replace) a site's record, keeping its newest assignment; returns that step."""
        old = self.sites.get(record.site)
        if old is not None:
            record.assignment = old.assignment
        self.sites[record.site] = record
        return record.assignment.step

    def record(self, site: SiteId) -> SiteRecord:
        """The site's record (NotEnrolled if it has not said Hello to this coordinator)."""
        record = self.sites.get(site)
        if record is None:
            raise NotEnrolled(f"{site} has not said Hello to this coordinator (it may have restarted)")
        return record

    def online(self, record: SiteRecord, now: float) -> bool:
        """Polled within ``online_window`` seconds (a polling site refreshes every second)."""
        return now - record.last_seen < self.online_window

    def online_sites(self, now: float) -> list[SiteId]:
        """The sites polling now, sorted."""
        return sorted(s for s, r in self.sites.items() if self.online(r, now))

    # ---- the long poll ------------------------------------------------------------------------

    def wait(self, site: SiteId, after_step: int, timeout: float, alive: Callable[[], bool] | None = None) -> Assignment:
        """Long poll: the site's newest assignment once it is newer than ``after_step`` (IDLE at the timeout).

        ``last_seen`` is refreshed every second while it lasts, unless ``alive`` (the RPC's ``is_active``)
        says the caller has gone, so a dead site turns offline ``online_window`` seconds later instead of
        after its whole poll.
        """
        deadline = time.monotonic() + timeout
        with self.lock:
            record = self.record(site)
            while record.assignment.step <= after_step:
                if alive is not None and not alive():
                    return Assignment(step=after_step, kind=Step.IDLE)
                record.last_seen = self.clock()
                left = deadline - time.monotonic()
                if left <= 0:
                    return Assignment(step=after_step, kind=Step.IDLE)
                self.lock.wait(min(left, 1.0))
                record = self.record(site)
            return self._handed(record)

    def poll(self, site: SiteId, after_step: int) -> Assignment | None:
        """The site's newest assignment if it is newer than ``after_step``, else None (never blocks)."""
        with self.lock:
            record = self.record(site)
            record.last_seen = self.clock()
            if record.assignment.step <= after_step:
                return None
            return self._handed(record)

    def _handed(self, record: SiteRecord) -> Assignment:
        record.last_seen = self.clock()
        record.left = record.assignment.kind is Step.SHUTDOWN
        return record.assignment

    def gone(self, site: SiteId) -> None:
        """The site's long poll ended because its connection did: it is offline now, not ``online_window`` later."""
        with self.lock:
            record = self.sites.get(site)
            if record is not None:
                record.last_seen = min(record.last_seen, self.clock() - self.online_window)

    def wake(self) -> None:
        """Wake threaded long polls so they re-read their assignment."""
        with self.lock:
            self.lock.notify_all()

    @property
    def step_counter(self) -> int:
        """Grows whenever any site is given a new assignment (the async edge wakes long polls on change)."""
        return self._step

    # ---- delivering the round machine's actions -----------------------------------------------

    def deliver(self, actions: Iterable[Assign]) -> None:
        """Give each named site its new step (sites that are no longer enrolled are skipped)."""
        for action in actions:
            record = self.sites.get(action.site)
            if record is None:
                continue
            self._step += 1
            record.assignment = Assignment(step=self._step, kind=action.kind, round_id=action.round_id,
                                           phase=action.phase, spec=action.spec, payload=action.payload,
                                           message=action.message)

    def assign_all(self, kind: Step, message: str) -> None:
        """Give every enrolled site ``kind`` unless it already has it (SHUTDOWN at the end)."""
        self.deliver([Assign(s, kind, message=message) for s, r in self.sites.items() if r.assignment.kind is not kind])

    def expect(self, site: SiteId, step: int, kind: Step) -> None:
        """StaleStep unless ``site``'s newest assignment is ``step`` of ``kind``."""
        current = self.record(site).assignment
        if current.step != step or current.kind is not kind:
            if current.step > step:
                raise StaleStep(f"step {step} ({kind.value}) is superseded by step {current.step} ({current.kind.value})")
            raise StaleStep(f"{site} was not asked for {kind.value} at step {step}")

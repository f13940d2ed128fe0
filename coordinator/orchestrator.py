"""The coordinator's round, as the RPC edge and the server see it: a thin, thread-safe facade.

Theory of operation
-------------------
Sites pull work: each RPC from a site records a fact (hello, trained, upload, stage message) and ``wait``
or ``poll`` hands the site its newest ``Assignment``. A single driver calls ``tick()`` (every fraction of
a second) and every transition happens there: aggregation, publishing and each secure-sum stage change.
What an RPC does itself is bounded by its own input: an upload is checked and added to the phase's
running sum as it arrives (memory of one vector). The parts, each in its own module:

- ``mailbox.Mailbox``: enrolled sites, their newest steps, the long poll and liveness (the only threaded part);
- ``cohort.Cohort``: admission at Hello, who is online with the federation's targets, sampling, the spec;
- ``round_machine.RoundMachine``: the round's stages and transitions (events in, ``Assign`` actions out);
- ``phase.Phase``: one phase's collection (``collect.PlainCollector`` / ``IndividualCollector``,
  ``secure_sum.SecureSum``);
- ``ledger.Ledger``: the global state, versions, history and the site-level privacy account;
- ``round_status.snapshot``: the status document.

Every public method here takes the mailbox's lock, calls into the parts and hands the machine's actions
to the mailbox. History, known sites and the running flag come back from the state database
(``state.restore``) through the constructor.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

from ..strategies.base import Aggregate
from ..strategies.rule import IndividualRule, Rule
from .cohort import Cohort
from .collect import plain_phase
from .config import FederationConfig
from .errors import StaleStep
from .ledger import Ledger
from .mailbox import Mailbox, SiteRecord
from .phase import Layout, PhaseFactory
from .round_checks import federation_shapes
from .round_machine import RoundMachine
from .round_record import Events, Publisher, RoundObserver, RoundRecord, RoundStage, TrainReport
from .round_status import KnownSite, snapshot
from .steps import Assignment, SiteId, Step

__all__ = ["Orchestrator", "Publisher", "RoundObserver", "RoundRecord", "RoundStage", "SiteRecord"]

log = logging.getLogger("fedquilt.coordinator.rounds")


class Orchestrator:
    """Runs rounds for one federation; thread-safe; driven by ``tick()``."""

    def __init__(
        self,
        *,
        rule: Rule | IndividualRule,
        fed: FederationConfig,
        secure: bool,
        publisher: Publisher,
        glob: Aggregate | None,
        rounds_done: int,
        global_version: str | None,
        secure_sum_factory: PhaseFactory | None = None,
        observer: RoundObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        online_window: float | None = None,
        site_noise: Mapping[str, float] | None = None,
        history: Sequence[Mapping[str, object]] = (),
        known_sites: Sequence[Mapping[str, Any]] = (),
        running: bool = True,
    ) -> None:
        if secure and secure_sum_factory is None:
            raise ValueError("secure aggregation needs a secure_sum_factory (secure_sum.make_factory)")
        self.rule, self.fed, self.secure, self.clock = rule, fed, secure, clock
        self.events = Events(observer)
        self.mailbox = Mailbox(clock, fed.offline_after if online_window is None else online_window)
        self.known_sites: dict[str, KnownSite] = {
            str(s["site"]): (dict(s), clock() - float(s.get("last_seen_seconds_ago") or 0.0)) for s in known_sites}
        """Sites enrolled before a restart (status entry, last seen on ``clock``), shown offline until they say Hello."""
        self.cohort = Cohort(fed, federation_shapes(fed, glob), list(self.known_sites), fed.seed)
        self.ledger = Ledger(fed=fed, secure=secure, publisher=publisher, events=self.events, glob=glob,
                             global_version=global_version, rounds_done=rounds_done, history=history,
                             site_noise=site_noise, phases=rule.phases if isinstance(rule, Rule) else 1)
        self.machine = RoundMachine(rule=rule, fed=fed, secure=secure, roster=self.mailbox, cohort=self.cohort,
                                    ledger=self.ledger, phases=secure_sum_factory if secure_sum_factory and secure
                                    else plain_phase, events=self.events, site_noise=site_noise, running=running)
        self._cond = self.mailbox.lock
        if global_version is not None:
            log.info("resuming federation %s after %s (round %d of %d published)", fed.name, global_version,
                     rounds_done, fed.rounds, extra={"version": global_version})

    # ---- views kept for the server, the status page and the tests -----------------------------

    @property
    def sites(self) -> dict[SiteId, SiteRecord]:
        """Enrolled sites."""
        return self.mailbox.sites

    @property
    def current(self) -> RoundRecord | None:
        """The round in flight."""
        return self.machine.current

    @property
    def running(self) -> bool:
        """Whether the federation opens rounds."""
        return self.machine.running

    @property
    def shapes(self) -> dict[str, tuple[int, int]] | None:
        """The federation's targets (None until fixed)."""
        return self.cohort.shapes

    @property
    def glob(self) -> Aggregate | None:
        """The current global state."""
        return self.ledger.glob

    @property
    def history(self) -> list[dict[str, object]]:
        """Every finished round (status entries)."""
        return self.ledger.history

    @property
    def publisher(self) -> Publisher:
        """Writes a finished round's aggregate as a version."""
        return self.ledger.publisher

    @publisher.setter
    def publisher(self, publisher: Publisher) -> None:
        self.ledger.publisher = publisher

    @property
    def step_counter(self) -> int:
        """Grows whenever any site is given a new assignment (the async edge wakes long polls on change)."""
        return self.mailbox.step_counter

    # ---- site-facing API (called from RPC handlers) ------------------------------------------

    def hello(self, site: SiteId, num_samples: int, rank: int, alpha: float, fingerprint: str, task: str,
              shapes: Mapping[str, tuple[int, int]]) -> int:
        """Enrol (or re-enrol) a site; returns its newest step number so it can resume."""
        with self._cond:
            self.cohort.admit(site, num_samples, rank, alpha, fingerprint, task, shapes)
            step = self.mailbox.enrol(SiteRecord(site, num_samples, rank, alpha, self.clock(), shapes=dict(shapes)))
            log.info("site %s enrolled (n=%d, rank=%d)", site, num_samples, rank, extra={"site": site})
            self.events("site_enrolled", site=site, num_samples=num_samples, rank=rank, alpha=alpha)
            return step

    def wait(self, site: SiteId, after_step: int, timeout: float, alive: Callable[[], bool] | None = None) -> Assignment:
        """Long poll: the site's newest assignment once it is newer than ``after_step`` (``Mailbox.wait``)."""
        return self.mailbox.wait(site, after_step, timeout, alive)

    def poll(self, site: SiteId, after_step: int) -> Assignment | None:
        """The site's newest assignment if it is newer than ``after_step``, else None (never blocks)."""
        return self.mailbox.poll(site, after_step)

    def gone(self, site: SiteId) -> None:
        """The site's long poll ended because its connection did: it is offline now."""
        self.mailbox.gone(site)

    def global_payload(self, site: SiteId) -> bytes:
        """The current global state for training (empty before the first version)."""
        with self._cond:
            self.mailbox.record(site)
            return self.ledger.encoded_glob

    def broadcast_payload(self, site: SiteId, round_id: str, phase: int) -> bytes:
        """The broadcast the server half produced before ``phase``."""
        with self._cond:
            rnd = self._round_for(site, round_id)
            if phase not in rnd.broadcasts:
                raise StaleStep(f"round {round_id} has no broadcast for phase {phase}")
            return rnd.broadcasts[phase]

    def trained(self, site: SiteId, round_id: str, step: int, metrics: TrainReport) -> None:
        """A cohort site finished local training."""
        with self._cond:
            rnd = self._round_for(site, round_id)
            self.mailbox.expect(site, step, Step.TRAIN)
            self.machine.trained(rnd, site, metrics)
            self._cond.notify_all()

    def upload_size(self, site: SiteId, round_id: str, step: int, phase: int, encoding: str) -> int | None:
        """Check an upload's header before any body byte is read: the exact body size of a masked input,
        or None for a plaintext upload (bounded by the server's limit); raises what ``upload`` would."""
        with self._cond:
            target, kind = self.machine.upload_phase(self._round_for(site, round_id), site, phase, encoding)
            self.mailbox.expect(site, step, kind)
            return target.upload_size(round_id)

    def upload(self, site: SiteId, round_id: str, step: int, phase: int, encoding: str, layout: Layout,
               payload: bytes) -> bool:
        """One site's vectors for the current phase; False for an identical retry."""
        with self._cond:
            target, kind = self.machine.upload_phase(self._round_for(site, round_id), site, phase, encoding)
            self.mailbox.expect(site, step, kind)
            added = target.upload(site, encoding, layout, payload)
            self._cond.notify_all()
            return added

    def secagg_message(self, site: SiteId, round_id: str, step: int, kind: Step, payload: bytes) -> None:
        """A small secure-aggregation stage message from a site."""
        with self._cond:
            target = self.machine.secure_phase(self._round_for(site, round_id))
            self.mailbox.expect(site, step, kind)
            target.message(site, kind, payload)
            self._cond.notify_all()

    def secagg_refusal(self, site: SiteId, round_id: str, step: int, kind: Step, reason: str) -> None:
        """A site declines a secure-sum stage under its own privacy policy (recorded; the sum goes on without it)."""
        with self._cond:
            target = self.machine.secure_phase(self._round_for(site, round_id))
            self.mailbox.expect(site, step, kind)
            target.refuse(site, kind, reason)
            self.events("secagg_refused", round_id=round_id, site=site, stage=kind.value)
            self._cond.notify_all()

    def _round_for(self, site: SiteId, round_id: str) -> RoundRecord:
        self.mailbox.record(site)
        return self.machine.round_for(site, round_id)

    # ---- operator-facing and the driver -------------------------------------------------------

    def set_running(self, running: bool) -> None:
        """Start or pause the federation (a paused one finishes no new rounds)."""
        with self._cond:
            self.events("federation_running", running=running)
            self.machine.set_running(running)
            self.mailbox.deliver(self.machine.take_actions())

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the status page and the Admin service."""
        with self._cond:
            return snapshot(fed=self.fed, secure=self.secure, running=self.machine.running, ledger=self.ledger,
                            current=self.machine.current, mailbox=self.mailbox, known_sites=self.known_sites,
                            now=self.clock())

    def tick(self) -> None:
        """Advance deadlines and stages; call often (the server runs it on a timer thread).

        A failure inside a transition never repeats on the next tick: the round in flight is discarded
        with the failure as its recorded reason, and the next round opens as usual.
        """
        with self._cond:
            self.machine.tick(self.clock())
            self.mailbox.deliver(self.machine.take_actions())
            self._cond.notify_all()

    def finished(self) -> bool:
        """Every planned round is published."""
        with self._cond:
            return self.ledger.finished

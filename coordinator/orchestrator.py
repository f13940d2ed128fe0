"""The round state machine.

Theory of operation
-------------------
Sites pull work: each RPC from a site records a fact (hello, trained, upload, stage message) under
one lock, and ``wait`` hands the site its newest ``Assignment``. A single driver calls ``tick()``
(every fraction of a second, with an injected clock) and performs every transition: opening a
round with a sampled cohort, closing the training stage at its deadline, moving a phase's
collector through its stages, aggregating with the rule's server half, publishing, and starting
the next round. Heavy work happens in ``tick`` only, never inside a site's RPC.

Stages of a round::

    TRAINING --(all trained | deadline)--> PHASE 0 --> … --> PHASE p-1 --(Aggregate)--> published
        \\______________ fewer than min_sites (or SecAgg threshold) left: discarded ____/

Cohorts and liveness: a site's long poll is its heartbeat (refreshed every second while it lasts, not
at all once its RPC is gone); it is offline ``offline_after`` seconds later and is not sampled. A round
opens once ``cohort_size`` sites are online (or ``wait_for_sites`` passed, logging who is missing),
samples ``over_select`` more, and closes training as soon as ``cohort_size`` have finished, releasing
the slowest with ROUND_DONE.

A phase runs in a collector: ``PlainCollector`` (float32 uploads, plaintext) or a secure sum.
A coordinator restart loses the round in flight; the next round starts fresh (fresh nonce, fresh
keys), and finished versions are never touched. History, known sites and the running flag come
back from the state database (``state.restore``) through the constructor.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..contract import encode_aggregate, round_context
from ..proto.codec import SESSION_ID_BYTES, encode_tensors
from ..proto.round_spec import RoundSpec
from ..strategies.base import Aggregate, Broadcast, RoundContext
from ..strategies.rule import IndividualRule, Rule
from .collect import PlainCollector
from .config import FederationConfig, Weighting
from .round_checks import count_problem, federation_shapes, norm_growth_problem, shape_diff
from .errors import Duplicate, InvalidRequest, Mismatch, NotEnrolled, NotInCohort, StaleStep
from .manifest import max_epsilon
from .steps import Assignment, SiteId, Step

log = logging.getLogger("fedquilt.coordinator.rounds")


class RoundStage(Enum):
    """Where the current round is."""

    TRAINING = "training"
    PHASE = "phase"
    DONE = "done"


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


@dataclass
class RoundRecord:
    """The round in flight."""

    number: int
    spec: RoundSpec
    cohort: set[SiteId]
    participants: set[SiteId]
    stage: RoundStage
    deadline: float
    phase: int = 0
    collector: Any = None
    trained: dict[SiteId, dict[str, Any]] = field(default_factory=dict)
    broadcasts: dict[int, bytes] = field(default_factory=dict)
    """Encoded broadcast sent to sites before each phase (the coordinator keeps the decoded one too)."""
    broadcast_objs: dict[int, Broadcast] = field(default_factory=dict)
    started: float = 0.0
    stage_started: float = 0.0
    """When the current stage (training, or the current phase) began; for ``stage_finished`` events."""
    deadline_utc: str = ""
    """``deadline`` as UTC wall time, fixed when the stage starts (for the status page)."""
    needed: int = 0
    """Trained sites that close the training stage early (the cohort without its over-selected extras)."""
    released: set[SiteId] = field(default_factory=set)
    """Over-selected sites still training when enough had finished: sent ROUND_DONE, no longer in the cohort."""
    site_noise_sigmas: list[float] = field(default_factory=list)
    """Effective site-level noise multiplier of every secure sum decoded in this round (dropouts weaken it)."""
    cohort_metrics: dict[str, Any] = field(default_factory=dict)
    """Cohort means of the metrics summed securely in phase 0 (under SecAgg no per-site metric is kept)."""


class Publisher(Protocol):
    """Writes a finished round's aggregate as a version (see ``publish.publish``)."""

    def __call__(self, round_number: int, agg: Aggregate, facts: dict[str, Any]) -> str: ...


class RoundObserver(Protocol):
    """Receives round events (metrics, status page, durable history)."""

    def round_event(self, event: str, **facts: Any) -> None: ...


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
        secure_sum_factory: Callable[..., Any] | None = None,
        observer: RoundObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        online_window: float | None = None,
        site_noise: dict[str, float] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        known_sites: Sequence[Mapping[str, Any]] = (),
        running: bool = True,
    ) -> None:
        self.rule, self.fed, self.secure = rule, fed, secure
        self.publisher, self.observer = publisher, observer
        self.secure_sum_factory = secure_sum_factory
        self.clock = clock
        self.online_window = fed.offline_after if online_window is None else online_window
        """Seconds after its last poll that a site counts as offline (``FederationConfig.offline_after``)."""
        self.site_noise = site_noise
        self.glob, self.global_version, self.rounds_done = glob, global_version, rounds_done
        self.sites: dict[SiteId, SiteRecord] = {}
        self.current: RoundRecord | None = None
        self.running = running
        self.history: list[dict[str, Any]] = [dict(h) for h in history]
        self.known_sites = {str(s["site"]): (dict(s), clock() - float(s.get("last_seen_seconds_ago") or 0.0))
                            for s in known_sites}
        """Sites enrolled before a restart (status entry, last seen on ``clock``), shown offline until they say Hello."""
        self.shapes: dict[str, tuple[int, int]] | None = federation_shapes(fed, glob)
        """The federation's targets: the operator's, else the newest version's, else fixed when round 1 opens."""
        self._cond = threading.Condition(threading.RLock())
        self._step = time.time_ns() // 1000  # grows across restarts, so agents never see a step go back
        self._rng = random.Random(fed.seed)
        self._waiting_since: float | None = None
        self._opened_any = False
        """Whether this instance opened a round yet (until then it waits for every site known from before)."""
        self._encoded_glob = encode_aggregate(glob)
        self._said_finished = False
        if global_version is not None:
            log.info("resuming federation %s after %s (round %d of %d published)", fed.name, global_version,
                     rounds_done, fed.rounds, extra={"version": global_version})

    # ---- site-facing API (called from RPC handlers) ------------------------------------------

    def hello(self, site: SiteId, num_samples: int, rank: int, alpha: float, fingerprint: str, task: str,
              shapes: Mapping[str, tuple[int, int]]) -> int:
        """Enrol (or re-enrol) a site; returns its newest step number so it can resume."""
        if fingerprint != self.fed.base_fingerprint:
            raise Mismatch(f"{site}: base model fingerprint {fingerprint[:16]}… does not match the federation's "
                           f"{self.fed.base_fingerprint[:16]}…")
        if task != self.fed.task:
            raise Mismatch(f"{site}: site task {task!r} does not match the federation's {self.fed.task!r}")
        if num_samples <= 0 or rank <= 0 or not np.isfinite(alpha) or alpha <= 0:
            raise InvalidRequest(f"{site}: num_samples, lora_rank and lora_alpha must be > 0 (got {num_samples}, {rank}, {alpha})")
        if not shapes:
            raise InvalidRequest(f"{site}: the site declared no target modules")
        limit = min(self.fed.max_rank, *(min(d, k) for d, k in shapes.values()))
        if rank > limit:
            raise InvalidRequest(f"{site}: lora_rank {rank} is over {limit} (the federation's max_rank {self.fed.max_rank} "
                                 "and min(d, k) of every target)")
        with self._cond:
            if self.shapes is not None and dict(shapes) != self.shapes:
                raise Mismatch(f"{site}: the site's target modules or shapes differ from the federation's: "
                               f"{shape_diff(dict(shapes), self.shapes)}")
            old = self.sites.get(site)
            record = SiteRecord(site, num_samples, rank, alpha, self.clock(), shapes=dict(shapes))
            if old is not None:
                record.assignment = old.assignment
            self.sites[site] = record
            log.info("site %s enrolled (n=%d, rank=%d)", site, num_samples, rank, extra={"site": site})
            self._event("site_enrolled", site=site, num_samples=num_samples, rank=rank, alpha=alpha)
            return record.assignment.step

    def wait(self, site: SiteId, after_step: int, timeout: float, alive: Callable[[], bool] | None = None) -> Assignment:
        """Long poll: the site's newest assignment once it is newer than ``after_step``.

        The poll is the site's heartbeat: ``last_seen`` is refreshed every second while it lasts, unless
        ``alive`` (the RPC's ``is_active``) says the caller has gone, so a dead site turns offline
        ``online_window`` seconds later instead of after its whole poll.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            record = self._site(site)
            while record.assignment.step <= after_step:
                if alive is not None and not alive():
                    return Assignment(step=after_step, kind=Step.IDLE)
                record.last_seen = self.clock()
                left = deadline - time.monotonic()
                if left <= 0:
                    return Assignment(step=after_step, kind=Step.IDLE)
                self._cond.wait(min(left, 1.0))
                record = self._site(site)
            record.last_seen = self.clock()
            record.left = record.assignment.kind is Step.SHUTDOWN
            return record.assignment

    def poll(self, site: SiteId, after_step: int) -> Assignment | None:
        """The site's newest assignment if it is newer than ``after_step``, else None (never blocks).

        Each poll is the site's heartbeat (the async edge polls at least every second while a long poll lasts)."""
        with self._cond:
            record = self._site(site)
            record.last_seen = self.clock()
            if record.assignment.step <= after_step:
                return None
            record.left = record.assignment.kind is Step.SHUTDOWN
            return record.assignment

    def gone(self, site: SiteId) -> None:
        """The site's long poll ended because its connection did: it is offline now, not ``online_window`` later."""
        with self._cond:
            record = self.sites.get(site)
            if record is not None:
                record.last_seen = min(record.last_seen, self.clock() - self.online_window)

    @property
    def step_counter(self) -> int:
        """Grows whenever any site is given a new assignment (the async edge wakes long polls on change)."""
        return self._step

    def upload_size(self, site: SiteId, round_id: str, step: int, phase: int, encoding: str) -> int | None:
        """Check an upload's header against the open round before any body byte is read.

        Returns the exact body size a masked input must have, or None for a plaintext upload (its size
        is bounded by the server's limit); raises the same errors ``upload`` would.
        """
        with self._cond:
            rnd, collector = self._upload_target(site, round_id, step, phase, encoding)
            if isinstance(collector, PlainCollector):
                return None
            session = getattr(collector, "session", None)
            if session is None or collector.stage is not Step.SECAGG_MASKED:
                raise StaleStep(f"round {round_id} is not collecting masked input")
            width = 4 if session.params.ring_bits == 32 else 8
            return int(SESSION_ID_BYTES + width * session.layout.size)

    def _upload_target(self, site: SiteId, round_id: str, step: int, phase: int, encoding: str) -> tuple[RoundRecord, Any]:
        rnd = self._round_for(site, round_id)
        if rnd.stage is not RoundStage.PHASE or rnd.phase != phase:
            raise StaleStep(f"round {round_id} is not collecting phase {phase}")
        if site not in rnd.participants:
            raise NotInCohort(f"{site} is not a participant of phase {phase} of round {round_id}")
        collector = rnd.collector
        if isinstance(collector, PlainCollector):
            if encoding != "FLOAT32":
                raise InvalidRequest(f"this phase collects plaintext FLOAT32 vectors, not {encoding}")
            self._expect(site, step, Step.UPLOAD_PLAIN)
        else:
            self._expect(site, step, Step.SECAGG_MASKED)
        return rnd, collector

    def global_payload(self, site: SiteId) -> bytes:
        """The current global state for training (empty before the first version)."""
        with self._cond:
            self._site(site)
            return self._encoded_glob

    def broadcast_payload(self, site: SiteId, round_id: str, phase: int) -> bytes:
        """The broadcast the server half produced before ``phase``."""
        with self._cond:
            rnd = self._round_for(site, round_id)
            if phase not in rnd.broadcasts:
                raise StaleStep(f"round {round_id} has no broadcast for phase {phase}")
            return rnd.broadcasts[phase]

    def trained(self, site: SiteId, round_id: str, step: int, metrics: Mapping[str, Any]) -> None:
        """A cohort site finished local training."""
        with self._cond:
            rnd = self._round_for(site, round_id)
            self._expect(site, step, Step.TRAIN)
            if rnd.stage is not RoundStage.TRAINING:
                raise StaleStep(f"round {round_id} is no longer training")
            if site in rnd.trained:
                return
            rnd.trained[site] = dict(metrics)
            self._cond.notify_all()

    def upload(self, site: SiteId, round_id: str, step: int, phase: int, encoding: str,
               layout: list[tuple[str, tuple[int, ...]]], payload: bytes) -> bool:
        """One site's vectors for the current phase; False for an identical retry."""
        with self._cond:
            rnd, collector = self._upload_target(site, round_id, step, phase, encoding)
            if isinstance(collector, PlainCollector):
                added = collector.add(site, payload)
            else:
                added = collector.masked_input(site, encoding, layout, payload)
            self._cond.notify_all()
            return bool(added)

    def secagg_message(self, site: SiteId, round_id: str, step: int, kind: Step, payload: bytes) -> None:
        """A small secure-aggregation stage message from a site."""
        with self._cond:
            rnd = self._round_for(site, round_id)
            if rnd.stage is not RoundStage.PHASE or isinstance(rnd.collector, PlainCollector):
                raise StaleStep(f"round {round_id} is not in a secure sum")
            self._expect(site, step, kind)
            rnd.collector.message(site, kind, payload)
            self._cond.notify_all()

    def secagg_refusal(self, site: SiteId, round_id: str, step: int, kind: Step, reason: str) -> None:
        """A site declines a secure-sum stage under its own privacy policy (recorded; the sum goes on without it)."""
        with self._cond:
            rnd = self._round_for(site, round_id)
            if rnd.stage is not RoundStage.PHASE or isinstance(rnd.collector, PlainCollector):
                raise StaleStep(f"round {round_id} is not in a secure sum")
            self._expect(site, step, kind)
            rnd.collector.refuse(site, kind, reason)
            self._event("secagg_refused", round_id=round_id, site=site, stage=kind.value)
            self._cond.notify_all()

    # ---- operator-facing ----------------------------------------------------------------------

    def set_running(self, running: bool) -> None:
        """Start or pause the federation (a paused one finishes no new rounds)."""
        with self._cond:
            self.running = running
            self._event("federation_running", running=running)
            if not running and self.current is not None:
                self._discard(self.current, "federation paused by the operator")

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the status page and the Admin service."""
        with self._cond:
            now = self.clock()
            rnd = self.current
            return {
                "federation": self.fed.name,
                "model": self.fed.model,
                "rule": self.fed.rule,
                "secure_aggregation": self.secure,
                "running": self.running,
                "state": "finished" if self.rounds_done >= self.fed.rounds else "running" if self.running else "paused",
                "rounds_done": self.rounds_done,
                "rounds_planned": self.fed.rounds,
                "global_version": self.global_version,
                "current_round": None if rnd is None else {
                    "round": rnd.number, "id": rnd.spec.round_id, "stage": rnd.stage.value, "phase": rnd.phase,
                    "cohort": sorted(rnd.cohort), "participants": sorted(rnd.participants),
                    **_progress(rnd),
                },
                "sites": sorted([
                    {"site": s.site, "online": self._online(s, now) and not s.left, "num_samples": s.num_samples,
                     "rank": s.rank, "last_seen_seconds_ago": round(now - s.last_seen, 1)}
                    for s in self.sites.values()
                ] + [{**s, "online": False, "last_seen_seconds_ago": round(now - seen, 1)}
                       for k, (s, seen) in self.known_sites.items() if k not in self.sites], key=lambda s: str(s["site"])),
                "history": list(self.history),
            }

    # ---- the driver ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance deadlines and stages; call often (the server runs it on a timer thread).

        A failure inside a transition never repeats on the next tick: the round in flight is discarded
        with the failure as its recorded reason, and the next round opens as usual.
        """
        with self._cond:
            now = self.clock()
            rnd = self.current
            try:
                if rnd is None:
                    self._maybe_open(now)
                elif rnd.stage is RoundStage.TRAINING:
                    if (rnd.cohort <= set(rnd.trained) or len(rnd.trained) >= (rnd.needed or len(rnd.cohort))
                            or now >= rnd.deadline):
                        self._end_training(rnd, now)
                elif rnd.stage is RoundStage.PHASE:
                    self._drive_phase(rnd, now)
            except Exception as exc:
                log.exception("round driver: %s", exc)
                if self.current is not None:
                    self._discard_safely(self.current, f"internal error in the round driver: {type(exc).__name__}: {exc}")
            self._cond.notify_all()

    def finished(self) -> bool:
        """Every planned round is published."""
        with self._cond:
            return self.rounds_done >= self.fed.rounds

    # ---- transitions --------------------------------------------------------------------------

    def _maybe_open(self, now: float) -> None:
        if not self.running or self.rounds_done >= self.fed.rounds:
            if self.rounds_done >= self.fed.rounds:
                self._assign_all(Step.SHUTDOWN, message="the federation finished its planned rounds")
                if not self._said_finished:
                    self._said_finished = True
                    log.info("federation %s finished: %d of %d rounds published, latest version %s", self.fed.name,
                             self.rounds_done, self.fed.rounds, self.global_version,
                             extra={"version": self.global_version})
            return
        online = self._matching_shapes(sorted(s for s, r in self.sites.items() if self._online(r, now)))
        if len(online) < self.fed.min_sites:
            return
        wanted = self._wanted()
        if len(online) < wanted:
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < self.fed.wait_for_sites:
                return
            missing = sorted((set(self.sites) | set(self.known_sites)) - set(online))
            log.warning("round %d: waited %.0fs for %d online sites, %d are; opening without %s",
                        self.rounds_done + 1, now - self._waiting_since, wanted, len(online),
                        missing if missing else "sites that never enrolled")
        self._waiting_since = None
        self._opened_any = True
        if self.fed.cohort_size is not None:
            needed = min(self.fed.cohort_size, len(online))
            size = min(len(online), math.ceil(needed * (1.0 + self.fed.over_select)))
        else:  # everyone online is sampled; over-selection lowers how many must finish
            size = len(online)
            needed = max(min(self.fed.min_sites, size), math.ceil(size / (1.0 + self.fed.over_select)))
        cohort = set(self._rng.sample(online, size))
        number = self.rounds_done + 1
        nonce = secrets.token_hex(16)
        if self.shapes is None:  # a fresh federation: its targets are what most online sites declared
            self.shapes = dict(self.sites[online[0]].shapes)
            log.info("federation targets fixed at round %d: %d modules", number, len(self.shapes))
        spec = RoundSpec(
            round_id=f"r{number:04d}-{nonce[:8]}", round=number, rule=self.fed.rule, params=dict(self.fed.rule_params),
            ranks={s: self.sites[s].rank for s in sorted(cohort)}, shapes=self.shapes, train=dict(self.fed.train),
            nonce=nonce, global_version=self.global_version,
            secagg=self._secagg_spec(cohort) if self.secure else None,
            weights={s: self._weight(s) for s in sorted(cohort)},
            modules_to_save=list(self.fed.modules_to_save),
        )
        rnd = RoundRecord(number=number, spec=spec, cohort=cohort, participants=set(cohort), stage=RoundStage.TRAINING,
                          deadline=now + self.fed.train_timeout, started=now, needed=needed,
                          deadline_utc=_utc_now(self.fed.train_timeout))
        self.current = rnd
        for site in cohort:
            self._assign(site, Step.TRAIN, rnd, spec=spec)
        log.info("round %d opened with %s (%s; %d needed)", number, _sites(len(cohort)), spec.round_id, needed,
                 extra={"round": number})
        self._event("round_opened", round=number, cohort=len(cohort), round_id=spec.round_id)

    def _wanted(self) -> int:
        """Online sites a round waits for: ``cohort_size``; without it every online site, and before this
        instance's first round also every site known from before a restart (so it does not open with the first
        few that reconnect)."""
        if self.fed.cohort_size is not None:
            return self.fed.cohort_size
        if not self._opened_any:
            return len(set(self.sites) | set(self.known_sites))
        return 0

    def _online(self, record: SiteRecord, now: float) -> bool:
        """Polled within ``online_window`` seconds (a polling site refreshes every second)."""
        return now - record.last_seen < self.online_window

    def _secagg_spec(self, cohort: set[SiteId]) -> dict[str, Any]:
        # Sites divide every submitted value by this public constant so weighted values stay inside the
        # declared clip range (p_i = n_i/Σn is unchanged: the sample counts are divided too).
        spec: dict[str, Any] = {"weight_scale": float(sum(self._weight(s) for s in cohort)),
                                "min_contributors": max(2, self._min_participants(None))}  # sites may only raise it
        if self.site_noise is not None:
            spec["site_noise"] = {"sigma": self.site_noise["sigma"], "clip": self.site_noise["clip"], "sites": len(cohort)}
        return spec

    def _site_level_privacy(self, rnd: RoundRecord) -> dict[str, Any] | None:
        """Site-level (ε, δ) of every secure sum decoded so far, with the noise actually in it (strategies/site_dp)."""
        if self.site_noise is None:
            return None
        from ..strategies.site_dp import MODEL, site_level_epsilon

        phases = int(getattr(self.rule, "phases", 1))
        sigmas: list[float] = []
        for entry in self.history:  # rounds recorded before this accounting: every phase at the nominal σ
            sigmas.extend(entry.get("site_noise_sigmas", [self.site_noise["sigma"]] * phases))
        sigmas.extend(rnd.site_noise_sigmas)
        eps = site_level_epsilon(sigmas, self.site_noise["delta"])
        return {"epsilon": eps if eps != float("inf") else None, "delta": self.site_noise["delta"],
                "noise_multiplier": self.site_noise["sigma"], "clip": self.site_noise["clip"], "releases": len(sigmas),
                "effective_noise_multipliers": [round(x, 6) for x in rnd.site_noise_sigmas], "sample_rate": 1.0,
                "model": MODEL}

    def _record_release(self, rnd: RoundRecord, contributors: set[SiteId]) -> None:
        """One secure sum was decoded: the site-level noise in it is only the contributors' shares."""
        if self.site_noise is not None and self.secure:
            from ..strategies.site_dp import effective_sigma

            spec_sites = int((rnd.spec.secagg or {}).get("site_noise", {}).get("sites", len(rnd.cohort)))
            rnd.site_noise_sigmas.append(effective_sigma(self.site_noise["sigma"], len(contributors), spec_sites))

    def _min_participants(self, rnd: RoundRecord | None) -> int:
        # The secure sum enforces its own threshold t on top of this.
        if self.fed.min_contributors is not None:
            return int(self.fed.min_contributors)
        return min(2, self.fed.min_sites)

    def _end_training(self, rnd: RoundRecord, now: float) -> None:
        self._event("stage_finished", stage="training", seconds=now - rnd.started, round=rnd.number)
        rnd.participants = set(rnd.trained)
        missing = rnd.cohort - rnd.participants
        if missing and len(rnd.participants) >= rnd.needed and now < rnd.deadline:
            # Over-selection did its job: release the slowest instead of waiting for them.
            rnd.released = set(missing)
            rnd.cohort -= rnd.released
            for site in sorted(rnd.released):
                self._assign(site, Step.ROUND_DONE, rnd, message="released: enough sites finished training")
            log.info("round %d: %d sites finished training; released %s", rnd.number, len(rnd.participants),
                     sorted(rnd.released), extra={"round": rnd.number})
        elif missing:
            log.warning("round %d: %s did not finish training in time", rnd.number, sorted(missing))
        if len(rnd.participants) < self._min_participants(rnd):
            self._discard(rnd, f"only {_sites(len(rnd.participants))} finished training, need {self._min_participants(rnd)}")
            return
        self._start_phase(rnd, 0, now)

    def _start_phase(self, rnd: RoundRecord, phase: int, now: float) -> None:
        rnd.stage, rnd.phase = RoundStage.PHASE, phase
        rnd.deadline, rnd.stage_started = now + self.fed.stage_timeout, now
        rnd.deadline_utc = _utc_now(self.fed.stage_timeout)
        if self.secure:
            assert self.secure_sum_factory is not None
            rnd.collector = self.secure_sum_factory(rnd=rnd, phase=phase, now=now)
            for site, (kind, payload) in rnd.collector.start().items():
                self._assign(site, kind, rnd, spec=rnd.spec, payload=payload)
        else:
            rnd.collector = PlainCollector(rnd.participants, keep_individual=isinstance(self.rule, IndividualRule),
                                           modules=rnd.spec.shapes, weights=rnd.spec.weights,
                                           saved=rnd.spec.modules_to_save)
            for site in rnd.participants:
                self._assign(site, Step.UPLOAD_PLAIN, rnd, spec=rnd.spec)

    def _drive_phase(self, rnd: RoundRecord, now: float) -> None:
        collector = rnd.collector
        if isinstance(collector, PlainCollector):
            if not (collector.complete or now >= rnd.deadline):
                return
            contributors = collector.contributors()
        else:
            try:
                moves = collector.advance(now)
            except Exception as exc:  # a secure sum that cannot finish discards the round, nothing else
                self._discard(rnd, f"secure sum failed: {exc}")
                return
            for site, (kind, payload) in moves.items():
                self._assign(site, kind, rnd, spec=rnd.spec, payload=payload)
            if not collector.done:
                return
            contributors = collector.contributors()
        self._finish_phase(rnd, contributors, now)

    def _finish_phase(self, rnd: RoundRecord, contributors: set[SiteId], now: float) -> None:
        self._event("stage_finished", stage=f"phase{rnd.phase}", seconds=now - rnd.stage_started, round=rnd.number)
        self._record_release(rnd, contributors)
        if len(contributors) < self._min_participants(rnd):
            self._discard(rnd, f"phase {rnd.phase}: {_sites(len(contributors))} contributed, need {self._min_participants(rnd)}")
            return
        if rnd.phase > 0 and contributors != rnd.participants:
            self._discard(rnd, f"phase {rnd.phase}: participants changed between secure sums; "
                               "publishing would reveal a dropped site's sketch")
            return
        rnd.participants = contributors
        collector = rnd.collector
        if rnd.phase == 0 and hasattr(collector, "cohort_metrics"):
            rnd.cohort_metrics = dict(collector.cohort_metrics())
        if not isinstance(self.rule, IndividualRule):
            problem = count_problem(collector.result(), self._expected_count(rnd, contributors),
                                    len(contributors), self._count_resolution(collector))
            if problem:
                self._discard(rnd, f"phase {rnd.phase}: {problem}")
                return
        ctx = self._context(rnd)
        try:
            if isinstance(self.rule, IndividualRule):
                outcome: Broadcast | Aggregate = self.rule.combine_individual(collector.individual, ctx, self.glob)
            else:
                outcome = self.rule.combine(rnd.phase, collector.result(), ctx, self.glob,
                                            broadcast=rnd.broadcast_objs.get(rnd.phase))
        except (ValueError, ArithmeticError) as exc:
            self._discard(rnd, f"aggregation failed: {exc}")
            return
        if isinstance(outcome, Broadcast):
            rnd.broadcasts[rnd.phase + 1] = encode_tensors(dict(outcome.tensors))
            rnd.broadcast_objs[rnd.phase + 1] = outcome
            self._start_phase(rnd, rnd.phase + 1, now)
            return
        self._publish(rnd, outcome, now)

    def _context(self, rnd: RoundRecord) -> RoundContext:
        # The cohort's ranks, exactly as the sites derive them: a site that drops in training must not change the
        # padding or sketch width the others already submitted with. Under SecAgg sites derive the rule's public
        # randomness from the secure sum's session id (agent secure_sum binds ctx.session to it); server halves
        # that regenerate it (single-pass sketch) need the same.
        secure_session = getattr(getattr(rnd.collector, "session", None), "session_id", None)
        return round_context(rnd.spec, session=secure_session)

    def _publish(self, rnd: RoundRecord, agg: Aggregate, now: float) -> None:
        growth = norm_growth_problem(agg, self.glob, self.fed.max_norm_growth)
        if growth:
            self._discard(rnd, growth)
            return
        collector = rnd.collector
        facts = {
            "base_fingerprint": self.fed.base_fingerprint, "rule": self.fed.rule, "round_id": rnd.spec.round_id,
            "contributors": len(rnd.participants), "cohort": len(rnd.cohort),
            "samples": sum(self.sites[s].num_samples for s in rnd.participants if s in self.sites),
            "dropouts": len(rnd.cohort) - len(rnd.participants),
            "secure_aggregation": collector.manifest_facts() if not isinstance(collector, PlainCollector) else None,
            "privacy": {s: rnd.trained[s].get("dp") for s in sorted(rnd.participants) if rnd.trained[s].get("dp")},
            "previous_version": self.global_version,
            "site_level_privacy": self._site_level_privacy(rnd),
        }
        metrics = {s: rnd.trained[s] for s in sorted(rnd.participants)}
        entry: dict[str, Any] = {  # everything that can fail is computed before the version is written
            "round": rnd.number, "version": None, "contributors": len(rnd.participants),
            "dropouts": len(rnd.cohort) - len(rnd.participants), "seconds": round(now - rnd.started, 2),
            "loss_before": _mean(m.get("loss_before") for m in metrics.values()),
            "loss_after": _mean(m.get("loss_after") for m in metrics.values()),
            "eval_loss": _mean(m.get("eval_loss") for m in metrics.values()),
        }
        if self.site_noise is not None:
            entry["site_noise_sigmas"] = list(rnd.site_noise_sigmas)
        if self.secure:  # cohort aggregates from the secure sum only; no per-site metric is used
            entry.update({k: rnd.cohort_metrics.get(k) for k in ("loss_before", "loss_after", "eval_loss")})
            entry["clipped"] = int(rnd.cohort_metrics.get("clipped") or 0)
        encoded = encode_aggregate(agg)
        version = self.publisher(rnd.number, agg, facts)
        self.glob, self.global_version, self._encoded_glob = agg, version, encoded
        self.rounds_done = rnd.number
        entry["version"] = version
        self.history.append(entry)
        published_facts = {"round_id": rnd.spec.round_id, "published_at": _utc_now(),
                           "epsilon": max_epsilon(facts)}  # added after the event below (which names round_id itself)
        log.info("round %d published as %s (%d contributors)", rnd.number, version, len(rnd.participants),
                 extra={"round": rnd.number, "version": version})
        self._event("round_published", round_id=rnd.spec.round_id, **entry)
        entry.update(published_facts)
        self._close(rnd, f"published {version}")

    def _discard(self, rnd: RoundRecord, why: str) -> None:
        log.warning("round %d discarded: %s", rnd.number, why, extra={"round": rnd.number})
        # A discarded round's secure sum may still have been decoded: its cohort-level clip count is reported
        # (clipping is never silent), and nothing per site.
        clipped = {"clipped": int(rnd.cohort_metrics["clipped"])} if rnd.cohort_metrics.get("clipped") else {}
        self.history.append({"round": rnd.number, "version": None, "discarded": why, **clipped,
                             **({"site_noise_sigmas": rnd.site_noise_sigmas} if self.site_noise is not None else {})})
        self._event("round_discarded", round=rnd.number, reason=why, round_id=rnd.spec.round_id, **clipped)
        self._close(rnd, f"discarded: {why}")

    def _discard_safely(self, rnd: RoundRecord, why: str) -> None:
        """Discard after an unexpected failure; even a failing observer cannot keep the round alive."""
        try:
            self._discard(rnd, why)
        except Exception:
            log.exception("round %d: discarding failed too; dropping the round", rnd.number)
            self.current = None

    def _close(self, rnd: RoundRecord, message: str) -> None:
        rnd.stage = RoundStage.DONE
        for site in rnd.cohort:
            if site in self.sites:
                self._assign(site, Step.ROUND_DONE, rnd, message=message)
        self.current = None

    # ---- weights and shapes (issue 12: one site cannot take over by declaring numbers) --------

    def _weight(self, site: SiteId) -> int:
        """The count ``site`` weights its submission by: 1 (equal), or its declared count under the cap."""
        if self.fed.weighting is Weighting.EQUAL:
            return 1
        n = self.sites[site].num_samples
        cap = self.fed.max_samples_per_site
        return n if cap is None else min(n, cap)

    def _expected_count(self, rnd: RoundRecord, contributors: set[SiteId]) -> float:
        total = float(sum(rnd.spec.weights.get(s, 0) for s in contributors))
        scale = float((rnd.spec.secagg or {}).get("weight_scale", 1.0)) if self.secure else 1.0
        return total / (scale or 1.0)

    @staticmethod
    def _count_resolution(collector: Any) -> float:
        """How far one site's count may be off by rounding: SecAgg's fixed-point step, float32's otherwise."""
        if isinstance(collector, PlainCollector):
            return 0.0
        return float(2.0 ** -int(collector.manifest_facts()["frac_bits"]))

    def _matching_shapes(self, online: list[SiteId]) -> list[SiteId]:
        """The online sites that train the federation's targets (before they are fixed: the most common)."""
        if not online:
            return online
        target = self.shapes
        if target is None:
            groups: dict[str, list[SiteId]] = {}
            for s in online:
                groups.setdefault(repr(sorted(self.sites[s].shapes.items())), []).append(s)
            return max(groups.values(), key=len)
        return [s for s in online if self.sites[s].shapes == target]

    # ---- small pieces -------------------------------------------------------------------------

    def _assign(self, site: SiteId, kind: Step, rnd: RoundRecord | None, spec: RoundSpec | None = None,
                payload: bytes = b"", message: str = "") -> None:
        self._step += 1
        self.sites[site].assignment = Assignment(
            step=self._step, kind=kind, round_id=rnd.spec.round_id if rnd else "", phase=rnd.phase if rnd else 0,
            spec=spec, payload=payload, message=message,
        )

    def _assign_all(self, kind: Step, message: str) -> None:
        for site, record in self.sites.items():
            if record.assignment.kind is not kind:
                self._assign(site, kind, None, message=message)

    def _site(self, site: SiteId) -> SiteRecord:
        record = self.sites.get(site)
        if record is None:
            raise NotEnrolled(f"{site} has not said Hello to this coordinator (it may have restarted)")
        return record

    def _round_for(self, site: SiteId, round_id: str) -> RoundRecord:
        self._site(site)
        rnd = self.current
        if rnd is None or rnd.spec.round_id != round_id:
            raise StaleStep(f"round {round_id!r} is not the current round")
        if site not in rnd.cohort:
            raise NotInCohort(f"{site} is not in the cohort of round {round_id}")
        return rnd

    def _expect(self, site: SiteId, step: int, kind: Step) -> None:
        current = self.sites[site].assignment
        if current.step != step or current.kind is not kind:
            if current.step > step:
                raise StaleStep(f"step {step} ({kind.value}) is superseded by step {current.step} ({current.kind.value})")
            raise StaleStep(f"{site} was not asked for {kind.value} at step {step}")

    def _event(self, event: str, **facts: Any) -> None:
        if self.observer is not None:
            self.observer.round_event(event, **facts)


def _progress(rnd: RoundRecord) -> dict[str, Any]:
    """Per-site progress, the stage's deadline and the secure sum's sub-step, for the status page."""
    collector = rnd.collector
    done: set[Any] = set()
    substep = None
    if rnd.stage is RoundStage.PHASE and collector is not None:
        if isinstance(collector, PlainCollector):
            done = set(collector.received)
        else:
            done = set(getattr(collector, "heard", ()))
            stage = getattr(collector, "stage", None)
            substep = str(getattr(stage, "value", "")).removeprefix("SECAGG_").lower() or None
    sites = {}
    for site in sorted(rnd.cohort):
        if rnd.stage is RoundStage.TRAINING:
            sites[site] = "trained" if site in rnd.trained else "training"
        elif site not in rnd.participants:
            sites[site] = "dropped"
        else:
            sites[site] = "sent" if site in done else "waiting"
    return {"progress": sites, "deadline_utc": rnd.deadline_utc, "secure_sum_step": substep}


def _utc_now(later_seconds: float = 0.0) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime.now(timezone.utc) + timedelta(seconds=later_seconds)).isoformat(timespec="seconds")


def _sites(n: int) -> str:
    return f"{n} site" if n == 1 else f"{n} sites"


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 5) if vals else None

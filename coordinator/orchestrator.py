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

A phase runs in a collector: ``PlainCollector`` (float32 uploads, plaintext) or a secure sum.
A coordinator restart loses the round in flight; the next round starts fresh (fresh nonce, fresh
keys), and finished versions are never touched. History, known sites and the running flag come
back from the state database (``state.restore``) through the constructor.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..proto.codec import RoundSpec, encode_aggregate, encode_spec, encode_tensors
from ..strategies.base import Aggregate, Broadcast, IndividualRule, RoundContext, Rule
from .collect import PlainCollector
from .config import FederationConfig
from .errors import Duplicate, InvalidRequest, Mismatch, NotEnrolled, NotInCohort, StaleStep
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
        online_window: float = 60.0,
        site_noise: dict[str, float] | None = None,
        history: Sequence[Mapping[str, Any]] = (),
        known_sites: Sequence[Mapping[str, Any]] = (),
        running: bool = True,
    ) -> None:
        self.rule, self.fed, self.secure = rule, fed, secure
        self.publisher, self.observer = publisher, observer
        self.secure_sum_factory = secure_sum_factory
        self.clock = clock
        self.online_window = online_window
        self.site_noise = site_noise
        self.glob, self.global_version, self.rounds_done = glob, global_version, rounds_done
        self.sites: dict[SiteId, SiteRecord] = {}
        self.current: RoundRecord | None = None
        self.running = running
        self.history: list[dict[str, Any]] = [dict(h) for h in history]
        self.known_sites = {str(s["site"]): (dict(s), clock() - float(s.get("last_seen_seconds_ago") or 0.0))
                            for s in known_sites}
        """Sites enrolled before a restart (status entry, last seen on ``clock``), shown offline until they say Hello."""
        self.shapes: dict[str, tuple[int, int]] | None = None
        self._cond = threading.Condition(threading.RLock())
        self._step = time.time_ns() // 1000  # grows across restarts, so agents never see a step go back
        self._rng = random.Random(fed.seed)
        self._waiting_since: float | None = None
        self._encoded_glob = encode_aggregate(glob)

    # ---- site-facing API (called from RPC handlers) ------------------------------------------

    def hello(self, site: SiteId, num_samples: int, rank: int, alpha: float, fingerprint: str, task: str,
              shapes: Mapping[str, tuple[int, int]]) -> int:
        """Enrol (or re-enrol) a site; returns its newest step number so it can resume."""
        if fingerprint != self.fed.base_fingerprint:
            raise Mismatch(f"base model fingerprint {fingerprint[:16]}… does not match the federation's "
                           f"{self.fed.base_fingerprint[:16]}…")
        if task != self.fed.task:
            raise Mismatch(f"site task {task!r} does not match the federation's {self.fed.task!r}")
        if num_samples <= 0 or rank <= 0 or not np.isfinite(alpha) or alpha <= 0:
            raise InvalidRequest(f"num_samples, lora_rank and lora_alpha must be > 0 (got {num_samples}, {rank}, {alpha})")
        with self._cond:
            if self.shapes is None:
                self.shapes = dict(shapes)
            elif dict(shapes) != self.shapes:
                raise Mismatch("the site's target modules or shapes differ from the federation's")
            old = self.sites.get(site)
            record = SiteRecord(site, num_samples, rank, alpha, self.clock())
            if old is not None:
                record.assignment = old.assignment
            self.sites[site] = record
            log.info("site %s enrolled (n=%d, rank=%d)", site, num_samples, rank, extra={"site": site})
            self._event("site_enrolled", site=site, num_samples=num_samples, rank=rank, alpha=alpha)
            return record.assignment.step

    def wait(self, site: SiteId, after_step: int, timeout: float) -> Assignment:
        """Long poll: the site's newest assignment once it is newer than ``after_step``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            record = self._site(site)
            while record.assignment.step <= after_step:
                record.last_seen = self.clock()
                left = deadline - time.monotonic()
                if left <= 0:
                    return Assignment(step=after_step, kind=Step.IDLE)
                self._cond.wait(min(left, 1.0))
                record = self._site(site)
            record.last_seen = self.clock()
            return record.assignment

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
                added = collector.add(site, payload)
            else:
                self._expect(site, step, Step.SECAGG_MASKED)
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
                "rounds_done": self.rounds_done,
                "rounds_planned": self.fed.rounds,
                "global_version": self.global_version,
                "current_round": None if rnd is None else {
                    "round": rnd.number, "id": rnd.spec.round_id, "stage": rnd.stage.value, "phase": rnd.phase,
                    "cohort": sorted(rnd.cohort), "participants": sorted(rnd.participants),
                },
                "sites": sorted([
                    {"site": s.site, "online": now - s.last_seen < self.online_window, "num_samples": s.num_samples,
                     "rank": s.rank, "last_seen_seconds_ago": round(now - s.last_seen, 1)}
                    for s in self.sites.values()
                ] + [{**s, "online": False, "last_seen_seconds_ago": round(now - seen, 1)}
                       for k, (s, seen) in self.known_sites.items() if k not in self.sites], key=lambda s: str(s["site"])),
                "history": list(self.history),
            }

    # ---- the driver ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance deadlines and stages; call often (the server runs it on a timer thread)."""
        with self._cond:
            now = self.clock()
            rnd = self.current
            if rnd is None:
                self._maybe_open(now)
            elif rnd.stage is RoundStage.TRAINING:
                if rnd.cohort <= set(rnd.trained) or now >= rnd.deadline:
                    self._end_training(rnd, now)
            elif rnd.stage is RoundStage.PHASE:
                self._drive_phase(rnd, now)
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
            return
        online = sorted(s for s, r in self.sites.items() if now - r.last_seen < self.online_window)
        if len(online) < self.fed.min_sites:
            return
        wanted = self.fed.cohort_size or len(self.sites)
        if len(online) < wanted:
            self._waiting_since = self._waiting_since or now
            if now - self._waiting_since < self.fed.wait_for_sites:
                return
        self._waiting_since = None
        size = min(self.fed.cohort_size or len(online), len(online))
        cohort = set(self._rng.sample(online, size))
        number = self.rounds_done + 1
        nonce = secrets.token_hex(16)
        assert self.shapes is not None  # set by the first hello; online sites said hello
        spec = RoundSpec(
            round_id=f"r{number:04d}-{nonce[:8]}", round=number, rule=self.fed.rule, params=dict(self.fed.rule_params),
            ranks={s: self.sites[s].rank for s in sorted(cohort)}, shapes=self.shapes, train=dict(self.fed.train),
            nonce=nonce, global_version=self.global_version,
            secagg=self._secagg_spec(cohort) if self.secure else None,
            modules_to_save=list(self.fed.modules_to_save),
        )
        rnd = RoundRecord(number=number, spec=spec, cohort=cohort, participants=set(cohort), stage=RoundStage.TRAINING,
                          deadline=now + self.fed.train_timeout, started=now)
        self.current = rnd
        spec_json = encode_spec(spec)
        for site in cohort:
            self._assign(site, Step.TRAIN, rnd, spec_json=spec_json)
        log.info("round %d opened with %d sites (%s)", number, len(cohort), spec.round_id, extra={"round": number})
        self._event("round_opened", round=number, cohort=len(cohort), round_id=spec.round_id)

    def _secagg_spec(self, cohort: set[SiteId]) -> dict[str, Any]:
        # Sites divide every submitted value by this public constant so weighted values stay inside the
        # declared clip range (p_i = n_i/Σn is unchanged: the sample counts are divided too).
        spec: dict[str, Any] = {"weight_scale": float(sum(self.sites[s].num_samples for s in cohort))}
        if self.site_noise is not None:
            spec["site_noise"] = {"sigma": self.site_noise["sigma"], "clip": self.site_noise["clip"], "sites": len(cohort)}
        return spec

    def _site_level_privacy(self, rnd: RoundRecord) -> dict[str, Any] | None:
        """Site-level (ε, δ) of every secure sum released so far (an upper bound: discarded rounds count too)."""
        if self.site_noise is None:
            return None
        from ..agent.site_noise import site_level_epsilon

        phases = int(getattr(self.rule, "phases", 1))
        releases = phases * (1 + sum(1 for h in self.history))
        rate = len(rnd.cohort) / max(len(self.sites), 1)
        eps = site_level_epsilon(self.site_noise["sigma"], releases, rate, self.site_noise["delta"])
        return {"epsilon": eps if eps != float("inf") else None, "delta": self.site_noise["delta"],
                "noise_multiplier": self.site_noise["sigma"], "clip": self.site_noise["clip"], "releases": releases,
                "sample_rate": round(rate, 4)}

    def _min_participants(self, rnd: RoundRecord) -> int:
        # The secure sum enforces its own threshold t on top of this.
        if self.fed.min_contributors is not None:
            return int(self.fed.min_contributors)
        return min(2, self.fed.min_sites)

    def _end_training(self, rnd: RoundRecord, now: float) -> None:
        rnd.participants = set(rnd.trained)
        missing = rnd.cohort - rnd.participants
        if missing:
            log.warning("round %d: %s did not finish training in time", rnd.number, sorted(missing))
        if len(rnd.participants) < self._min_participants(rnd):
            self._discard(rnd, f"only {len(rnd.participants)} sites finished training, need {self._min_participants(rnd)}")
            return
        self._start_phase(rnd, 0, now)

    def _start_phase(self, rnd: RoundRecord, phase: int, now: float) -> None:
        rnd.stage, rnd.phase = RoundStage.PHASE, phase
        rnd.deadline = now + self.fed.stage_timeout
        spec_json = encode_spec(rnd.spec)
        if self.secure:
            assert self.secure_sum_factory is not None
            rnd.collector = self.secure_sum_factory(rnd=rnd, phase=phase, now=now)
            for site, (kind, payload) in rnd.collector.start().items():
                self._assign(site, kind, rnd, spec_json=spec_json, payload=payload)
        else:
            rnd.collector = PlainCollector(rnd.participants, keep_individual=isinstance(self.rule, IndividualRule),
                                           modules=rnd.spec.shapes, saved=rnd.spec.modules_to_save)
            for site in rnd.participants:
                self._assign(site, Step.UPLOAD_PLAIN, rnd, spec_json=spec_json)

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
                self._assign(site, kind, rnd, spec_json=encode_spec(rnd.spec), payload=payload)
            if not collector.done:
                return
            contributors = collector.contributors()
        self._finish_phase(rnd, contributors, now)

    def _finish_phase(self, rnd: RoundRecord, contributors: set[SiteId], now: float) -> None:
        if len(contributors) < self._min_participants(rnd):
            self._discard(rnd, f"phase {rnd.phase}: {len(contributors)} sites contributed, need {self._min_participants(rnd)}")
            return
        if rnd.phase > 0 and contributors != rnd.participants:
            self._discard(rnd, f"phase {rnd.phase}: participants changed between secure sums; "
                               "publishing would reveal a dropped site's sketch")
            return
        rnd.participants = contributors
        ctx = self._context(rnd)
        collector = rnd.collector
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
        return RoundContext(round=rnd.number, shapes=rnd.spec.shapes,
                            ranks={s: rnd.spec.ranks[s] for s in sorted(rnd.participants)},
                            session=bytes.fromhex(rnd.spec.nonce), params=rnd.spec.params,
                            saved=tuple(rnd.spec.modules_to_save))

    def _publish(self, rnd: RoundRecord, agg: Aggregate, now: float) -> None:
        collector = rnd.collector
        facts = {
            "base_fingerprint": self.fed.base_fingerprint, "rule": self.fed.rule, "round_id": rnd.spec.round_id,
            "contributors": len(rnd.participants), "cohort": len(rnd.cohort),
            "dropouts": len(rnd.cohort) - len(rnd.participants),
            "secure_aggregation": collector.manifest_facts() if not isinstance(collector, PlainCollector) else None,
            "privacy": {s: rnd.trained[s].get("dp") for s in sorted(rnd.participants) if rnd.trained[s].get("dp")},
            "previous_version": self.global_version,
            "site_level_privacy": self._site_level_privacy(rnd),
        }
        version = self.publisher(rnd.number, agg, facts)
        self.glob, self.global_version = agg, version
        self._encoded_glob = encode_aggregate(agg)
        self.rounds_done = rnd.number
        metrics = {s: rnd.trained[s] for s in sorted(rnd.participants)}
        entry = {
            "round": rnd.number, "version": version, "contributors": len(rnd.participants),
            "dropouts": len(rnd.cohort) - len(rnd.participants), "seconds": round(now - rnd.started, 2),
            "loss_before": _mean(m.get("loss_before") for m in metrics.values()),
            "loss_after": _mean(m.get("loss_after") for m in metrics.values()),
            "eval_loss": _mean(m.get("eval_loss") for m in metrics.values()),
        }
        self.history.append(entry)
        log.info("round %d published as %s (%d contributors)", rnd.number, version, len(rnd.participants),
                 extra={"round": rnd.number, "version": version})
        self._event("round_published", round_id=rnd.spec.round_id, **entry)
        self._close(rnd, f"published {version}")

    def _discard(self, rnd: RoundRecord, why: str) -> None:
        log.warning("round %d discarded: %s", rnd.number, why, extra={"round": rnd.number})
        self.history.append({"round": rnd.number, "version": None, "discarded": why})
        self._event("round_discarded", round=rnd.number, reason=why, round_id=rnd.spec.round_id)
        self._close(rnd, f"discarded: {why}")

    def _close(self, rnd: RoundRecord, message: str) -> None:
        rnd.stage = RoundStage.DONE
        for site in rnd.cohort:
            if site in self.sites:
                self._assign(site, Step.ROUND_DONE, rnd, message=message)
        self.current = None

    # ---- small pieces -------------------------------------------------------------------------

    def _assign(self, site: SiteId, kind: Step, rnd: RoundRecord | None, spec_json: str = "", payload: bytes = b"",
                message: str = "") -> None:
        self._step += 1
        self.sites[site].assignment = Assignment(
            step=self._step, kind=kind, round_id=rnd.spec.round_id if rnd else "", phase=rnd.phase if rnd else 0,
            spec_json=spec_json, payload=payload, message=message,
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


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 5) if vals else None

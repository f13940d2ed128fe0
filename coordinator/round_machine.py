"""The coordinator's round machine: site events in, ``Assign`` actions out, one transition table.

Theory of operation
-------------------
The machine knows one round at a time (``current``). Site events (a TRAIN report, an upload, a
secure-sum stage message) only record facts: ``trained`` here, the rest in the current ``Phase``. All
transitions happen in ``tick(now)``, with ``now`` from the coordinator's injected clock: opening a round
with a cohort from ``Cohort``, closing training (everyone trained, enough trained with over-selection
releasing the rest, or the deadline), advancing the phase and, when it is done, turning its result into
the next phase's broadcast or the next global with the rule's server half, then publishing through the
``Ledger``. Every step a site is given becomes an ``Assign`` in ``actions``; the caller hands them to the
mailbox (``take_actions``). Stages of a round (``_TRANSITIONS``)::

    TRAINING --(all | enough trained | deadline)--> PHASE 0 --> … --> PHASE p-1 --(Aggregate)--> DONE: published
        \\____________ fewer than min_contributors (or the SecAgg threshold) left, or a check fails: DONE: discarded

A failure inside a transition never repeats on the next tick: the round is discarded with the failure as
its reason. A coordinator restart loses the round in flight; the next round starts fresh (fresh nonce,
fresh keys) and finished versions are never touched. Between two phases of one rule the contributors
must stay the same (otherwise the second sum minus the first reveals a dropped site's part).
"""

from __future__ import annotations

import logging
from typing import Final, Mapping

from ..proto.codec import encode_tensors
from ..strategies.base import Aggregate, Broadcast
from ..strategies.rule import IndividualRule, Rule
from .cohort import Cohort, min_participants
from .config import FederationConfig
from .errors import NotInCohort, StaleStep
from .ledger import Ledger, utc_now
from .mailbox import Roster
from .phase import Phase, PhaseFactory, PhaseRequest, PhaseResult
from .round_record import Assign, Events, RoundRecord, RoundStage, TrainReport
from .server_half import ServerHalf, sites_text
from .steps import SiteId, Step

log = logging.getLogger("fedquilt.coordinator.rounds")

_TRANSITIONS: Final[dict[RoundStage, frozenset[RoundStage]]] = {
    RoundStage.TRAINING: frozenset({RoundStage.PHASE, RoundStage.DONE}),
    RoundStage.PHASE: frozenset({RoundStage.PHASE, RoundStage.DONE}),
    RoundStage.DONE: frozenset(),
}
"""Stage -> the stages it may move to (PHASE -> PHASE: the next phase of a multi-phase rule)."""


class RoundMachine:
    """Runs the rounds of one federation (not thread-safe: the facade holds the mailbox's lock)."""

    def __init__(self, *, rule: Rule | IndividualRule, fed: FederationConfig, secure: bool, roster: Roster,
                 cohort: Cohort, ledger: Ledger, phases: PhaseFactory, events: Events,
                 site_noise: Mapping[str, float] | None, running: bool) -> None:
        self.fed, self.secure = fed, secure
        self.roster, self.cohort, self.ledger, self.phases, self.events = roster, cohort, ledger, phases, events
        self.site_noise = site_noise
        self.running = running
        self.current: RoundRecord | None = None
        self.actions: list[Assign] = []
        """Steps given to sites since the last ``take_actions``."""
        self.half = ServerHalf(rule, fed, secure)
        self._said_finished = False

    def take_actions(self) -> list[Assign]:
        """The actions recorded since the last call, in order."""
        actions, self.actions = self.actions, []
        return actions

    # ---- site events --------------------------------------------------------------------------

    def round_for(self, site: SiteId, round_id: str) -> RoundRecord:
        """The current round, if it is ``round_id`` and ``site`` is in its cohort."""
        rnd = self.current
        if rnd is None or rnd.spec.round_id != round_id:
            raise StaleStep(f"round {round_id!r} is not the current round")
        if site not in rnd.cohort:
            raise NotInCohort(f"{site} is not in the cohort of round {round_id}")
        return rnd

    def trained(self, rnd: RoundRecord, site: SiteId, report: TrainReport) -> None:
        """A cohort site finished local training (its first report counts; a repeated one is ignored)."""
        if rnd.stage is not RoundStage.TRAINING:
            raise StaleStep(f"round {rnd.spec.round_id} is no longer training")
        rnd.trained.setdefault(site, dict(report))

    def upload_phase(self, rnd: RoundRecord, site: SiteId, phase: int, encoding: str) -> tuple[Phase, Step]:
        """The phase an upload goes to and the step it answers."""
        if rnd.stage is not RoundStage.PHASE or rnd.phase != phase or rnd.collector is None:
            raise StaleStep(f"round {rnd.spec.round_id} is not collecting phase {phase}")
        if site not in rnd.participants:
            raise NotInCohort(f"{site} is not a participant of phase {phase} of round {rnd.spec.round_id}")
        return rnd.collector, rnd.collector.upload_step(encoding)

    def secure_phase(self, rnd: RoundRecord) -> Phase:
        """The phase a stage message goes to (StaleStep outside a secure sum)."""
        if rnd.stage is not RoundStage.PHASE or rnd.collector is None or not rnd.collector.takes_messages:
            raise StaleStep(f"round {rnd.spec.round_id} is not in a secure sum")
        return rnd.collector

    def set_running(self, running: bool) -> None:
        """Start or pause the federation; pausing discards the round in flight."""
        self.running = running
        if not running and self.current is not None:
            self.discard(self.current, "federation paused by the operator")

    # ---- the driver ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Advance deadlines and stages (a failing transition discards the round, once)."""
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
                try:  # even a failing observer cannot keep the round alive
                    self.discard(self.current, f"internal error in the round driver: {type(exc).__name__}: {exc}")
                except Exception:
                    log.exception("round %d: discarding failed too; dropping the round", self.current.number)
                    self.current = None

    def _advance(self, rnd: RoundRecord, to: RoundStage) -> None:
        if to not in _TRANSITIONS[rnd.stage]:
            raise RuntimeError(f"round {rnd.number}: no transition from {rnd.stage.value} to {to.value}")
        rnd.stage = to

    def _maybe_open(self, now: float) -> None:
        if not self.running or self.ledger.finished:
            if self.ledger.finished:
                self._shut_down()
            return
        number = self.ledger.rounds_done + 1
        sites = self.roster.sites
        choice = self.cohort.choose(sites, self.roster.online_sites(now), now, number)
        if choice is None:
            return
        spec = self.cohort.spec(number, choice, sites, secure=self.secure, site_noise=self.site_noise,
                                global_version=self.ledger.global_version)
        rnd = RoundRecord(number=number, spec=spec, cohort=set(choice.cohort), participants=set(choice.cohort),
                          stage=RoundStage.TRAINING, deadline=now + self.fed.train_timeout, started=now,
                          needed=choice.needed, deadline_utc=utc_now(self.fed.train_timeout))
        self.current = rnd
        self.actions += [Assign(s, Step.TRAIN, spec.round_id, spec=spec) for s in choice.cohort]
        log.info("round %d opened with %s (%s; %d needed)", number, sites_text(len(rnd.cohort)), spec.round_id,
                 choice.needed, extra={"round": number})
        self.events("round_opened", round=number, cohort=len(rnd.cohort), round_id=spec.round_id)

    def _shut_down(self) -> None:
        self.actions += [Assign(s, Step.SHUTDOWN, message="the federation finished its planned rounds")
                         for s, r in self.roster.sites.items() if r.assignment.kind is not Step.SHUTDOWN]
        if not self._said_finished:
            self._said_finished = True
            log.info("federation %s finished: %d of %d rounds published, latest version %s", self.fed.name,
                     self.ledger.rounds_done, self.fed.rounds, self.ledger.global_version,
                     extra={"version": self.ledger.global_version})

    def _end_training(self, rnd: RoundRecord, now: float) -> None:
        self.events("stage_finished", stage="training", seconds=now - rnd.started, round=rnd.number)
        rnd.participants = set(rnd.trained)
        missing = rnd.cohort - rnd.participants
        if missing and len(rnd.participants) >= rnd.needed and now < rnd.deadline:
            # Over-selection did its job: release the slowest instead of waiting for them.
            rnd.released = set(missing)
            rnd.cohort -= rnd.released
            self._tell(rnd, sorted(rnd.released), Step.ROUND_DONE, message="released: enough sites finished training")
            log.info("round %d: %d sites finished training; released %s", rnd.number, len(rnd.participants),
                     sorted(rnd.released), extra={"round": rnd.number})
        elif missing:
            log.warning("round %d: %s did not finish training in time", rnd.number, sorted(missing))
        if len(rnd.participants) < min_participants(self.fed):
            self.discard(rnd, f"only {sites_text(len(rnd.participants))} finished training, need {min_participants(self.fed)}")
            return
        self._start_phase(rnd, 0, now)

    def _start_phase(self, rnd: RoundRecord, phase: int, now: float) -> None:
        self._advance(rnd, RoundStage.PHASE)
        rnd.phase, rnd.deadline, rnd.stage_started = phase, now + self.fed.stage_timeout, now
        rnd.deadline_utc = utc_now(self.fed.stage_timeout)
        rnd.collector = self.phases(PhaseRequest(
            spec=rnd.spec, phase=phase, participants=frozenset(rnd.participants),
            broadcast=rnd.broadcasts.get(phase, b""), now=now, deadline=rnd.deadline, individual=self.half.individual))
        self._moves(rnd, rnd.collector.start())

    def _drive_phase(self, rnd: RoundRecord, now: float) -> None:
        assert rnd.collector is not None
        try:
            moves = rnd.collector.advance(now)
        except Exception as exc:  # a secure sum that cannot finish discards the round, nothing else
            self.discard(rnd, f"secure sum failed: {exc}")
            return
        self._moves(rnd, moves)
        if rnd.collector.done:
            self._finish_phase(rnd, rnd.collector.outcome(), now)

    def _finish_phase(self, rnd: RoundRecord, result: PhaseResult, now: float) -> None:
        self.events("stage_finished", stage=f"phase{rnd.phase}", seconds=now - rnd.stage_started, round=rnd.number)
        self.ledger.record_release(rnd, result.contributors)
        problem = self.half.contributors_problem(rnd, result)
        if not problem:  # the cohort's metrics are kept even if the count check fails (clipping is never silent)
            rnd.participants, rnd.result = set(result.contributors), result
            if rnd.phase == 0 and result.cohort_metrics is not None:
                rnd.cohort_metrics = dict(result.cohort_metrics)
            problem = self.half.count_problem(rnd, result)
        if problem:
            self.discard(rnd, f"phase {rnd.phase}: {problem}")
            return
        try:
            outcome = self.half.combine(rnd, result, self.ledger.glob)
        except (ValueError, ArithmeticError) as exc:
            self.discard(rnd, f"aggregation failed: {exc}")
            return
        if isinstance(outcome, Broadcast):
            rnd.broadcasts[rnd.phase + 1] = encode_tensors(dict(outcome.tensors))
            rnd.broadcast_objs[rnd.phase + 1] = outcome
            self._start_phase(rnd, rnd.phase + 1, now)
            return
        self._publish(rnd, outcome, now)

    def _publish(self, rnd: RoundRecord, agg: Aggregate, now: float) -> None:
        growth = self.half.growth_problem(agg, self.ledger.glob)
        if growth:
            self.discard(rnd, growth)
            return
        sites = self.roster.sites
        samples = sum(sites[s].num_samples for s in rnd.participants if s in sites)
        version = self.ledger.publish(rnd, agg, now, samples)
        self._close(rnd, f"published {version}")

    def discard(self, rnd: RoundRecord, why: str) -> None:
        """End ``rnd`` without a version, recording ``why``."""
        self.ledger.discard(rnd, why)
        self._close(rnd, f"discarded: {why}")

    def _close(self, rnd: RoundRecord, message: str) -> None:
        self._advance(rnd, RoundStage.DONE)
        self._tell(rnd, list(rnd.cohort), Step.ROUND_DONE, message=message)
        self.current = None

    def _tell(self, rnd: RoundRecord, sites: list[SiteId], kind: Step, message: str) -> None:
        self.actions += [Assign(s, kind, rnd.spec.round_id, rnd.phase, message=message) for s in sites]

    def _moves(self, rnd: RoundRecord, moves: Mapping[SiteId, tuple[Step, bytes]]) -> None:
        self.actions += [Assign(s, kind, rnd.spec.round_id, rnd.phase, spec=rnd.spec, payload=payload)
                         for s, (kind, payload) in moves.items()]

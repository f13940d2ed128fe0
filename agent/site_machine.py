"""The site machine: the coordinator's steps in, actions out; every site-side decision, no I/O.

Theory of operation
-------------------
The driver (``agent/loop.py``) decodes each task into a ``SiteStep`` and calls ``on_step``; it performs the
actions returned in order. A list that needs an I/O result ends with a ``Fetch`` or a ``Train``; the driver
answers it with ``on_fetched`` / ``on_trained`` (or ``on_train_failed``) and performs what those return. No
gRPC, socket, thread, file or clock in here: the only state is the round held (``work``), the rule's site
state (saved by the driver on ``SaveRuleState``) and the secure-sum client this machine owns. Stages::

    IDLE --TRAIN--> FETCHING_GLOBAL --> TRAINING --> HOLDING --(phase steps)--> HOLDING --ROUND_DONE--> IDLE
                    (cached global: straight to TRAINING)      \\--> FETCHING_BROADCAST | FETCHING_CRL --/

Any stage may fall back to IDLE (the site drops out of the round: ``Drop``); a TRAIN step may start from
HOLDING too (the next round). The site-side checks, each in one place: the DP floor (``dp_refusal``), a step
of a round this site holds no trained update for (``on_step``), the metrics-stay-inside-the-secure-sum rule
(``on_trained``), training stopped or past the DP budget (``on_train_failed``: no submit); the secure sum's
own checks (privacy policy raised to ``min_contributors``, phase-0 survivor binding, refusals) are in
``SecureSumClient``, which only this machine calls.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Final

from .. import contract
from ..contract import TrainHyper, round_context
from ..proto import codec
from ..proto import federation_pb2 as pb
from ..secure_agg import SiteId
from ..strategies.base import Aggregate, Broadcast, RoundContext, Vectors
from ..strategies.registry import federated_rule
from ..strategies.rule import IndividualRule, Rule, SiteState
from .config import PrivacySection
from .privacy_ledger import BudgetExhausted
from .secure_sum import SecureSumClient
from .site_actions import (Audit, Drop, Fetch, Fetched, FetchKind, KeepUpdate, SaveRuleState, SiteAction, SiteStep,
                           Submit, Train, UploadTensors)
from .site_port import DpReporter
from .site_work import RESTING, TRANSITIONS, WAITS, PendingTrain, RoundWork, Stage
from .trainer import TrainingStopped, TrainResult

log = logging.getLogger("fedquilt.agent")

SECURE_STEPS: Final = frozenset({pb.DECLARE_LAYOUT, pb.SECAGG_ADVERTISE, pb.SECAGG_SHARE, pb.SECAGG_MASKED,
                                 pb.SECAGG_CONSISTENCY, pb.SECAGG_UNMASK})
"""The steps answered by the secure-sum client."""


def dp_refusal(floor: PrivacySection | None, hp: TrainHyper) -> str:
    """Why this site's ``[privacy]`` floor refuses these hyper-parameters under DP ("" if it does not)."""
    if floor is None:
        return ""
    if hp.batch_size < floor.min_dp_batch_size:
        return f"batch_size {hp.batch_size} is below min_dp_batch_size {floor.min_dp_batch_size}"
    if hp.eval_batches is not None and hp.eval_batches < floor.min_dp_eval_batches:
        return f"eval_batches {hp.eval_batches} is below min_dp_eval_batches {floor.min_dp_eval_batches}"
    return ""


class SiteMachine:
    """One site's side of every round (not thread-safe: one driver calls it)."""

    def __init__(self, *, alpha: float, rule_state: SiteState, secure_sum: SecureSumClient | None = None,
                 privacy: DpReporter | None = None, floor: PrivacySection | None = None) -> None:
        self.alpha, self.rule_state, self.secure_sum, self.privacy = alpha, rule_state, secure_sum, privacy
        self.floor = floor
        """The site's ``[privacy]`` section (agent/config.py); with DP on, rounds below its batch sizes are refused."""
        self.site = SiteId("")
        """This site's id, as the coordinator named it at enrolment."""
        self.stage = Stage.IDLE
        self.work: RoundWork | None = None
        self.rounds_trained = 0
        self._global: tuple[str | None, Aggregate | None] | None = None
        self._pending: PendingTrain | None = None
        self._waiting: SiteStep | None = None

    # ---- events -------------------------------------------------------------------------------

    def on_step(self, step: SiteStep) -> list[SiteAction]:
        """The actions answering one step (the machine must be resting: no I/O result outstanding)."""
        if self.stage not in RESTING:
            raise RuntimeError(f"{step.name} arrived while the site waits for I/O ({self.stage.value})")
        if step.kind == pb.TRAIN:
            return self._train(step)
        if step.kind == pb.ROUND_DONE:
            log.info("round %s closed: %s", step.round_id, step.message)
            self.forget()
            return []
        if step.kind != pb.UPLOAD_PLAIN and step.kind not in SECURE_STEPS:
            return []
        if step.kind in SECURE_STEPS and self.secure_sum is None:
            return self._drop(step, "the coordinator runs secure aggregation but this agent has no secure-sum client")
        work = self.work
        if work is None or work.spec.round_id != step.round_id:
            return self._drop(step, f"asked for {step.name} of round {step.round_id} but this site holds no trained "
                                    "update for it (it may have restarted)")
        if step.phase > 0 and isinstance(work.rule, Rule) and step.phase not in work.broadcasts:
            self._waiting = step
            return self._emit([Fetch(FetchKind.BROADCAST, step.round_id, step.phase)])
        return self._serve(work, step)

    def on_fetched(self, fetched: Fetched) -> list[SiteAction]:
        """A ``Fetch``'s result (a CRL may come as a failure; the global and a broadcast may not)."""
        if self.stage is not WAITS[fetched.what]:
            raise RuntimeError(f"{fetched.what.value} fetched while the site is {self.stage.value}")
        if fetched.what is FetchKind.CRL:
            assert self.secure_sum is not None and self.work is not None
            return self._serve(self.work, None, self.secure_sum.on_crl(fetched))
        if fetched.data is None:
            raise RuntimeError(f"the {fetched.what.value.lower()} could not be fetched ({fetched.failure})")
        if fetched.what is FetchKind.GLOBAL:
            assert self._pending is not None
            self._global = (self._pending.spec.global_version, contract.decode_aggregate(fetched.data))
            return self._plan(self._pending, self._global[1])
        step, work = self._waiting, self.work
        assert step is not None and work is not None
        work.broadcasts[step.phase] = Broadcast(tensors=codec.decode_tensors(fetched.data))
        work.broadcast_digests[step.phase] = hashlib.sha256(fetched.data).digest()
        return self._serve(work, step)

    def on_trained(self, result: TrainResult) -> list[SiteAction]:
        """Local training finished: hold the update, report the metrics (only ``dp`` under SecAgg)."""
        pending = self._pending
        if self.stage is not Stage.TRAINING or pending is None:
            raise RuntimeError(f"a training result arrived while the site is {self.stage.value}")
        spec = pending.spec
        metrics: dict[str, object] = {"n": result.n_samples, "loss_before": _finite(result.loss_before),
                                      "loss_after": _finite(result.loss_after), "steps": len(result.losses),
                                      "eval_loss": _finite(result.eval_loss)}
        if self.privacy is not None:
            metrics["dp"] = self.privacy.report_of(result)  # refuses a result trained without DP
        # The federation decides each site's weight (its capped count, or 1 for equal weighting); the
        # coordinator checks the summed count against it and discards a round that disagrees.
        n = int(spec.weights.get(self.site, result.n_samples))
        self.work = RoundWork(spec=spec, rule=pending.rule, ctx=pending.ctx, update=result.update, n=n,
                              dp=self.privacy is not None, vectors_of=self.phase_vectors, metrics=dict(metrics))
        self._pending = None
        self._advance(Stage.HOLDING)
        if spec.secagg is not None:
            # Under secure aggregation no per-site value computed from data leaves in the clear: the losses go
            # through the secure sum (SumVectors, agent/secure_sum.py); only the DP report (a property of this
            # site's configuration and public sample count) is sent.
            metrics = {k: v for k, v in metrics.items() if k == "dp"}
        actions: list[SiteAction] = [KeepUpdate(spec.round_id, result.update.adapter)] if result.update.adapter else []
        self.rounds_trained += 1
        log.info("round %d: loss %.4f -> %.4f", spec.round, result.loss_before, result.loss_after)
        return actions + [Submit(pending.step.round_id, pending.step.step, pb.TRAIN, report=metrics)]

    def on_train_failed(self, exc: TrainingStopped | BudgetExhausted) -> list[SiteAction]:
        """Training was stopped or would pass the DP budget: no submit (the training deadline moves the round on)."""
        pending = self._pending
        if self.stage is not Stage.TRAINING or pending is None:
            raise RuntimeError(f"a training failure arrived while the site is {self.stage.value}")
        if isinstance(exc, BudgetExhausted):
            log.error("round %d: not taking part, %s; this site submits nothing and declines every later "
                      "round that would pass its DP budget", pending.spec.round, exc)
        else:
            log.warning("round %d: %s", pending.spec.round, exc)
        self.forget()
        return [Drop(pending.spec.round_id, str(exc))]

    def forget(self) -> None:
        """Drop the round held and anything in flight (the driver calls it when a step failed)."""
        self.work, self._pending, self._waiting = None, None, None
        self.stage = Stage.IDLE

    def interrupted(self) -> None:
        """The coordinator refused a call of the step in flight: rest again, keeping the round held."""
        self._pending, self._waiting = None, None
        self.stage = Stage.HOLDING if self.work is not None else Stage.IDLE

    def phase_vectors(self, work: RoundWork, phase: int, ctx: RoundContext) -> Vectors:
        """The rule's vectors for ``phase`` of the round held (its broadcast already fetched)."""
        if isinstance(work.rule, IndividualRule):
            return work.rule.vectors(work.update, work.n, ctx)
        broadcast = work.broadcasts[phase] if phase > 0 else None
        vectors = work.rule.vectors(phase, work.update, work.n, ctx, broadcast, state=self.rule_state)
        if phase == work.rule.phases - 1:
            work.state_changed = True
        return vectors

    # ---- the steps ----------------------------------------------------------------------------

    def _train(self, step: SiteStep) -> list[SiteAction]:
        spec = step.spec
        if spec is None:
            raise RuntimeError(f"TRAIN step {step.step} carries no round spec")
        # issue 14: the round's modules_to_save travel with the rule
        pending = PendingTrain(step, spec, federated_rule(spec.rule, spec.params), round_context(spec))
        self._pending = pending
        if self._global is not None and self._global[0] == spec.global_version:
            return self._plan(pending, self._global[1])
        return self._emit([Fetch(FetchKind.GLOBAL)])

    def _plan(self, pending: PendingTrain, glob: Aggregate | None) -> list[SiteAction]:
        spec = pending.spec
        plan = pending.rule.start(glob, pending.ctx, self.site, self.alpha, state=self.rule_state)
        hp = TrainHyper.model_validate(spec.train)
        refusal = dp_refusal(self.floor, hp) if self.privacy is not None else ""
        if refusal:
            # No submit: the coordinator's training deadline moves the round on without this site.
            log.error("round %d: refusing to train under DP: %s ([privacy] in agent.toml)", spec.round, refusal)
            self.forget()
            return [Drop(spec.round_id, f"refusing to train under DP: {refusal}")]
        log.info("round %d: training (rule %s, rank %d)", spec.round, spec.rule, plan.rank)
        return self._emit([Train(pending.step.step, plan, hp)])

    def _serve(self, work: RoundWork, step: SiteStep | None, actions: list[SiteAction] | None = None
               ) -> list[SiteAction]:
        """Answer a phase step of the round held (or, with ``actions``, take the secure-sum client's answer)."""
        self._waiting = None
        if actions is None:
            assert step is not None
            if step.kind == pb.UPLOAD_PLAIN:
                vectors = work.vectors(step.phase, work.ctx)
                actions = [Audit(step.round_id, step.phase, vectors),
                           UploadTensors(step.round_id, step.step, step.phase, work.spec.round, vectors)]
            else:
                assert self.secure_sum is not None
                actions = self.secure_sum.on_step(self.site, work, step)
        if work.state_changed:
            work.state_changed = False
            actions = [SaveRuleState(self.rule_state), *actions]
        return self._emit(actions)

    def _drop(self, step: SiteStep, reason: str) -> list[SiteAction]:
        log.error("%s for round %s: %s; this site drops out of the round", step.name, step.round_id, reason)
        self.forget()
        return [Drop(step.round_id, reason)]

    def _emit(self, actions: list[SiteAction]) -> list[SiteAction]:
        """Move to the stage the last action waits in (a ``Fetch`` or ``Train``), or rest."""
        last = actions[-1] if actions else None
        if isinstance(last, Fetch):
            self._advance(WAITS[last.what])
        elif isinstance(last, Train):
            self._advance(Stage.TRAINING)
        else:
            self._advance(Stage.HOLDING if self.work is not None else Stage.IDLE)
        return actions

    def _advance(self, to: Stage) -> None:
        if to not in TRANSITIONS[self.stage]:
            raise RuntimeError(f"site machine: no transition from {self.stage.value} to {to.value}")
        self.stage = to


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


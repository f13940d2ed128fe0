"""The agent's life: enrol, wait for a step, do it, repeat — until the federation shuts down.

Theory of operation
-------------------
The coordinator never dials out; the agent long-polls ``WaitForTask`` and handles one
``Task`` at a time. ``TRAIN`` downloads the global state, lets the rule's client half plan the
local training, trains, and reports metrics; the trained update stays in memory for the
round's phases. ``UPLOAD_PLAIN`` sends a phase's vectors in plaintext; the ``SECAGG_*`` steps run
the secure sum through ``SecureSumClient``. Connection loss is retried with backoff by the
transport; after a reconnect the agent says Hello again (the coordinator may have restarted) and
keeps its step counter, which only grows on the coordinator's side.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import grpc
import numpy as np

from .. import contract
from ..contract import TrainHyper, round_context
from ..proto import codec
from ..proto import federation_pb2 as pb
from ..proto import tensors_pb2 as tpb
from ..proto.reports import train_report_to_pb
from ..proto.round_spec import RoundSpec, decode_spec
from ..strategies.base import Broadcast, LocalUpdate, RoundContext
from ..strategies.rule import IndividualRule, Rule
from ..strategies.registry import federated_rule
from .privacy_ledger import BudgetExhausted
from .config import PrivacySection
from .privacy_session import PrivacySite
from .round_watch import RoundWatch
from .rule_state import RuleStateFile
from .secure_sum import SecureSumClient
from .site_port import PhaseWork, SiteTransport
from .trainer import TrainingStopped, TrainResult, Trainer

log = logging.getLogger("fedquilt.agent")


@dataclass
class RoundWork:
    """What the agent keeps between the steps of one round."""

    spec: RoundSpec
    rule: Rule | IndividualRule
    ctx: RoundContext
    update: LocalUpdate
    n: int
    broadcasts: dict[int, Broadcast] = field(default_factory=dict)
    broadcast_digests: dict[int, bytes] = field(default_factory=dict)
    """sha256 of each broadcast exactly as downloaded (binds the next secure sum's masks to it)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """This site's training/eval metrics; under SecAgg they travel only inside the first secure sum."""


class AgentLoop:
    """Serves rounds for one site until SHUTDOWN (or ``max_steps`` for tests)."""

    def __init__(self, transport: SiteTransport, trainer: Trainer, data: Any, hello: pb.HelloRequest, alpha: float,
                 state_dir: Path, eval_data: Any = None, privacy: PrivacySite | None = None,
                 secure_sum: SecureSumClient | None = None, progress: bool = True,
                 keep_submissions: bool = False) -> None:
        self.transport, self.trainer, self.data, self.eval_data = transport, trainer, data, eval_data
        self.hello_req, self.alpha, self.privacy, self.progress = hello, alpha, privacy, progress
        self.secure_sum = secure_sum
        self.keep_submissions = keep_submissions
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.rule_state_file = RuleStateFile(state_dir / "rule_state.pt")
        self.rule_state: dict[str, Any] = self.rule_state_file.load()
        self.site = ""
        self.after_step = 0
        self.work: RoundWork | None = None
        self.rounds_trained = 0
        self._global_cache: tuple[str | None, Any] = ("", None)
        self.privacy_floor: PrivacySection | None = None
        """The site's ``[privacy]`` section (agent/config.py); with DP on, rounds below its batch sizes are refused."""
        transport.on_reconnect = self._reconnected

    # ---- lifecycle ----------------------------------------------------------------------------

    def enrol(self) -> None:
        """Say Hello; learn our site id from the coordinator (it reads our certificate)."""
        reply = self.transport.hello(self.hello_req)
        self.site = reply.site_id
        log.info("enrolled as %s in federation %s (rule %s)", reply.site_id, reply.federation, reply.rule)

    def _reconnected(self) -> None:
        log.info("coordinator reachable again; re-enrolling")
        reply = self.transport.hello_once(self.hello_req)
        self.site = reply.site_id

    def run(self, max_steps: int | None = None) -> int:
        """Serve steps until the federation shuts down; returns an exit code."""
        self.enrol()
        handled = 0
        while max_steps is None or handled < max_steps:
            try:
                task = self.transport.wait(self.after_step)
            except grpc.RpcError as exc:
                if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                    log.warning("coordinator does not know us (%s); enrolling again", exc.details())
                    self.enrol()
                    continue
                raise
            if task.kind == pb.IDLE:
                continue
            self.after_step = max(self.after_step, task.step)
            handled += 1
            if task.kind == pb.SHUTDOWN:
                log.info("federation finished: %s", task.message)
                return 0
            self._handle(task)
        return 0

    def _handle(self, task: pb.Task) -> None:
        kind = pb.StepKind.Name(task.kind)
        try:
            if task.kind == pb.TRAIN:
                self._train(task)
            elif task.kind == pb.UPLOAD_PLAIN:
                self._upload_plain(task)
            elif kind.startswith("SECAGG_") or task.kind == pb.DECLARE_LAYOUT:
                self._secagg(task)
            elif task.kind == pb.ROUND_DONE:
                log.info("round %s closed: %s", task.round_id, task.message)
                self.work = None
        except grpc.RpcError as exc:
            # The coordinator refused this step (stale, duplicate, …): the round goes on without us.
            log.warning("%s for %s refused: %s %s", kind, task.round_id, exc.code().name, exc.details())
        except Exception:
            log.exception("%s for round %s failed; this site drops out of the round", kind, task.round_id)
            self.work = None

    # ---- steps --------------------------------------------------------------------------------

    def _global(self, version: str | None) -> Any:
        if self._global_cache[0] != version:
            self._global_cache = (version, contract.decode_aggregate(self.transport.download(pb.DownloadRequest.GLOBAL)))
        return self._global_cache[1]

    def _train(self, task: pb.Task) -> None:
        spec = decode_spec(task.spec)
        rule = federated_rule(spec.rule, spec.params)  # issue 14: the round's modules_to_save travel with the rule
        ctx = round_context(spec)
        glob = self._global(spec.global_version)
        plan = rule.start(glob, ctx, self.site, self.alpha, state=self.rule_state)
        hp = TrainHyper.model_validate(spec.train)
        refusal = self._dp_refusal(hp)
        if refusal:
            # No submit: the coordinator's training deadline moves the round on without this site.
            log.error("round %d: refusing to train under DP: %s ([privacy] in agent.toml)", spec.round, refusal)
            self.work = None
            return
        log.info("round %d: training (rule %s, rank %d)", spec.round, spec.rule, plan.rank)
        try:
            with RoundWatch(self.transport, task.step) as stop:  # `admin stop` interrupts training (issue 13)
                if hasattr(self.trainer, "stop_requested"):
                    self.trainer.stop_requested = stop
                result: TrainResult = self.trainer.train(plan, self.data, hp, progress=self.progress)
        except TrainingStopped as exc:
            log.warning("round %d: %s", spec.round, exc)
            self.work = None
            return
        except BudgetExhausted as exc:
            # No submit: the coordinator's training deadline moves the round on without this site.
            log.error("round %d: not taking part, %s; this site submits nothing and declines every later "
                      "round that would pass its DP budget", spec.round, exc)
            self.work = None
            return
        metrics: dict[str, Any] = {"n": result.n_samples, "loss_before": _finite(result.loss_before),
                                   "loss_after": _finite(result.loss_after), "steps": len(result.losses),
                                   "eval_loss": _finite(result.eval_loss)}
        if self.privacy is not None:
            metrics["dp"] = self.privacy.report_of(result)  # refuses a result trained without DP
        # The federation decides each site's weight (its capped count, or 1 for equal weighting); the
        # coordinator checks the summed count against it and discards a round that disagrees.
        n = int(spec.weights.get(self.site, result.n_samples))
        self.work = RoundWork(spec=spec, rule=rule, ctx=ctx, update=result.update, n=n, metrics=dict(metrics))
        if spec.secagg is not None:
            # Under secure aggregation no per-site value computed from data leaves in the clear: the losses go
            # through the secure sum (agent/secure_sum.py); only the DP report (a property of this site's
            # configuration and public sample count) is sent.
            metrics = {k: v for k, v in metrics.items() if k == "dp"}
        if self.keep_submissions and result.update.adapter:
            from ..strategies.adapters import save_peft

            save_peft(result.update.adapter, self.state_dir / "submissions" / f"{spec.round_id}-update", "local", "causal-lm")
        self.rounds_trained += 1
        log.info("round %d: loss %.4f -> %.4f", spec.round, result.loss_before, result.loss_after)
        self.transport.submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=pb.TRAIN,
                                               train=train_report_to_pb(metrics)))

    def _dp_refusal(self, hp: TrainHyper) -> str:
        """Why this site's [privacy] floor refuses these hyper-parameters under DP ("" if it does not)."""
        floor = self.privacy_floor
        if self.privacy is None or floor is None:
            return ""
        if hp.batch_size < floor.min_dp_batch_size:
            return f"batch_size {hp.batch_size} is below min_dp_batch_size {floor.min_dp_batch_size}"
        if hp.eval_batches is not None and hp.eval_batches < floor.min_dp_eval_batches:
            return f"eval_batches {hp.eval_batches} is below min_dp_eval_batches {floor.min_dp_eval_batches}"
        return ""

    def phase_vectors(self, work: PhaseWork, phase: int, ctx: RoundContext) -> dict[str, Any]:
        """The rule's vectors for ``phase`` of the round held (downloading that phase's broadcast once)."""
        assert isinstance(work, RoundWork), "the loop's own round work"
        if isinstance(work.rule, IndividualRule):
            return work.rule.vectors(work.update, work.n, ctx)
        broadcast = None
        if phase > 0:
            if phase not in work.broadcasts:
                data = self.transport.download(pb.DownloadRequest.BROADCAST, work.spec.round_id, phase)
                work.broadcasts[phase] = Broadcast(tensors=codec.decode_tensors(data))
                work.broadcast_digests[phase] = hashlib.sha256(data).digest()
            broadcast = work.broadcasts[phase]
        vectors = work.rule.vectors(phase, work.update, work.n, ctx, broadcast, state=self.rule_state)
        if phase == work.rule.phases - 1:
            self.rule_state_file.save(self.rule_state)
        return vectors

    def _current(self, task: pb.Task) -> RoundWork:
        if self.work is None or self.work.spec.round_id != task.round_id:
            raise RuntimeError(f"asked for {pb.StepKind.Name(task.kind)} of round {task.round_id} but this site "
                               "holds no trained update for it (it may have restarted)")
        return self.work

    def _upload_plain(self, task: pb.Task) -> None:
        work = self._current(task)
        vectors = self.phase_vectors(work, task.phase, work.ctx)
        self.audit(task.round_id, task.phase, vectors)
        ack = self.transport.upload_tensors(task.round_id, task.step, task.phase, vectors)
        log.info("round %d phase %d: uploaded %d tensors (%s)", work.spec.round, task.phase, len(vectors), ack.message)

    def _secagg(self, task: pb.Task) -> None:
        if self.secure_sum is None:
            raise RuntimeError("the coordinator runs secure aggregation but this agent has no secure-sum client")
        work = self._current(task)
        self.secure_sum(self, work, task)

    def audit(self, round_id: str, phase: int, vectors: Mapping[str, Any]) -> None:
        """Keep a plaintext copy of what this site submits (only with ``keep_submissions``)."""
        if self.keep_submissions:
            folder = self.state_dir / "submissions"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{round_id}-phase{phase}.safetensors").write_bytes(codec.encode_tensors(
                {k: np.asarray(v) for k, v in vectors.items()}))


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def hello_request(trainer: Trainer, fingerprint: str, n: int, rank: int, alpha: float, task: str,
                  version: str) -> pb.HelloRequest:
    """The Hello this site sends: who it is in numbers, and which base and targets it trains."""
    shapes = {name: tpb.Shape(dims=list(shape)) for name, shape in trainer.target_names().items()}
    return pb.HelloRequest(agent_version=version, base_fingerprint=fingerprint, num_samples=n, lora_rank=rank,
                           lora_alpha=alpha, task=task, target_shapes=shapes)


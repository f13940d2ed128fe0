"""The agent's I/O driver: enrol, wait for a step, perform what the site machine decides, repeat.

Theory of operation
-------------------
The coordinator never dials out; the agent long-polls ``WaitForTask`` and handles one ``Task`` at a
time. Every decision is the site machine's (``agent/site_machine.py``: the DP floor, the secure sum's
privacy checks, which metrics may leave): ``AgentLoop`` decodes the task into a ``SiteStep``, hands it to
``SiteMachine.on_step`` and performs the actions (``SiteAction``) that come back in order — transport calls,
local training through the ``Trainer`` (watched by ``RoundWatch``, so ``admin stop`` interrupts it), the
rule-state file, the audit copies — feeding each ``Fetch`` / ``Train`` result back to the machine. A call the
coordinator refuses (a gRPC status) ends the step with one warning and keeps the round held; any other
failure drops this site out of the round. Connection loss is retried with backoff by the transport; after a
reconnect the agent says Hello again (the coordinator may have restarted) and keeps its step counter, which
only grows on the coordinator's side.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any, Mapping

import grpc
import numpy as np

from ..proto import codec
from ..proto import federation_pb2 as pb
from ..proto import tensors_pb2 as tpb
from ..proto.reports import train_report_to_pb
from ..secure_agg import SiteId
from .config import PrivacySection
from .privacy_ledger import BudgetExhausted
from .privacy_session import PrivacySite
from .round_watch import RoundWatch
from .rule_state import RuleStateFile
from .secure_sum import SecureSumClient
from .site_actions import (Audit, Drop, Fetch, Fetched, FetchKind, KeepUpdate, SaveRuleState, SiteAction, Submit,
                           Train, UploadMasked, UploadTensors, decode_step)
from .site_machine import SiteMachine
from .site_port import SiteTransport
from .site_work import RoundWork
from .trainer import TrainingStopped, TrainResult, Trainer

log = logging.getLogger("fedquilt.agent")

_DOWNLOADS = {FetchKind.GLOBAL: pb.DownloadRequest.GLOBAL, FetchKind.BROADCAST: pb.DownloadRequest.BROADCAST,
              FetchKind.CRL: pb.DownloadRequest.CRL}


class AgentLoop:
    """Serves rounds for one site until SHUTDOWN (or ``max_steps`` for tests)."""

    machine_class: type[SiteMachine] = SiteMachine
    """The site machine this driver runs (a test plays a hostile site with a subclass)."""

    def __init__(self, transport: SiteTransport, trainer: Trainer, data: Any, hello: pb.HelloRequest, alpha: float,
                 state_dir: Path, eval_data: Any = None, privacy: PrivacySite | None = None,
                 secure_sum: SecureSumClient | None = None, progress: bool = True,
                 keep_submissions: bool = False) -> None:
        self.transport, self.trainer, self.data, self.eval_data = transport, trainer, data, eval_data
        self.hello_req, self.alpha, self.privacy, self.progress = hello, alpha, privacy, progress
        self.keep_submissions = keep_submissions
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.rule_state_file = RuleStateFile(state_dir / "rule_state.pt")
        self.machine = self.machine_class(alpha=alpha, rule_state=self.rule_state_file.load(), secure_sum=secure_sum,
                                          privacy=privacy)
        self.after_step = 0
        transport.on_reconnect = self._reconnected

    # ---- the machine's state, as callers and tests read it ------------------------------------------

    @property
    def site(self) -> str:
        """This site's id (learnt at enrolment)."""
        return self.machine.site

    @site.setter
    def site(self, value: str) -> None:
        self.machine.site = SiteId(value)

    @property
    def work(self) -> RoundWork | None:
        """The round this site holds (its trained update), or None."""
        return self.machine.work

    @work.setter
    def work(self, value: None) -> None:
        if value is not None:
            raise ValueError("only the site machine starts holding a round; set work to None to drop it")
        self.machine.forget()

    @property
    def rounds_trained(self) -> int:
        """Rounds this site trained for (and reported) since it started."""
        return self.machine.rounds_trained

    @property
    def secure_sum(self) -> SecureSumClient | None:
        """The site machine's secure-sum client."""
        return self.machine.secure_sum

    @property
    def privacy_floor(self) -> PrivacySection | None:
        """The site's ``[privacy]`` section; with DP on, rounds below its batch sizes are refused (by the machine)."""
        return self.machine.floor

    @privacy_floor.setter
    def privacy_floor(self, floor: PrivacySection | None) -> None:
        self.machine.floor = floor

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
            self._perform_all(self.machine.on_step(decode_step(task)))
        except grpc.RpcError as exc:
            # The coordinator refused this step (stale, duplicate, …): the round goes on without us.
            log.warning("%s for %s refused: %s %s", kind, task.round_id, exc.code().name, exc.details())
            self.machine.interrupted()
        except Exception:
            log.exception("%s for round %s failed; this site drops out of the round", kind, task.round_id)
            self.machine.forget()

    # ---- performing the machine's actions ---------------------------------------------------------

    def _perform_all(self, actions: list[SiteAction]) -> None:
        queue = deque(actions)
        while queue:
            queue.extend(self._perform(queue.popleft()))

    def _perform(self, action: SiteAction) -> list[SiteAction]:
        """Do one action; the machine's follow-up actions for a ``Fetch`` or ``Train``."""
        if isinstance(action, Train):
            return self._train(action)
        if isinstance(action, Fetch):
            return self.machine.on_fetched(fetch(self.transport, action))
        if isinstance(action, SaveRuleState):
            self.rule_state_file.save(action.state)
        elif isinstance(action, Audit):
            self.audit(action.round_id, action.phase, action.vectors)
        elif isinstance(action, KeepUpdate):
            if self.keep_submissions:
                from ..strategies.adapters import save_peft

                save_peft(action.adapter, self.state_dir / "submissions" / f"{action.round_id}-update", "local",
                          "causal-lm")
        elif not isinstance(action, Drop):  # a Drop was logged by the machine; nothing goes out
            send(self.transport, action)
        return []

    def _train(self, action: Train) -> list[SiteAction]:
        try:
            with RoundWatch(self.transport, action.step) as stop:  # `admin stop` interrupts training (issue 13)
                if hasattr(self.trainer, "stop_requested"):
                    self.trainer.stop_requested = stop
                result: TrainResult = self.trainer.train(action.plan, self.data, action.hp, progress=self.progress)
        except (TrainingStopped, BudgetExhausted) as exc:
            return self.machine.on_train_failed(exc)
        return self.machine.on_trained(result)

    def audit(self, round_id: str, phase: int, vectors: Mapping[str, Any]) -> None:
        """Keep a plaintext copy of what this site submits (only with ``keep_submissions``)."""
        if self.keep_submissions:
            folder = self.state_dir / "submissions"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{round_id}-phase{phase}.safetensors").write_bytes(codec.encode_tensors(
                {k: np.asarray(v) for k, v in vectors.items()}))


def fetch(transport: SiteTransport, action: Fetch) -> Fetched:
    """Download what ``action`` asks for; a CRL that cannot be fetched comes back as a failure, not an error."""
    try:
        data = transport.download(_DOWNLOADS[action.what], action.round_id, action.phase)
    except grpc.RpcError as exc:
        if action.what is not FetchKind.CRL:
            raise
        return Fetched(action.what, None, exc.code().name)
    return Fetched(action.what, data)


def send(transport: SiteTransport, action: Submit | UploadTensors | UploadMasked) -> None:
    """Send one reply to the coordinator, exactly as the wire expects it."""
    if isinstance(action, UploadTensors):
        ack = transport.upload_tensors(action.round_id, action.step, action.phase, dict(action.vectors))
        log.info("round %d phase %d: uploaded %d tensors (%s)", action.round, action.phase, len(action.vectors),
                 ack.message)
    elif isinstance(action, UploadMasked):
        transport.upload(action.round_id, action.step, action.phase, action.encoding, action.data)
    elif action.report is not None:
        transport.submit(pb.SubmitRequest(round_id=action.round_id, step=action.step, kind=action.kind,
                                          train=train_report_to_pb(action.report)))
    elif action.refusal:
        transport.submit(pb.SubmitRequest(round_id=action.round_id, step=action.step, kind=action.kind,
                                          refusal=action.refusal))
    else:
        transport.submit(pb.SubmitRequest(round_id=action.round_id, step=action.step, kind=action.kind,
                                          payload=action.payload))


def hello_request(trainer: Trainer, fingerprint: str, n: int, rank: int, alpha: float, task: str,
                  version: str) -> pb.HelloRequest:
    """The Hello this site sends: who it is in numbers, and which base and targets it trains."""
    shapes = {name: tpb.Shape(dims=list(shape)) for name, shape in trainer.target_names().items()}
    return pb.HelloRequest(agent_version=version, base_fingerprint=fingerprint, num_samples=n, lora_rank=rank,
                           lora_alpha=alpha, task=task, target_shapes=shapes)


"""SecurePair: the real coordinator edge and N real agent loops, wired in memory (no sockets, no processes).

Each site is the agent's own ``AgentLoop`` (the I/O driver of its ``SiteMachine``, which owns the
site's ``SecureSumClient``) over the agent's own ``Transport``; the transport's channel hands each serialized
request straight to the coordinator's ``FederationService`` handlers, with an auth context that names
the site's certificate (issued by an in-test CA), so the servicer authorises, decodes, dispatches to the
``Orchestrator`` and encodes exactly as it does behind gRPC. Under ``secure=True`` the orchestrator runs
the coordinator's ``SecureSum`` (``make_factory``); with ``secure=False`` the same harness is the
plaintext oracle for averaging rules. Only training is stood in for: ``DrawTrainer`` draws factors of
the planned rank (keeping whatever the rule froze), the same draw for the same site seed and round.

Time is the injected ``Clock``: a pass in which no live site had anything to do moves it past the
stage timeout, so a site that stopped answering is dropped by the deadline, as in production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Mapping

import grpc
import torch
from cryptography import x509

from fedquilt import secure_agg as sa
from fedquilt.agent.loop import AgentLoop
from fedquilt.agent.secure_sum import SecureSumClient
from fedquilt.agent.transport import Transport
from fedquilt.agent.trainer import TrainResult
from fedquilt.coordinator.config import CoordinatorConfig, FederationConfig, SecAggConfig, TlsConfig
from fedquilt.coordinator.identity import Authorizer, RevocationList
from fedquilt.coordinator.metrics import Metrics
from fedquilt.coordinator.orchestrator import Orchestrator
from fedquilt.coordinator.peer_limits import PeerLimits
from fedquilt.coordinator.rpc_errors import RefusalLog
from fedquilt.coordinator.secure_sum import make_factory
from fedquilt.coordinator.rpc_handlers import Edge
from fedquilt.coordinator.servicer import FederationService
from fedquilt.coordinator.steps import Step
from fedquilt.coordinator.wakeups import Wakeups
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import tensors_pb2 as tpb
from fedquilt.strategies.base import Aggregate, LocalUpdate, TrainingPlan
from fedquilt.strategies.lora import Adapter
from fedquilt.strategies.registry import make_rule
from round_pair import ALPHA, FINGERPRINT, SHAPES, Clock, RoundPair, draw_factors

STAGE_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Pki:
    """An in-test CA and one certificate per site name (``pki.init_ca`` / ``pki.issue``)."""

    dir: Path

    def ca(self) -> Path:
        """The CA certificate."""
        return self.dir / "ca" / "ca.pem"

    def cert(self, name: str) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of ``name``."""
        return (self.dir / "certs" / f"{name}.pem").read_bytes(), (self.dir / "certs" / f"{name}.key").read_bytes()


class MemoryRpcError(grpc.RpcError):
    """What ``context.abort`` raises in memory: the status the servicer chose, as a gRPC client sees it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        """The status code."""
        return self._code

    def details(self) -> str:
        """The status message."""
        return self._details


class MemoryContext:
    """The servicer's view of one caller: its certificate (as TLS would report it) and ``abort``."""

    def __init__(self, site: str, cert_pem: bytes) -> None:
        self._auth = {"x509_common_name": [site.encode()], "x509_pem_cert": [cert_pem]}
        self.site = site

    def auth_context(self) -> Mapping[str, list[bytes]]:
        """Like ``grpc.aio.ServicerContext.auth_context``."""
        return self._auth

    def peer(self) -> str:
        """The transport address."""
        return f"memory:{self.site}"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with this status."""
        raise MemoryRpcError(code, details)


class InlineExecutor(Executor):
    """Runs the domain call at once on the calling thread (the harness is single-threaded)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Call ``fn`` now; its result or exception in a done future."""
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class Coordinator:
    """The coordinator's real edge (``FederationService``) over a real ``Orchestrator``; restartable."""

    def __init__(self, pair: "SecurePair") -> None:
        self.pair = pair
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        ca = x509.load_pem_x509_certificate(pair.pki.ca().read_bytes())
        self.crl = pair.pki.dir / "ca" / "crl.pem"
        self.edge = Edge(Authorizer(ca, RevocationList(self.crl, ca)), Metrics(), PeerLimits(16), RefusalLog(0),
                         InlineExecutor())
        self.start(glob=None, rounds_done=0, version=None)

    def start(self, glob: Aggregate | None, rounds_done: int, version: str | None) -> None:
        """A fresh orchestrator and service (a coordinator process starting on the published state)."""
        pair = self.pair
        factory = make_factory(pair.cfg) if pair.secure else None
        self.orch = Orchestrator(rule=make_rule(pair.rule_name, pair.params), fed=pair.cfg.federation,
                                 secure=pair.secure, publisher=pair.publish, glob=glob, rounds_done=rounds_done,
                                 global_version=version, secure_sum_factory=factory, clock=pair.clock)
        self.service = FederationService(self.edge, self.orch, Wakeups(self.loop, lambda: self.orch.step_counter),
                                         max_upload_bytes=1 << 26, long_poll=0.001, upload_idle=30.0,
                                         upload_total=60.0, crl_path=self.crl)
        self.handlers = self.service.handlers()

    def call(self, method: str, coro: Any) -> Any:
        """Run one handler coroutine to completion (one call at a time: the agent's ``RoundWatch`` polls from
        its own thread while the loop trains)."""
        with self._lock:
            return self.loop.run_until_complete(coro)


class MemoryChannel:
    """A ``grpc.Channel`` for ``FederationStub``: each call goes straight to the coordinator's handlers."""

    def __init__(self, coordinator: Coordinator, site: str, cert_pem: bytes) -> None:
        self.coordinator, self.context = coordinator, MemoryContext(site, cert_pem)

    def _handler(self, method: str) -> Any:
        return self.coordinator.handlers[method.rsplit("/", 1)[1]]

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes],
                    response_deserializer: Callable[[bytes], Any], **_: Any) -> Callable[..., Any]:
        """Hello, WaitForTask, Submit."""
        def call(request: Any, timeout: float | None = None, **__: Any) -> Any:
            raw = self.coordinator.call(method, self._handler(method).unary_unary(request_serializer(request),
                                                                                  self.context))
            return response_deserializer(raw)
        return call

    def unary_stream(self, method: str, request_serializer: Callable[[Any], bytes],
                     response_deserializer: Callable[[bytes], Any], **_: Any) -> Callable[..., Iterator[Any]]:
        """Download."""
        def call(request: Any, timeout: float | None = None, **__: Any) -> Iterator[Any]:
            async def collect() -> list[bytes]:
                return [raw async for raw in self._handler(method).unary_stream(request_serializer(request),
                                                                                self.context)]
            return iter([response_deserializer(raw) for raw in self.coordinator.call(method, collect())])
        return call

    def stream_unary(self, method: str, request_serializer: Callable[[Any], bytes],
                     response_deserializer: Callable[[bytes], Any], **_: Any) -> Callable[..., Any]:
        """Upload."""
        def call(requests: Iterable[Any], timeout: float | None = None, **__: Any) -> Any:
            raws = [request_serializer(r) for r in requests]

            async def stream() -> AsyncIterator[bytes]:
                for raw in raws:
                    yield raw
            return response_deserializer(self.coordinator.call(method, self._handler(method).stream_unary(
                stream(), self.context)))
        return call

    def stream_stream(self, *_: Any, **__: Any) -> Any:
        """Not used by the Federation service."""
        raise NotImplementedError


class DrawTrainer:
    """Stands in for ``LoraTrainer``: draws the plan's trainable factors (or dense deltas) from ``seed``."""

    def __init__(self, n: int) -> None:
        self.n, self.seed = n, 0

    def target_names(self) -> dict[str, tuple[int, int]]:
        """The harness's targets."""
        return dict(SHAPES)

    def train(self, plan: TrainingPlan, data: Any, hp: Any, progress: bool = True) -> TrainResult:
        """One "round of training": random factors of the planned rank, frozen ones kept."""
        gen = torch.Generator().manual_seed(self.seed)
        if plan.dense:
            dense = {m: (torch.randn(d, k, generator=gen, dtype=torch.float64) * 0.1).to(torch.float32)
                     for m, (d, k) in SHAPES.items()}
            return TrainResult(update=LocalUpdate(dense=dense), n_samples=self.n, losses=[1.0], loss_before=2.0,
                               loss_after=1.0)
        return TrainResult(update=LocalUpdate(adapter=draw_factors(plan, gen)), n_samples=self.n, losses=[1.0], loss_before=2.0,
                           loss_after=1.0)


@dataclasses.dataclass
class Site:
    """One site: its agent loop (rebuilt on restart) and what it trained each round (the oracle's input)."""

    name: str
    rank: int
    n: int
    seed: int
    state_dir: Path
    loop: AgentLoop | None = None
    trained: dict[int, Adapter] = dataclasses.field(default_factory=dict)
    dense: dict[int, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Drop:
    """``site`` stops answering once it is given ``kind`` in ``phase`` (and never answers again that round)."""

    site: str
    kind: Step
    phase: int = 0
    restart: bool = False
    """Instead of going silent, the site restarts there (a new agent that holds no trained update)."""


class SecurePair:
    """Drives a coordinator and its agent loops through whole rounds in memory."""

    expected_delta = RoundPair.expected_delta  # Σ p_i ΔW_i over contributors (reads rule_name and sites)

    def __init__(self, rule: str, ranks: Mapping[str, int], tmp: Path, pki: Pki, *, secure: bool = True,
                 params: Mapping[str, Any] | None = None, rounds: int = 1, site_min_sites: int = 2) -> None:
        self.clock, self.pki, self.secure = Clock(), pki, secure
        self.site_policy = sa.ClientPolicy(min_sites=site_min_sites)
        """Each site's ``[privacy]`` floor (the agent's own default is stricter: 3)."""
        self.rule_name, self.params = rule, dict(params or {})
        self.published: list[tuple[int, Aggregate, dict[str, Any]]] = []
        fed = FederationConfig(base_fingerprint=FINGERPRINT, rule=rule, rule_params=self.params, rounds=rounds,
                               min_sites=2, min_contributors=2, train={"local_steps": 1}, train_timeout=STAGE_TIMEOUT,
                               stage_timeout=STAGE_TIMEOUT, wait_for_sites=5, seed=7, offline_after=1e6)
        certs = pki.dir / "certs"
        self.cfg = CoordinatorConfig(tls=TlsConfig(ca=pki.ca(), cert=certs / "coordinator.pem",
                                                   key=certs / "coordinator.key"),
                                     federation=fed, secagg=SecAggConfig(enabled=secure, min_frac_bits=24),
                                     state_dir=tmp / "coordinator")
        self.coordinator = Coordinator(self)
        self.sites = {s: Site(s, r, 10 + 5 * i, 100 + i, tmp / s) for i, (s, r) in enumerate(sorted(ranks.items()))}
        for site in self.sites.values():
            self.start_site(site.name)

    @property
    def orch(self) -> Orchestrator:
        """The coordinator's current orchestrator."""
        return self.coordinator.orch

    def publish(self, round_number: int, agg: Aggregate, facts: dict[str, Any]) -> str:
        """The orchestrator's publisher: keep what it would write."""
        self.published.append((round_number, agg, facts))
        return f"v{round_number:04d}"

    # ---- restarts -------------------------------------------------------------------------------

    def start_site(self, name: str) -> None:
        """(Re)start a site's agent: a new loop, transport and secure-sum client; rule state from its disk."""
        site = self.sites[name]
        cert, key = self.pki.cert(name)
        transport = Transport(MemoryChannel(self.coordinator, name, cert))  # type: ignore[arg-type]
        ca = self.pki.ca().read_bytes()
        hello = pb.HelloRequest(agent_version="test", base_fingerprint=FINGERPRINT, num_samples=site.n,
                                lora_rank=site.rank, lora_alpha=ALPHA, task="causal-lm",
                                target_shapes={m: tpb.Shape(dims=list(s)) for m, s in SHAPES.items()})
        site.loop = AgentLoop(transport, DrawTrainer(site.n), data=None, hello=hello, alpha=ALPHA,
                              state_dir=site.state_dir, secure_sum=SecureSumClient(ca, cert, key, self.site_policy) if self.secure else None,
                              progress=False)
        site.loop.enrol()

    def restart_coordinator(self) -> None:
        """A new coordinator process on the newest published version; sites re-enrol when it says so."""
        last = self.published[-1] if self.published else None
        status = self.orch.status()
        self.coordinator.start(glob=None if last is None else last[1], rounds_done=int(status["rounds_done"]),
                               version=status["global_version"])

    # ---- one round ------------------------------------------------------------------------------

    def run_round(self, drops: Iterable[Drop] = (), coordinator_restart: Step | None = None) -> dict[str, Any]:
        """Open a round, serve every live site's steps until it closes; returns its history entry.

        With ``coordinator_restart`` the coordinator restarts the first time a site is given that step (the
        round in flight is lost); the sites re-enrol and the new coordinator runs the round again."""
        drops = {d.site: d for d in drops}
        dead: set[str] = set()
        for name in self.sites:
            self._poll(name)  # every site long-polls between rounds (its heartbeat)
        self.orch.tick()
        assert self.orch.current is not None, "the round did not open"
        for _ in range(200):
            moved = False
            for name, site in self.sites.items():
                if name in dead:
                    continue
                task = self._poll(name)
                if task is None:
                    continue
                if coordinator_restart is not None and task.kind == pb.StepKind.Value(coordinator_restart.value):
                    coordinator_restart = None
                    self.restart_coordinator()
                    for other in self.sites:
                        self._poll(other)  # every long poll fails at once; each site says Hello again
                    moved = True
                    break
                drop = drops.get(name)
                if drop is not None and task.kind == pb.StepKind.Value(drop.kind.value) and task.phase == drop.phase:
                    del drops[name]
                    if drop.restart:
                        self.start_site(name)
                        moved = True
                    else:
                        dead.add(name)
                    continue
                self._handle(site, task)
                moved = True
            self.orch.tick()
            if self.orch.current is None:
                return self.orch.status()["history"][-1]
            if not moved:
                self.clock.now += STAGE_TIMEOUT + 1  # nobody live has anything to do: the deadline passes
                self.orch.tick()
                if self.orch.current is None:
                    return self.orch.status()["history"][-1]
        raise AssertionError("the round did not finish")

    def _poll(self, name: str) -> pb.Task | None:
        loop = self.sites[name].loop
        assert loop is not None
        try:
            task = loop.transport.wait(loop.after_step, seconds=0.0)
        except MemoryRpcError as exc:
            if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                raise
            loop.enrol()  # the coordinator restarted and does not know us: Hello again, as AgentLoop.run does
            return None
        if task.kind == pb.IDLE:
            return None
        loop.after_step = max(loop.after_step, task.step)
        return task

    def _handle(self, site: Site, task: pb.Task) -> None:
        loop = site.loop
        assert loop is not None
        if task.kind == pb.TRAIN:
            assert isinstance(loop.trainer, DrawTrainer)
            loop.trainer.seed = site.seed * 1000 + task.spec.round
        loop._handle(task)  # the agent's own dispatch: TRAIN, UPLOAD_PLAIN, DECLARE_LAYOUT/SECAGG_*, ROUND_DONE
        if task.kind == pb.TRAIN and loop.work is not None:
            update = loop.work.update
            if update.dense is not None:
                site.dense[task.spec.round] = {m: w.to(torch.float64) for m, w in update.dense.items()}
            else:
                assert update.adapter is not None
                site.trained[task.spec.round] = dict(update.adapter)

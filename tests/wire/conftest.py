"""A real coordinator on port 0 with an in-test CA, and a hand-driven protocol client for wire tests.

The coordinator is started exactly as ``fedquilt coordinator serve`` would start it (files written by
``write_federation``, read back by ``load_config``), so every refusal tested here travels through
the real mutual-TLS server, interceptors, servicers and orchestrator. Sites are driven by hand with
their own certificates: no training runs, the vectors are small float32 arrays.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest
import tomli_w
from safetensors.numpy import save_file

from fedquilt.agent.basemodel import fingerprint
from fedquilt.agent.transport import channel
from fedquilt.cli.federation_files import FederationFiles, write_federation
from fedquilt.cli.workspace import SitePaths, Workspace
from fedquilt.coordinator import server
from fedquilt.coordinator.collect import PlainCollector
from fedquilt.coordinator.config import FederationConfig, ServerConfig, load_config
from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import federation_pb2_grpc as pb_grpc
from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto import tensors_pb2 as tpb

CALL_TIMEOUT = 10.0
SHAPES = {"model.layers.0.self_attn.q_proj": (16, 16), "model.layers.0.self_attn.v_proj": (16, 16)}
RANK = 2
MAX_UPLOAD_BYTES = 8192
MAX_MESSAGE_BYTES = 256 * 1024


def tensors(seed: int = 0, n: int = 10) -> dict[str, np.ndarray]:
    """One site's plaintext FedIT vectors: n·A (2×16) and n·B (16×2) per target module, plus n."""
    rng = np.random.default_rng(seed)
    out = {"__n__": np.array([n], np.float32)}
    for module, (d, k) in SHAPES.items():
        out[f"{module}/A"] = (n * rng.standard_normal((RANK, k))).astype(np.float32)
        out[f"{module}/B"] = (n * rng.standard_normal((d, RANK))).astype(np.float32)
    return out


def refused(call: Callable[[], Any]) -> grpc.StatusCode:
    """Run an RPC that must fail and return its status code (server-streaming replies are drained)."""
    with pytest.raises(grpc.RpcError) as err:
        reply = call()
        if hasattr(reply, "__next__"):  # a server-streaming call fails while it is read
            list(reply)
    return err.value.code()  # type: ignore[no-any-return]


@dataclass
class Wire:
    """A started coordinator plus per-identity stubs and a few protocol steps done by hand."""

    files: FederationFiles
    running: server.RunningCoordinator
    fingerprint: str
    tasks: dict[str, pb.Task] = field(default_factory=dict)
    """The current task of each cohort site, once a test fixture drove the round to a stage."""
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    refused = staticmethod(refused)
    tensors = staticmethod(tensors)

    @property
    def address(self) -> str:
        """host:port of the coordinator."""
        return f"127.0.0.1:{self.running.port}"

    def cert(self, who: str) -> tuple[Path, Path]:
        """(certificate, key) of ``site-<i>``, ``admin`` or ``coordinator``."""
        if who == "admin":
            return self.files.admin_cert, self.files.admin_key
        folder = self.files.root / who
        return folder / f"{who}.pem", folder / f"{who}.key"

    def channel(self, who: str) -> grpc.Channel:
        """A mutual-TLS channel presenting ``who``'s certificate (one per identity, reused)."""
        if who not in self._channels:
            cert, key = self.cert(who)
            ca = (self.files.ca_dir / "ca.pem").read_bytes()
            self._channels[who] = channel(self.address, ca, cert.read_bytes(), key.read_bytes(), "localhost")
        return self._channels[who]

    def reconnect(self, who: str) -> None:
        """Drop ``who``'s channel so the next call opens a fresh TLS connection."""
        chan = self._channels.pop(who, None)
        if chan is not None:
            chan.close()

    def fed(self, who: str) -> pb_grpc.FederationStub:
        """Federation stub for ``who``."""
        return pb_grpc.FederationStub(self.channel(who))

    def models(self, who: str) -> pb_grpc.ModelsStub:
        """Models stub for ``who``."""
        return pb_grpc.ModelsStub(self.channel(who))

    def admin(self, who: str = "admin") -> pb_grpc.AdminStub:
        """Admin stub for ``who``."""
        return pb_grpc.AdminStub(self.channel(who))

    def standin(self, who: str, **kwargs: Any) -> Any:
        """A real agent loop for ``who`` (own channel, secure-sum client) around a stand-in trainer."""
        from fedquilt.bench.standin import standin_loop

        cert, key = self.cert(who)
        kwargs.setdefault("shapes", SHAPES)
        kwargs.setdefault("rank", RANK)
        kwargs.setdefault("give_up_after", 3.0)  # the loop ends soon after the test stops the coordinator
        return standin_loop(self.address, (self.files.ca_dir / "ca.pem").read_bytes(), cert.read_bytes(),
                            key.read_bytes(), fingerprint=self.fingerprint,
                            state_dir=self.files.root / f"standin-{who}", **kwargs)

    def restart(self) -> None:
        """Stop the coordinator and start it again on the same files (state and store are kept; new port)."""
        self.close()
        self._channels.clear()
        self.running.stop(grace=0.1)
        self.running = server.start(load_config(self.files.coordinator_config), tick_seconds=0.02)

    def publish_one_round(self, sites: tuple[str, ...] = ("site-0", "site-1")) -> list[dict[str, Any]]:
        """Drive one plaintext round by hand to its published version; returns the history."""
        done = len(self.running.orchestrator.status()["history"])
        # after = last_step - 1: a round that opened before this Hello is the site's current step
        steps = {s: max(self.hello(s).last_step - 1, 0) for s in sites}
        uploads = self.next_stage({s: self._next_train(s, steps[s]) for s in sites}, pb.UPLOAD_PLAIN)
        for i, (who, task) in enumerate(uploads.items()):
            self.upload(who, task, codec.encode_tensors(tensors(seed=i)))
        history = self.wait_history(done + 1)
        orch = self.running.orchestrator
        deadline = time.monotonic() + 10
        while orch.finished() and any(r.assignment.kind.value != "SHUTDOWN" for r in orch.sites.values()):
            if time.monotonic() > deadline:  # the last transition of a finished federation
                raise TimeoutError("the finished federation did not shut its sites down")
            time.sleep(0.02)
        return history

    def _next_train(self, who: str, after: int, within: float = 10.0) -> pb.Task:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            task = self.fed(who).WaitForTask(pb.WaitRequest(after_step=after, wait_seconds=1.0), timeout=CALL_TIMEOUT)
            if task.kind == pb.TRAIN:
                return task
            after = max(after, task.step) if task.kind != pb.IDLE else after
        raise TimeoutError(f"{who}: no TRAIN within {within}s")

    def close(self) -> None:
        """Close every channel."""
        for chan in self._channels.values():
            chan.close()

    # ---- protocol steps -----------------------------------------------------------------------

    def hello_request(self, **overrides: Any) -> pb.HelloRequest:
        """A HelloRequest the coordinator accepts, with ``overrides`` applied."""
        fields: dict[str, Any] = dict(agent_version="wire-test", base_fingerprint=self.fingerprint, num_samples=10,
                                      lora_rank=RANK, lora_alpha=4.0, task="causal-lm",
                                      target_shapes={k: tpb.Shape(dims=list(v)) for k, v in SHAPES.items()})
        fields.update(overrides)
        return pb.HelloRequest(**fields)

    def hello(self, who: str, **overrides: Any) -> pb.HelloReply:
        """Enrol ``who``."""
        return self.fed(who).Hello(self.hello_request(**overrides), timeout=CALL_TIMEOUT)

    def wait_for(self, who: str, kind: int, after: int, within: float = 10.0) -> pb.Task:
        """Long-poll until ``who`` is given a step of ``kind`` (IDLE answers are polled again)."""
        deadline = time.monotonic() + within
        while True:
            task = self.fed(who).WaitForTask(pb.WaitRequest(after_step=after, wait_seconds=1.0), timeout=CALL_TIMEOUT)
            if task.kind == kind:
                return task
            if task.kind != pb.IDLE:
                raise AssertionError(f"{who}: expected {pb.StepKind.Name(kind)}, got {pb.StepKind.Name(task.kind)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{who}: no {pb.StepKind.Name(kind)} within {within}s")

    def open_round(self, sites: tuple[str, ...] = ("site-0", "site-1")) -> dict[str, pb.Task]:
        """Hello from ``sites``; returns each one's TRAIN task."""
        steps = {s: self.hello(s).last_step for s in sites}
        return {s: self.wait_for(s, pb.TRAIN, steps[s]) for s in sites}

    def train_done(self, who: str, task: pb.Task) -> pb.Ack:
        """Report local training finished for ``task``."""
        return self.fed(who).Submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=pb.TRAIN,
                                                     train=rpb.TrainReport()), timeout=CALL_TIMEOUT)

    def next_stage(self, trained: dict[str, pb.Task], kind: int) -> dict[str, pb.Task]:
        """Report training done for every site; returns each one's next task (of ``kind``)."""
        for who, task in trained.items():
            self.train_done(who, task)
        return {who: self.wait_for(who, kind, task.step) for who, task in trained.items()}

    def upload_messages(self, task: pb.Task, payload: bytes, **header: Any) -> list[pb.UploadChunk]:
        """A well-formed upload stream for ``task`` (header fields overridable)."""
        fields: dict[str, Any] = dict(round_id=task.round_id, step=task.step, phase=task.phase, encoding=tpb.FLOAT32)
        fields.update(header)
        return list(codec.upload_messages(pb.UploadHeader(**fields), payload))

    def upload(self, who: str, task: pb.Task, payload: bytes | None = None, **header: Any) -> pb.Ack:
        """Upload ``payload`` (default: ``tensors()``) for ``task``."""
        body = codec.encode_tensors(tensors()) if payload is None else payload
        return self.fed(who).Upload(iter(self.upload_messages(task, body, **header)), timeout=CALL_TIMEOUT)

    def wait_history(self, rounds: int = 1, within: float = 20.0) -> list[dict[str, Any]]:
        """The orchestrator's round history once it has ``rounds`` entries (published or discarded)."""
        deadline = time.monotonic() + within
        while len(history := self.running.orchestrator.status()["history"]) < rounds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {rounds} finished rounds within {within}s: {history}")
            time.sleep(0.02)
        return list(history)

    # ---- state --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything a refused request must leave untouched (volatile timing fields removed)."""
        orch = self.running.orchestrator
        state = orch.status()
        for site in state["sites"]:
            del site["last_seen_seconds_ago"]
        with orch._cond:
            state["assignments"] = {s: (r.assignment.step, r.assignment.kind.value, r.assignment.round_id)
                                    for s, r in sorted(orch.sites.items())}
            state["shapes"] = orch.shapes
            rnd = orch.current
            if rnd is not None:
                state["trained"] = sorted(rnd.trained)
                collector = rnd.collector
                if isinstance(collector, PlainCollector):
                    state["received"] = dict(collector.received)
                    state["sums"] = {k: v.tolist() for k, v in sorted(collector.sums.items())}
                elif collector is not None:
                    state["secagg"] = (collector.stage.value, sorted(collector.heard),
                                       {s: list(v) for s, v in sorted(collector.layouts.items())})
        state["versions"] = self.running.store.versions(self.files.model)
        return json.loads(json.dumps(state, default=str))  # type: ignore[no-any-return]


def _edit_config(path: Path, server_fields: dict[str, Any], federation_fields: dict[str, Any] | None = None) -> None:
    data = tomllib.loads(path.read_text())
    data["server"].update(server_fields)
    data["federation"].update(federation_fields or {})
    path.write_text(tomli_w.dumps(data))


@pytest.fixture(scope="session")
def wire_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A stand-in workspace: a base-model folder that has a fingerprint, and three site names.

    The coordinator never loads the base model, so no real model (or transformers import) is needed.
    """
    root = tmp_path_factory.mktemp("wire-ws")
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    save_file({"model.layers.0.self_attn.q_proj.weight": np.eye(16, dtype=np.float32)},
              str(model_dir / "model.safetensors"))
    sites = tuple(SitePaths(f"site-{i}", root / f"site-{i}", root / f"site-{i}" / "train.jsonl",
                            root / f"site-{i}" / "eval.jsonl") for i in range(3))
    return Workspace(root=root, model_dir=model_dir, task="causal-lm", num_labels=0, sites=sites)


@pytest.fixture
def coordinator(tmp_path: Path, wire_workspace: Workspace) -> Iterator[Callable[..., Wire]]:
    """Factory: start a coordinator (plaintext by default) with small limits and long stage deadlines."""
    started: list[Wire] = []
    fp = fingerprint(wire_workspace.model_dir)

    def start(secagg: bool = False, timeouts: tuple[float, float] = (60.0, 60.0), federation: dict[str, Any] | None = None,
              **server_fields: Any) -> Wire:
        """``federation`` overrides [federation] fields (default: the operator names the targets, SHAPES)."""
        files = write_federation(tmp_path / f"fed{len(started)}", wire_workspace, secagg=secagg, min_sites=2,
                                 timeouts=timeouts, rounds=1)
        limits = {"max_upload_bytes": MAX_UPLOAD_BYTES, "max_message_bytes": MAX_MESSAGE_BYTES,
                  "long_poll_seconds": 1.0}
        fed_fields = {"target_shapes": {k: list(v) for k, v in SHAPES.items()}, **(federation or {})}
        server_known = {k: v for k, v in {**limits, **server_fields}.items() if k in ServerConfig.model_fields}
        _edit_config(files.coordinator_config, server_known,
                     {k: v for k, v in fed_fields.items() if v is not None and k in FederationConfig.model_fields})
        running = server.start(load_config(files.coordinator_config), tick_seconds=0.02)
        wire = Wire(files, running, fp)
        started.append(wire)
        return wire

    yield start
    for wire in started:
        wire.close()
        wire.running.stop(grace=0.1)

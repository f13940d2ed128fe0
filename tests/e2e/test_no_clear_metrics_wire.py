"""Issue 11, must-show 2: every byte the coordinator receives in a 3-site DP round under SecAgg, recorded.

Every Federation handler of the async edge is wrapped before the coordinator starts, so each request (every
Upload chunk included) is recorded as the raw bytes that arrived. The agents run for real (PEFT + Opacus
DP-SGD + SecAgg). Among those bytes there must be no per-site loss, metric or count: only the
enrolment facts of Hello, the DP report (a property of the site's configuration and its public
sample count), layouts, public keys, signatures, encrypted shares, revealed shares and masked
ring vectors. The cohort's eval loss still reaches the history, through the secure sum.
"""

from __future__ import annotations

import json
import struct
import threading
from typing import Any, AsyncIterator

import grpc
import pytest

from fedquilt.agent.loop import AgentLoop
from fedquilt.proto import federation_pb2 as pb
from fedquilt.coordinator.servicer import FederationService
from fedquilt.proto import secagg_pb2 as spb
from fedquilt.proto import tensors_pb2 as tpb

pytestmark = pytest.mark.slow

DP = {"noise_multiplier": 0.6, "max_grad_norm": 1.0, "delta": 1e-5, "planned_rounds": 1}
DP_REPORT_KEYS = {"epsilon", "delta", "noise_multiplier", "max_grad_norm", "steps", "rounds", "mode", "round_steps",
                  "sample_rate", "accountant"}
SUBMIT_PAYLOAD = {pb.DECLARE_LAYOUT: spb.LayoutDeclaration, pb.SECAGG_ADVERTISE: spb.KeyAdvertisementMsg,
                  pb.SECAGG_SHARE: spb.EncryptedSharesMsg, pb.SECAGG_CONSISTENCY: spb.ConsistencySignatureMsg,
                  pb.SECAGG_UNMASK: spb.RevealedSharesMsg}


class Recording:
    """Wraps every Federation handler of the async edge: records (method, raw request bytes) as they arrive.

    The edge's handlers take the wire bytes themselves (no deserializer), so this is exactly what the
    coordinator received, message by message, every Upload chunk included."""

    def __init__(self, log: list[tuple[str, bytes]]) -> None:
        self.log, self.lock = log, threading.Lock()

    def _keep(self, method: str, raw: bytes) -> None:
        with self.lock:
            self.log.append((method, bytes(raw)))

    def wrap(self, method: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary(raw: bytes, context: Any) -> Any:
                self._keep(method, raw)
                return await inner_uu(raw, context)
            return grpc.unary_unary_rpc_method_handler(unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(raw: bytes, context: Any) -> AsyncIterator[Any]:
                self._keep(method, raw)
                async for reply in inner_us(raw, context):
                    yield reply
            return grpc.unary_stream_rpc_method_handler(unary_stream)
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> Any:
            async def recorded() -> AsyncIterator[bytes]:
                async for raw in requests:
                    self._keep(method, raw)
                    yield raw
            return await inner_su(recorded(), context)
        return grpc.stream_unary_rpc_method_handler(stream_unary)


def _encodings(value: float) -> list[bytes]:
    """Ways a float could travel: text at several precisions, float32 and float64 in either byte order."""
    out = [repr(value).encode()] + [f"{value:.{d}f}".encode() for d in (3, 4, 5, 6)]
    out += [struct.pack(f, value) for f in ("<f", ">f", "<d", ">d")]
    return out


def test_coordinator_receives_no_per_site_metric(federation, monkeypatch) -> None:
    log: list[tuple[str, bytes]] = []
    recording = Recording(log)
    original = FederationService.handlers
    monkeypatch.setattr(FederationService, "handlers",
                        lambda self: {m: recording.wrap(m, h) for m, h in original(self).items()})
    truth: dict[str, dict[str, Any]] = {}
    handle = AgentLoop._handle

    def spy(self: AgentLoop, task: Any) -> None:
        handle(self, task)
        if task.kind == pb.TRAIN and self.work is not None:
            truth[self.site] = dict(self.work.metrics)
    monkeypatch.setattr(AgentLoop, "_handle", spy)

    fed = federation(sites=3, secagg=True, rounds=1, dp=DP, min_sites=3,
                     train={"local_steps": 2, "batch_size": 8, "lr": 3e-3})
    fed.start_agents()
    history = fed.wait_rounds(timeout=420)
    assert history[-1]["version"] == "v0001", history
    assert set(truth) == {"site-0", "site-1", "site-2"}

    kinds: dict[str, int] = {}
    for method, raw in log:
        kinds[method] = kinds.get(method, 0) + 1
        if method == "Submit":
            req = pb.SubmitRequest.FromString(raw)
            assert not req.refusal, req.refusal
            if req.kind == pb.TRAIN:
                assert req.WhichOneof("report") == "train", req
                sent = [f.name for f, _ in req.train.ListFields()]
                assert sent == ["dp"] and {f.name for f, _ in req.train.dp.ListFields()} <= DP_REPORT_KEYS, req.train
            else:
                assert req.WhichOneof("report") is None and req.kind in SUBMIT_PAYLOAD, (pb.StepKind.Name(req.kind), req)
                SUBMIT_PAYLOAD[req.kind].FromString(req.payload)  # exactly the protocol message, nothing else
        elif method == "Upload":
            chunk = pb.UploadChunk.FromString(raw)
            if chunk.HasField("header"):
                assert chunk.header.encoding in (tpb.RING_U32, tpb.RING_U64)  # masked, never FLOAT32
        elif method == "Hello":
            hello = pb.HelloRequest.FromString(raw)
            assert set(f.name for f, _ in hello.ListFields()) <= {
                "agent_version", "base_fingerprint", "num_samples", "lora_rank", "lora_alpha", "task", "target_shapes"}
        elif method == "Download":
            assert pb.DownloadRequest.FromString(raw).what in (pb.DownloadRequest.GLOBAL, pb.DownloadRequest.CRL)
    assert kinds.get("Upload", 0) >= 3 and kinds["Submit"] >= 3 * 5
    everything = b"".join(raw for _, raw in log)
    # (The names "__metric__/loss_before" etc. do appear: in the layout declarations of the secure sum.)
    for site, metrics in truth.items():
        for name in ("loss_before", "loss_after", "eval_loss"):
            value = metrics.get(name)
            assert value is not None, (site, name)
            for encoded in _encodings(float(value)):
                assert encoded not in everything, (site, name, value, encoded)
    # The cohort still learns its eval loss, as a weighted mean through the secure sum; under DP the
    # training losses are not sent at all.
    entry = history[-1]
    assert entry["loss_before"] is None and entry["loss_after"] is None
    n = {s: fed.running.orchestrator.sites[s].num_samples for s in truth}
    want = sum(truth[s]["eval_loss"] * n[s] for s in truth) / sum(n.values())
    assert entry["eval_loss"] == pytest.approx(want, abs=2e-3)
    manifest = fed.running.store.manifest(fed.files.model, "v0001")
    assert "loss" not in json.dumps({k: v for k, v in manifest.items() if k != "signature"})

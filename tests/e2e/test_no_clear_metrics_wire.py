"""Issue 11, must-show 2: every byte the coordinator receives in a 3-site DP round under SecAgg, recorded.

The Federation servicer is wrapped before the coordinator starts, so each request message (every
Upload chunk included) is serialised exactly as it arrived. The agents run for real (PEFT + Opacus
DP-SGD + SecAgg). Among those bytes there must be no per-site loss, metric or count: only the
enrolment facts of Hello, the DP report (a property of the site's configuration and its public
sample count), layouts, public keys, signatures, encrypted shares, revealed shares and masked
ring vectors. The cohort's eval loss still reaches the history, through the secure sum.
"""

from __future__ import annotations

import json
import struct
import threading
from typing import Any, Iterable, Iterator

import pytest

from fedquilt.agent.loop import AgentLoop
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import federation_pb2_grpc as pb_grpc
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
    """Wraps the Federation servicer: records (method, serialized request) for every request message."""

    def __init__(self, inner: Any, log: list[tuple[str, bytes]]) -> None:
        self.inner, self.log, self.lock = inner, log, threading.Lock()

    def _keep(self, method: str, message: Any) -> None:
        with self.lock:
            self.log.append((method, message.SerializeToString()))

    def Hello(self, request: Any, context: Any) -> Any:
        self._keep("Hello", request)
        return self.inner.Hello(request, context)

    def WaitForTask(self, request: Any, context: Any) -> Any:
        self._keep("WaitForTask", request)
        return self.inner.WaitForTask(request, context)

    def Download(self, request: Any, context: Any) -> Iterator[Any]:
        self._keep("Download", request)
        return self.inner.Download(request, context)  # type: ignore[no-any-return]

    def Submit(self, request: Any, context: Any) -> Any:
        self._keep("Submit", request)
        return self.inner.Submit(request, context)

    def Upload(self, request_iterator: Iterable[Any], context: Any) -> Any:
        def recorded() -> Iterator[Any]:
            for chunk in request_iterator:
                self._keep("Upload", chunk)
                yield chunk
        return self.inner.Upload(recorded(), context)


def _encodings(value: float) -> list[bytes]:
    """Ways a float could travel: text at several precisions, float32 and float64 in either byte order."""
    out = [repr(value).encode()] + [f"{value:.{d}f}".encode() for d in (3, 4, 5, 6)]
    out += [struct.pack(f, value) for f in ("<f", ">f", "<d", ">d")]
    return out


def test_coordinator_receives_no_per_site_metric(federation, monkeypatch) -> None:
    log: list[tuple[str, bytes]] = []
    original = pb_grpc.add_FederationServicer_to_server
    monkeypatch.setattr(pb_grpc, "add_FederationServicer_to_server",
                        lambda servicer, srv: original(Recording(servicer, log), srv))
    truth: dict[str, dict[str, Any]] = {}
    train = AgentLoop._train

    def spy(self: AgentLoop, task: Any) -> None:
        train(self, task)
        if self.work is not None:
            truth[self.site] = dict(self.work.metrics)
    monkeypatch.setattr(AgentLoop, "_train", spy)

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
                metrics = json.loads(req.metrics_json)
                assert set(metrics) == {"dp"} and set(metrics["dp"]) <= DP_REPORT_KEYS, metrics
            else:
                assert req.metrics_json == "" and req.kind in SUBMIT_PAYLOAD, (pb.StepKind.Name(req.kind), req)
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

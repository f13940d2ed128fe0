"""Bounded fuzzing of every RPC against a live coordinator: mutated bytes never reach INTERNAL or change state.

At least 1,000 mutated messages per RPC (byte flips, truncations, insertions, random garbage, seeded) are
sent as raw bytes over real mutual TLS. The senders are chosen so that no honest message would change
state either (a never-enrolled site, read-only calls, a site calling Admin): then the state database
and the model store must come out byte-identical, the coordinator must still answer, and the log must
stay a few lines long.
"""

from __future__ import annotations

import hashlib
import logging
import random
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto import tensors_pb2 as tpb

PER_RPC = 1000
BATCH = 50
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One seeded mutation of ``data``."""
    buf = bytearray(data)
    how = rng.randrange(6)
    if how == 0 and buf:
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif how == 1 and buf:
        del buf[rng.randrange(len(buf)):]
    elif how == 2:
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    elif how == 3:
        buf = bytearray(rng.randbytes(rng.randint(0, 64)))
    elif how == 4 and buf:  # a varint that never ends, or a length that runs past the end
        buf[rng.randrange(len(buf))] = 0xFF
    else:
        buf += bytes([rng.randrange(1, 30) << 3 | rng.randrange(6)]) + rng.randbytes(rng.randint(0, 8))
    return bytes(buf)


def _state_bytes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith((".port", ".lock"))}


def _cases(w: Any) -> list[tuple[str, str, str, bytes | list[bytes]]]:
    """(identity, method, kind, base message) for every RPC."""
    bad_hello = w.hello_request(base_fingerprint="0" * 64)
    header = pb.UploadHeader(round_id="r0001-00000000", step=7, phase=0, encoding=tpb.FLOAT32,
                             layout=codec.layout_to_pb([("a/A", (2, 16))]))
    upload = [m.SerializeToString() for m in codec.upload_messages(header, codec.encode_tensors(w.tensors()), 256)]
    fed, models, admin = "/fedquilt.v1.Federation/", "/fedquilt.v1.Models/", "/fedquilt.v1.Admin/"
    return [
        ("site-2", fed + "Hello", "unary", bad_hello.SerializeToString()),
        ("site-2", fed + "WaitForTask", "unary", pb.WaitRequest(after_step=3, wait_seconds=0.0).SerializeToString()),
        ("site-2", fed + "Download", "stream", pb.DownloadRequest(what=pb.DownloadRequest.BROADCAST, round_id="r",
                                                                  phase=1).SerializeToString()),
        ("site-2", fed + "Upload", "upload", upload),
        ("site-2", fed + "Submit", "unary", pb.SubmitRequest(round_id="r0001", step=3, kind=pb.TRAIN,
                                                             train=rpb.TrainReport(loss_before=1.0)).SerializeToString()),
        ("site-0", models + "ListVersions", "unary", pb.ListVersionsRequest(model=w.files.model).SerializeToString()),
        ("site-0", models + "Pull", "stream", pb.PullRequest(model=w.files.model, version="v0001").SerializeToString()),
        ("admin", admin + "Status", "unary", pb.StatusRequest().SerializeToString()),
        ("admin", admin + "ListSites", "unary", pb.ListSitesRequest().SerializeToString()),
        ("site-0", admin + "SetFederationState", "unary", pb.FederationStateRequest(running=False).SerializeToString()),
    ]


def _send(w: Any, who: str, method: str, kind: str, message: bytes | list[bytes]) -> Future[Any] | Any:
    chan = w.channel(who)
    if kind == "unary":
        return chan.unary_unary(method)(message, timeout=10)
    if kind == "stream":
        return list(chan.unary_stream(method)(message, timeout=10))
    return chan.stream_unary(method)(iter(message), timeout=10)


def test_a_thousand_mutated_messages_per_rpc_change_nothing_and_never_reach_internal(
        coordinator, caplog: pytest.LogCaptureFixture) -> None:
    w = coordinator(log_refusals_every=60.0)
    w.publish_one_round()
    w.hello("site-0")
    root = w.files.coordinator_config.parent / "state"
    before_files, before = _state_bytes(root), w.snapshot()
    rng = random.Random(12)
    seen: dict[str, dict[str, int]] = {}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for who, method, kind, base in _cases(w):
            codes = seen.setdefault(method, {})
            for _ in range(PER_RPC):
                message: bytes | list[bytes]
                if isinstance(base, list):
                    message = list(base)
                    i = rng.randrange(len(message))
                    message[i] = mutate(rng, message[i])
                else:
                    message = mutate(rng, base)
                try:
                    _send(w, who, method, kind, message)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                codes[code.name] = codes.get(code.name, 0) + 1
                assert code not in FORBIDDEN, (method, message, codes)
    assert all(sum(c.values()) == PER_RPC for c in seen.values()), seen
    after_files, after = _state_bytes(root), w.snapshot()
    for s in before["sites"] + after["sites"]:
        s.pop("online", None)
    assert after == before
    assert after_files == before_files
    assert w.hello("site-0").site_id == "site-0"  # still serving
    lines = [r for r in caplog.records if r.name.startswith(("fedquilt.coordinator", "grpc"))]
    assert len(lines) <= 3 * len(seen), [r.getMessage() for r in lines][:20]  # one per peer and RPC (+ a few)
    assert sum(len(r.getMessage()) for r in lines) < 64 * 1024

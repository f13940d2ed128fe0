"""Bad Upload streams in a plaintext phase: precise statuses, nothing summed, good uploads still taken."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import pytest

from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import tensors_pb2 as tpb
from fedquilt.strategies.adapters import load_peft

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
MODULE = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def upload_stage(coordinator) -> Any:
    """A plaintext coordinator whose two cohort sites were both asked to UPLOAD_PLAIN."""
    w = coordinator()
    w.tasks = w.next_stage(w.open_round(), pb.UPLOAD_PLAIN)
    return w


def _body(w: Any, **replace: np.ndarray) -> bytes:
    return codec.encode_tensors({**w.tensors(), **replace})


def _header(w: Any, task: pb.Task, total: int, **fields: Any) -> pb.UploadChunk:
    return pb.UploadChunk(header=pb.UploadHeader(round_id=task.round_id, step=task.step, phase=task.phase,
                                                 encoding=tpb.FLOAT32, total_bytes=total, **fields))


def _sha(data: bytes) -> pb.UploadChunk:
    return pb.UploadChunk(sha256=hashlib.sha256(data).hexdigest())


def _data(data: bytes) -> pb.UploadChunk:
    return pb.UploadChunk(data=data)


Build = Callable[[Any, pb.Task], list[pb.UploadChunk]]
BODY_CASES: dict[str, tuple[Build, grpc.StatusCode]] = {
    # framing
    "empty-stream": (lambda w, t: [], INVALID),
    "no-header-first": (lambda w, t: [_data(b := _body(w)), _sha(b)], INVALID),
    "trailer-only": (lambda w, t: [_sha(b"")], INVALID),
    "two-headers": (lambda w, t: [_header(w, t, len(b := _body(w))), _header(w, t, len(b)), _data(b), _sha(b)], INVALID),
    "negative-declared-size": (lambda w, t: [_header(w, t, -1), _sha(b"")], INVALID),
    "data-beyond-declared-size": (lambda w, t: [_header(w, t, len(b := _body(w)) - 8), _data(b), _sha(b)], INVALID),
    "data-short-of-declared-size": (lambda w, t: [_header(w, t, len(b := _body(w)) + 8), _data(b), _sha(b)], INVALID),
    "missing-sha256-trailer": (lambda w, t: [_header(w, t, len(b := _body(w))), _data(b)], INVALID),
    "wrong-sha256": (lambda w, t: [_header(w, t, len(b := _body(w))), _data(b), _sha(b + b"x")], INVALID),
    "empty-sha256": (lambda w, t: [_header(w, t, len(b := _body(w))), _data(b), pb.UploadChunk(sha256="")], INVALID),
    "data-after-trailer": (lambda w, t: [_header(w, t, len(b := _body(w))), _data(b[:100]), _sha(b), _data(b[100:])],
                           INVALID),
    "negative-layout-dim": (lambda w, t: [_header(w, t, len(b := _body(w)), layout=[tpb.NamedShape(name="x", dims=[-1])]),
                                          _data(b), _sha(b)], INVALID),
    # where in the protocol
    "stale-round-id": (lambda w, t: w.upload_messages(t, _body(w), round_id="r0001-00000000"), PRECONDITION),
    "no-round-id": (lambda w, t: w.upload_messages(t, _body(w), round_id=""), PRECONDITION),
    "superseded-step": (lambda w, t: w.upload_messages(t, _body(w), step=t.step - 1), PRECONDITION),
    "future-step": (lambda w, t: w.upload_messages(t, _body(w), step=t.step + 1), PRECONDITION),
    "wrong-phase": (lambda w, t: w.upload_messages(t, _body(w), phase=1), PRECONDITION),
    "ring-encoding-in-plaintext-phase": (lambda w, t: w.upload_messages(t, _body(w), encoding=tpb.RING_U32), INVALID),
    "unspecified-encoding": (lambda w, t: w.upload_messages(t, _body(w), encoding=tpb.ENCODING_UNSPECIFIED), INVALID),
    # the tensors themselves
    "nan": (lambda w, t: w.upload_messages(t, _body(w, **{f"{MODULE}/A": np.full((2, 16), np.nan, np.float32)})),
            INVALID),
    "inf": (lambda w, t: w.upload_messages(t, _body(w, **{f"{MODULE}/B": np.full((16, 2), -np.inf, np.float32)})),
            INVALID),
    "nan-sample-count": (lambda w, t: w.upload_messages(
        t, _body(w, __n__=np.array([np.nan], np.float32))), INVALID),
    "int64": (lambda w, t: w.upload_messages(t, _body(w, **{f"{MODULE}/A": np.ones((2, 16), np.int64)})), INVALID),
    "float16": (lambda w, t: w.upload_messages(t, _body(w, **{f"{MODULE}/A": np.ones((2, 16), np.float16)})), INVALID),
    "int32": (lambda w, t: w.upload_messages(t, _body(w, __n__=np.array([10], np.int32))), INVALID),
    "not-safetensors": (lambda w, t: w.upload_messages(t, b"this is not a safetensors payload" * 4), INVALID),
    "truncated-safetensors": (lambda w, t: w.upload_messages(t, _body(w)[:-7]), INVALID),
    "no-tensors": (lambda w, t: w.upload_messages(t, b""), INVALID),
}


@pytest.mark.parametrize("case", list(BODY_CASES))
def test_bad_upload_is_refused_and_sums_nothing(upload_stage: Any, case: str) -> None:
    w = upload_stage
    build, code = BODY_CASES[case]
    before = w.snapshot()
    messages = build(w, w.tasks["site-0"])
    assert w.refused(lambda: w.fed("site-0").Upload(iter(messages), timeout=10)) is code
    after = w.snapshot()
    assert after == before and after["received"] == {} and after["sums"] == {}
    ack = w.upload("site-0", w.tasks["site-0"])  # the same site's good upload is still taken
    assert (ack.accepted, ack.message) == (True, "accepted")
    assert list(w.snapshot()["received"]) == ["site-0"]


def test_upload_from_a_site_outside_the_cohort_is_denied(upload_stage: Any) -> None:
    w = upload_stage
    w.hello("site-2")
    before = w.snapshot()
    assert w.refused(lambda: w.upload("site-2", w.tasks["site-0"])) is grpc.StatusCode.PERMISSION_DENIED
    assert w.snapshot() == before


def test_upload_declaring_more_than_max_upload_bytes_is_refused_before_any_data(upload_stage: Any) -> None:
    w = upload_stage  # max_upload_bytes = 8192
    task = w.tasks["site-0"]
    before = w.snapshot()
    big = codec.encode_tensors({**w.tensors(), "pad": np.zeros(4096, np.float32)})
    assert len(big) > 8192
    declared_only = [_header(w, task, 1 << 40)]
    codes = {w.refused(lambda: w.fed("site-0").Upload(iter(declared_only), timeout=10)),
             w.refused(lambda: w.upload("site-0", task, big))}
    assert codes <= {INVALID, grpc.StatusCode.RESOURCE_EXHAUSTED} and len(codes) == 1
    assert w.snapshot() == before
    assert w.upload("site-0", task).accepted


def test_upload_over_the_limit_is_resource_exhausted(upload_stage: Any) -> None:
    w = upload_stage
    task = w.tasks["site-0"]
    assert w.refused(lambda: w.fed("site-0").Upload(iter([_header(w, task, 1 << 40)]), timeout=10)) \
        is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("other", ["extra-tensor", "missing-tensor", "other-shape"])
def test_second_site_with_another_layout_is_refused(upload_stage: Any, other: str) -> None:
    w = upload_stage
    assert w.upload("site-0", w.tasks["site-0"]).accepted
    before = w.snapshot()
    mine = w.tensors(seed=1)
    if other == "extra-tensor":
        mine["extra"] = np.ones(3, np.float32)
    elif other == "missing-tensor":
        del mine[f"{MODULE}/B"]
    else:
        mine[f"{MODULE}/A"] = np.ones((3, 16), np.float32)
    assert w.refused(lambda: w.upload("site-1", w.tasks["site-1"], codec.encode_tensors(mine))) is INVALID
    assert w.snapshot() == before


def test_upload_with_tensors_the_round_does_not_have_is_refused(upload_stage: Any) -> None:
    w = upload_stage
    bogus = codec.encode_tensors({"bogus": np.ones(4, np.float32)})
    assert w.refused(lambda: w.upload("site-0", w.tasks["site-0"], bogus)) is INVALID


def test_duplicates_retries_and_bad_uploads_leave_only_good_vectors_counted_once(upload_stage: Any,
                                                                                 tmp_path: Path) -> None:
    w = upload_stage
    t0, t1 = w.tasks["site-0"], w.tasks["site-1"]
    good0, good1 = w.tensors(seed=10, n=10), w.tensors(seed=11, n=10)
    assert w.upload("site-0", t0, codec.encode_tensors(good0)).message == "accepted"
    once = w.snapshot()
    retry = w.upload("site-0", t0, codec.encode_tensors(good0))
    assert (retry.accepted, retry.message) == (True, "already received (identical retry)")
    assert w.snapshot() == once  # counted once
    other = codec.encode_tensors(w.tensors(seed=12, n=10))
    assert w.refused(lambda: w.upload("site-0", t0, other)) is grpc.StatusCode.ALREADY_EXISTS
    nan1 = codec.encode_tensors({**good1, f"{MODULE}/A": np.full((2, 16), np.nan, np.float32)})
    assert w.refused(lambda: w.upload("site-1", t1, nan1)) is INVALID
    assert w.snapshot() == once
    assert once["sums"] == {k: v.astype(np.float64).tolist() for k, v in sorted(good0.items())}

    assert w.upload("site-1", t1, codec.encode_tensors(good1)).message == "accepted"
    history = w.wait_history(1)
    assert [(h["version"], h["contributors"]) for h in history] == [("v0001", 2)], history
    assert w.running.store.versions(w.files.model) == ["v0001"]

    # The published adapter is the sample-weighted mean of exactly the two good uploads.
    version = w.running.store.resolve(w.files.model, "latest")
    for name in w.running.store.manifest(w.files.model, version)["files"]:
        (tmp_path / name).write_bytes(w.running.store.read(w.files.model, version, name))
    adapter = load_peft(tmp_path)
    total = 10 + 10  # each site submits the count it declared (its assigned weight)
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"):
        a = (good0[f"{module}/A"].astype(np.float64) + good1[f"{module}/A"]) / total
        b = (good0[f"{module}/B"].astype(np.float64) + good1[f"{module}/B"]) / total
        got = adapter[module].delta().numpy()
        np.testing.assert_allclose(got, b @ a, rtol=1e-5, atol=1e-5)

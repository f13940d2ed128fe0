"""Messages beyond grpc's max_message_bytes: RESOURCE_EXHAUSTED from grpc itself, state untouched."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import numpy as np
import pytest

from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto import tensors_pb2 as tpb

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
OVER = 300 * 1024  # the coordinator under test takes messages up to 256 KiB


def test_oversize_unary_messages_are_resource_exhausted(coordinator) -> None:
    w: Any = coordinator()
    task = w.open_round()["site-0"]
    before = w.snapshot()
    f0 = w.fed("site-0")
    big_report = rpb.TrainReport(dp=rpb.DpReport(mode="x" * OVER))
    assert w.refused(lambda: f0.Submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=pb.TRAIN,
                                                        train=big_report), timeout=5)) is EXHAUSTED
    assert w.refused(lambda: f0.Hello(w.hello_request(agent_version="v" * OVER), timeout=5)) is EXHAUSTED
    big_model = "m" * OVER
    assert w.refused(lambda: w.models("site-0").ListVersions(pb.ListVersionsRequest(model=big_model),
                                                             timeout=5)) is EXHAUSTED
    assert w.snapshot() == before
    assert w.train_done("site-0", task).accepted


def test_oversize_upload_chunk_is_resource_exhausted(coordinator) -> None:
    w: Any = coordinator(max_upload_bytes=4 * 1024 * 1024)  # the stream limit allows it; the message limit does not
    task = w.next_stage(w.open_round(), pb.UPLOAD_PLAIN)["site-0"]
    before = w.snapshot()
    body = codec.encode_tensors({**w.tensors(), "pad": np.zeros(OVER // 4, np.float32)})
    header = pb.UploadHeader(round_id=task.round_id, step=task.step, phase=task.phase, encoding=tpb.FLOAT32,
                             total_bytes=len(body))
    stream = [pb.UploadChunk(header=header), pb.UploadChunk(data=body),
              pb.UploadChunk(sha256=hashlib.sha256(body).hexdigest())]
    assert w.refused(lambda: w.fed("site-0").Upload(iter(stream), timeout=5)) is EXHAUSTED
    assert w.snapshot() == before
    assert w.upload("site-0", task).accepted


def test_pull_of_a_file_larger_than_max_message_bytes_is_chunked_to_fit(coordinator) -> None:
    w: Any = coordinator()
    files = {"adapter_model.safetensors": bytes(OVER)}
    manifest = {"files": {n: {"sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}, "round": 1}
    w.running.store.publish(w.files.model, "v0001", files, manifest)
    chunks = list(w.models("admin").Pull(pb.PullRequest(model=w.files.model), timeout=5))
    assert b"".join(c.data for c in chunks if c.path == "adapter_model.safetensors") == files["adapter_model.safetensors"]

"""Chunked streams, uploads and tensor payloads: round trips and the malformed cases."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import tensors_pb2 as tpb


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_chunks_round_trip(payload: bytes, size: int) -> None:
    assert codec.join_chunks(codec.chunks(payload, size), max_bytes=10_000) == payload


def test_join_rejects_a_wrong_hash() -> None:
    parts = list(codec.chunks(b"x" * 100, 30))
    parts[-1].sha256 = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(codec.CodecError, match="sha256"):
        codec.join_chunks(parts, 1000)


def test_join_rejects_reordered_and_oversize() -> None:
    parts = list(codec.chunks(b"abcdef" * 20, 16))
    with pytest.raises(codec.CodecError, match="offset"):
        codec.join_chunks([parts[1], parts[0], *parts[2:]], 1000)
    with pytest.raises(codec.CodecError, match="exceeds"):
        codec.join_chunks(parts, 50)


def _upload(payload: bytes) -> list[pb.UploadChunk]:
    return list(codec.upload_messages(pb.UploadHeader(round_id="r", step=3, encoding=tpb.FLOAT32), payload, 7))


def test_upload_round_trip_and_rejections() -> None:
    msgs = _upload(b"0123456789abcdef")
    header, body = codec.read_upload(msgs, 100)
    assert body == b"0123456789abcdef" and header.total_bytes == 16 and header.step == 3
    with pytest.raises(codec.CodecError, match="start with a header"):
        codec.read_upload(msgs[1:], 100)
    with pytest.raises(codec.CodecError, match="limit"):
        codec.read_upload(msgs, 10)
    with pytest.raises(codec.CodecError, match="trailer"):
        codec.read_upload(msgs[:-1], 100)
    tampered = msgs[:-1] + [pb.UploadChunk(sha256="00" * 32)]
    with pytest.raises(codec.CodecError, match="does not match"):
        codec.read_upload(tampered, 100)
    with pytest.raises(codec.CodecError, match="declared"):
        codec.read_upload([msgs[0], pb.UploadChunk(data=b"x" * 17), msgs[-1]], 100)


def test_tensor_payloads_and_flattening() -> None:
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(4, np.float32)}
    back = codec.decode_tensors(codec.encode_tensors(tensors))
    assert set(back) == {"a", "b"} and np.array_equal(back["b"], tensors["b"])
    flat = codec.flatten(tensors)
    assert flat.tolist() == [1, 1, 1, 1, 0, 1, 2, 3, 4, 5]
    again = codec.unflatten(flat, codec.layout_of(tensors))
    assert np.array_equal(again["b"], tensors["b"])
    with pytest.raises(codec.CodecError):
        codec.unflatten(flat[:-1], codec.layout_of(tensors))
    with pytest.raises(codec.CodecError, match="malformed tensor payload"):
        codec.decode_tensors(b"\x08\x00\x00\x00garbage!")

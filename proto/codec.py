"""Conversions between wire messages and plain Python values: tensors, chunked streams, secagg framing.

The other hand-written modules here convert the typed messages of one concern each: ``round_spec``
(Task.spec), ``reports`` (what a site reports in Submit) and ``status_wire`` (the Admin replies).

Tensors travel as safetensors bytes, chunked into ~1 MiB messages; every stream ends with the
sha256 of the whole payload, and the receiver checks it and the declared size before using a byte.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from . import federation_pb2 as pb
from . import secagg_pb2 as spb
from . import tensors_pb2 as tpb

CHUNK_BYTES = 1 << 20


class CodecError(ValueError):
    """A message that cannot be decoded (bad hash, size, tensor bytes, spec) or a value the wire cannot carry."""


class StreamTooLarge(CodecError):
    """A stream over its configured size limit (answered with RESOURCE_EXHAUSTED)."""


# --- tensors -------------------------------------------------------------------------------------


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays -> safetensors bytes (empty mapping -> b"")."""
    if not tensors:
        return b""
    return bytes(st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))


def decode_tensors(data: bytes) -> dict[str, np.ndarray]:
    """safetensors bytes -> named arrays."""
    if not data:
        return {}
    try:
        return dict(st_load(data))
    except Exception as exc:  # safetensors raises its own error types
        raise CodecError(f"malformed tensor payload: {exc}") from None


def layout_of(tensors: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in the flattening order (sorted names)."""
    return [(k, tuple(int(d) for d in tensors[k].shape)) for k in sorted(tensors)]


def flatten(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate every array (sorted names) into one float32 vector."""
    if not tensors:
        return np.zeros(0, np.float32)
    return np.concatenate([np.asarray(tensors[k], np.float32).ravel() for k in sorted(tensors)])


def unflatten(vector: np.ndarray, layout: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Inverse of ``flatten`` for a given layout."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in layout:
        size = int(np.prod(shape)) if shape else 1
        if offset + size > vector.size:
            raise CodecError(f"vector has {vector.size} values but the layout needs more at {name!r}")
        out[name] = vector[offset : offset + size].reshape(shape)
        offset += size
    if offset != vector.size:
        raise CodecError(f"vector has {vector.size} values but the layout describes {offset}")
    return out


def layout_to_pb(layout: Iterable[tuple[str, tuple[int, ...]]]) -> list[tpb.NamedShape]:
    """Layout -> NamedShape messages."""
    return [tpb.NamedShape(name=n, dims=list(s)) for n, s in layout]


def layout_from_pb(items: Iterable[tpb.NamedShape]) -> list[tuple[str, tuple[int, ...]]]:
    """NamedShape messages -> layout, rejecting negative or absurd dimensions."""
    out = []
    for item in items:
        if not item.name or any(d < 0 for d in item.dims) or len(item.dims) > 4:
            raise CodecError(f"malformed layout entry {item.name!r} {list(item.dims)}")
        out.append((item.name, tuple(int(d) for d in item.dims)))
    return out


# --- chunked streams -----------------------------------------------------------------------------


def chunks(payload: bytes, size: int = CHUNK_BYTES) -> Iterator[tpb.Chunk]:
    """A payload as Chunk messages; the last carries the sha256 (an empty payload is one chunk)."""
    digest = hashlib.sha256(payload).hexdigest()
    total = len(payload)
    offsets = range(0, total, size) if total else [0]
    last = offsets[-1]
    for off in offsets:
        yield tpb.Chunk(data=payload[off : off + size], offset=off, total_size=total, sha256=digest if off == last else "")


def join_chunks(stream: Iterable[tpb.Chunk], max_bytes: int) -> bytes:
    """Reassemble a Chunk stream, checking order, size and the trailing sha256."""
    parts: list[bytes] = []
    received = 0
    digest = ""
    for chunk in stream:
        if chunk.offset != received:
            raise CodecError(f"chunk at offset {chunk.offset}, expected {received}")
        received += len(chunk.data)
        if received > max_bytes or received > chunk.total_size:
            raise CodecError(f"stream exceeds its declared size ({chunk.total_size} bytes, limit {max_bytes})")
        parts.append(chunk.data)
        digest = chunk.sha256 or digest
    payload = b"".join(parts)
    if not digest or hashlib.sha256(payload).hexdigest() != digest:
        raise CodecError("stream sha256 missing or does not match its payload")
    return payload


def upload_messages(header: pb.UploadHeader, payload: bytes, size: int = CHUNK_BYTES) -> Iterator[pb.UploadChunk]:
    """Header, data chunks, sha256 trailer."""
    header.total_bytes = len(payload)
    yield pb.UploadChunk(header=header)
    for off in range(0, len(payload), size):
        yield pb.UploadChunk(data=payload[off : off + size])
    yield pb.UploadChunk(sha256=hashlib.sha256(payload).hexdigest())


class UploadAssembler:
    """An upload stream taken one message at a time: the header first, data within its declared size, sha256 last.

    ``header()`` checks the first message before any body byte is accepted (the caller checks it against
    the open round, then ``expect()``s an exact size); ``add()`` takes each later message; ``finish()``
    returns the body once the trailer matched.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.declared = 0
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._digest: str | None = None

    def header(self, first: pb.UploadChunk | None) -> pb.UploadHeader:
        """The stream's header, checked: present, first, with a size within the limit."""
        if first is None or first.WhichOneof("part") != "header":
            raise CodecError("upload must start with a header")
        header = first.header
        if header.total_bytes < 0:
            raise CodecError(f"upload declares {header.total_bytes} bytes")
        if header.total_bytes > self.max_bytes:
            raise StreamTooLarge(f"upload declares {header.total_bytes} bytes; the limit is {self.max_bytes}")
        self.declared = int(header.total_bytes)
        return header

    def expect(self, size: int) -> None:
        """The receiver knows the exact body size (e.g. a masked vector): refuse any other declaration now."""
        if self.declared != size:
            raise CodecError(f"upload declares {self.declared} bytes; this step takes exactly {size}")

    def add(self, msg: pb.UploadChunk) -> None:
        """One message after the header."""
        part = msg.WhichOneof("part")
        if self._digest is not None:
            raise CodecError("data after the sha256 trailer")
        if part == "data":
            if len(self._buf) + len(msg.data) > self.declared:
                raise CodecError(f"upload exceeds its declared {self.declared} bytes")
            self._buf += msg.data
            self._sha.update(msg.data)
        elif part == "sha256":
            self._digest = msg.sha256
        else:
            raise CodecError(f"unexpected {part!r} in the middle of an upload")

    def finish(self) -> bytes:
        """The body, once complete and matching its trailer."""
        if self._digest is None:
            raise CodecError("upload ended without its sha256 trailer")
        if len(self._buf) != self.declared:
            raise CodecError(f"upload has {len(self._buf)} bytes, header declared {self.declared}")
        if self._sha.hexdigest() != self._digest:
            raise CodecError("upload sha256 does not match its payload")
        return bytes(self._buf)


def read_upload(stream: Iterable[pb.UploadChunk], max_bytes: int) -> tuple[pb.UploadHeader, bytes]:
    """Reassemble an upload: exactly one header first, data within the declared size, sha256 last."""
    it = iter(stream)
    upload = UploadAssembler(max_bytes)
    header = upload.header(next(it, None))
    for msg in it:
        upload.add(msg)
    return header, upload.finish()


# --- secure aggregation framing (the messages themselves: ``secagg_wire``) -------------------------

SESSION_ID_BYTES = 32


def parse_message(kind: Any, data: bytes) -> Any:
    """Parse ``data`` as the protobuf message class ``kind``, or raise ``CodecError`` naming it."""
    msg = kind()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise CodecError(f"malformed {kind.__name__}: {exc}") from None
    return msg


def encode_masked(session_id: bytes, vector: np.ndarray) -> bytes:
    """A masked ring vector as upload bytes: session id, then little-endian ring elements."""
    return session_id + np.ascontiguousarray(vector).astype(vector.dtype.newbyteorder("<")).tobytes()


def decode_masked(data: bytes, ring_bits: int, size: int) -> tuple[bytes, np.ndarray]:
    """Upload bytes -> (session id, ring vector), checking the length against the layout."""
    dtype = np.dtype("<u4") if ring_bits == 32 else np.dtype("<u8")
    expected = SESSION_ID_BYTES + size * dtype.itemsize
    if len(data) != expected:
        raise CodecError(f"masked input has {len(data)} bytes; {size} values in a {ring_bits}-bit ring need {expected}")
    vector = np.frombuffer(data, dtype=dtype, offset=SESSION_ID_BYTES).astype(dtype.newbyteorder("="))
    return data[:SESSION_ID_BYTES], vector


def encode_layout(layout: Iterable[tuple[str, tuple[int, ...]]]) -> bytes:
    """A phase's vector layout declaration."""
    return bytes(spb.LayoutDeclaration(layout=layout_to_pb(layout)).SerializeToString())


def decode_layout(data: bytes) -> list[tuple[str, tuple[int, ...]]]:
    """Inverse of ``encode_layout``."""
    return layout_from_pb(parse_message(spb.LayoutDeclaration, data).layout)

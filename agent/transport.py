"""Typed client for the coordinator: mutual TLS, retries with backoff, chunked streams."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Iterable, TypeVar

import grpc
import numpy as np

from ..proto import codec
from ..proto import federation_pb2 as pb
from ..proto import federation_pb2_grpc as pb_grpc
from ..proto import tensors_pb2 as tpb

log = logging.getLogger("fedquilt.agent.transport")
T = TypeVar("T")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
"""Only transient failures are retried; RESOURCE_EXHAUSTED means over a limit, and a retry would not fit either."""
MAX_DOWNLOAD_BYTES = 4 * 1024**3


def channel(address: str, ca: bytes, cert: bytes, key: bytes, server_name: str | None = None) -> grpc.Channel:
    """A mutual-TLS channel presenting this site's certificate."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options: list[tuple[str, object]] = [("grpc.max_receive_message_length", 8 * 1024 * 1024),
                                         ("grpc.max_send_message_length", 8 * 1024 * 1024)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, creds, options=options)


class Transport:
    """Every call the agent makes, retried while the coordinator is unreachable."""

    def __init__(self, chan: grpc.Channel, max_backoff: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 give_up_after: float | None = None) -> None:
        self.stub = pb_grpc.FederationStub(chan)  # type: ignore[no-untyped-call]  # generated, untyped
        self.max_backoff, self.sleep, self.give_up_after = max_backoff, sleep, give_up_after
        self.on_reconnect: Callable[[], None] | None = None
        self.chunk_bytes = codec.CHUNK_BYTES
        """Upload chunk size; the coordinator says how much it accepts in its Hello reply."""

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        delay, started, failed = 0.5, time.monotonic(), False
        while True:
            try:
                result = call()
                if failed and self.on_reconnect is not None:
                    self.on_reconnect()
                return result
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE:
                    raise
                if self.give_up_after is not None and time.monotonic() - started > self.give_up_after:
                    raise
                failed = True
                wait = min(self.max_backoff, delay) * (0.5 + random.random() / 2)
                log.warning("%s: coordinator unreachable (%s); retrying in %.1fs", what, code.name, wait)
                self.sleep(wait)
                delay *= 2

    def hello(self, req: pb.HelloRequest) -> pb.HelloReply:
        """Enrol with the coordinator."""
        reply: pb.HelloReply = self._retry("hello", lambda: self.stub.Hello(req, timeout=30))
        if reply.max_chunk_bytes > 0:
            self.chunk_bytes = int(reply.max_chunk_bytes)
        return reply

    def wait(self, after_step: int, seconds: float = 20.0) -> pb.Task:
        """Long-poll for the next step."""
        task: pb.Task = self._retry("wait", lambda: self.stub.WaitForTask(
            pb.WaitRequest(after_step=after_step, wait_seconds=seconds), timeout=seconds + 15))
        return task

    def download(self, what: int, round_id: str = "", phase: int = 0) -> bytes:
        """A whole chunked download, hash-checked."""
        req = pb.DownloadRequest(what=what, round_id=round_id, phase=phase)  # type: ignore[arg-type]
        return self._retry("download", lambda: codec.join_chunks(self.stub.Download(req, timeout=600), MAX_DOWNLOAD_BYTES))

    def upload(self, round_id: str, step: int, phase: int, encoding: tpb.Encoding, tensors_or_vector: bytes,
               layout: Iterable[tuple[str, tuple[int, ...]]] = ()) -> pb.Ack:
        """A chunked upload ending with the payload's sha256 (safe to retry: the server is idempotent)."""
        layout_pb = codec.layout_to_pb(layout)
        ack: pb.Ack = self._retry("upload", lambda: self.stub.Upload(
            codec.upload_messages(pb.UploadHeader(round_id=round_id, step=step, phase=phase, encoding=encoding,
                                                  layout=layout_pb), tensors_or_vector, self.chunk_bytes),
            timeout=600))
        return ack

    def upload_tensors(self, round_id: str, step: int, phase: int, tensors: dict[str, np.ndarray]) -> pb.Ack:
        """Plaintext float32 vectors."""
        return self.upload(round_id, step, phase, tpb.FLOAT32, codec.encode_tensors(tensors), codec.layout_of(tensors))

    def submit(self, req: pb.SubmitRequest) -> pb.Ack:
        """A small step reply."""
        ack: pb.Ack = self._retry("submit", lambda: self.stub.Submit(req, timeout=60))
        return ack

"""Typed client for the coordinator: mutual TLS, retries with backoff, chunked streams."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Iterable, TypeVar

import grpc
import numpy as np

from ..proto import codec
from .connection_diagnosis import HANDSHAKE_PROBLEMS, ConnectionProblem, Diagnosis, Problem
from ..proto import federation_pb2 as pb
from ..proto import federation_pb2_grpc as pb_grpc
from ..proto import tensors_pb2 as tpb

log = logging.getLogger("fedquilt.agent.transport")
T = TypeVar("T")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
"""Transient failures, retried with backoff. RESOURCE_EXHAUSTED (the coordinator is busy, or a message is over a
limit) is retried only ``MAX_EXHAUSTED_RETRIES`` times: a message over a limit would not fit on a retry either."""
MAX_EXHAUSTED_RETRIES = 5
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
                 give_up_after: float | None = None, diagnose: Callable[[], Diagnosis] | None = None,
                 max_failed_handshakes: int | None = None) -> None:
        self.stub = pb_grpc.FederationStub(chan)  # type: ignore[no-untyped-call]  # generated, untyped
        self.max_backoff, self.sleep, self.give_up_after = max_backoff, sleep, give_up_after
        self.diagnose, self.max_failed_handshakes = diagnose, max_failed_handshakes
        """``diagnose`` classifies an UNAVAILABLE; after ``max_failed_handshakes`` TLS failures in a row the calls
        raise ``ConnectionProblem`` (None: retry for ever)."""
        self.poll_slack = 15.0
        """A long poll's deadline is its ``wait_seconds`` plus this; passing it means "nothing yet"."""
        self._told: set[str] = set()
        self._failed_handshakes = 0
        self.on_reconnect: Callable[[], None] | None = None
        self.chunk_bytes = codec.CHUNK_BYTES
        """Upload chunk size; the coordinator says how much it accepts in its Hello reply."""

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        delay, started, failed, exhausted = 0.5, time.monotonic(), False, 0
        while True:
            try:
                result = call()
                if failed and self.on_reconnect is not None:
                    self.on_reconnect()
                self._failed_handshakes = 0
                return result
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in RETRYABLE:
                    raise
                if self.give_up_after is not None and time.monotonic() - started > self.give_up_after:
                    raise
                wait = min(self.max_backoff, delay) * (0.5 + random.random() / 2)
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    exhausted += 1
                    if exhausted > MAX_EXHAUSTED_RETRIES:
                        raise
                    log.warning("%s: coordinator over a limit (%s); retrying in %.1fs", what, exc.details(), wait)
                else:
                    failed = code is grpc.StatusCode.UNAVAILABLE or failed
                    self._unreachable(what, code, wait)
                self.sleep(wait)
                delay *= 2

    def _unreachable(self, what: str, code: grpc.StatusCode, wait: float) -> None:
        """Say once, in plain words, why the coordinator cannot be reached; give up on a TLS mismatch."""
        diagnosis = self.diagnose() if self.diagnose is not None and code is grpc.StatusCode.UNAVAILABLE else None
        if diagnosis is None or diagnosis.problem is Problem.OK:
            log.warning("%s: coordinator unreachable (%s); retrying in %.1fs", what, code.name, wait)
            return
        if diagnosis.message not in self._told:
            self._told.add(diagnosis.message)
            log.error("cannot connect to the coordinator: %s", diagnosis.message)
        else:
            log.debug("%s: still failing (%s); retrying in %.1fs", what, diagnosis.problem.value, wait)
        if diagnosis.problem in HANDSHAKE_PROBLEMS:
            self._failed_handshakes += 1
            if self.max_failed_handshakes is not None and self._failed_handshakes >= self.max_failed_handshakes:
                raise ConnectionProblem(diagnosis)

    def hello(self, req: pb.HelloRequest) -> pb.HelloReply:
        """Enrol with the coordinator."""
        reply: pb.HelloReply = self._retry("hello", lambda: self.stub.Hello(req, timeout=30))
        if reply.max_chunk_bytes > 0:
            self.chunk_bytes = int(reply.max_chunk_bytes)
        return reply

    def hello_once(self, req: pb.HelloRequest) -> pb.HelloReply:
        """One Hello without retrying (from inside a retry's reconnect hook, which must not recurse)."""
        reply: pb.HelloReply = self.stub.Hello(req, timeout=30)
        return reply

    def wait(self, after_step: int, seconds: float = 20.0) -> pb.Task:
        """Long-poll for the next step (a poll that outlives its deadline means "nothing yet": IDLE)."""
        def poll() -> pb.Task:
            try:
                task: pb.Task = self.stub.WaitForTask(pb.WaitRequest(after_step=after_step, wait_seconds=seconds),
                                                      timeout=seconds + self.poll_slack)
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                return pb.Task(step=after_step, kind=pb.IDLE)
            return task

        return self._retry("wait", poll)

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

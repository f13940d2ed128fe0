"""The typed seams between the agent's loop, its transport and its secure-sum client.

``AgentLoop`` drives I/O; ``SecureSumClient`` runs one site's side of each secure sum. They meet only
through these protocols, so neither reaches into the other's attributes:

* :class:`SiteTransport` — what the loop and the secure-sum client send and fetch (``agent/transport.py``
  over mutual-TLS gRPC; an in-memory one in tests).
* :class:`SecureSumHost` — what the secure-sum client needs from the site: its id, the transport, whether
  it trains under DP, the phase's vectors (computed once by the loop) and the audit hook.
* :class:`PhaseWork` — the round the site holds: its spec, context, sample count, metrics and the digests of
  the broadcasts it downloaded (the next sum's masks are bound to them).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol

import numpy as np

from ..proto.round_spec import RoundSpec
from ..proto import federation_pb2 as pb
from ..proto import tensors_pb2 as tpb
from ..strategies.base import RoundContext


class SiteTransport(Protocol):
    """The site's calls to the coordinator (retrying and diagnosing as ``Transport`` does)."""

    on_reconnect: Callable[[], None] | None

    def hello(self, req: pb.HelloRequest) -> pb.HelloReply:
        """Enrol (or re-enrol), retrying while the coordinator is unreachable."""
        ...

    def hello_once(self, req: pb.HelloRequest) -> pb.HelloReply:
        """One Hello, no retry (the reconnect hook)."""
        ...

    def wait(self, after_step: int, seconds: float = 20.0) -> pb.Task:
        """Long-poll for the next step."""
        ...

    def download(self, what: int, round_id: str = "", phase: int = 0) -> bytes:
        """The global, a broadcast or the CRL, joined from its chunks."""
        ...

    def upload(self, round_id: str, step: int, phase: int, encoding: tpb.Encoding, tensors_or_vector: bytes,
               layout: Iterable[tuple[str, tuple[int, ...]]] = ()) -> pb.Ack:
        """One phase's vectors (plaintext tensors or a masked ring vector)."""
        ...

    def upload_tensors(self, round_id: str, step: int, phase: int, tensors: dict[str, np.ndarray]) -> pb.Ack:
        """Plaintext tensors, encoded."""
        ...

    def submit(self, req: pb.SubmitRequest) -> pb.Ack:
        """A step's report, secure-sum message or refusal."""
        ...


class PhaseWork(Protocol):
    """The round a site holds between its steps (``agent.loop.RoundWork``)."""

    spec: RoundSpec
    ctx: RoundContext
    n: int
    metrics: dict[str, Any]
    broadcast_digests: dict[int, bytes]


class SecureSumHost(Protocol):
    """What ``SecureSumClient`` needs from the site it runs for (``AgentLoop``)."""

    site: str
    transport: SiteTransport
    privacy: Any
    """The site's DP-SGD engine, or None (under DP no training metric leaves the site, even summed)."""

    def phase_vectors(self, work: PhaseWork, phase: int, ctx: RoundContext) -> Mapping[str, Any]:
        """The rule's vectors for this phase (the loop computes them; the client only scales and masks)."""
        ...

    def audit(self, round_id: str, phase: int, vectors: Mapping[str, Any]) -> None:
        """Keep a plaintext copy of what is submitted (only with ``keep_submissions``)."""
        ...

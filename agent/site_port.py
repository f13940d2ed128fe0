"""The typed seams of the site: its I/O driver's transport, and what its pure parts read of each other.

``AgentLoop`` (``agent/loop.py``) is the only part that does I/O; ``SiteMachine`` (``agent/site_machine.py``)
decides, and owns the ``SecureSumClient`` that answers the secure-sum steps. They meet through these protocols:

* :class:`SiteTransport` — what the driver sends and fetches (``agent/transport.py`` over mutual-TLS gRPC;
  an in-memory channel in tests). Neither the machine nor the secure-sum client ever holds one.
* :class:`PhaseWork` — the round the machine holds, as the secure-sum client reads it: its spec, context,
  sample count, metrics, whether it trained under DP, the digests of the broadcasts downloaded (the next
  sum's masks are bound to them) and the rule's vectors of a phase.
* :class:`DpReporter` — the site's DP-SGD engine, which turns a training result into the TRAIN report's ``dp``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Protocol

import numpy as np

from ..proto.round_spec import RoundSpec
from ..proto import federation_pb2 as pb
from ..proto import tensors_pb2 as tpb
from ..strategies.base import RoundContext
from .trainer import TrainResult


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
    """The round a site holds between its steps, as its secure-sum client reads it (``site_machine.RoundWork``)."""

    spec: RoundSpec
    ctx: RoundContext
    n: int
    metrics: dict[str, object]
    broadcast_digests: dict[int, bytes]
    dp: bool
    """Whether this site trained the round under DP-SGD (then no training metric leaves it, even summed)."""

    def vectors(self, phase: int, ctx: RoundContext) -> Mapping[str, np.ndarray]:
        """The rule's vectors for this phase (the client only scales, noises and masks them)."""
        ...


class DpReporter(Protocol):
    """The site's DP-SGD engine as the site machine sees it (``privacy_session.PrivacySite``)."""

    def report_of(self, result: TrainResult) -> dict[str, object]:
        """The ``"dp"`` metrics of a training result; raises for a result trained without DP."""
        ...

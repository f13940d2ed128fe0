"""One phase of a round as the round machine sees it: the ``Phase`` protocol and what a phase hands back.

Theory of operation
-------------------
A phase collects one set of vectors from the round's participants. The round machine makes one per
phase with a ``PhaseFactory`` (from a ``PhaseRequest``: the spec, the participants, the broadcast sent
before it), hands the steps of ``start()`` to the sites, feeds it the sites' events (``upload``,
``message``, ``refuse``) and calls ``advance(now)`` on every tick. ``advance`` returns the next steps for
sites (a secure sum has several stages) and the phase turns ``done`` when its result is ready; then
``outcome()`` is the phase's ``PhaseResult``: who contributed, the sums (or, for a rule that needs them,
each site's own vectors), the cohort metrics summed with them and the facts the manifest records.

Implementations: ``collect.PlainCollector`` (float32 uploads summed in float64), ``collect.IndividualCollector``
(each site's vectors kept: plaintext ``stack`` only) and ``secure_sum.SecureSum`` (a ``secure_agg`` session;
the coordinator ends with the sums and nothing else). Every error a phase raises on a site's event is a
``coordinator.errors`` error (a precise gRPC status at the edge) and leaves the phase as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from ..proto.round_spec import RoundSpec
from .steps import SiteId, Step

Moves = dict[SiteId, tuple[Step, bytes]]
"""Steps a phase hands to sites: site -> (what to do, the step's payload)."""

Layout = Sequence[tuple[str, tuple[int, ...]]]
"""An upload's declared tensor names and shapes."""


@dataclass(frozen=True)
class PhaseRequest:
    """Everything a phase is built from."""

    spec: RoundSpec
    phase: int
    participants: frozenset[SiteId]
    broadcast: bytes
    """The encoded broadcast sent to the sites before this phase (empty for phase 0)."""
    now: float
    deadline: float
    """When a plaintext phase stops waiting for uploads (a secure sum keeps one deadline per stage)."""
    individual: bool
    """The rule needs each site's own vectors (plaintext ``stack``): nothing is summed."""


@dataclass(frozen=True)
class PhaseProgress:
    """What the status page shows about a phase: who has sent its part, and the secure sum's sub-step."""

    sent: frozenset[SiteId]
    substep: str | None = None


@dataclass(frozen=True)
class PhaseResult:
    """A finished phase."""

    contributors: frozenset[SiteId]
    sums: Mapping[str, np.ndarray]
    """The phase's float64 sums (empty when ``individual`` is set)."""
    individual: Mapping[str, Mapping[str, np.ndarray]] | None = None
    """Each contributor's own vectors, only for a rule that needs them (never under SecAgg)."""
    count_resolution: float = 0.0
    """How far one site's summed count may be off by rounding (SecAgg's fixed-point step; 0 in float)."""
    cohort_metrics: Mapping[str, float | int | None] | None = None
    """Cohort means of the metrics summed securely with the update (None: no per-cohort metrics here)."""
    secure_facts: Mapping[str, object] | None = None
    """What the manifest records about the secure sum (None for a plaintext phase)."""
    session: bytes | None = None
    """The secure sum's session id: the public randomness sites derived the rule's context from."""


class Phase(Protocol):
    """One phase's collection, plaintext or secure (see the module docstring)."""

    @property
    def done(self) -> bool:
        """The result is ready (``outcome()`` may be called)."""
        ...

    def start(self) -> Moves:
        """The first step of every participant."""
        ...

    def advance(self, now: float) -> Moves:
        """Close a stage when everyone answered or its deadline passed; the next steps (may raise: the round ends)."""
        ...

    def upload_step(self, encoding: str) -> Step:
        """The step an upload with ``encoding`` answers (InvalidRequest for an encoding this phase never takes)."""
        ...

    def upload_size(self, round_id: str) -> int | None:
        """The exact body size an upload must have now, or None when only the server's limit bounds it."""
        ...

    def upload(self, site: SiteId, encoding: str, layout: Layout, payload: bytes) -> bool:
        """One site's vectors; False for an identical retry."""
        ...

    @property
    def takes_messages(self) -> bool:
        """The phase has stages sites answer with small messages (a secure sum)."""
        ...

    def message(self, site: SiteId, kind: Step, payload: bytes) -> None:
        """A small stage message (only where ``takes_messages``)."""
        ...

    def refuse(self, site: SiteId, kind: Step, reason: str) -> None:
        """A site declines the current stage under its own privacy policy (only where ``takes_messages``)."""
        ...

    def progress(self) -> PhaseProgress:
        """Who has sent its part of the current stage."""
        ...

    def outcome(self) -> PhaseResult:
        """The finished phase (only once ``done``)."""
        ...


class PhaseFactory(Protocol):
    """Builds the phase a ``PhaseRequest`` asks for (``collect.plain_phase``, ``secure_sum.make_factory``)."""

    def __call__(self, request: PhaseRequest) -> Phase: ...

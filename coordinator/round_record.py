"""The records the round machine keeps, and the two things it tells the rest of the coordinator.

``RoundRecord`` is the round in flight (its spec, cohort, participants, stage, the phase collecting
now); ``Assign`` is the machine's one kind of action (give a site its next step); ``RoundObserver``
receives round events (metrics, the status page, durable history) and ``Publisher`` writes a finished
round's aggregate as a version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Protocol

from ..proto.round_spec import RoundSpec
from ..strategies.base import Aggregate, Broadcast
from .phase import Phase, PhaseResult
from .steps import SiteId, Step

TrainReport = Mapping[str, object]
"""A cohort site's TRAIN report, validated at the edge (``site_input.TrainMetrics``): losses, steps, its DP report."""


class RoundStage(Enum):
    """Where the current round is."""

    TRAINING = "training"
    PHASE = "phase"
    DONE = "done"


@dataclass
class RoundRecord:
    """The round in flight."""

    number: int
    spec: RoundSpec
    cohort: set[SiteId]
    participants: set[SiteId]
    stage: RoundStage
    deadline: float
    phase: int = 0
    collector: Phase | None = None
    """The phase collecting now (``phase.Phase``: plaintext, individual or a secure sum)."""
    result: PhaseResult | None = None
    """The last finished phase's result (its secure-sum facts go into the manifest)."""
    trained: dict[SiteId, TrainReport] = field(default_factory=dict)
    broadcasts: dict[int, bytes] = field(default_factory=dict)
    """Encoded broadcast sent to sites before each phase (the coordinator keeps the decoded one too)."""
    broadcast_objs: dict[int, Broadcast] = field(default_factory=dict)
    started: float = 0.0
    stage_started: float = 0.0
    """When the current stage (training, or the current phase) began; for ``stage_finished`` events."""
    deadline_utc: str = ""
    """``deadline`` as UTC wall time, fixed when the stage starts (for the status page)."""
    needed: int = 0
    """Trained sites that close the training stage early (the cohort without its over-selected extras)."""
    released: set[SiteId] = field(default_factory=set)
    """Over-selected sites still training when enough had finished: sent ROUND_DONE, no longer in the cohort."""
    site_noise_sigmas: list[float] = field(default_factory=list)
    """Effective site-level noise multiplier of every secure sum decoded in this round (dropouts weaken it)."""
    cohort_metrics: dict[str, float | int | None] = field(default_factory=dict)
    """Cohort means of the metrics summed securely in phase 0 (under SecAgg no per-site metric is kept)."""


@dataclass(frozen=True)
class Assign:
    """The round machine's action: give ``site`` its next step (the mailbox numbers and delivers it)."""

    site: SiteId
    kind: Step
    round_id: str = ""
    phase: int = 0
    spec: RoundSpec | None = None
    """The round's spec, sent with every step of a round."""
    payload: bytes = b""
    message: str = ""


class Publisher(Protocol):
    """Writes a finished round's aggregate as a version (see ``publish.publish``)."""

    def __call__(self, round_number: int, agg: Aggregate, facts: dict[str, object]) -> str: ...


class RoundObserver(Protocol):
    """Receives round events (metrics, status page, durable history)."""

    def round_event(self, event: str, **facts: object) -> None: ...


class Events:
    """Sends round events to an optional ``RoundObserver``."""

    def __init__(self, observer: RoundObserver | None) -> None:
        self.observer = observer

    def __call__(self, event: str, **facts: object) -> None:
        """Tell the observer, if there is one."""
        if self.observer is not None:
            self.observer.round_event(event, **facts)

"""What the site machine holds between steps: its stages and their transition table, the round it holds.

``site_machine.SiteMachine`` moves between these stages; ``RoundWork`` is the round a site trained for,
which its secure-sum client reads as a ``site_port.PhaseWork``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Final

from ..proto.round_spec import RoundSpec
from ..strategies.base import Broadcast, LocalUpdate, RoundContext, Vectors
from ..strategies.rule import IndividualRule, Rule
from .site_actions import FetchKind, SiteStep


class Stage(Enum):
    """Where the machine is: resting (IDLE, HOLDING) or waiting for the driver's I/O result."""

    IDLE = "IDLE"
    FETCHING_GLOBAL = "FETCHING_GLOBAL"
    TRAINING = "TRAINING"
    HOLDING = "HOLDING"
    FETCHING_BROADCAST = "FETCHING_BROADCAST"
    FETCHING_CRL = "FETCHING_CRL"


RESTING: Final = frozenset({Stage.IDLE, Stage.HOLDING})
TRANSITIONS: Final[dict[Stage, frozenset[Stage]]] = {
    Stage.IDLE: frozenset({Stage.IDLE, Stage.FETCHING_GLOBAL, Stage.TRAINING}),
    Stage.FETCHING_GLOBAL: frozenset({Stage.IDLE, Stage.TRAINING}),
    Stage.TRAINING: frozenset({Stage.IDLE, Stage.HOLDING}),
    Stage.HOLDING: frozenset({Stage.IDLE, Stage.HOLDING, Stage.FETCHING_GLOBAL, Stage.TRAINING,
                              Stage.FETCHING_BROADCAST, Stage.FETCHING_CRL}),
    Stage.FETCHING_BROADCAST: frozenset({Stage.IDLE, Stage.HOLDING}),
    Stage.FETCHING_CRL: frozenset({Stage.IDLE, Stage.HOLDING}),
}
"""Stage -> the stages it may move to."""
WAITS: Final = {FetchKind.GLOBAL: Stage.FETCHING_GLOBAL, FetchKind.BROADCAST: Stage.FETCHING_BROADCAST,
                 FetchKind.CRL: Stage.FETCHING_CRL}


@dataclass
class RoundWork:
    """What the site keeps between the steps of one round (``site_port.PhaseWork``)."""

    spec: RoundSpec
    rule: Rule | IndividualRule
    ctx: RoundContext
    update: LocalUpdate
    n: int
    dp: bool
    vectors_of: Callable[[RoundWork, int, RoundContext], Vectors] = field(repr=False)
    broadcasts: dict[int, Broadcast] = field(default_factory=dict)
    broadcast_digests: dict[int, bytes] = field(default_factory=dict)
    """sha256 of each broadcast exactly as downloaded (binds the next secure sum's masks to it)."""
    metrics: dict[str, object] = field(default_factory=dict)
    """This site's training/eval metrics; under SecAgg they travel only inside the first secure sum."""
    state_changed: bool = False
    """The rule wrote its site state (its last phase's vectors were computed): save it before anything leaves."""

    def vectors(self, phase: int, ctx: RoundContext) -> Vectors:
        """The rule's vectors for ``phase`` (the machine's ``phase_vectors``)."""
        return self.vectors_of(self, phase, ctx)


@dataclass(frozen=True)
class PendingTrain:
    """A TRAIN step between its global download and its training result."""

    step: SiteStep
    spec: RoundSpec
    rule: Rule | IndividualRule
    ctx: RoundContext

"""What a site is asked to do next: the domain side of ``Task``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NewType

from ..proto.round_spec import RoundSpec

SiteId = NewType("SiteId", str)


class Step(Enum):
    """The kinds of work a site can be given (mirrors ``StepKind`` on the wire)."""

    IDLE = "IDLE"
    TRAIN = "TRAIN"
    UPLOAD_PLAIN = "UPLOAD_PLAIN"
    DECLARE_LAYOUT = "DECLARE_LAYOUT"
    SECAGG_ADVERTISE = "SECAGG_ADVERTISE"
    SECAGG_SHARE = "SECAGG_SHARE"
    SECAGG_MASKED = "SECAGG_MASKED"
    SECAGG_CONSISTENCY = "SECAGG_CONSISTENCY"
    SECAGG_UNMASK = "SECAGG_UNMASK"
    ROUND_DONE = "ROUND_DONE"
    SHUTDOWN = "SHUTDOWN"


@dataclass(frozen=True)
class Assignment:
    """One step for one site; ``step`` numbers only grow, even across coordinator restarts."""

    step: int
    kind: Step
    round_id: str = ""
    phase: int = 0
    spec: RoundSpec | None = None
    """The round's spec (encoded for the wire by the servicer); None outside a round."""
    payload: bytes = b""
    message: str = ""

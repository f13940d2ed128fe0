"""The site machine's vocabulary: the typed step it is given, and the actions it asks its driver to perform.

``SiteStep`` is a coordinator ``Task`` decoded once, by ``decode_step``, at the driver's edge: the machine
never sees a wire message. Every ``SiteAction`` is a plain, frozen value; only the driver
(``agent/loop.py``) turns one into a transport call, a training run or a file write. A ``Fetch`` or a
``Train`` is always the last action of a list: the machine waits for its result (``on_fetched`` /
``on_trained``) before it decides anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Union

import numpy as np

from ..contract import TrainHyper
from ..proto import federation_pb2 as pb
from ..proto import tensors_pb2 as tpb
from ..proto.round_spec import RoundSpec, decode_spec
from ..strategies.base import TrainingPlan
from ..strategies.lora import Adapter

Report = Mapping[str, object]
"""A TRAIN report's metrics (``proto/reports.py`` encodes them)."""


@dataclass(frozen=True)
class SiteStep:
    """One step the coordinator gives this site, decoded (``spec`` only where the task carries one)."""

    kind: pb.StepKind
    """Which step (the wire's ``StepKind``, the one name both sides use for it)."""
    round_id: str = ""
    step: int = 0
    phase: int = 0
    spec: RoundSpec | None = None
    payload: bytes = b""
    message: str = ""

    @property
    def name(self) -> str:
        """The step kind's wire name (``SECAGG_SHARE``), for log lines."""
        return pb.StepKind.Name(self.kind)


def decode_step(task: pb.Task) -> SiteStep:
    """A ``Task`` -> ``SiteStep`` (``CodecError`` for a malformed spec; a TRAIN step always carries one)."""
    spec = decode_spec(task.spec) if task.kind == pb.TRAIN or task.HasField("spec") else None
    return SiteStep(kind=task.kind, round_id=task.round_id, step=task.step, phase=task.phase, spec=spec,
                    payload=task.payload, message=task.message)


class FetchKind(Enum):
    """What a ``Fetch`` downloads (``DownloadRequest.What`` on the wire)."""

    GLOBAL = "GLOBAL"
    BROADCAST = "BROADCAST"
    CRL = "CRL"


@dataclass(frozen=True)
class Fetch:
    """Download ``what`` (a broadcast names its round and phase); answer with ``on_fetched``."""

    what: FetchKind
    round_id: str = ""
    phase: int = 0


@dataclass(frozen=True)
class Fetched:
    """A ``Fetch``'s result: the bytes, or (``data`` None) the gRPC status name of the failure."""

    what: FetchKind
    data: bytes | None
    failure: str = ""


@dataclass(frozen=True)
class Train:
    """Run local training for the TRAIN step ``step``; answer with ``on_trained`` or ``on_train_failed``."""

    step: int
    plan: TrainingPlan
    hp: TrainHyper


@dataclass(frozen=True)
class Submit:
    """A step's reply: exactly one of a TRAIN ``report``, a stage ``payload`` or a ``refusal``."""

    round_id: str
    step: int
    kind: pb.StepKind
    report: Report | None = None
    payload: bytes = b""
    refusal: str = ""


@dataclass(frozen=True)
class UploadTensors:
    """A phase's vectors in plaintext (``UPLOAD_PLAIN``); the driver logs the ack."""

    round_id: str
    step: int
    phase: int
    round: int
    vectors: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class UploadMasked:
    """A secure sum's masked ring vector (``SECAGG_MASKED``), already encoded."""

    round_id: str
    step: int
    phase: int
    encoding: tpb.Encoding
    data: bytes


@dataclass(frozen=True)
class SaveRuleState:
    """Write the rule's site state (``RuleStateFile``) before anything computed from it leaves."""

    state: Mapping[str, object]


@dataclass(frozen=True)
class Audit:
    """Keep a plaintext copy of what is submitted for a phase (the driver does so only with ``keep_submissions``)."""

    round_id: str
    phase: int
    vectors: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class KeepUpdate:
    """Keep the trained adapter as a PEFT folder (only with ``keep_submissions``)."""

    round_id: str
    adapter: Adapter = field(repr=False)


@dataclass(frozen=True)
class Drop:
    """This site is out of round ``round_id`` (nothing more is sent for it); ``reason`` says why."""

    round_id: str
    reason: str


SiteAction = Union[Fetch, Train, Submit, UploadTensors, UploadMasked, SaveRuleState, Audit, KeepUpdate, Drop]
"""Everything the machine can ask of its driver."""

"""Typed schemas of everything a site sends beside tensors, checked at the edge before the domain sees it.

A site is an organisation the others do not control: every number it declares (sample count, rank,
alpha, shapes) and every metric it reports is validated here, so that a string where a loss belongs,
a rank of 2^31 − 1 or a count of 2^40 is refused with INVALID_ARGUMENT instead of being stored and
failing later inside the round driver. ``pydantic.ValidationError`` is turned into
``errors.InvalidRequest`` naming the first bad field. Reports arrive as typed messages (round.proto),
decoded to dicts by ``proto.reports``; protobuf already refuses a string where a number belongs, and
the checks here refuse what a number field can still carry: NaN, infinities, negative counts, a DP
report whose delta is not a probability, an oversized string.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequest

MAX_SAMPLES = 2**31 - 1
"""The largest sample count a Hello may declare at all (the weight is capped far lower, see FederationConfig)."""
MAX_DIM = 1 << 20
MAX_MODULES = 4096
MAX_NAME = 512
MAX_LABEL = 64
"""Longest free-text value of a report (a DP mode or accountant name)."""
M = TypeVar("M", bound=BaseModel)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HelloFacts(_Frozen):
    """What a site declares about itself when it enrols."""

    num_samples: int = Field(ge=1, le=MAX_SAMPLES)
    rank: int = Field(ge=1, le=MAX_DIM)
    alpha: float = Field(gt=0, le=1e6)
    fingerprint: str = Field(max_length=256)
    task: str = Field(max_length=64)
    shapes: dict[str, tuple[int, int]] = Field(min_length=1, max_length=MAX_MODULES)

    @field_validator("alpha")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v

    @field_validator("shapes")
    @classmethod
    def _dims(cls, v: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        for name, (d, k) in v.items():
            if not name or len(name) > MAX_NAME:
                raise ValueError(f"module names must be 1..{MAX_NAME} characters, got {name[:40]!r}")
            if not (0 < d <= MAX_DIM and 0 < k <= MAX_DIM):
                raise ValueError(f"{name}: dims must be in 1..{MAX_DIM}, got ({d}, {k})")
        return v


def _finite_or_none(v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e12:
        raise ValueError(f"must be a finite number or null, got {v!r}")
    return float(v)


class DpMetrics(_Frozen):
    """A site's DP-SGD report (round.proto ``DpReport``), copied into the manifest: sane numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    epsilon: float | None = Field(None, ge=0)
    delta: float = Field(ge=0, le=1)
    noise_multiplier: float = Field(ge=0)
    max_grad_norm: float = Field(ge=0)
    steps: int = Field(ge=0, le=2**53)
    rounds: int = Field(ge=0, le=2**31)
    mode: str = Field(max_length=MAX_LABEL)
    round_steps: int = Field(ge=0, le=2**53)
    sample_rate: float = Field(ge=0, le=1)
    accountant: str = Field(max_length=MAX_LABEL)

    @field_validator("epsilon", "delta", "noise_multiplier", "max_grad_norm", "sample_rate", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return _finite_or_none(v)


class TrainMetrics(_Frozen):
    """A TRAIN report: numbers for the history and the status page, the DP report for the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    n: int | None = Field(None, ge=0, le=MAX_SAMPLES)
    loss_before: float | None = None
    loss_after: float | None = None
    eval_loss: float | None = None
    steps: int | None = Field(None, ge=0, le=2**31)
    dp: DpMetrics | None = None

    @field_validator("n", "steps", mode="before")
    @classmethod
    def _integer(cls, v: Any) -> Any:
        if isinstance(v, bool) or (v is not None and not isinstance(v, int)):
            raise ValueError(f"must be an integer, got {v!r}")
        return v

    @field_validator("loss_before", "loss_after", "eval_loss", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return _finite_or_none(v)


class UnmaskMetrics(_Frozen):
    """What a site reports with its unmasking shares: how many of its values were clipped."""

    clipped: int = Field(0, ge=0, le=2**53)

    @field_validator("clipped", mode="before")
    @classmethod
    def _integer(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be a count, got {v!r}")
        return v


def hello_facts(**fields: Any) -> HelloFacts:
    """A validated Hello, or InvalidRequest naming the bad field."""
    return _validated(HelloFacts, fields, "Hello")


def train_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    """A TRAIN report (decoded by ``proto.reports``), validated; only the fields that were sent."""
    return _validated(TrainMetrics, report, "train report").model_dump(exclude_unset=True)


def unmask_metrics(clipped: int) -> int:
    """The clipped-value count an unmasking reply carries, validated."""
    return _validated(UnmaskMetrics, {"clipped": clipped}, "unmask report").clipped


def _validated(model: type[M], fields: Mapping[str, Any], what: str) -> M:
    try:
        return model.model_validate(dict(fields))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        raise InvalidRequest(f"{what}: {where}: {first['msg']} (got {str(first.get('input'))[:60]!r})") from None

"""Typed schemas of everything a site sends beside tensors, checked at the edge before the domain sees it.

A site is an organisation the others do not control: every number it declares (sample count, rank,
alpha, shapes) and every metric it reports is validated here, so that a string where a loss belongs,
a rank of 2^31 − 1 or a count of 2^40 is refused with INVALID_ARGUMENT instead of being stored and
failing later inside the round driver. ``pydantic.ValidationError`` is turned into
``errors.InvalidRequest`` naming the first bad field.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequest

MAX_SAMPLES = 2**31 - 1
"""The largest sample count a Hello may declare at all (the weight is capped far lower, see FederationConfig)."""
MAX_DIM = 1 << 20
MAX_MODULES = 4096
MAX_NAME = 512
MAX_METRICS_BYTES = 65536
_JsonScalar = float | int | str | bool | None
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


class TrainMetrics(_Frozen):
    """A TRAIN report: numbers for the history and the status page, the DP report for the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    n: int | None = Field(None, ge=0, le=MAX_SAMPLES)
    loss_before: float | None = None
    loss_after: float | None = None
    eval_loss: float | None = None
    steps: int | None = Field(None, ge=0, le=2**31)
    dp: dict[str, _JsonScalar] | None = Field(None, max_length=32)

    @field_validator("n", "steps", mode="before")
    @classmethod
    def _integer(cls, v: Any) -> Any:
        if isinstance(v, bool) or (v is not None and not isinstance(v, int)):
            raise ValueError(f"must be an integer, got {v!r}")
        return v

    @field_validator("loss_before", "loss_after", "eval_loss", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e12:
            raise ValueError(f"must be a finite number or null, got {v!r}")
        return float(v)


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


def train_metrics(text: str) -> dict[str, Any]:
    """A TRAIN report's metrics_json, validated; only the fields that were sent."""
    return _validated(TrainMetrics, _json_object(text), "metrics_json").model_dump(exclude_unset=True)


def unmask_metrics(text: str) -> int:
    """The clipped-value count an unmasking reply carries (0 when absent)."""
    return _validated(UnmaskMetrics, _json_object(text), "metrics_json").clipped


def _json_object(text: str) -> Mapping[str, Any]:
    if len(text) > MAX_METRICS_BYTES:
        raise InvalidRequest(f"metrics_json must be under {MAX_METRICS_BYTES} bytes, got {len(text)}")
    try:
        value = json.loads(text or "{}")
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"metrics_json is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"metrics_json must be a JSON object, got {type(value).__name__}")
    return value


def _validated(model: type[M], fields: Mapping[str, Any], what: str) -> M:
    try:
        return model.model_validate(dict(fields))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        raise InvalidRequest(f"{what}: {where}: {first['msg']} (got {str(first.get('input'))[:60]!r})") from None

"""Parameters every LoRA rule shares, and the validation all rule parameter classes use.

Each rule declares a frozen dataclass of its parameters (subclassing ``RuleParams``); the
registry builds it from the coordinator's configuration mapping with ``build_params``, which
names unknown keys, and the dataclass checks its own values in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

P = TypeVar("P", bound="RuleParams")


@dataclass(frozen=True)
class RuleParams:
    """Parameters shared by every rule."""

    rslora: bool = False
    """Scale LoRA updates by α/√r (rsLoRA) instead of α/r."""

    def __post_init__(self) -> None:
        if not isinstance(self.rslora, bool):
            raise ValueError(f"rslora must be a bool, got {self.rslora!r}")


@dataclass(frozen=True)
class SeedParams(RuleParams):
    """Parameters of the rules that start every site from a public shared A."""

    seed: int = 0
    """Public seed of the shared A (round one's start, or the frozen A)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("seed", self.seed, 0)


def build_params(cls: type[P], values: Mapping[str, Any], rule: str) -> P:
    """Construct ``cls`` from ``values``, naming the rule and any unknown parameter."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for rule {rule!r}; known: {sorted(known)}")
    try:
        return cls(**dict(values))
    except TypeError as exc:  # a wrong type the dataclass could not even bind
        raise ValueError(f"bad parameters for rule {rule!r}: {exc}") from exc


def check_int(name: str, value: object, low: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int ≥ ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_float(name: str, value: object, low: float, high: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")

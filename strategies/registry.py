"""The explicit table of aggregation rules and the one way to build a rule from configuration."""

from __future__ import annotations

from typing import Any, Final, Mapping

from .alora import ALora, AloraParams
from .base import IndividualRule, Rule
from .dense import Dense, DenseParams
from .fedit import FedIT, FedItParams
from .ffa import FfaLora, FfaParams
from .flexlora import FlexLora
from .rotalign import RotAlign, RotAlignParams
from .rule_params import RuleParams, build_params
from .secure_stack import SecureStack, SketchParams
from .stack import Stack, StackParams

RULES: Final[dict[str, type]] = {
    "fedit": FedIT,
    "ffa": FfaLora,
    "stack": Stack,
    "secure-stack": SecureStack,
    "flexlora": FlexLora,
    "rotalign": RotAlign,
    "alora": ALora,
    "dense": Dense,
}
"""Rule name -> class."""

PARAMS: Final[dict[str, type[RuleParams]]] = {
    "fedit": FedItParams,
    "ffa": FfaParams,
    "stack": StackParams,
    "secure-stack": SketchParams,
    "flexlora": SketchParams,
    "rotalign": RotAlignParams,
    "alora": AloraParams,
    "dense": DenseParams,
}
"""Rule name -> its parameter dataclass."""

INDIVIDUAL: Final[frozenset[str]] = frozenset({"stack"})
"""Rules that need individual submissions (plaintext only, never under secure aggregation)."""


def make_rule(name: str, params: Mapping[str, Any] | None = None) -> Rule | IndividualRule:
    """Build rule ``name`` with validated ``params``; ``ValueError`` names unknown rules/params."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {sorted(RULES)}")
    rule: Rule | IndividualRule = RULES[name](build_params(PARAMS[name], params or {}, name))
    return rule

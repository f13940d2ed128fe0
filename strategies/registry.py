"""The explicit table of aggregation rules and the one way to build a rule from configuration."""

from __future__ import annotations

from typing import Any, Final, Mapping

from .alora import ALora, AloraParams
from .rule import IndividualRule, Rule
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

FIXED_COORDINATES: Final = frozenset({"fedit", "ffa", "rotalign", "alora", "dense"})
"""Rules whose global is a fixed set of tensors the server optimizer can step."""


def make_rule(name: str, params: Mapping[str, Any] | None = None) -> Rule | IndividualRule:
    """Build rule ``name`` with validated ``params``; ``ValueError`` names unknown rules/params."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {sorted(RULES)}")
    rule: Rule | IndividualRule = RULES[name](build_params(PARAMS[name], params or {}, name))
    return rule


# --- issue 14: the rule as a federation runs it (dense modules_to_save, optional server optimizer) ---


def federated_rule(
    name: str, params: Mapping[str, Any] | None = None, server_optimizer: Mapping[str, Any] | None = None
) -> Rule | IndividualRule:
    """``make_rule`` wrapped for a federation: ``modules_to_save`` averaged densely (``SavedModules``) and,
    when ``server_optimizer`` is given (``{"name": "fedadam", ...}``), a server optimizer on the aggregate."""
    from .saved_modules import SavedModules
    from .server_opt import ServerOpt, ServerOptParams

    rule = make_rule(name, params)
    if isinstance(rule, IndividualRule) and not isinstance(rule, Rule):
        if server_optimizer:
            raise ValueError(f"rule {name!r} combines individual updates; server optimizers wrap sums-only rules")
        return rule
    wrapped: Rule = SavedModules(rule)
    if server_optimizer:
        params_ = ServerOptParams.from_mapping(server_optimizer)
        if name not in FIXED_COORDINATES:
            raise ValueError(f"server optimizer {params_.kind.value} needs a rule whose global lives in fixed "
                             f"coordinates {sorted(FIXED_COORDINATES)}; {name!r} refactors its global by SVD "
                             "every round")
        wrapped = ServerOpt(wrapped, params_)
    return wrapped

"""The explicit table of aggregation rules (one entry per rule) and the one way to build a rule from configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Mapping

from .alora import ALora
from .dense import Dense
from .fedit import FedIT
from .ffa import FfaLora
from .flexlora import FlexLora
from .rotalign import RotAlign
from .rule import Configured, IndividualRule, Rule
from .rule_params import RuleParams, build_params
from .saved_modules import SavedModules
from .secure_stack import SecureStack
from .server_opt import ServerOpt, ServerOptParams
from .stack import Stack


@dataclass(frozen=True)
class RuleEntry:
    """One aggregation rule: its name, its class (both halves) and what the federation must know about it."""

    name: str
    rule: type[Configured[Any]]
    """The class, built from the rule's validated parameters (``rule.params_type``)."""
    fixed_coordinates: bool = False
    """Its global is a fixed set of tensors (never refactored by SVD), so a server optimizer may step it."""
    dense: bool = False
    """Its global holds dense deltas of the targets (``Aggregate.dense``) rather than LoRA factors."""

    @property
    def params(self) -> type[RuleParams]:
        """The rule's parameter dataclass."""
        params: type[RuleParams] = self.rule.params_type
        return params

    @property
    def sums_only(self) -> bool:
        """Whether the server half needs only sums (runs under secure aggregation); else it needs each site's own
        factors (``IndividualRule``: plaintext only)."""
        return issubclass(self.rule, Rule)

    def build(self, params: Mapping[str, Any]) -> Rule | IndividualRule:
        """The rule with validated ``params`` (``ValueError`` names an unknown or bad one)."""
        rule = self.rule(build_params(self.params, params, self.name))
        if not isinstance(rule, (Rule, IndividualRule)):
            raise TypeError(f"registry entry {self.name!r} names {self.rule.__name__}, which is not a rule")
        return rule


RULES: Final[Mapping[str, RuleEntry]] = {e.name: e for e in (
    RuleEntry("fedit", FedIT, fixed_coordinates=True),
    RuleEntry("ffa", FfaLora, fixed_coordinates=True),
    RuleEntry("stack", Stack),
    RuleEntry("secure-stack", SecureStack),
    RuleEntry("flexlora", FlexLora),
    RuleEntry("rotalign", RotAlign, fixed_coordinates=True),
    RuleEntry("alora", ALora, fixed_coordinates=True),
    RuleEntry("dense", Dense, fixed_coordinates=True, dense=True),
)}
"""Rule name -> its entry."""


def rule_entry(name: str) -> RuleEntry:
    """The entry of rule ``name``; ``ValueError`` names an unknown rule."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {sorted(RULES)}")
    return RULES[name]


def make_rule(name: str, params: Mapping[str, Any] | None = None) -> Rule | IndividualRule:
    """Build rule ``name`` with validated ``params``; ``ValueError`` names unknown rules/params."""
    return rule_entry(name).build(params or {})


# --- issue 14: the rule as a federation runs it (dense modules_to_save, optional server optimizer) ---


def federated_rule(
    name: str, params: Mapping[str, Any] | None = None, server_optimizer: Mapping[str, Any] | None = None
) -> Rule | IndividualRule:
    """``make_rule`` wrapped for a federation: ``modules_to_save`` averaged densely (``SavedModules``) and,
    when ``server_optimizer`` is given (``{"name": "fedadam", ...}``), a server optimizer on the aggregate
    (only for rules whose entry has ``fixed_coordinates``)."""
    rule = make_rule(name, params)
    if not isinstance(rule, Rule):
        if server_optimizer:
            raise ValueError(f"rule {name!r} combines individual updates; server optimizers wrap sums-only rules")
        return rule
    wrapped: Rule = SavedModules(rule)
    if server_optimizer:
        opt = ServerOptParams.from_mapping(server_optimizer)
        if not RULES[name].fixed_coordinates:
            fixed = sorted(e.name for e in RULES.values() if e.fixed_coordinates)
            raise ValueError(f"server optimizer {opt.kind.value} needs a rule whose global lives in fixed "
                             f"coordinates {fixed}; {name!r} refactors its global by SVD every round")
        wrapped = ServerOpt(wrapped, opt)
    return wrapped

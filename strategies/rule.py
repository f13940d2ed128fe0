"""The two kinds of aggregation rule, and the one frozen input each of their steps receives.

Theory of operation
-------------------
What the agent, the coordinator, the simulation and the tests call is written once, here:
``start(glob, ctx, site, alpha, state)``, ``vectors(phase, update, n, ctx, broadcast, state)`` and
``combine(phase, sums, ctx, glob, broadcast)`` (``strategies/base.py`` says what each half does).
Each call packs its arguments into one frozen input (``SiteStart``, ``Submission``, ``PhaseSums``),
checks what every rule checks (the phase exists; the factors and the global cover the round's
modules, through the inputs' properties) and hands it to the rule's own step:

* ``plan(start) -> TrainingPlan``: how the site prepares local training;
* ``submit(submission) -> Vectors``: the weighted arrays of one phase's secure sum;
* ``aggregate(sums) -> Broadcast | Aggregate``: the server's step from one phase's sums.

So a new rule is a subclass of ``Configured[ItsParams]`` and ``Rule`` holding those three steps and
nothing else (``docs/rules.md``, "Adding a rule"). ``IndividualRule`` is the plaintext-only kind
(``stack``): its ``vectors`` and ``combine_individual`` see each site's own factors. ``WrappedRule``
sends every step to an inner rule's public calls; ``SavedModules`` and ``ServerOpt`` override the
steps they change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, Mapping, MutableMapping, TypeVar

import numpy as np
import torch

from .base import Aggregate, Broadcast, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .lora import Adapter, lora_scaling
from .submission import check_modules, check_phase, mean, site_rank, total_count, trained_adapter

P = TypeVar("P")

SiteState = MutableMapping[str, torch.Tensor]
"""The site's persistent rule memory: tensors only (the agent reloads it with ``torch.load(weights_only=True)``)."""


@dataclass(frozen=True)
class SiteStart:
    """What the client half knows when it plans local training."""

    glob: Aggregate | None
    """The current global state (None before the first round is published)."""
    ctx: RoundContext
    site: str
    alpha: float
    """The site's LoRA α (the scaling follows from it and the site's rank)."""
    state: SiteState | None = None
    """The site's own persistent mapping; ``None``: the rule gets no memory."""

    @property
    def rank(self) -> int:
        """The rank this site trains with (``ValueError`` for a site outside the cohort)."""
        return site_rank(self.ctx, self.site)

    def lora(self, rslora: bool) -> tuple[int, float]:
        """The site's rank and LoRA scaling α/r (α/√r with rsLoRA)."""
        rank = self.rank
        return rank, lora_scaling(self.alpha, rank, rslora)

    def global_adapter(self, what: str = "the global adapter") -> Adapter | None:
        """The global's LoRA factors, checked against the round's modules (None if it has none)."""
        prev = self.glob.adapter if self.glob is not None else None
        if prev is not None:
            check_modules(prev, self.ctx, what)
        return prev


@dataclass(frozen=True)
class Submission:
    """What the client half submits from: the phase, the trained update and the site's weight."""

    phase: int
    update: LocalUpdate
    n: int
    """The site's sample count (its weight)."""
    ctx: RoundContext
    broadcast: Broadcast | None = None
    """What the server broadcast after the previous phase (None in phase 0)."""
    state: SiteState | None = None

    @property
    def adapter(self) -> Adapter:
        """The trained LoRA factors, checked against the round's modules."""
        return trained_adapter(self.update, self.ctx)


@dataclass(frozen=True)
class PhaseSums:
    """What the server half aggregates from: one phase's sums over the cohort."""

    phase: int
    sums: Mapping[str, np.ndarray]
    ctx: RoundContext
    glob: Aggregate | None
    """The global state the round started from."""
    broadcast: Broadcast | None = None
    """What the previous phase's ``combine`` returned (multi-phase rules need it)."""

    @property
    def total(self) -> float:
        """Σ n_i (``ValueError`` if the count is absent or not positive)."""
        return total_count(self.sums)

    def mean(self, name: str, total: float) -> torch.Tensor:
        """Σ n_i x_i / Σ n_i of the vector ``name`` (float64)."""
        return mean(self.sums, name, total)


class _Planned(ABC):
    """The step every rule has: planning the site's local training."""

    name: str

    def start(
        self, glob: Aggregate | None, ctx: RoundContext, site: str, alpha: float, state: SiteState | None = None
    ) -> TrainingPlan:
        """Client half: how to prepare local training from the current global state.

        ``state`` is the site's own persistent mapping (kept by the agent across rounds and between
        ``start`` and ``vectors``); ``None`` means the rule gets no memory."""
        return self.plan(SiteStart(glob, ctx, site, alpha, state))

    @abstractmethod
    def plan(self, start: SiteStart) -> TrainingPlan:
        """The rule's own planning step."""


class Rule(_Planned):
    """A sums-only aggregation rule (runs under secure aggregation)."""

    phases: int = 1

    def vectors(self, phase: int, update: LocalUpdate, n: int, ctx: RoundContext, broadcast: Broadcast | None,
                state: SiteState | None = None) -> Vectors:
        """Client half: the weighted arrays submitted to the secure sum of ``phase`` (0-based)."""
        check_phase(phase, self.phases, self.name)
        return self.submit(Submission(phase, update, n, ctx, broadcast, state))

    def combine(self, phase: int, sums: Mapping[str, np.ndarray], ctx: RoundContext, glob: Aggregate | None,
                broadcast: Broadcast | None = None) -> Broadcast | Aggregate:
        """Server half: turn the phase's sums into a broadcast or the next global state.

        ``broadcast`` is what the previous phase's ``combine`` returned (multi-phase rules fall back to
        the copy the same instance kept if it is ``None``)."""
        check_phase(phase, self.phases, self.name)
        return self.aggregate(PhaseSums(phase, sums, ctx, glob, broadcast))

    @abstractmethod
    def submit(self, submission: Submission) -> Vectors:
        """The rule's own submission step (the phase is checked)."""

    @abstractmethod
    def aggregate(self, sums: PhaseSums) -> Broadcast | Aggregate:
        """The rule's own aggregation step (the phase is checked)."""


class IndividualRule(_Planned):
    """A rule that needs each site's own factors (plaintext only, never under SecAgg)."""

    @abstractmethod
    def vectors(self, update: LocalUpdate, n: int, ctx: RoundContext) -> Vectors:
        """Client half: the site's unweighted factors plus ``N_KEY``."""

    @abstractmethod
    def combine_individual(
        self, updates: Mapping[str, Mapping[str, np.ndarray]], ctx: RoundContext, glob: Aggregate | None
    ) -> Aggregate:
        """Server half: combine individual submissions (site id -> vectors)."""


class Configured(Generic[P]):
    """A rule built from its validated parameters (``params_type()``'s defaults when none are given)."""

    params_type: type[P]

    def __init__(self, params: P | None = None) -> None:
        """Keep the validated parameters."""
        self.params: P = self.params_type() if params is None else params


class WrappedRule(Rule):
    """A rule around a sums-only ``inner`` rule: its name, its phases, and every step sent to its public calls."""

    def __init__(self, inner: Rule) -> None:
        """Wrap ``inner``."""
        self.inner = inner
        self.name: str = inner.name
        self.phases: int = inner.phases

    def plan(self, start: SiteStart) -> TrainingPlan:
        """The inner rule's plan."""
        return self.inner.start(start.glob, start.ctx, start.site, start.alpha, start.state)

    def submit(self, submission: Submission) -> Vectors:
        """The inner rule's vectors."""
        s = submission
        return self.inner.vectors(s.phase, s.update, s.n, s.ctx, s.broadcast, s.state)

    def aggregate(self, sums: PhaseSums) -> Broadcast | Aggregate:
        """The inner rule's combination."""
        return self.inner.combine(sums.phase, sums.sums, sums.ctx, sums.glob, sums.broadcast)

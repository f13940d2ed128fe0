"""FedIT: plain averaging of the LoRA factors (Zhang et al. 2024, "Towards building the
federated GPT: federated instruction tuning").

Client: start from the global (Ā, B̄), train A and B, submit n·√s·A and n·√s·B zero-padded to
the cohort's largest rank. Server: Ā = Σ p_i √s_i A_i, B̄ = Σ p_i √s_i B_i, published with
scaling 1, so ΔW = B̄·Ā = (Σ p_i √s_i B_i)(Σ p_i √s_i A_i) — which carries the cross terms
B_i A_j of factor averaging (inexact by design). Folding √s_i into both factors makes sites with
different ranks or rsLoRA scalings commensurable; with one shared s it is FedIT exactly.
Round one starts every site from the same public A (B = 0) so the first average is aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import numpy as np

from .base import Aggregate, Broadcast, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .factor_averaging import averaged, averaging_start, factor_vectors, folded
from .rule_params import SeedParams
from .submission import check_phase, trained_adapter


@dataclass(frozen=True)
class FedItParams(SeedParams):
    """FedIT parameters (the public seed of the shared round-one A)."""


class FedIT:
    """FedIT factor averaging (sums-only)."""

    name = "fedit"
    phases = 1

    def __init__(self, params: FedItParams | None = None) -> None:
        """Keep the validated parameters."""
        self.params = params or FedItParams()

    def start(
        self,
        glob: Aggregate | None,
        ctx: RoundContext,
        site: str,
        alpha: float,
        state: MutableMapping[str, Any] | None = None,
    ) -> TrainingPlan:
        """Continue from the global factors' rank-r_i slice; train A and B."""
        return averaging_start(glob, ctx, site, alpha, self.params.rslora, self.params.seed)

    def vectors(
        self,
        phase: int,
        update: LocalUpdate,
        n: int,
        ctx: RoundContext,
        broadcast: Broadcast | None,
        state: MutableMapping[str, Any] | None = None,
    ) -> Vectors:
        """n·√s·A and n·√s·B, zero-padded to the cohort's largest rank."""
        check_phase(phase, self.phases, self.name)
        adapter = trained_adapter(update, ctx)
        return factor_vectors({m: folded(f, ctx.max_rank) for m, f in adapter.items()}, n)

    def combine(
        self,
        phase: int,
        sums: Mapping[str, np.ndarray],
        ctx: RoundContext,
        glob: Aggregate | None,
        broadcast: Broadcast | None = None,
    ) -> Aggregate:
        """Ā = Σ p_i √s_i A_i, B̄ = Σ p_i √s_i B_i."""
        check_phase(phase, self.phases, self.name)
        return averaged(sums, ctx, self.name)

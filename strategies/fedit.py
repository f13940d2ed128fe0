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

import math
from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import numpy as np
import torch

from .base import N_KEY, Aggregate, Broadcast, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .lora import Adapter, LoraFactors, lora_scaling
from .rule_params import RuleParams, check_int
from .shared_init import shared_start, site_slice
from .submission import check_modules, count_vector, key, mean, pad_a, pad_b, site_rank, total_count, weighted


@dataclass(frozen=True)
class FedItParams(RuleParams):
    """FedIT parameters."""

    seed: int = 0
    """Public seed of the shared round-one A."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("seed", self.seed, 0)


def averaging_start(
    glob: Aggregate | None, ctx: RoundContext, site: str, alpha: float, rslora: bool, seed: int
) -> TrainingPlan:
    """Start from the rank-r_i slice of the global factors (or the shared init in round one)."""
    rank = site_rank(ctx, site)
    scaling = lora_scaling(alpha, rank, rslora)
    if glob is None or glob.adapter is None:
        return TrainingPlan(rank=rank, scaling=scaling, init=shared_start(dict(ctx.shapes), rank, scaling, seed))
    check_modules(glob.adapter, ctx, "the global adapter")
    init = {m: site_slice(glob.adapter[m], m, rank, scaling, seed) for m in ctx.shapes}
    return TrainingPlan(rank=rank, scaling=scaling, init=init)


def folded(f: LoraFactors, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(√s·A, √s·B) zero-padded to ``rank`` in float64, so that their product is s·B·A."""
    if f.scaling <= 0:
        raise ValueError(f"averaging rules need a positive LoRA scaling, got {f.scaling}")
    root = math.sqrt(f.scaling)
    return root * pad_a(f.A, rank), root * pad_b(f.B, rank)


def trained_adapter(update: LocalUpdate, ctx: RoundContext) -> Adapter:
    """The update's LoRA factors, checked against the round's modules."""
    if update.adapter is None:
        raise ValueError("this rule needs trained LoRA factors, the update has none")
    check_modules(update.adapter, ctx, "the trained adapter")
    return update.adapter


def factor_vectors(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], n: int) -> Vectors:
    """``<module>/A`` = n·A and ``<module>/B`` = n·B for (A, B) pairs, plus ``N_KEY``."""
    out: Vectors = {N_KEY: count_vector(n)}
    for module, (a, b) in factors.items():
        out[key(module, "A")] = weighted(a, n)
        out[key(module, "B")] = weighted(b, n)
    return out


def averaged(sums: Mapping[str, np.ndarray], ctx: RoundContext, rule: str) -> Aggregate:
    """Ā = Σ n_i A_i / Σ n_i, B̄ likewise, published with scaling 1."""
    total = total_count(sums)
    adapter: Adapter = {}
    for m in ctx.shapes:
        a, b = mean(sums, key(m, "A"), total), mean(sums, key(m, "B"), total)
        adapter[m] = LoraFactors(A=a.to(torch.float32), B=b.to(torch.float32), scaling=1.0)
    return Aggregate(adapter=adapter, info={"rule": rule, "rank": ctx.max_rank, "samples": total})


def check_phase(phase: int, phases: int, rule: str) -> None:
    """Raise ``ValueError`` for a phase the rule does not have."""
    if not 0 <= phase < phases:
        raise ValueError(f"rule {rule!r} has phases 0..{phases - 1}, got phase {phase}")


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

"""Averaging LoRA factors: the shared start, the √s folding, the weighted factor submissions and their mean.

The averaging rules (``fedit``, ``rotalign``, and ``flexlora``'s client half) keep the global as
factors with scaling 1. A site with rank r_i and scaling s_i starts from the global's rank-r_i slice (the
shared public A in round one, so the first average is aligned) and submits n·√s·A and n·√s·B zero-padded to
the cohort's largest rank; the server divides the sums by Σ n and publishes (Ā, B̄) with scaling 1.
"""

from __future__ import annotations

import math
from typing import Mapping, TypeVar

import numpy as np
import torch

from .base import N_KEY, Aggregate, RoundContext, TrainingPlan, Vectors
from .lora import Adapter, LoraFactors
from .rule import Configured, PhaseSums, Rule, SiteStart, Submission
from .rule_params import SeedParams
from .shared_init import shared_start, site_slice
from .submission import count_vector, key, mean, pad_a, pad_b, total_count, weighted


SP = TypeVar("SP", bound=SeedParams)


def averaging_start(start: SiteStart, rslora: bool, seed: int) -> TrainingPlan:
    """Start from the rank-r_i slice of the global factors (or the shared init in round one)."""
    (rank, scaling), ctx = start.lora(rslora), start.ctx
    prev = start.global_adapter()
    if prev is None:
        return TrainingPlan(rank=rank, scaling=scaling, init=shared_start(dict(ctx.shapes), rank, scaling, seed))
    init = {m: site_slice(prev[m], m, rank, scaling, seed) for m in ctx.shapes}
    return TrainingPlan(rank=rank, scaling=scaling, init=init)


def folded(f: LoraFactors, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(√s·A, √s·B) zero-padded to ``rank`` in float64, so that their product is s·B·A."""
    if f.scaling <= 0:
        raise ValueError(f"averaging rules need a positive LoRA scaling, got {f.scaling}")
    root = math.sqrt(f.scaling)
    return root * pad_a(f.A, rank), root * pad_b(f.B, rank)


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


class FactorAveraging(Configured[SP], Rule):
    """Averaged √s-folded factors, every site starting from the global's slice (FedIT's math; other
    averaging rules refine a step: what they keep on the site, how they turn the factors before submitting)."""

    def plan(self, start: SiteStart) -> TrainingPlan:
        """Continue from the global factors' rank-r_i slice (the shared A in round one); train A and B."""
        return averaging_start(start, self.params.rslora, self.params.seed)

    def factors(self, submission: Submission) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every module's (√s·A, √s·B), zero-padded to the cohort's largest rank: what is averaged."""
        return {m: folded(f, submission.ctx.max_rank) for m, f in submission.adapter.items()}

    def submit(self, submission: Submission) -> Vectors:
        """n·A and n·B of ``factors``."""
        return factor_vectors(self.factors(submission), submission.n)

    def aggregate(self, sums: PhaseSums) -> Aggregate:
        """Ā = Σ p_i A_i, B̄ = Σ p_i B_i, published with scaling 1."""
        return averaged(sums.sums, sums.ctx, self.name)

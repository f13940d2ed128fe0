"""Fed-ALoRA-style asymmetric sharing: B is shared and averaged, each site keeps its own A
(Fed-ALoRA, 2025; cf. FedSA-LoRA for the mirror image).

Client: start from the global B̄ (its first r_i columns, /√s_i) and the site's **own** A from its
previous round (kept in the agent's persistent ``state``; the shared public A the first time),
train both, submit n·√s·B zero-padded to the cohort's largest rank. The site also submits
n·√s·A, averaged only so the coordinator can publish a usable adapter: sites never start from
that average. Server: B̄ = Σ p_i √s_i B_i (and Ā likewise), published with scaling 1.

Heterogeneous ranks are zero-padded (lossy for B columns a small-rank site cannot hold); the
paper's B_0 + B_{i2}B_{i1} decomposition is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import numpy as np
import torch

from .base import Aggregate, Broadcast, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .factor_averaging import averaged, factor_vectors, folded
from .lora import Adapter, LoraFactors, lora_scaling
from .shared_init import shared_a, site_slice
from .rule_params import SeedParams
from .submission import check_modules, check_phase, site_rank, trained_adapter

STATE_PREFIX = "alora/A/"
"""State key prefix of the site's own A per module."""


@dataclass(frozen=True)
class AloraParams(SeedParams):
    """Fed-ALoRA parameters (public seed of the first-round A)."""


class ALora:
    """Shared-B, local-A averaging (sums-only)."""

    name = "alora"
    phases = 1

    def __init__(self, params: AloraParams | None = None) -> None:
        """Keep the validated parameters."""
        self.params = params or AloraParams()

    def _local_a(self, state: MutableMapping[str, Any] | None, module: str, rank: int, k: int) -> torch.Tensor:
        """The site's own A from its last round, else the shared public init."""
        kept = state.get(STATE_PREFIX + module) if state is not None else None
        if isinstance(kept, torch.Tensor) and tuple(kept.shape) == (rank, k):
            return kept.clone()
        return shared_a(self.params.seed, module, rank, k)

    def start(
        self,
        glob: Aggregate | None,
        ctx: RoundContext,
        site: str,
        alpha: float,
        state: MutableMapping[str, Any] | None = None,
    ) -> TrainingPlan:
        """B from the global, A the site's own."""
        rank = site_rank(ctx, site)
        scaling = lora_scaling(alpha, rank, self.params.rslora)
        prev = glob.adapter if glob is not None else None
        if prev is not None:
            check_modules(prev, ctx, "the global adapter")
        init: Adapter = {}
        for m, (d, k) in ctx.shapes.items():
            if prev is None:
                b = torch.zeros(d, rank)
            else:
                b = site_slice(prev[m], m, rank, scaling, self.params.seed).B
            init[m] = LoraFactors(A=self._local_a(state, m, rank, k), B=b, scaling=scaling)
        return TrainingPlan(rank=rank, scaling=scaling, init=init)

    def vectors(
        self,
        phase: int,
        update: LocalUpdate,
        n: int,
        ctx: RoundContext,
        broadcast: Broadcast | None,
        state: MutableMapping[str, Any] | None = None,
    ) -> Vectors:
        """Keep A in ``state``; submit n·√s·B (and n·√s·A for the published average)."""
        check_phase(phase, self.phases, self.name)
        if state is None:
            raise ValueError("alora keeps A on the site: pass the agent's persistent state mapping")
        adapter = trained_adapter(update, ctx)
        for m, f in adapter.items():
            state[STATE_PREFIX + m] = f.A.detach().to(torch.float32).clone()
        return factor_vectors({m: folded(f, ctx.max_rank) for m, f in adapter.items()}, n)

    def combine(
        self,
        phase: int,
        sums: Mapping[str, np.ndarray],
        ctx: RoundContext,
        glob: Aggregate | None,
        broadcast: Broadcast | None = None,
    ) -> Aggregate:
        """B̄ = Σ p_i √s_i B_i (sites use it) and Ā = Σ p_i √s_i A_i (publishing only)."""
        check_phase(phase, self.phases, self.name)
        agg = averaged(sums, ctx, self.name)
        return Aggregate(adapter=agg.adapter, info={**agg.info, "published_a": "average of local A (not used by sites)"})



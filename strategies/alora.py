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

import torch

from .base import Aggregate, TrainingPlan, Vectors
from .factor_averaging import FactorAveraging
from .lora import Adapter, LoraFactors
from .rule import PhaseSums, SiteState, SiteStart, Submission
from .rule_params import SeedParams
from .shared_init import shared_a, site_slice

STATE_PREFIX = "alora/A/"
"""State key prefix of the site's own A per module."""


@dataclass(frozen=True)
class AloraParams(SeedParams):
    """Fed-ALoRA parameters (public seed of the first-round A)."""


class ALora(FactorAveraging[AloraParams]):
    """Shared-B, local-A averaging (sums-only): B̄ = Σ p_i √s_i B_i (sites use it), Ā likewise (publishing only)."""

    name = "alora"
    params_type = AloraParams

    def _local_a(self, state: SiteState | None, module: str, rank: int, k: int) -> torch.Tensor:
        """The site's own A from its last round, else the shared public init."""
        kept = state.get(STATE_PREFIX + module) if state is not None else None
        if isinstance(kept, torch.Tensor) and tuple(kept.shape) == (rank, k):
            return kept.clone()
        return shared_a(self.params.seed, module, rank, k)

    def plan(self, start: SiteStart) -> TrainingPlan:
        """B from the global, A the site's own."""
        rank, scaling = start.lora(self.params.rslora)
        prev = start.global_adapter()
        init: Adapter = {}
        for m, (d, k) in start.ctx.shapes.items():
            if prev is None:
                b = torch.zeros(d, rank)
            else:
                b = site_slice(prev[m], m, rank, scaling, self.params.seed).B
            init[m] = LoraFactors(A=self._local_a(start.state, m, rank, k), B=b, scaling=scaling)
        return TrainingPlan(rank=rank, scaling=scaling, init=init)

    def submit(self, submission: Submission) -> Vectors:
        """Keep A in ``state``; submit n·√s·B (and n·√s·A for the published average)."""
        state = submission.state
        if state is None:
            raise ValueError("alora keeps A on the site: pass the agent's persistent state mapping")
        for m, f in submission.adapter.items():
            state[STATE_PREFIX + m] = f.A.detach().to(torch.float32).clone()
        return super().submit(submission)

    def aggregate(self, sums: PhaseSums) -> Aggregate:
        """The factor average, marked: its Ā is the average of local A's, which no site starts from."""
        agg = super().aggregate(sums)
        return Aggregate(adapter=agg.adapter, info={**agg.info, "published_a": "average of local A (not used by sites)"})

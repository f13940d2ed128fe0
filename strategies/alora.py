"""Fed-ALoRA: one shared B, each site keeps its own A side; heterogeneous ranks through the paper's
decomposition B_0 + B_{i2}B_{i1} (Ban & Ji 2025, arXiv:2509.25414; the math is in ``alora_ranks``).

The shared B has a fixed width d_m (``shared_rank``; by default the published B's width, and in round
one the cohort's largest rank). Site i of rank r_i has a fixed projector M_i (d_m × r_i, orthonormal
columns, from the public seed, the module and the site id) and trains a stock rank-r_i pair (B̃, A_i):

* **Client start:** B̃ = B_0 M_i from the global B_0 (zero in round one); A_i is the site's **own** A
  from its previous round (kept in the agent's persistent ``state``; the shared public A the first
  time). ``state`` also keeps M_i and B̃'s start for ``vectors``.
* **Client submission (stays on the site: A_i, M_i, B̃):** n·(B̃ − B_0 M_i)M_iᵀ — the paper's
  B_{i2}B_{i1}, d × d_m at every site whatever its rank — and n·s_i·M_i A_i (d_m × k), the scaled A
  side, summed only so the coordinator can publish a usable adapter: no site starts from it.
* **Server (sums only):** B = B_0 + Σ p_i B_{i2}B_{i1} (sites continue from it) and
  Ā = Σ p_i s_i M_i A_i, published as one rank-d_m pair with scaling 1, so a consumer's
  ΔW = B·Ā = Σ p_i s_i B M_i A_i: the weighted mean of the sites' own models re-based on the new B.

A site that leaves B̃ unchanged leaves B unchanged (zero-padding used to pull the columns a
small-rank site cannot hold toward zero by its weight every round).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .alora_ranks import a_side, b_update, next_shared_b, projector, resolve_shared_rank, site_b, training_rank
from .base import N_KEY, Aggregate, RoundContext, TrainingPlan, Vectors
from .lora import Adapter, LoraFactors, lora_scaling
from .rule import Configured, PhaseSums, Rule, SiteStart, SiteState, Submission
from .rule_params import SeedParams, check_int
from .shared_init import shared_a
from .submission import check_modules, count_vector, key, weighted

STATE_PREFIX = "alora/A/"
"""State key prefix of the site's own A per module."""
PROJECTOR_PREFIX = "alora/M/"
"""State key prefix of the site's projector M_i per module (d_m × r_i, float64)."""
START_PREFIX = "alora/B_start/"
"""State key prefix of this round's start B̃ = B_0 M_i per module (what ``submit`` subtracts)."""
UPDATE = "B_update"
"""Vector name suffix of the submitted n·B_{i2}B_{i1}."""


@dataclass(frozen=True)
class AloraParams(SeedParams):
    """Fed-ALoRA parameters (public seed of the first-round A and of the projectors; the shared width)."""

    shared_rank: int = 0
    """d_m, the shared B's width; 0: the published B's width, in round one the cohort's largest rank."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("shared_rank", self.shared_rank, 0)


class ALora(Configured[AloraParams], Rule):
    """Shared B with per-site low-rank updates, local A (sums-only)."""

    name = "alora"
    params_type = AloraParams

    def _local_a(self, state: SiteState | None, module: str, rank: int, k: int) -> torch.Tensor:
        """The site's own A from its last round, else the shared public init."""
        kept = state.get(STATE_PREFIX + module) if state is not None else None
        if isinstance(kept, torch.Tensor) and tuple(kept.shape) == (rank, k):
            return kept.clone()
        return shared_a(self.params.seed, module, rank, k)

    def _shared_rank(self, prev: Adapter | None, ctx: RoundContext) -> int:
        """d_m for this round (``ValueError`` if the global's modules disagree on it)."""
        widths = {int(f.B.shape[1]) for f in prev.values()} if prev is not None else set()
        if len(widths) > 1:
            raise ValueError(f"the global's shared B has different widths across modules: {sorted(widths)}")
        return resolve_shared_rank(self.params.shared_rank, next(iter(widths), None), ctx.max_rank)

    def plan(self, start: SiteStart) -> TrainingPlan:
        """B̃ = B_0 M_i from the global, A the site's own; M_i and B̃'s start kept in ``state``."""
        ctx, state = start.ctx, start.state
        configured = start.rank
        scaling = lora_scaling(start.alpha, configured, self.params.rslora)
        prev = start.global_adapter()
        width = self._shared_rank(prev, ctx)
        rank = training_rank(configured, width)
        init: Adapter = {}
        for m, (d, k) in ctx.shapes.items():
            proj = projector(self.params.seed, m, start.site, rank, width)
            shared = prev[m].B if prev is not None else torch.zeros(d, width)
            b = site_b(shared, proj).to(torch.float32)
            if state is not None:
                state[PROJECTOR_PREFIX + m], state[START_PREFIX + m] = proj, b.clone()
            init[m] = LoraFactors(A=self._local_a(state, m, rank, k), B=b, scaling=scaling)
        return TrainingPlan(rank=rank, scaling=scaling, init=init)

    def submit(self, submission: Submission) -> Vectors:
        """Keep A in ``state``; submit n·B_{i2}B_{i1} (and n·s·M A for the published average)."""
        state, n = submission.state, submission.n
        if state is None:
            raise ValueError("alora keeps A on the site: pass the agent's persistent state mapping")
        out: Vectors = {N_KEY: count_vector(n)}
        for m, f in submission.adapter.items():
            proj, start_b = state.get(PROJECTOR_PREFIX + m), state.get(START_PREFIX + m)
            if not isinstance(proj, torch.Tensor) or not isinstance(start_b, torch.Tensor):
                raise ValueError(f"alora: the site state has no projector/start B for {m!r}; call start() with this state first")
            out[key(m, UPDATE)] = weighted(b_update(start_b, f.B, proj), n)
            out[key(m, "A")] = weighted(a_side(f.A, proj, f.scaling), n)
            state[STATE_PREFIX + m] = f.A.detach().to(torch.float32).clone()
        return out

    def aggregate(self, sums: PhaseSums) -> Aggregate:
        """B = B_0 + Σ p_i B_{i2}B_{i1} (sites use it) and Ā = Σ p_i s_i M_i A_i (publishing only)."""
        total, ctx = sums.total, sums.ctx
        prev = sums.glob.adapter if sums.glob is not None else None
        if prev is not None:
            check_modules(prev, ctx, "the global adapter")
        adapter: Adapter = {}
        for m in ctx.shapes:
            b = next_shared_b(prev[m].B if prev is not None else None, sums.mean(key(m, UPDATE), total))
            adapter[m] = LoraFactors(A=sums.mean(key(m, "A"), total).to(torch.float32), B=b.to(torch.float32), scaling=1.0)
        width = next(iter(adapter.values())).rank if adapter else 0
        info = {"rule": self.name, "rank": width, "shared_rank": width, "samples": total,
                "published_a": "weighted mean of the sites' s_i·M_i·A_i (no site starts from it)"}
        return Aggregate(adapter=adapter, info=info)

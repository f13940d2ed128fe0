"""FFA-LoRA: A frozen at a shared public initialisation, only B trained and averaged
(Sun, Li, Li & Ding 2024, "Improving LoRA in privacy-preserving federated learning", ICLR).

Every site derives the same A_max for a module from the public seed (``shared_init``); site i
with rank r_i trains with the first r_i rows of A_max frozen. It submits n·s_i·B_i zero-padded
to the cohort's largest rank r, and since s_i B_i A_i = (s_i B_i, padded)·A_max the server's
B̄ = Σ p_i s_i B_i gives ΔW = B̄·A_max = Σ p_i s_i B_i A_i **exactly**, even with mixed ranks and
scalings. The global is published as (A_max, B̄) with scaling 1; a rank-r_i site restarts from
B̄'s first r_i columns divided by s_i (lossy only for the columns it cannot hold).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from .base import N_KEY, Aggregate, TrainingPlan, Vectors
from .lora import Adapter, LoraFactors
from .rule import Configured, PhaseSums, Rule, SiteStart, Submission
from .rule_params import SeedParams
from .shared_init import shared_a
from .submission import count_vector, key, pad_b, weighted


@dataclass(frozen=True)
class FfaParams(SeedParams):
    """FFA-LoRA parameters (the public seed of the frozen shared A)."""


class FfaLora(Configured[FfaParams], Rule):
    """FFA-LoRA: frozen shared A, averaged B (sums-only, exact)."""

    name = "ffa"
    params_type = FfaParams

    def _b_start(self, glob: Adapter | None, module: str, d: int, rank: int, scaling: float) -> torch.Tensor:
        """B's start: the global B̄'s first columns in the site's scaling (zeros in round one)."""
        b = torch.zeros(d, rank, dtype=torch.float32)
        if glob is None:
            return b
        f = glob[module]
        keep = min(rank, f.rank)
        shared = shared_a(self.params.seed, module, keep, f.A.shape[1])
        if not torch.allclose(f.A[:keep].to(torch.float32), shared, rtol=1e-6, atol=1e-7):
            raise ValueError(f"global A of {module!r} is not the shared init for seed {self.params.seed}")
        b[:, :keep] = (f.scaling / scaling) * f.B[:, :keep].to(torch.float32)
        return b

    def plan(self, start: SiteStart) -> TrainingPlan:
        """Frozen shared A (first r_i rows), B from the global; train B only."""
        rank, scaling = start.lora(self.params.rslora)
        prev = start.global_adapter()
        init: Adapter = {}
        for m, (d, k) in start.ctx.shapes.items():
            a = shared_a(self.params.seed, m, rank, k)
            init[m] = LoraFactors(A=a, B=self._b_start(prev, m, d, rank, scaling), scaling=scaling)
        return TrainingPlan(rank=rank, scaling=scaling, init=init, train_a=False)

    def submit(self, submission: Submission) -> Vectors:
        """n·s·B zero-padded to the cohort's largest rank."""
        adapter, n = submission.adapter, submission.n
        out: Vectors = {N_KEY: count_vector(n)}
        for m, f in adapter.items():
            out[key(m, "B")] = weighted(f.scaling * pad_b(f.B, submission.ctx.max_rank), n)
        return out

    def aggregate(self, sums: PhaseSums) -> Aggregate:
        """B̄ = Σ p_i s_i B_i, published with the shared A_max and scaling 1."""
        total, ctx = sums.total, sums.ctx
        adapter: Adapter = {}
        for m, (_, k) in ctx.shapes.items():
            b = sums.mean(key(m, "B"), total).to(torch.float32)
            adapter[m] = LoraFactors(A=shared_a(self.params.seed, m, ctx.max_rank, k), B=b, scaling=1.0)
        return Aggregate(adapter=adapter, info={"rule": self.name, "rank": ctx.max_rank, "samples": total})

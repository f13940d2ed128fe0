"""Dense: full-rank training of the target matrices and direct averaging of their deltas
(weight averaging as in FedAvg, McMahan et al. 2017, applied to the LoRA target matrices; the
"direct weight averaging" baseline of the federated LoRA literature, 2024).

Client: merge the global dense update into the base, train the target matrices (optionally with
the GaLore optimizer), submit n·ΔW_i where ΔW_i is this round's change of each target. Server:
W̄ = Σ p_i ΔW_i, exact; the new global is the previous global + W̄ (kept as float32 matrices).
No ranks are involved. Costs d·k values per target per site on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from .base import N_KEY, Aggregate, TrainingPlan, Vectors
from .lora import DenseUpdate
from .rule import Configured, PhaseSums, Rule, SiteStart, Submission
from .rule_params import RuleParams
from .submission import check_modules, count_vector, key, weighted


@dataclass(frozen=True)
class DenseParams(RuleParams):
    """Dense-rule parameters (none beyond the shared ones)."""


class Dense(Configured[DenseParams], Rule):
    """Full-rank delta averaging (sums-only, exact)."""

    name = "dense"
    params_type = DenseParams

    def plan(self, start: SiteStart) -> TrainingPlan:
        """Merge the global dense update, train the full targets."""
        merge = start.glob.dense if start.glob is not None else None
        return TrainingPlan(rank=start.rank, scaling=1.0, dense=True, merge_dense=merge)

    def submit(self, submission: Submission) -> Vectors:
        """``<module>/W`` = n·ΔW_i for every target."""
        dense, ctx, n = submission.update.dense, submission.ctx, submission.n
        if dense is None:
            raise ValueError("dense needs full-rank deltas of the targets, the update has none")
        check_modules(dense, ctx, "the dense update")
        out: Vectors = {N_KEY: count_vector(n)}
        for m, w in dense.items():
            if tuple(w.shape) != tuple(ctx.shapes[m]):
                raise ValueError(f"dense delta of {m!r} has shape {tuple(w.shape)}, expected {ctx.shapes[m]}")
            out[key(m, "W")] = weighted(w, n)
        return out

    def aggregate(self, sums: PhaseSums) -> Aggregate:
        """Previous global + Σ p_i ΔW_i."""
        total = sums.total
        prev = sums.glob.dense if sums.glob is not None else None
        out: DenseUpdate = {}
        for m in sums.ctx.shapes:
            w = sums.mean(key(m, "W"), total).to(torch.float32)
            out[m] = w if prev is None or m not in prev else prev[m].to(torch.float32) + w
        return Aggregate(dense=out, info={"rule": self.name, "samples": total, "secure": True})

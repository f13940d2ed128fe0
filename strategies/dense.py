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
from typing import Any, Mapping, MutableMapping

import numpy as np
import torch

from .base import N_KEY, Aggregate, Broadcast, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .lora import DenseUpdate
from .rule_params import RuleParams
from .submission import check_modules, check_phase, count_vector, key, mean, site_rank, total_count, weighted


@dataclass(frozen=True)
class DenseParams(RuleParams):
    """Dense-rule parameters (none beyond the shared ones)."""


class Dense:
    """Full-rank delta averaging (sums-only, exact)."""

    name = "dense"
    phases = 1

    def __init__(self, params: DenseParams | None = None) -> None:
        """Keep the validated parameters."""
        self.params = params or DenseParams()

    def start(
        self,
        glob: Aggregate | None,
        ctx: RoundContext,
        site: str,
        alpha: float,
        state: MutableMapping[str, Any] | None = None,
    ) -> TrainingPlan:
        """Merge the global dense update, train the full targets."""
        rank = site_rank(ctx, site)
        merge = glob.dense if glob is not None else None
        return TrainingPlan(rank=rank, scaling=1.0, dense=True, merge_dense=merge)

    def vectors(
        self,
        phase: int,
        update: LocalUpdate,
        n: int,
        ctx: RoundContext,
        broadcast: Broadcast | None,
        state: MutableMapping[str, Any] | None = None,
    ) -> Vectors:
        """``<module>/W`` = n·ΔW_i for every target."""
        check_phase(phase, self.phases, self.name)
        if update.dense is None:
            raise ValueError("dense needs full-rank deltas of the targets, the update has none")
        check_modules(update.dense, ctx, "the dense update")
        out: Vectors = {N_KEY: count_vector(n)}
        for m, w in update.dense.items():
            if tuple(w.shape) != tuple(ctx.shapes[m]):
                raise ValueError(f"dense delta of {m!r} has shape {tuple(w.shape)}, expected {ctx.shapes[m]}")
            out[key(m, "W")] = weighted(w, n)
        return out

    def combine(
        self,
        phase: int,
        sums: Mapping[str, np.ndarray],
        ctx: RoundContext,
        glob: Aggregate | None,
        broadcast: Broadcast | None = None,
    ) -> Aggregate:
        """Previous global + Σ p_i ΔW_i."""
        check_phase(phase, self.phases, self.name)
        total = total_count(sums)
        prev = glob.dense if glob is not None else None
        out: DenseUpdate = {}
        for m in ctx.shapes:
            w = mean(sums, key(m, "W"), total).to(torch.float32)
            out[m] = w if prev is None or m not in prev else prev[m].to(torch.float32) + w
        return Aggregate(dense=out, info={"rule": self.name, "samples": total, "secure": True})

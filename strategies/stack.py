"""Plaintext FLoRA stacking (Wang et al. 2024, "FLoRA: Federated fine-tuning large language
models with heterogeneous low-rank adaptations", NeurIPS).

Each round every site trains a fresh LoRA on base + the cumulative update, and submits its own
factors **unweighted** (A_i, B_i, s_i, n_i). The server stacks them: A = [p_1 s_1 A_1; …; p_N s_N A_N],
B = [B_1 … B_N], whose product is exactly Σ p_i s_i B_i A_i — any ranks, any scalings. The
round's update is added to the previous cumulative update and the sum refactored by SVD
(``lowrank``) to its numerical rank, or to ``publish_rank`` with the retained energy reported.

This needs individual factors, so it is an ``IndividualRule``: plaintext only, never under
secure aggregation (``secure-stack`` is the sums-only equivalent).
(The public FLoRA code's FedIT path misspells its accumulator and keeps only the first client;
nothing here averages through an accumulator.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import numpy as np
import torch

from .base import N_KEY, Aggregate, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .fedit import trained_adapter
from .lora import lora_scaling
from .lowrank import refactor_cumulative
from .rule_params import RuleParams, check_float, check_int
from .submission import check_count, check_modules, key, site_rank

F64 = torch.float64


@dataclass(frozen=True)
class StackParams(RuleParams):
    """Parameters of the stacking rules."""

    publish_rank: int | None = None
    """Truncate the published cumulative update to this rank (None: its numerical rank)."""
    rtol: float = 1e-5
    """Singular values below rtol·σ_max count as zero (float32 submissions leave such a tail)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.publish_rank is not None:
            check_int("publish_rank", self.publish_rank, 1)
        check_float("rtol", self.rtol, 0.0, 1.0)


def stacking_start(
    glob: Aggregate | None, ctx: RoundContext, site: str, alpha: float, rslora: bool
) -> TrainingPlan:
    """Fresh PEFT-initialised LoRA on base + the cumulative update."""
    rank = site_rank(ctx, site)
    merge = glob.adapter if glob is not None else None
    if merge is not None:
        check_modules(merge, ctx, "the cumulative adapter")
    return TrainingPlan(rank=rank, scaling=lora_scaling(alpha, rank, rslora), merge=merge)


class Stack:
    """Plaintext FLoRA stacking (individual submissions; exact)."""

    name = "stack"

    def __init__(self, params: StackParams | None = None) -> None:
        """Keep the validated parameters."""
        self.params = params or StackParams()

    def start(
        self,
        glob: Aggregate | None,
        ctx: RoundContext,
        site: str,
        alpha: float,
        state: MutableMapping[str, Any] | None = None,
    ) -> TrainingPlan:
        """Fresh LoRA on base + cumulative update."""
        return stacking_start(glob, ctx, site, alpha, self.params.rslora)

    def vectors(self, update: LocalUpdate, n: int, ctx: RoundContext) -> Vectors:
        """The site's own ``<module>/A``, ``<module>/B``, ``<module>/scaling`` and ``N_KEY``."""
        check_count(n)
        adapter = trained_adapter(update, ctx)
        out: Vectors = {N_KEY: np.array([n], dtype=np.float32)}
        for m, f in adapter.items():
            out[key(m, "A")] = f.A.detach().to(torch.float32).cpu().numpy()
            out[key(m, "B")] = f.B.detach().to(torch.float32).cpu().numpy()
            out[key(m, "scaling")] = np.array([f.scaling], dtype=np.float64)
        return out

    def combine_individual(
        self, updates: Mapping[str, Mapping[str, np.ndarray]], ctx: RoundContext, glob: Aggregate | None
    ) -> Aggregate:
        """Stack [p_i s_i A_i] and [B_i], add to the cumulative update, refactor by SVD."""
        if not updates:
            raise ValueError("stack needs at least one site's submission")
        counts = {site: float(np.asarray(v[N_KEY]).reshape(-1)[0]) for site, v in updates.items() if N_KEY in v}
        if len(counts) != len(updates) or min(counts.values()) <= 0:
            raise ValueError(f"every submission needs a positive {N_KEY!r}, got {counts}")
        total = sum(counts.values())
        products: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in ctx.shapes:
            bs, as_ = [], []
            for site in sorted(updates):
                v = updates[site]
                s = float(np.asarray(v[key(m, "scaling")]).reshape(-1)[0])
                as_.append((counts[site] / total) * s * torch.from_numpy(np.asarray(v[key(m, "A")], dtype=np.float64)))
                bs.append(torch.from_numpy(np.asarray(v[key(m, "B")], dtype=np.float64)))
            products[m] = (torch.cat(bs, dim=1), torch.cat(as_, dim=0))
        prev = glob.adapter if glob is not None else None
        adapter, info = refactor_cumulative(prev, products, self.params.publish_rank, self.params.rtol)
        info.update(rule=self.name, contributors=len(updates), samples=total, secure=False)
        return Aggregate(adapter=adapter, info=info)

"""FlexLoRA: average the full updates, SVD them, give each site its rank-r_i slice
(Bai, Chen, Qian, Yao & Li 2024, "Federated fine-tuning of large language models under
heterogeneous tasks and client resources", NeurIPS).

Client: start from the rank-r_i slice of the global SVD, B = U_r√S_r, A = √S_r V_rᵀ (divided by
√s_i so that s_i·B·A = U_r S_r V_rᵀ), train A and B. Server: ΔW = Σ p_i s_i B_i A_i — obtained
through the same two secure sketch sums as ``secure-stack``, so it runs under SecAgg — then its
SVD truncated to ``publish_rank`` (default: the cohort's largest rank), retained energy reported.
The global is the averaged update itself (not cumulative): sites' factors already contain it.
"""

from __future__ import annotations

from typing import Any, Mapping, MutableMapping

import numpy as np

from .base import Aggregate, Broadcast, RoundContext, TrainingPlan
from .fedit import averaging_start, check_phase
from .lowrank import refactor_cumulative
from .secure_stack import SketchedRule
from .sketch import basis, recover

SEED = 0
"""Public seed for rows a site needs beyond the global's rank (and the round-one start)."""


class FlexLora(SketchedRule):
    """FlexLoRA with a sketched (secure) server half."""

    name = "flexlora"

    def start(
        self,
        glob: Aggregate | None,
        ctx: RoundContext,
        site: str,
        alpha: float,
        state: MutableMapping[str, Any] | None = None,
    ) -> TrainingPlan:
        """The site's rank-r_i slice of the global SVD (the global is stored SVD-ordered)."""
        return averaging_start(glob, ctx, site, alpha, self.params.rslora, SEED)

    def combine(
        self,
        phase: int,
        sums: Mapping[str, np.ndarray],
        ctx: RoundContext,
        glob: Aggregate | None,
        broadcast: Broadcast | None = None,
    ) -> Broadcast | Aggregate:
        """Phase 0: broadcast Q. Phase 1: SVD of Q·M truncated to the publishing rank."""
        check_phase(phase, self.phases, self.name)
        if phase == 0:
            self._basis = basis(sums, ctx)
            return self._basis
        rec = recover(sums, ctx, self._recovered_basis(broadcast))
        rank = self.params.publish_rank or ctx.max_rank
        adapter, info = refactor_cumulative(None, rec.products, rank, self.params.rtol)
        info.update(self.info(ctx, rec.estimated_relative_error))
        self._basis = None
        return Aggregate(adapter=adapter, info=info)

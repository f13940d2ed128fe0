"""FlexLoRA: average the full updates, SVD them, give each site its rank-r_i slice
(Bai, Chen, Qian, Yao & Li 2024, "Federated fine-tuning of large language models under
heterogeneous tasks and client resources", NeurIPS).

Client: start from the rank-r_i slice of the global SVD, B = U_r√S_r, A = √S_r V_rᵀ (divided by
√s_i so that s_i·B·A = U_r S_r V_rᵀ), train A and B. Server: ΔW = Σ p_i s_i B_i A_i — obtained
through the same two secure sketch sums as ``secure-stack``, so it runs under SecAgg — then its
SVD truncated to ``publish_rank`` (default: the cohort's largest rank), retained energy reported;
the sketch width is capped at that rank + oversampling by default (``SketchParams.max_width``).
The global is the averaged update itself (not cumulative): sites' factors already contain it.
"""

from __future__ import annotations

from .base import Aggregate, RoundContext, TrainingPlan
from .factor_averaging import averaging_start
from .lowrank import refactor_cumulative
from .rule import PhaseSums, SiteStart
from .secure_stack import SketchedRule
from .sketch import Recovered

SEED = 0
"""Public seed for rows a site needs beyond the global's rank (and the round-one start)."""


class FlexLora(SketchedRule):
    """FlexLoRA with a sketched (secure) server half."""

    name = "flexlora"

    def default_rank(self, ctx: RoundContext) -> int:
        """FlexLoRA publishes at the cohort's largest rank unless configured."""
        return ctx.max_rank

    def plan(self, start: SiteStart) -> TrainingPlan:
        """The site's rank-r_i slice of the global SVD (the global is stored SVD-ordered)."""
        return averaging_start(start, self.params.rslora, SEED)

    def publish(self, sums: PhaseSums, rec: Recovered) -> Aggregate:
        """The SVD of Q·X truncated to the publishing rank."""
        adapter, info, _ = refactor_cumulative(None, rec.products, self.params.cap(sums.ctx.max_rank), self.params.rtol)
        info.update(self.info(sums.ctx, rec))
        return Aggregate(adapter=adapter, info=info)

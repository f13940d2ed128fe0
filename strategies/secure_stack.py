"""Secure stacking: FLoRA's Σ p_i s_i B_i A_i from secure sums only (this project; FLoRA,
Wang et al. 2024, plus randomized sketching: Halko, Martinsson & Tropp 2011; Tropp et al. 2017).

Sites train a fresh LoRA on base + the cumulative update as in ``stack``, then submit sketches of
their update for a session-derived Gaussian Ω of width w = min(Σ r_i + oversampling, cap):

* ``passes = 1`` (default, ``single_pass``): one secure sum of the range sketch ΔW_i·Ω, the
  co-range sketch Ψ·ΔW_i and probes; the server solves for ΔW ≈ Q·X. A site dropping at any
  stage only leaves the one sum, so rounds survive drops.
* ``passes = 2`` (``sketch``): phase 0 sums ΔW_i·Ω, the server broadcasts Q = orth(Y); phase 1 sums
  Qᵀ·ΔW_i. Slightly more accurate when w < rank ΔW, but both phases must have the same
  participants (the orchestrator and the sites discard the round otherwise).

Both are exact when w ≥ rank ΔW (w ≥ Σ r_i + oversampling, i.e. cohorts whose Σ r_i is below the
cap); the cap (default: the published rank + oversampling) keeps each site's upload constant as
the cohort grows, at the price of the near-optimal rank-w approximation of the round's update,
whose error the probes estimate (``estimated_relative_error`` in the manifest). The cumulative
update (previous global + ΔW + the fed-back remainder) is refactored by SVD to at most
``publish_rank`` (64 by default) with the retained energy reported; the truncated remainder is
kept for the next round (error feedback, ``stack.FeedbackMemory``).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from .base import Aggregate, Broadcast, RoundContext, TrainingPlan, Vectors
from .rule import Configured, PhaseSums, Rule, SiteStart, Submission
from .rule_params import check_int
from .single_pass import single_pass_recover, single_pass_vectors
from .sketch import MIN_OVERSAMPLING, Recovered, SketchConfig, basis, projection_vectors, recover, sketch_vectors
from .stack import DEFAULT_PUBLISH_RANK, FeedbackMemory, StackParams, stacking_start


@dataclass(frozen=True)
class SketchParams(StackParams):
    """Parameters of the sketched (secure) stacking rules."""

    oversampling: int = MIN_OVERSAMPLING
    """Sketch columns beyond Σ r_i (≥ 10)."""
    width: int | None = None
    """Explicit sketch width; overrides Σ r_i + oversampling and may be smaller (then inexact)."""
    probes: int = 4
    """Probe columns for the a-posteriori error estimate."""
    float64: bool = False
    """Submit float64 vectors (needs the 64-bit ring under SecAgg)."""
    passes: int = 1
    """Secure sums per round: 1 (single-pass sketch, survives drops) or 2 (range finder + projection)."""
    max_width: int | None = None
    """Cap on the sketch width (None: the published rank + oversampling; 0: no cap, always exact)."""
    corange: int | None = None
    """Rows of the single-pass co-range sketch (None: 2w + 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width is None:
            check_int("oversampling", self.oversampling, MIN_OVERSAMPLING)
        else:
            check_int("width", self.width, 1)
        check_int("probes", self.probes, 1)
        if not isinstance(self.float64, bool):
            raise ValueError(f"float64 must be a bool, got {self.float64!r}")
        if self.passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {self.passes!r}")
        if self.max_width is not None:
            check_int("max_width", self.max_width, 0)
        if self.corange is not None:
            check_int("corange", self.corange, 1)

    def sketch(self, default_rank: int = DEFAULT_PUBLISH_RANK) -> SketchConfig:
        """The sketch configuration both halves use (``default_rank``: the rule's default published rank)."""
        cap: int | None
        if self.max_width is None:
            rank = self.cap(default_rank)
            cap = None if rank is None else rank + self.oversampling
        else:
            cap = self.max_width or None
        return SketchConfig(self.oversampling, self.width, self.probes, self.float64, cap, self.corange)


class SketchedRule(Configured[SketchParams], Rule):
    """Shared client half and sketch server half of the sketched rules (one or two secure sums)."""

    name = "sketched"
    params_type = SketchParams

    def __init__(self, params: SketchParams | None = None) -> None:
        """Keep the validated parameters; the phases follow ``passes``."""
        super().__init__(params)
        self.phases = self.params.passes
        self._basis: Broadcast | None = None

    def default_rank(self, ctx: RoundContext) -> int:
        """The rule's published rank when none is configured."""
        return DEFAULT_PUBLISH_RANK

    def submit(self, submission: Submission) -> Vectors:
        """Single pass: n·ΔW·Ω, n·Ψ·ΔW and probes. Two passes: phase 0 n·ΔW·Ω; phase 1 n·QᵀΔW and probes."""
        adapter, n, ctx = submission.adapter, submission.n, submission.ctx
        cfg = self.params.sketch(self.default_rank(ctx))
        if self.phases == 1:
            return single_pass_vectors(adapter, n, ctx, cfg)
        if submission.phase == 0:
            return sketch_vectors(adapter, n, ctx, cfg)
        return projection_vectors(adapter, n, ctx, cfg, submission.broadcast)

    def aggregate(self, sums: PhaseSums) -> Broadcast | Aggregate:
        """Before the last phase the basis Q (two passes); after it the rule's global from ΔW ≈ Q·X."""
        rec = self.sketched_sum(sums)
        return rec if isinstance(rec, Broadcast) else self.publish(sums, rec)

    @abstractmethod
    def publish(self, sums: PhaseSums, rec: Recovered) -> Aggregate:
        """The next global from the recovered round update (the rule's own step)."""

    def sketched_sum(self, sums: PhaseSums) -> Broadcast | Recovered:
        """Server: the phase-0 basis (two passes), or the recovered ΔW = Q·X (last phase)."""
        if self.phases == 1:
            return single_pass_recover(sums.sums, sums.ctx)
        if sums.phase == 0:
            self._basis = basis(sums.sums, sums.ctx)
            return self._basis
        rec = recover(sums.sums, sums.ctx, self._recovered_basis(sums.broadcast))
        self._basis = None
        return rec

    def _recovered_basis(self, broadcast: Broadcast | None) -> Broadcast:
        """The phase-0 basis: as passed back, or the copy this instance kept."""
        q = broadcast if broadcast is not None else self._basis
        if q is None:
            raise ValueError("phase 1 needs the phase-0 broadcast (pass it, or use the same rule instance)")
        return q

    def info(self, ctx: RoundContext, rec: Recovered) -> dict[str, Any]:
        """Manifest facts about the sketch (widths as the sites actually submitted them)."""
        widths = {m: int(q.shape[1]) for m, (q, _) in rec.products.items()}
        exact = all(w >= min(ctx.total_rank, *ctx.shapes[m]) for m, w in widths.items())
        return {"rule": self.name, "sketch_width": max(widths.values()), "sketch_exact": exact,
                "sketch_passes": self.phases, "estimated_relative_error": rec.estimated_relative_error,
                "secure": True}


class SecureStack(SketchedRule):
    """Exact FLoRA stacking through two secure sums."""

    name = "secure-stack"

    def __init__(self, params: SketchParams | None = None) -> None:
        """Keep the validated parameters and the coordinator's error-feedback memory."""
        super().__init__(params)
        self.feedback = FeedbackMemory()

    def plan(self, start: SiteStart) -> TrainingPlan:
        """Fresh LoRA on base + cumulative update."""
        return stacking_start(start, self.params.rslora)

    def publish(self, sums: PhaseSums, rec: Recovered) -> Aggregate:
        """Cumulative + Q·X (+ fed-back remainder), refactored by SVD."""
        adapter, info = self.feedback.refactored(sums.glob, rec.products, self.params)
        info.update(self.info(sums.ctx, rec))
        retained = float(info["retained_energy"])  # type: ignore[arg-type]
        info["estimated_total_error"] = (rec.estimated_relative_error**2 + max(0.0, 1.0 - retained)) ** 0.5
        return Aggregate(adapter=adapter, info=info)

"""Secure stacking: FLoRA's exact Σ p_i s_i B_i A_i from secure sums only (this project; FLoRA,
Wang et al. 2024, plus the randomized range finder of Halko, Martinsson & Tropp 2011).

Sites train a fresh LoRA on base + the cumulative update as in ``stack``, then take part in two
secure sums (``sketch``): phase 0 submits n_i·ΔW_i·Ω for a session-derived Gaussian Ω of width
w = Σ r_i + oversampling, the server broadcasts Q = orth(Σ p_i ΔW_i Ω) (float64); phase 1 submits
n_i·Qᵀ·ΔW_i and the server gets ΔW = Q·M, exact when w ≥ rank ΔW (always with the default
width). The cumulative update (previous global + ΔW) is refactored by SVD to its numerical rank
or ``publish_rank``; ``Aggregate.info`` carries the retained energy and the probe-based estimate
of the sketch's relative error (≈ float rounding when exact, meaningful when ``width`` < Σ r_i).

Both phases must have the same participants: the orchestrator discards the round otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, MutableMapping

import numpy as np

from .base import Aggregate, Broadcast, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .fedit import check_phase, trained_adapter
from .lowrank import refactor_cumulative
from .rule_params import check_int
from .sketch import MIN_OVERSAMPLING, SketchConfig, basis, projection_vectors, recover, sketch_vectors, sketch_width
from .stack import StackParams, stacking_start


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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width is None:
            check_int("oversampling", self.oversampling, MIN_OVERSAMPLING)
        else:
            check_int("width", self.width, 1)
        check_int("probes", self.probes, 1)
        if not isinstance(self.float64, bool):
            raise ValueError(f"float64 must be a bool, got {self.float64!r}")

    def sketch(self) -> SketchConfig:
        """The sketch configuration both halves use."""
        return SketchConfig(self.oversampling, self.width, self.probes, self.float64)


class SketchedRule:
    """Shared client half and phase-0 server half of the two-phase sketch rules."""

    name = "sketched"
    phases = 2

    def __init__(self, params: SketchParams | None = None) -> None:
        """Keep the validated parameters."""
        self.params = params or SketchParams()
        self._basis: Broadcast | None = None

    def vectors(
        self,
        phase: int,
        update: LocalUpdate,
        n: int,
        ctx: RoundContext,
        broadcast: Broadcast | None,
        state: MutableMapping[str, Any] | None = None,
    ) -> Vectors:
        """Phase 0: n·ΔW·Ω; phase 1: n·QᵀΔW and probe sketches."""
        check_phase(phase, self.phases, self.name)
        adapter = trained_adapter(update, ctx)
        if phase == 0:
            return sketch_vectors(adapter, n, ctx, self.params.sketch())
        return projection_vectors(adapter, n, ctx, self.params.sketch(), broadcast)

    def _recovered_basis(self, broadcast: Broadcast | None) -> Broadcast:
        """The phase-0 basis: as passed back, or the copy this instance kept."""
        q = broadcast if broadcast is not None else self._basis
        if q is None:
            raise ValueError("phase 1 needs the phase-0 broadcast (pass it, or use the same rule instance)")
        return q

    def info(self, ctx: RoundContext, error: float) -> dict[str, Any]:
        """Manifest facts about the sketch."""
        widths = {m: sketch_width(ctx, m, self.params.oversampling, self.params.width) for m in ctx.shapes}
        exact = all(w >= min(ctx.total_rank, *ctx.shapes[m]) for m, w in widths.items())
        return {"rule": self.name, "sketch_width": max(widths.values()), "sketch_exact": exact,
                "estimated_relative_error": error, "secure": True}


class SecureStack(SketchedRule):
    """Exact FLoRA stacking through two secure sums."""

    name = "secure-stack"

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

    def combine(
        self,
        phase: int,
        sums: Mapping[str, np.ndarray],
        ctx: RoundContext,
        glob: Aggregate | None,
        broadcast: Broadcast | None = None,
    ) -> Broadcast | Aggregate:
        """Phase 0: broadcast Q. Phase 1: cumulative + Q·M, refactored by SVD."""
        check_phase(phase, self.phases, self.name)
        if phase == 0:
            self._basis = basis(sums, ctx)
            return self._basis
        rec = recover(sums, ctx, self._recovered_basis(broadcast))
        prev = glob.adapter if glob is not None else None
        adapter, info = refactor_cumulative(prev, rec.products, self.params.publish_rank, self.params.rtol)
        info.update(self.info(ctx, rec.estimated_relative_error))
        retained = float(info["retained_energy"])  # type: ignore[arg-type]
        info["estimated_total_error"] = (rec.estimated_relative_error**2 + max(0.0, 1.0 - retained)) ** 0.5
        self._basis = None
        return Aggregate(adapter=adapter, info=info)

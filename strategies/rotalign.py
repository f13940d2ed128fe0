"""FedRot-LoRA: rotate each site's factors toward the previous global before averaging
(Zhang, Kim, Cha & Vikalo 2026, "FedRot-LoRA: Mitigating Rotational Misalignment in Federated
LoRA", arXiv:2602.23638).

(B R)(Rᵀ A) = B A for any orthogonal R, so sites can express the same update in different
latent bases and factor averaging then cancels it. Before submitting, site i (factors already
√s-folded and zero-padded to the cohort's largest rank r) solves an r×r orthogonal Procrustes
problem against the broadcast previous global (Ā, B̄):

* odd rounds align A: R = UVᵀ from the SVD of A_i Āᵀ, the minimiser of ‖Rᵀ A_i − Ā‖_F;
* even rounds align B: R = UVᵀ from the SVD of B_iᵀ B̄, the minimiser of ‖B_i R − B̄‖_F;

then submits A' = Rᵀ A_i and B' = B_i R, so B'A' = B_i A_i exactly. The soft variant (``lam`` < 1)
uses the orthogonal matrix with det +1 nearest to (1−λ)I + λR. The server averages A' and B'
like FedIT. Zero-padded ranks are rotated into the full r-dimensional space (still exact).
The previous global reaches ``vectors`` through the site's ``state`` filled in ``start``, as plain
tensors (the agent persists its state with ``torch.save`` and reloads it with ``weights_only=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .base import RoundContext, TrainingPlan
from .factor_averaging import FactorAveraging, folded
from .lora import Adapter
from .rule import SiteStart, Submission
from .rule_params import SeedParams, check_float

STATE_PREFIX = "rotalign/reference/"
"""Where ``start`` leaves the previous global's folded (Ā, B̄) for ``vectors``: ``<prefix><module>/A`` and ``/B``."""
STATE_ROUND = "rotalign/round"
"""The round whose ``start`` filled the reference (a tensor holding the round number)."""


@dataclass(frozen=True)
class RotAlignParams(SeedParams):
    """FedRot-LoRA parameters (and the public seed of the shared round-one A)."""

    lam: float = 1.0
    """Alignment strength λ in [0, 1]: 1 applies the Procrustes rotation, 0 none."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("lam", self.lam, 0.0, 1.0)


def procrustes(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R = UVᵀ from the SVD of x·yᵀ: the orthogonal R maximising tr(Rᵀ x yᵀ)."""
    u, _, vh = torch.linalg.svd(x @ y.T)
    out: torch.Tensor = u @ vh
    return out


def softened(r: torch.Tensor, lam: float) -> torch.Tensor:
    """``r`` itself for λ = 1, else the det +1 orthogonal matrix nearest to (1−λ)I + λr."""
    if lam == 1.0:
        return r
    eye = torch.eye(r.shape[0], dtype=r.dtype)
    u, _, vh = torch.linalg.svd((1.0 - lam) * eye + lam * r)
    if float(torch.linalg.det(u @ vh)) < 0:
        u = u.clone()
        u[:, -1] = -u[:, -1]  # flip the direction of the smallest singular value
    out: torch.Tensor = u @ vh
    return out


def rotation(a: torch.Tensor, b: torch.Tensor, ref_a: torch.Tensor, ref_b: torch.Tensor, rnd: int, lam: float) -> torch.Tensor:
    """The site's r×r rotation for round ``rnd`` (A on odd rounds, B on even)."""
    r = procrustes(a, ref_a) if rnd % 2 == 1 else procrustes(b.T, ref_b.T)
    return softened(r, lam)


def reference(glob: Adapter, module: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous global's (Ā, B̄) for ``module`` in scaling-1 units, padded/cut to ``rank``."""
    f = glob[module]
    a, b = folded(f, max(rank, f.rank))
    return a[:rank], b[:, :rank]


def stored_reference(state: Mapping[str, Any] | None, ctx: RoundContext) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """The (Ā, B̄) per module that ``start`` stored for this round; None when there was no previous global."""
    filled = state is not None and STATE_ROUND in state and int(state[STATE_ROUND]) == ctx.round
    if state is None or not filled:
        if ctx.round > 1:
            raise ValueError("rotalign needs the site state that start() filled with the previous global")
        return None
    refs = {m: (state[f"{STATE_PREFIX}{m}/A"], state[f"{STATE_PREFIX}{m}/B"])
            for m in ctx.shapes if f"{STATE_PREFIX}{m}/A" in state}
    return refs or None


class RotAlign(FactorAveraging[RotAlignParams]):
    """FedRot-LoRA rotation-aligned factor averaging (sums-only): Ā = Σ p_i A'_i, B̄ = Σ p_i B'_i."""

    name = "rotalign"
    params_type = RotAlignParams

    def plan(self, start: SiteStart) -> TrainingPlan:
        """As FedIT; also remember the previous global's folded factors in ``state`` for the alignment."""
        state, glob, ctx = start.state, start.glob, start.ctx
        if state is not None:
            for name in [k for k in state if k.startswith(STATE_PREFIX)]:
                del state[name]
            state[STATE_ROUND] = torch.tensor(ctx.round)
            if glob is not None and glob.adapter is not None:
                for m in glob.adapter:
                    ref_a, ref_b = reference(glob.adapter, m, ctx.max_rank)
                    state[f"{STATE_PREFIX}{m}/A"], state[f"{STATE_PREFIX}{m}/B"] = ref_a, ref_b
        return super().plan(start)

    def aligned(self, adapter: Adapter, ctx: RoundContext,
                refs: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every module's (A', B') = (RᵀA, BR), √s-folded and padded to the cohort's max rank.

        ``refs`` maps a module to the previous global's folded (Ā, B̄) at that rank (None in round one)."""
        rank = ctx.max_rank
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m, f in adapter.items():
            a, b = folded(f, rank)
            if refs is not None and self.params.lam > 0:
                ref_a, ref_b = refs[m]
                rot = rotation(a, b, ref_a, ref_b, ctx.round, self.params.lam)
                a, b = rot.T @ a, b @ rot
            out[m] = (a, b)
        return out

    def factors(self, submission: Submission) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(A', B') after rotating toward the previous global (none in round one)."""
        s = submission
        return self.aligned(s.adapter, s.ctx, stored_reference(s.state, s.ctx))

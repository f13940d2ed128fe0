"""SVD of a product ``L·R`` without forming it, and the cumulative update of stacking rules.

``L`` (d×m) and ``R`` (m×k) with m ≪ d, k: QR of ``L`` and of ``Rᵀ`` reduce the SVD of the
d×k product to the SVD of an m×m core, so refactoring a rank-m update of a 4096×4096 matrix costs
O((d+k)m²) instead of O(dk·min(d,k)). Singular values below ``rtol·σ_max`` count as zero (the
float32 rounding of submissions leaves such a tail); ``rank`` truncates further, which is the
optimal rank-``rank`` approximation (Eckart–Young). Factors are split √σ on each side like
``lora.factor`` and kept in float64 with scaling 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora import Adapter, LoraFactors

F64 = torch.float64


@dataclass(frozen=True)
class Refactored:
    """A refactored update and what the truncation kept."""

    factors: LoraFactors
    energy: float
    """‖ΔW‖²_F before truncation."""
    kept_energy: float
    """‖kept part‖²_F."""
    exact_rank: int
    """Number of singular values above ``rtol·σ_max``."""


def refactor(left: torch.Tensor, right: torch.Tensor, rank: int | None, rtol: float) -> Refactored:
    """SVD-refactor ``left @ right`` to at most ``rank`` (and its numerical rank)."""
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(f"product shapes do not chain: {tuple(left.shape)} · {tuple(right.shape)}")
    if rank is not None and rank <= 0:
        raise ValueError(f"rank must be > 0, got {rank}")
    q1, r1 = torch.linalg.qr(left.to(F64))
    q2, r2 = torch.linalg.qr(right.to(F64).T)
    u, sv, vh = torch.linalg.svd(r1 @ r2.T)
    energy = float((sv**2).sum())
    exact = int((sv > sv[0] * rtol).sum()) if sv.numel() and float(sv[0]) > 0 else 0
    keep = max(1, exact if rank is None else min(exact, rank))
    root = sv[:keep].sqrt()
    b = (q1 @ u[:, :keep]) * root
    a = root[:, None] * (vh[:keep] @ q2.T)
    kept = float((sv[:keep] ** 2).sum())
    return Refactored(LoraFactors(A=a, B=b, scaling=1.0), energy, kept, exact)


def stacked_with(prev: LoraFactors | None, b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, R)`` with ``L·R = prev.delta() + b·a`` (prev's scaling folded into its A)."""
    if prev is None:
        return b.to(F64), a.to(F64)
    left = torch.cat([prev.B.to(F64), b.to(F64)], dim=1)
    right = torch.cat([prev.scaling * prev.A.to(F64), a.to(F64)], dim=0)
    return left, right


def refactor_cumulative(
    prev: Adapter | None,
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int | None,
    rtol: float,
) -> tuple[Adapter, dict[str, object]]:
    """Add each module's ``B·A`` to the previous cumulative adapter and refactor it by SVD.

    Returns the new adapter and manifest facts: overall and per-module retained energy and rank.
    """
    adapter: Adapter = {}
    per_module: dict[str, dict[str, float]] = {}
    energy = kept = 0.0
    for module, (b, a) in sorted(updates.items()):
        old = prev.get(module) if prev is not None else None
        result = refactor(*stacked_with(old, b, a), rank=rank, rtol=rtol)
        adapter[module] = result.factors
        energy += result.energy
        kept += result.kept_energy
        per_module[module] = {
            "retained_energy": result.kept_energy / result.energy if result.energy > 0 else 1.0,
            "rank": float(result.factors.rank),
            "exact_rank": float(result.exact_rank),
        }
    info: dict[str, object] = {
        "retained_energy": kept / energy if energy > 0 else 1.0,
        "modules": per_module,
    }
    return adapter, info

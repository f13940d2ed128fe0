"""SVD of a product ``L·R`` without forming it, and the cumulative update of stacking rules.

``L`` (d×m) and ``R`` (m×k) with m ≪ d, k: QR of ``L`` and of ``Rᵀ`` reduce the SVD of the
d×k product to the SVD of an m×m core, so refactoring a rank-m update of a 4096×4096 matrix costs
O((d+k)m²) instead of O(dk·min(d,k)). Singular values below ``rtol·σ_max`` count as zero (the
float32 rounding of submissions leaves such a tail); ``rank`` truncates further, which is the
optimal rank-``rank`` approximation (Eckart–Young). Factors are split √σ on each side like
``lora.factor`` and kept in float64 with scaling 1.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD"): with a rank cap the part
truncated away (the tail of the SVD) is returned as ``Refactored.tail`` and the caller adds it to
the next round's update before truncating again, so the published state tracks the exact
cumulative update instead of drifting from it by one truncation per round. The tail is itself a
function of the published state and the round's sums, so keeping it reveals nothing new; it is
bounded to ``tail_rank`` (beyond that the smallest singular directions are dropped, and counted).
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
    tail: LoraFactors | None = None
    """The truncated-away part (at most ``tail_rank`` directions), when asked for."""
    lost_energy: float = 0.0
    """‖part truncated away and not kept in ``tail``‖²_F."""


def refactor(left: torch.Tensor, right: torch.Tensor, rank: int | None, rtol: float, tail_rank: int = 0) -> Refactored:
    """SVD-refactor ``left @ right`` to at most ``rank`` (and its numerical rank); keep ``tail_rank`` of the rest."""
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
    stop = min(exact, keep + max(tail_rank, 0))
    tail = None
    if stop > keep:
        troot = sv[keep:stop].sqrt()
        tail = LoraFactors(A=troot[:, None] * (vh[keep:stop] @ q2.T), B=(q1 @ u[:, keep:stop]) * troot, scaling=1.0)
    lost = float((sv[stop:] ** 2).sum()) if tail_rank > 0 else energy - kept
    return Refactored(LoraFactors(A=a, B=b, scaling=1.0), energy, kept, exact, tail, lost)


def stacked_with(prev: LoraFactors | None, b: torch.Tensor, a: torch.Tensor,
                 *more: LoraFactors | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, R)`` with ``L·R = prev.delta() + b·a (+ Σ more.delta())`` (scalings folded into A)."""
    pieces = [f for f in (prev, *more) if f is not None]
    left = torch.cat([f.B.to(F64) for f in pieces] + [b.to(F64)], dim=1)
    right = torch.cat([f.scaling * f.A.to(F64) for f in pieces] + [a.to(F64)], dim=0)
    return left, right


def refactor_cumulative(
    prev: Adapter | None,
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rank: int | None,
    rtol: float,
    residual: Adapter | None = None,
    tail_rank: int = 0,
) -> tuple[Adapter, dict[str, object], Adapter]:
    """Add each module's ``B·A`` (and ``residual``) to the previous cumulative adapter; refactor by SVD.

    Returns the new adapter, manifest facts (overall and per-module retained energy and rank,
    the energy of the fed-back residual) and the new residual (the truncated-away tail, at most
    ``tail_rank`` per module; empty when ``tail_rank`` is 0).
    """
    adapter: Adapter = {}
    tails: Adapter = {}
    per_module: dict[str, dict[str, float]] = {}
    energy = kept = lost = fed_back = 0.0
    for module, (b, a) in sorted(updates.items()):
        old = prev.get(module) if prev is not None else None
        res = residual.get(module) if residual is not None else None
        if res is not None:
            fed_back += float((res.delta() ** 2).sum())
        result = refactor(*stacked_with(old, b, a, res), rank=rank, rtol=rtol, tail_rank=tail_rank)
        adapter[module] = result.factors
        if result.tail is not None:
            tails[module] = result.tail
        energy += result.energy
        kept += result.kept_energy
        lost += result.lost_energy
        per_module[module] = {
            "retained_energy": result.kept_energy / result.energy if result.energy > 0 else 1.0,
            "rank": float(result.factors.rank),
            "exact_rank": float(result.exact_rank),
        }
    info: dict[str, object] = {
        "retained_energy": kept / energy if energy > 0 else 1.0,
        "modules": per_module,
    }
    if tail_rank > 0:
        info["error_feedback"] = {"fed_back_energy": fed_back / energy if energy > 0 else 0.0,
                                  "kept_residual_energy": (energy - kept - lost) / energy if energy > 0 else 0.0,
                                  "lost_energy": lost / energy if energy > 0 else 0.0, "tail_rank": tail_rank}
    return adapter, info, tails

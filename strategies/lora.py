"""LoRA factors as plain tensors: the common currency of every rule.

``ΔW = s · B · A`` with ``A`` of shape (r, k) and ``B`` of shape (d, r), exactly as PEFT stores
``lora_A`` and ``lora_B``; the scaling ``s`` (α/r, or α/√r with rsLoRA) is kept explicit so rules
that stack or compare factors from different sites never mix scalings by accident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DenseUpdate = dict[str, torch.Tensor]
"""Target module name -> full-rank ΔW (d, k)."""


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA pair with its scaling folded in explicitly."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    def __post_init__(self) -> None:
        if self.A.ndim != 2 or self.B.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"LoRA shapes do not chain: B {tuple(self.B.shape)} · A {tuple(self.A.shape)}")
        if not math.isfinite(self.scaling):
            raise ValueError(f"scaling must be finite, got {self.scaling}")

    @property
    def rank(self) -> int:
        """r, the inner dimension."""
        return int(self.A.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense update s·B·A this pair stands for."""
        return self.scaling * (self.B.to(torch.float64) @ self.A.to(torch.float64))


Adapter = dict[str, LoraFactors]
"""Target module name (as in ``model.named_modules()`` of the base model) -> its LoRA pair."""


def lora_scaling(alpha: float, rank: int, rslora: bool = False) -> float:
    """PEFT's scaling: α/r, or α/√r with rsLoRA."""
    if rank <= 0:
        raise ValueError(f"rank must be > 0, got {rank}")
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def dense_of(adapter: Adapter) -> DenseUpdate:
    """Every module's ΔW in float64."""
    return {name: f.delta() for name, f in adapter.items()}


def factor(delta: torch.Tensor, rank: int | None = None) -> tuple[LoraFactors, float]:
    """Factor a dense ΔW by SVD into a LoRA pair with scaling 1, truncated to ``rank``.

    Returns the pair and the retained energy (‖truncated‖²/‖ΔW‖², 1.0 when exact).
    The singular values are split evenly (√σ on each side) to keep both factors well scaled.
    """
    d64 = delta.to(torch.float64)
    u, sv, vh = torch.linalg.svd(d64, full_matrices=False)
    total = float((sv**2).sum())
    keep = int((sv > sv[0] * 1e-12).sum()) if sv.numel() and float(sv[0]) > 0 else 1
    if rank is not None:
        keep = min(keep, rank)
    keep = max(keep, 1)
    root = sv[:keep].sqrt()
    b = u[:, :keep] * root
    a = root[:, None] * vh[:keep]
    retained = float((sv[:keep] ** 2).sum()) / total if total > 0 else 1.0
    return LoraFactors(A=a.to(torch.float32), B=b.to(torch.float32), scaling=1.0), retained

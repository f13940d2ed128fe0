"""Public, shared LoRA initialisation and per-site slices of a global adapter.

Every site derives the same ``A`` for a module from a public seed: a PCG64 stream keyed by
SHA-256(seed ‖ module name), filled row by row, so the first r rows do not depend on how many
rows anyone asked for (site i with rank r_i uses the first r_i rows of the shared A_max). The
values follow PEFT's default range for ``lora_A`` (uniform in ±1/√k). This randomness only has
to be shared, not secret.

A global adapter for averaging rules is stored with scaling 1; a site training with scaling s
and rank r starts from ``A = Ā[:r]/√s``, ``B = B̄[:, :r]/√s`` so that s·B·A is the global's
rank-r part. Rows beyond the global's rank come from the shared init (``B`` columns zero).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from .lora import Adapter, LoraFactors


def shared_a(seed: int, module: str, rank: int, k: int) -> torch.Tensor:
    """The first ``rank`` rows (each of width ``k``) of the module's public shared ``A``."""
    if rank <= 0 or k <= 0:
        raise ValueError(f"shared A needs rank > 0 and k > 0, got rank={rank}, k={k}")
    digest = hashlib.sha256(f"{seed}\x00{module}".encode()).digest()
    gen = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))
    bound = 1.0 / math.sqrt(k)
    return torch.from_numpy(gen.uniform(-bound, bound, size=(rank, k))).to(torch.float32)


def site_slice(
    glob: LoraFactors, module: str, rank: int, scaling: float, seed: int
) -> LoraFactors:
    """The rank-``rank`` start for a site with ``scaling`` from a global module's factors."""
    if scaling <= 0:
        raise ValueError(f"site scaling must be > 0, got {scaling}")
    root = math.sqrt(abs(glob.scaling) / scaling)
    sign = 1.0 if glob.scaling >= 0 else -1.0
    keep = min(rank, glob.rank)
    k, d = glob.A.shape[1], glob.B.shape[0]
    a = shared_a(seed, module, rank, k).to(torch.float64)
    b = torch.zeros(d, rank, dtype=torch.float64)
    a[:keep] = root * glob.A[:keep].to(torch.float64)
    b[:, :keep] = sign * root * glob.B[:, :keep].to(torch.float64)
    return LoraFactors(A=a.to(torch.float32), B=b.to(torch.float32), scaling=scaling)


def shared_start(shapes: dict[str, tuple[int, int]], rank: int, scaling: float, seed: int) -> Adapter:
    """Round-one start for every module: the shared ``A`` and ``B = 0`` (aligned across sites)."""
    return {
        m: LoraFactors(A=shared_a(seed, m, rank, k), B=torch.zeros(d, rank), scaling=scaling)
        for m, (d, k) in shapes.items()
    }

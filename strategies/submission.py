"""Named, weighted vectors: how factors become submissions and sums become means.

Every submitted array is named ``<module>/<what>``, float32 unless a rule asks for float64, and
already multiplied by the site's sample count ``n``; ``N_KEY`` carries ``n`` itself so the server
divides summed arrays by Σn and obtains Σ p_i x_i with p_i = n_i / Σ n_j. Heterogeneous ranks
are zero-padded to a common rank here: ``A`` gains zero rows, ``B`` zero columns, so ``B·A`` is
unchanged.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from .base import N_KEY, LocalUpdate, RoundContext
from .lora import Adapter

F64 = torch.float64


def key(module: str, what: str) -> str:
    """The vector name ``<module>/<what>``."""
    return f"{module}/{what}"


def check_count(n: int) -> None:
    """Raise ``ValueError`` unless the sample count is a positive integer."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"sample count n must be a positive integer, got {n!r}")


def count_vector(n: int) -> np.ndarray:
    """The ``N_KEY`` entry: ``[n]`` as float32."""
    check_count(n)
    return np.array([n], dtype=np.float32)


def weighted(x: torch.Tensor, n: int, float64: bool = False) -> np.ndarray:
    """``n·x`` as a numpy array of the submission dtype."""
    out = (float(n) * x.detach().to(F64)).cpu().numpy()
    return out if float64 else out.astype(np.float32)


def total_count(sums: Mapping[str, np.ndarray]) -> float:
    """Σ n_i from the summed ``N_KEY``; raises ``ValueError`` if absent or not positive."""
    if N_KEY not in sums:
        raise ValueError(f"sums lack the sample-count entry {N_KEY!r}")
    total = float(np.asarray(sums[N_KEY], dtype=np.float64).reshape(-1)[0])
    if not total > 0:
        raise ValueError(f"summed sample count must be > 0, got {total}")
    return total


def mean(sums: Mapping[str, np.ndarray], name: str, total: float) -> torch.Tensor:
    """Σ n_i x_i / Σ n_i for the vector ``name``, in float64."""
    if name not in sums:
        raise ValueError(f"sums lack the vector {name!r}")
    return torch.from_numpy(np.asarray(sums[name], dtype=np.float64)) / total


def pad_a(a: torch.Tensor, rank: int) -> torch.Tensor:
    """``A`` (r, k) zero-padded to ``rank`` rows (float64)."""
    r = a.shape[0]
    if r > rank:
        raise ValueError(f"cannot pad A of rank {r} down to {rank}")
    out = torch.zeros(rank, a.shape[1], dtype=F64)
    out[:r] = a.to(F64)
    return out


def pad_b(b: torch.Tensor, rank: int) -> torch.Tensor:
    """``B`` (d, r) zero-padded to ``rank`` columns (float64)."""
    r = b.shape[1]
    if r > rank:
        raise ValueError(f"cannot pad B of rank {r} down to {rank}")
    out = torch.zeros(b.shape[0], rank, dtype=F64)
    out[:, :r] = b.to(F64)
    return out


def site_rank(ctx: RoundContext, site: str) -> int:
    """The rank ``site`` trains with this round; raises ``ValueError`` for a site not in the cohort."""
    if site not in ctx.ranks:
        raise ValueError(f"site {site!r} is not in this round's cohort {sorted(ctx.ranks)}")
    rank = ctx.ranks[site]
    if rank <= 0:
        raise ValueError(f"site {site!r} has rank {rank}, must be > 0")
    return rank


def check_modules(found: Mapping[str, object], ctx: RoundContext, what: str) -> None:
    """Raise ``ValueError`` unless ``found`` covers exactly the round's target modules."""
    if set(found) != set(ctx.shapes):
        missing = sorted(set(ctx.shapes) - set(found))
        extra = sorted(set(found) - set(ctx.shapes))
        raise ValueError(f"{what} does not match the round's modules: missing {missing}, unexpected {extra}")


def trained_adapter(update: LocalUpdate, ctx: RoundContext) -> Adapter:
    """The update's LoRA factors, checked against the round's modules."""
    if update.adapter is None:
        raise ValueError("this rule needs trained LoRA factors, the update has none")
    check_modules(update.adapter, ctx, "the trained adapter")
    return update.adapter


def check_phase(phase: int, phases: int, rule: str) -> None:
    """Raise ``ValueError`` for a phase the rule does not have."""
    if not 0 <= phase < phases:
        raise ValueError(f"rule {rule!r} has phases 0..{phases - 1}, got phase {phase}")

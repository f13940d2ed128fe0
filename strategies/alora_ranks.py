"""Fed-ALoRA's heterogeneous-rank decomposition as pure math (Ban & Ji 2025, "Rethinking Parameter
Sharing for LLM Fine-Tuning with Multiple LoRAs", arXiv:2509.25414; github.com/OptMN-Lab/ALoRA).

Theory of operation
-------------------
The paper's heterogeneous Fed-ALoRA gives every site one shared B of a fixed width d_m (its
"intermediate rank", the same for the whole federation) and lets site i, of rank r_i, train

    ΔW_i = s_i · (B_0 + B_{i2} B_{i1}) · M_i · A_i

with B_0 (d × d_m) the shared B, frozen during local training; B_{i2} (d × r_i, starts at 0) and
B_{i1} (r_i × d_m) the site's low-rank change of B; M_i (d_m × r_i) and A_i (r_i × k) the site's own
A side. Only B_{i2}B_{i1} — d × d_m at every site, whatever its rank — leaves the site, and the server
sets B ← B_0 + Σ p_i B_{i2}B_{i1}. That is a weighted sum of equal-shape vectors: sums-only.

Stock PEFT trains one rank-r_i pair (B̃, A), so here M_i is a fixed matrix with orthonormal columns
(``projector``: public seed, module and site id) and B_{i1} = M_iᵀ. The site trains the ordinary pair
started at B̃ = B_0 M_i (``site_b``); because M_iᵀ M_i = I,

    s_i B̃ A_i = s_i (B_0 + (B̃ − B_0 M_i) M_iᵀ) M_i A_i,

which is the paper's form with B_{i2} = B̃ − B_0 M_i, and the gradient the trainer applies to B̃ is the
paper's gradient of B_{i2}. ``b_update`` turns the trained B̃ into the submitted B_{i2}B_{i1}. Where
this differs from the paper: B_{i1} and M_i are fixed, not trained (the paper's code draws them afresh
every round; here they stay, so the site's A side M_i A_i carries over between rounds), and a site of
rank r_i > d_m trains rank d_m (the paper's product has rank ≤ d_m anyway, ``training_rank``).

What a consumer gets: the shared B with the weighted mean of the sites' scaled A sides,
Ā = Σ p_i s_i M_i A_i (``a_side``), as one rank-d_m LoRA pair with scaling 1, so its
ΔW = B·Ā = Σ p_i s_i B M_i A_i: the weighted mean of the sites' own models re-based on the new B.
"""

from __future__ import annotations

import torch

from .shared_init import shared_a

F64 = torch.float64


def training_rank(rank: int, shared_rank: int) -> int:
    """The rank a site of ``rank`` trains against a shared B of width ``shared_rank`` (at most d_m)."""
    if rank <= 0 or shared_rank <= 0:
        raise ValueError(f"ranks must be > 0, got rank={rank}, shared_rank={shared_rank}")
    return min(rank, shared_rank)


def resolve_shared_rank(configured: int, global_width: int | None, cohort_max: int) -> int:
    """d_m: ``configured`` when set (> 0), else the published B's width, else the cohort's largest rank.

    Raises ``ValueError`` when a configured width contradicts the global's B.
    """
    if configured > 0:
        if global_width is not None and global_width != configured:
            raise ValueError(f"shared_rank is {configured} but the global's shared B has {global_width} columns")
        return configured
    if global_width is not None:
        return global_width
    if cohort_max <= 0:
        raise ValueError(f"the cohort's largest rank must be > 0, got {cohort_max}")
    return cohort_max


def projector(seed: int, module: str, site: str, rank: int, shared_rank: int) -> torch.Tensor:
    """M_i: a (d_m × r) float64 matrix with orthonormal columns, fixed by (seed, module, site).

    Gram-Schmidt of the public stream's columns (R's diagonal made positive), so the first r
    columns do not depend on how many were asked for.
    """
    r = training_rank(rank, shared_rank)
    raw = shared_a(seed, f"alora/M\x00{module}\x00{site}", r, shared_rank).to(F64).T
    q, rr = torch.linalg.qr(raw)
    signs = torch.sign(torch.diagonal(rr))
    signs[signs == 0] = 1.0
    out: torch.Tensor = q * signs
    return out


def site_b(shared_b: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """B̃'s start B_0 M_i (d × r), float64."""
    _check_chain(shared_b, proj)
    return shared_b.to(F64) @ proj


def b_update(start_b: torch.Tensor, trained_b: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """The site's B_{i2}B_{i1} = (B̃ − B_0 M_i) M_iᵀ (d × d_m), float64."""
    if start_b.shape != trained_b.shape or start_b.shape[1] != proj.shape[1]:
        raise ValueError(f"B̃ shapes disagree: start {tuple(start_b.shape)}, trained {tuple(trained_b.shape)}, "
                         f"projector {tuple(proj.shape)}")
    return (trained_b.to(F64) - start_b.to(F64)) @ proj.T


def a_side(a: torch.Tensor, proj: torch.Tensor, scaling: float) -> torch.Tensor:
    """The site's scaled A side s_i M_i A_i (d_m × k), float64."""
    if a.ndim != 2 or a.shape[0] != proj.shape[1]:
        raise ValueError(f"A {tuple(a.shape)} does not chain with the projector {tuple(proj.shape)}")
    return scaling * (proj @ a.to(F64))


def next_shared_b(previous: torch.Tensor | None, mean_update: torch.Tensor) -> torch.Tensor:
    """B = B_0 + Σ p_i B_{i2}B_{i1} (B_0 = 0 before the first round), float64."""
    if previous is None:
        return mean_update.to(F64).clone()
    if previous.shape != mean_update.shape:
        raise ValueError(f"shared B {tuple(previous.shape)} and the summed update {tuple(mean_update.shape)} differ")
    return previous.to(F64) + mean_update.to(F64)


def _check_chain(shared_b: torch.Tensor, proj: torch.Tensor) -> None:
    if shared_b.ndim != 2 or shared_b.shape[1] != proj.shape[0]:
        raise ValueError(f"shared B {tuple(shared_b.shape)} does not chain with the projector {tuple(proj.shape)}")

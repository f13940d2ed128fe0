"""Site-level DP of secure sums: the clip-and-noise a site applies, and the ε the coordinator may claim.

Pure numpy / math (no opacus, no torch), so both the agent (which noises) and the coordinator
(which accounts and writes the manifest) import it from here.

Model of the claimed ε (written into every manifest as ``site_level_privacy.model``):

* Each release is one decoded secure sum (every phase of every round, discarded rounds included)
  of updates clipped to L2 norm C; the Gaussian noise in it is only what the *contributing* sites
  added: each adds N(0, (σC)²/n) for the n sites of the round spec, so with k contributors the sum
  carries σ_eff = σ·sqrt(k/n). Dropouts weaken the noise, and the accounting says so.
* No amplification by sampling: the coordinator chooses and knows the cohort, so each release is
  the plain Gaussian mechanism with sensitivity C (one site's whole update), composed over releases
  with Rényi DP (orders 1.25…256) and converted to (ε, δ) as opacus does (Balle et al. 2020).
* The guarantee is against the coordinator and anyone who sees published versions, as long as no
  contributing site colludes with them (a colluder knows, and can subtract, its own noise share).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["ORDERS", "MODEL", "clip_and_noise_update", "effective_sigma", "site_level_epsilon"]

ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256])
"""Rényi orders tried (opacus' RDPAccountant.DEFAULT_ALPHAS)."""
MODEL = ("site-level (eps, delta) of the Gaussian mechanism on each decoded secure sum (sensitivity: one site's "
         "clipped update), noise counted only from contributing sites, RDP composition over every release "
         "including discarded rounds, no subsampling amplification; holds unless a contributing site colludes")


def clip_and_noise_update(
    vectors: dict[str, np.ndarray], clip: float, sigma: float, n_sites: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], bool]:
    """Clip the whole update to L2 norm ``clip``; add this site's N(0, (σ·clip)²/n_sites) share.

    Summed over ``n_sites`` sites (SecAgg) the noise has std σ·clip; every dropped site takes its
    share of the noise with it (see ``effective_sigma``). Returns the noised vectors and whether
    clipping happened.
    """
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be > 0, got {clip}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in vectors.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    std = sigma * clip / math.sqrt(n_sites)
    out = {
        k: (v.astype(np.float64) * scale + rng.normal(0.0, std, size=v.shape)).astype(v.dtype)
        for k, v in vectors.items()
    }
    return out, scale < 1.0


def effective_sigma(sigma: float, contributors: int, spec_sites: int) -> float:
    """Noise multiplier of a sum to which ``contributors`` of the ``spec_sites`` noising sites contributed."""
    if spec_sites < 1 or contributors < 0:
        raise ValueError(f"need spec_sites >= 1 and contributors >= 0, got {spec_sites}, {contributors}")
    return sigma * math.sqrt(min(contributors, spec_sites) / spec_sites)


def _rdp_gaussian(sigma: float, order: float) -> float:
    return order / (2.0 * sigma * sigma)


def site_level_epsilon(sigmas: Iterable[float], delta: float) -> float:
    """(ε at ``delta``) of the releases with these effective noise multipliers, no amplification (RDP)."""
    values = list(sigmas)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not values:
        return 0.0
    if any(s <= 0 for s in values):
        return math.inf
    best = math.inf
    for order in ORDERS:
        rdp = sum(_rdp_gaussian(s, order) for s in values)
        eps = rdp + math.log1p(-1.0 / order) - (math.log(delta) + math.log(order)) / (order - 1)
        best = min(best, eps)
    return max(best, 0.0)

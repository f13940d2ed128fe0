"""Optional site-level noise: clip a whole update and add this site's share of Gaussian noise.

The secure sum of ``n_sites`` such updates carries N(0, (σC)²) per coordinate, which protects a
whole site's contribution in a round (ε from ``site_level_epsilon``). Weak below a few dozen sites:
see docs/privacy.md. The coordinator turns it on for a federation (``[secagg] site_noise_multiplier``);
``agent/secure_sum.py`` applies it to every secure-sum submission before masking.
"""

from __future__ import annotations

import math

import numpy as np
from opacus.accountants import RDPAccountant  # type: ignore[import-untyped]


def clip_and_noise_update(
    vectors: dict[str, np.ndarray], clip: float, sigma: float, n_sites: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], bool]:
    """Clip the whole update to L2 norm ``clip``; add this site's N(0, (σ·clip)²/n_sites) share.

    Summed over ``n_sites`` sites (SecAgg) the noise has std σ·clip. Weak below a few dozen
    sites (the signal of n clipped updates against σ·clip noise), and every dropped site takes
    its share of the noise with it. Returns the noised vectors and whether clipping happened.
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


def site_level_epsilon(sigma: float, rounds: int, sample_rate: float, delta: float) -> float:
    """Site-level ε after ``rounds`` rounds at cohort sampling rate ``sample_rate`` (RDP)."""
    if sigma == 0:
        return math.inf
    acc = RDPAccountant()
    acc.history = [(sigma, sample_rate, rounds)]
    return float(acc.get_epsilon(delta=delta))

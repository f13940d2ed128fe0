"""Optional site-level noise (the agent's side): clip a whole update and add this site's share of Gaussian noise.

The math lives in ``strategies/site_dp.py`` so that the coordinator can account ε without importing
the agent; ``agent/secure_sum.py`` applies it to every secure-sum submission before masking.
``site_level_epsilon_amplified`` is the old optimistic figure (RDP with cohort subsampling) kept only
for comparison in docs/privacy.md: it assumes a coordinator that does not know the cohort.
"""

from __future__ import annotations

import math

from opacus.accountants import RDPAccountant  # type: ignore[import-untyped]

from ..strategies.site_dp import clip_and_noise_update, effective_sigma, site_level_epsilon

__all__ = ["clip_and_noise_update", "effective_sigma", "site_level_epsilon", "site_level_epsilon_amplified"]


def site_level_epsilon_amplified(sigma: float, rounds: int, sample_rate: float, delta: float) -> float:
    """Site-level ε after ``rounds`` rounds at cohort sampling rate ``sample_rate`` (RDP, amplified; optimistic)."""
    if sigma == 0:
        return math.inf
    acc = RDPAccountant()
    acc.history = [(sigma, sample_rate, rounds)]
    return float(acc.get_epsilon(delta=delta))

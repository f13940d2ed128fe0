"""FedIT: plain averaging of the LoRA factors (Zhang et al. 2024, "Towards building the
federated GPT: federated instruction tuning").

Client: start from the global (Ā, B̄), train A and B, submit n·√s·A and n·√s·B zero-padded to
the cohort's largest rank. Server: Ā = Σ p_i √s_i A_i, B̄ = Σ p_i √s_i B_i, published with
scaling 1, so ΔW = B̄·Ā = (Σ p_i √s_i B_i)(Σ p_i √s_i A_i) — which carries the cross terms
B_i A_j of factor averaging (inexact by design). Folding √s_i into both factors makes sites with
different ranks or rsLoRA scalings commensurable; with one shared s it is FedIT exactly.
Round one starts every site from the same public A (B = 0) so the first average is aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

from .factor_averaging import FactorAveraging
from .rule_params import SeedParams


@dataclass(frozen=True)
class FedItParams(SeedParams):
    """FedIT parameters (the public seed of the shared round-one A)."""


class FedIT(FactorAveraging[FedItParams]):
    """FedIT factor averaging (sums-only): n·√s·A and n·√s·B zero-padded to the cohort's largest rank,
    Ā = Σ p_i √s_i A_i, B̄ = Σ p_i √s_i B_i."""

    name = "fedit"
    params_type = FedItParams

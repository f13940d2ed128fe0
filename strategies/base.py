"""The contract every aggregation rule follows.

Theory of operation
-------------------
A rule has two halves. The *client half* runs in the agent: ``start`` says how to prepare the
model for local training (what to merge into the base, how to initialise and freeze the LoRA
factors), and ``vectors`` turns the trained result into the named float arrays the site submits,
already weighted by its sample count ``n`` and with ``n`` itself under the key ``N_KEY``.
The *server half* runs in the coordinator and sees only **sums** of those arrays over the cohort
(secure aggregation gives it nothing else). A rule may need several secure sums ("phases"): after
each phase but the last, ``combine`` returns a ``Broadcast`` that every site receives before it
computes the next phase's vectors; after the last it returns the next global ``Aggregate``.

The global state is always a published adapter (``Adapter``): for averaging rules it is the
averaged factors that sites continue from, for stacking rules it is the *cumulative* update that
sites merge into their base before training a fresh LoRA.

Plaintext ``stack`` is the one rule that needs individual factors; it implements
``IndividualRule`` instead and the coordinator refuses to run it under secure aggregation.
The two kinds of rule, and the frozen input each step receives, are in ``strategies/rule.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from .lora import Adapter, DenseUpdate

N_KEY = "__n__"
"""Reserved vector name carrying the site's sample count (summed to Σ n_i)."""


@dataclass(frozen=True)
class RoundContext:
    """What both halves know about the current round."""

    round: int
    """1-based round number."""
    shapes: Mapping[str, tuple[int, int]]
    """Target module name -> (d_out, k_in) of its base weight."""
    ranks: Mapping[str, int]
    """Cohort site id -> LoRA rank the site trains with (heterogeneous ranks allowed)."""
    session: bytes = b""
    """Public per-phase randomness both sides agree on (the secure-sum session id under SecAgg)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Rule parameters from the coordinator's configuration (e.g. ``lam``, ``oversampling``)."""
    # --- issue 14: modules the federation trains densely (``modules_to_save``, e.g. a seq-cls head) ---
    saved: tuple[str, ...] = ()
    """Module names (suffixes, as PEFT's ``modules_to_save``) trained and averaged densely (``saved_modules``)."""

    @property
    def max_rank(self) -> int:
        """Largest rank in the cohort (zero-padding target for averaging rules)."""
        return max(self.ranks.values())

    @property
    def total_rank(self) -> int:
        """Σ r_i over the cohort (the stacked rank)."""
        return sum(self.ranks.values())


@dataclass(frozen=True)
class TrainingPlan:
    """How the agent prepares its model for local training this round."""

    rank: int
    """LoRA rank to train (ignored when ``dense``)."""
    scaling: float
    """LoRA scaling s folded into ΔW = s·B·A."""
    merge: Adapter | None = None
    """Update merged into the base weights before training (stacking rules)."""
    init: Adapter | None = None
    """Initial factors; ``None`` means PEFT's default initialisation (A random, B zero)."""
    train_a: bool = True
    train_b: bool = True
    dense: bool = False
    """Train the full target matrices instead of LoRA factors."""
    merge_dense: DenseUpdate | None = None
    """Dense update merged into the base before training (the ``dense`` rule's global)."""
    # --- issue 14: dense "modules_to_save" (a classification head) ---
    modules_to_save: tuple[str, ...] = ()
    """Modules trained densely next to the LoRA factors (PEFT's ``modules_to_save``)."""
    saved_init: Mapping[str, torch.Tensor] | None = None
    """Start values of those modules' parameters (``<module>.<param>`` -> tensor); ``None``: the base's own."""


@dataclass(frozen=True)
class LocalUpdate:
    """What local training produced: LoRA factors or full-rank deltas of the targets."""

    adapter: Adapter | None = None
    dense: DenseUpdate | None = None
    saved: Mapping[str, torch.Tensor] | None = None
    """Trained values of the dense ``modules_to_save`` parameters (``<module>.<param>`` -> tensor)."""


@dataclass(frozen=True)
class Broadcast:
    """Server -> sites between two phases (e.g. secure-stack's orthonormal basis Q)."""

    tensors: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Aggregate:
    """The next global state, and facts for the manifest (retained energy, errors, …)."""

    adapter: Adapter | None = None
    dense: DenseUpdate | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    saved: Mapping[str, torch.Tensor] | None = None
    """Federated values of the dense ``modules_to_save`` parameters (published as PEFT ``modules_to_save``)."""


Vectors = dict[str, np.ndarray]

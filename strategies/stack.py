"""Plaintext FLoRA stacking (Wang et al. 2024, "FLoRA: Federated fine-tuning large language
models with heterogeneous low-rank adaptations", NeurIPS).

Each round every site trains a fresh LoRA on base + the cumulative update, and submits its own
factors **unweighted** (A_i, B_i, s_i, n_i). The server stacks them: A = [p_1 s_1 A_1; …; p_N s_N A_N],
B = [B_1 … B_N], whose product is exactly Σ p_i s_i B_i A_i — any ranks, any scalings. The
round's update is added to the previous cumulative update and the sum refactored by SVD
(``lowrank``) to at most ``publish_rank`` (64 by default; ``numerical_rank`` = its full rank) with
the retained energy reported. What the cap truncates away is kept by the coordinator and added
back before the next truncation (error feedback, ``FeedbackMemory``), so it does not accumulate.

This needs individual factors, so it is an ``IndividualRule``: plaintext only, never under
secure aggregation (``secure-stack`` is the sums-only equivalent).
(The public FLoRA code's FedIT path misspells its accumulator and keeps only the first client;
nothing here averages through an accumulator.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .base import N_KEY, Aggregate, LocalUpdate, RoundContext, TrainingPlan, Vectors
from .lora import Adapter
from .lowrank import refactor_cumulative
from .rule import Configured, IndividualRule, SiteStart
from .rule_params import RuleParams, check_float, check_int
from .submission import check_count, key, trained_adapter

F64 = torch.float64


DEFAULT_PUBLISH_RANK = 64
"""Published-rank cap of the stacking rules unless configured (bench/scale.py measures the choice:
serving engines take it — vLLM's ``max_lora_rank`` goes to 512 — and, with error feedback, the
cumulative update's relative error vs the exact one stays at the optimal rank-64 error)."""


@dataclass(frozen=True)
class StackParams(RuleParams):
    """Parameters of the stacking rules."""

    publish_rank: int | None = None
    """Truncate the published update to this rank (None: the rule's default, 64 for stacking)."""
    rtol: float = 1e-5
    """Singular values below rtol·σ_max count as zero (float32 submissions leave such a tail)."""
    error_feedback: bool = True
    """Keep what the rank cap truncates away and add it to the next round's update."""
    feedback_rank: int | None = None
    """Directions of the truncated remainder kept for feedback (None: the published rank)."""
    numerical_rank: bool = False
    """Publish the full numerical rank, uncapped (it grows by Σ r_i every round); the old default."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.publish_rank is not None:
            check_int("publish_rank", self.publish_rank, 1)
        check_float("rtol", self.rtol, 0.0, 1.0)
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be a bool, got {self.error_feedback!r}")
        if self.feedback_rank is not None:
            check_int("feedback_rank", self.feedback_rank, 0)
        if not isinstance(self.numerical_rank, bool):
            raise ValueError(f"numerical_rank must be a bool, got {self.numerical_rank!r}")

    def cap(self, default: int = DEFAULT_PUBLISH_RANK) -> int | None:
        """The published-rank cap (None: uncapped numerical rank)."""
        if self.numerical_rank:
            return None
        return default if self.publish_rank is None else self.publish_rank

    def tail_rank(self, default: int = DEFAULT_PUBLISH_RANK) -> int:
        """How many truncated directions the coordinator keeps for error feedback (0: none)."""
        cap = self.cap(default)
        if not self.error_feedback or cap is None:
            return 0
        return cap if self.feedback_rank is None else self.feedback_rank


class FeedbackMemory:
    """The coordinator's error-feedback residual, used only with the global it was computed for.

    It lives in the rule instance of the coordinator (sites never call ``combine``). A restart, a
    discarded round or a failed publish leaves a different global object, and the residual is
    then dropped rather than applied to the wrong state.
    """

    def __init__(self) -> None:
        self._for: object | None = None
        self._residual: Adapter | None = None

    def residual(self, glob: Aggregate | None) -> Adapter | None:
        """The residual belonging to ``glob`` (None if there is none or ``glob`` is another state)."""
        if glob is None or glob.adapter is None or glob.adapter is not self._for:
            return None
        return self._residual

    def refactored(
        self, glob: Aggregate | None, products: dict[str, tuple[torch.Tensor, torch.Tensor]], params: StackParams
    ) -> tuple[Adapter, dict[str, object]]:
        """The cumulative update (``glob`` + the round's products + the residual kept for ``glob``) refactored
        by SVD to the published-rank cap, and its facts; what the cap truncates is kept for the next round,
        which will start from the returned adapter."""
        prev = glob.adapter if glob is not None else None
        adapter, info, tail = refactor_cumulative(prev, products, params.cap(), params.rtol, self.residual(glob),
                                                  params.tail_rank())
        self._for, self._residual = adapter, tail or None
        return adapter, info


def stacking_start(start: SiteStart, rslora: bool) -> TrainingPlan:
    """Fresh PEFT-initialised LoRA on base + the cumulative update."""
    rank, scaling = start.lora(rslora)
    return TrainingPlan(rank=rank, scaling=scaling, merge=start.global_adapter("the cumulative adapter"))


class Stack(Configured[StackParams], IndividualRule):
    """Plaintext FLoRA stacking (individual submissions; exact)."""

    name = "stack"
    params_type = StackParams

    def __init__(self, params: StackParams | None = None) -> None:
        """Keep the validated parameters and the coordinator's error-feedback memory."""
        super().__init__(params)
        self.feedback = FeedbackMemory()

    def plan(self, start: SiteStart) -> TrainingPlan:
        """Fresh LoRA on base + cumulative update."""
        return stacking_start(start, self.params.rslora)

    def vectors(self, update: LocalUpdate, n: int, ctx: RoundContext) -> Vectors:
        """The site's own ``<module>/A``, ``<module>/B``, ``<module>/scaling`` and ``N_KEY``."""
        check_count(n)
        adapter = trained_adapter(update, ctx)
        out: Vectors = {N_KEY: np.array([n], dtype=np.float32)}
        for m, f in adapter.items():
            out[key(m, "A")] = f.A.detach().to(torch.float32).cpu().numpy()
            out[key(m, "B")] = f.B.detach().to(torch.float32).cpu().numpy()
            out[key(m, "scaling")] = np.array([f.scaling], dtype=np.float64)
        return out

    def combine_individual(
        self, updates: Mapping[str, Mapping[str, np.ndarray]], ctx: RoundContext, glob: Aggregate | None
    ) -> Aggregate:
        """Stack [p_i s_i A_i] and [B_i], add to the cumulative update, refactor by SVD."""
        if not updates:
            raise ValueError("stack needs at least one site's submission")
        counts = {site: float(np.asarray(v[N_KEY]).reshape(-1)[0]) for site, v in updates.items() if N_KEY in v}
        if len(counts) != len(updates) or min(counts.values()) <= 0:
            raise ValueError(f"every submission needs a positive {N_KEY!r}, got {counts}")
        total = sum(counts.values())
        products: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in ctx.shapes:
            bs, as_ = [], []
            for site in sorted(updates):
                v = updates[site]
                s = float(np.asarray(v[key(m, "scaling")]).reshape(-1)[0])
                as_.append((counts[site] / total) * s * torch.from_numpy(np.asarray(v[key(m, "A")], dtype=np.float64)))
                bs.append(torch.from_numpy(np.asarray(v[key(m, "B")], dtype=np.float64)))
            products[m] = (torch.cat(bs, dim=1), torch.cat(as_, dim=0))
        adapter, info = self.feedback.refactored(glob, products, self.params)
        info.update(rule=self.name, contributors=len(updates), samples=total, secure=False)
        return Aggregate(adapter=adapter, info=info)

"""Server-side optimizers applied to the aggregate: FedAvgM, FedAdam, FedYogi.

Theory of operation
-------------------
Reddi et al. 2021 ("Adaptive federated optimization") treat the change the averaged round makes,
Δ_t = avg_t − x_{t-1}, as a pseudo-gradient and feed it to a server optimizer (FedAvgM: Hsu et al.
2019). The wrapper sees only the rule's ``Aggregate`` (computed from secure sums) and the previous
global it published, so it works under secure aggregation unchanged. Per tensor (every LoRA factor,
dense delta and ``modules_to_save`` parameter of the global state)::

    FedAvgM   v = β·v + Δ                           x = x + η·v
    FedAdam   m = β1·m + (1−β1)·Δ,  v = β2·v + (1−β2)·Δ²           x = x + η̂·m / (√v + τ)
    FedYogi   m as Adam,            v = v − (1−β2)·Δ²·sign(v − Δ²)   x = x + η̂·m / (√v + τ)

with η̂ = η·√(1−β2^t)/(1−β1^t) when ``bias_correction`` (as Flower does) and η̂ = η otherwise; m, v
start at zero. The first aggregate has no previous global to compare with: it is taken as it is and
the optimizer starts from it. The state lives in the coordinator's memory (a restart starts it
again from the newest published version, as Flower's strategies do).

Only rules whose global state lives in fixed coordinates can be wrapped (``fixed_coordinates`` in their
registry entry): the averaging rules (``fedit``, ``ffa``, ``rotalign``, ``alora``) and ``dense``. Stacking
rules (``secure-stack``, ``flexlora``, ``stack``) refactor their global by SVD every round, so its factors
rotate and an element-wise optimizer state would mix unrelated coordinates; ``registry.federated_rule``
refuses them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

import torch

from .base import Aggregate, Broadcast
from .lora import LoraFactors
from .rule import PhaseSums, Rule, WrappedRule

F64 = torch.float64


class ServerOptimizer(Enum):
    """Which server optimizer."""

    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


@dataclass(frozen=True)
class ServerOptParams:
    """A server optimizer and its hyper-parameters (``None`` fields take the optimizer's default)."""

    kind: ServerOptimizer
    lr: float | None = None
    """η: 1.0 for FedAvgM, 0.01 for FedAdam / FedYogi."""
    momentum: float = 0.9
    """β of FedAvgM."""
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    """τ, the adaptivity floor of FedAdam / FedYogi (Reddi et al. tune it in 1e-5 … 1e-1)."""
    bias_correction: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ServerOptimizer):
            raise ValueError(f"kind must be a ServerOptimizer, got {self.kind!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name in ("momentum", "beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a finite number > 0, got {self.tau!r}")

    @property
    def eta(self) -> float:
        """The server learning rate in effect."""
        if self.lr is not None:
            return self.lr
        return 1.0 if self.kind is ServerOptimizer.FEDAVGM else 1e-2

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServerOptParams:
        """Build from configuration (``{"name": "fedadam", "lr": 0.01, ...}``), naming bad keys."""
        values = dict(values)
        name = values.pop("name", None)
        known = {m.value for m in ServerOptimizer}
        if name not in known:
            raise ValueError(f"server_optimizer.name must be one of {sorted(known)}, got {name!r}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"kind"}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown server_optimizer parameter(s) {unknown}; known: {sorted(fields)}")
        return cls(kind=ServerOptimizer(name), **values)


@dataclass
class Moments:
    """Optimizer state of one tensor."""

    m: torch.Tensor
    v: torch.Tensor


def step(p: ServerOptParams, x: torch.Tensor, delta: torch.Tensor, state: Moments, t: int) -> torch.Tensor:
    """One server step on tensor ``x`` with pseudo-gradient ``delta`` (round ``t`` ≥ 1); updates ``state``."""
    if p.kind is ServerOptimizer.FEDAVGM:
        state.v = p.momentum * state.v + delta
        return x + p.eta * state.v
    state.m = p.beta1 * state.m + (1 - p.beta1) * delta
    sq = delta * delta
    if p.kind is ServerOptimizer.FEDADAM:
        state.v = p.beta2 * state.v + (1 - p.beta2) * sq
    else:
        state.v = state.v - (1 - p.beta2) * sq * torch.sign(state.v - sq)
    eta = p.eta
    if p.bias_correction:
        eta = eta * math.sqrt(1 - p.beta2**t) / (1 - p.beta1**t)
    return x + eta * state.m / (state.v.clamp_min(0).sqrt() + p.tau)


def flatten(agg: Aggregate) -> dict[str, torch.Tensor]:
    """Every tensor of a global state by a stable name (float64)."""
    out: dict[str, torch.Tensor] = {}
    for m, f in (agg.adapter or {}).items():
        out[f"A:{m}"] = (f.scaling**0.5 if f.scaling > 0 else 1.0) * f.A.to(F64)
        out[f"B:{m}"] = (f.scaling**0.5 if f.scaling > 0 else 1.0) * f.B.to(F64)
    for m, w in (agg.dense or {}).items():
        out[f"W:{m}"] = w.to(F64)
    for m, s in (agg.saved or {}).items():
        out[f"S:{m}"] = s.to(F64)
    return out


def rebuild(like: Aggregate, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Aggregate:
    """An ``Aggregate`` shaped like ``like`` holding ``tensors`` (LoRA factors with scaling 1)."""
    adapter = {m: LoraFactors(A=tensors[f"A:{m}"].float(), B=tensors[f"B:{m}"].float(), scaling=1.0)
               for m in (like.adapter or {})} if like.adapter is not None else None
    dense = {m: tensors[f"W:{m}"].float() for m in like.dense} if like.dense is not None else None
    saved = {m: tensors[f"S:{m}"].float() for m in like.saved} if like.saved is not None else None
    return Aggregate(adapter=adapter, dense=dense, saved=saved, info=info)


class ServerOpt(WrappedRule):
    """Wrap a fixed-coordinate rule: its aggregate becomes a server-optimizer step from the previous global."""

    def __init__(self, inner: Rule, params: ServerOptParams) -> None:
        """Wrap ``inner`` (``registry.federated_rule`` wraps only rules whose global lives in fixed coordinates)."""
        super().__init__(inner)
        self.params = params
        self.moments: dict[str, Moments] = {}
        self.steps = 0

    def aggregate(self, sums: PhaseSums) -> Broadcast | Aggregate:
        """The inner aggregate, then one optimizer step from the previous global toward it."""
        out, glob = super().aggregate(sums), sums.glob
        if not isinstance(out, Aggregate):
            return out
        info = {**out.info, "server_optimizer": self.params.kind.value, "server_lr": self.params.eta}
        if glob is None:
            return dataclasses.replace(out, info={**info, "server_step": 0})
        prev, avg = flatten(glob), flatten(out)
        self.steps += 1
        new: dict[str, torch.Tensor] = {}
        for name, y in avg.items():
            x = prev.get(name)
            if x is None or x.shape != y.shape:  # a new tensor or a grown rank: start its state here
                new[name] = y
                self.moments.pop(name, None)
                continue
            state = self.moments.setdefault(name, Moments(torch.zeros_like(y), torch.zeros_like(y)))
            new[name] = step(self.params, x, y - x, state, self.steps)
        return rebuild(out, new, {**info, "server_step": self.steps})

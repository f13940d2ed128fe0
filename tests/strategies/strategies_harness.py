"""Shared test harness: random factors, the plain-sum oracle of the secure sum, dense references."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from fedquilt.strategies.base import Aggregate, Broadcast, LocalUpdate, RoundContext
from fedquilt.strategies.lora import Adapter, LoraFactors, lora_scaling

SHAPES = {"layers.0.q_proj": (24, 16), "layers.0.v_proj": (20, 16)}
ALPHA = 16.0


def context(ranks: Mapping[str, int], rnd: int = 1, session: bytes = b"session-1") -> RoundContext:
    """A round over SHAPES with the given site ranks."""
    return RoundContext(round=rnd, shapes=SHAPES, ranks=dict(ranks), session=session)


def random_adapter(rank: int, scaling: float, gen: torch.Generator, shapes: Mapping[str, tuple[int, int]] = SHAPES) -> Adapter:
    """Random float32 factors (B non-zero, as after training)."""
    return {
        m: LoraFactors(A=torch.randn(rank, k, generator=gen), B=torch.randn(d, rank, generator=gen), scaling=scaling)
        for m, (d, k) in shapes.items()
    }


def cohort(ranks: Mapping[str, int], seed: int, rslora: bool = False) -> dict[str, tuple[Adapter, int]]:
    """site -> (random trained adapter, sample count)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, (site, r) in enumerate(sorted(ranks.items())):
        out[site] = (random_adapter(r, lora_scaling(ALPHA, r, rslora), gen), 10 * (i + 1) + 7 * i * i)
    return out


def plain_sum(vectors: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The secure sum's oracle: element-wise sum in float64 over sites."""
    keys = set(vectors[0])
    for v in vectors:
        if set(v) != keys:
            raise AssertionError(f"sites submitted different keys: {sorted(set(v) ^ keys)}")
    return {k: sum((np.asarray(v[k], dtype=np.float64) for v in vectors), np.zeros(1)) for k in keys}


def run_round(
    rule: Any,
    sites: Mapping[str, tuple[LocalUpdate, int]],
    ctx: RoundContext,
    glob: Aggregate | None,
    states: Mapping[str, dict[str, Any]] | None = None,
) -> Aggregate:
    """Client halves -> plain sum -> server half, for every phase of a sums-only rule."""
    broadcast: Broadcast | None = None
    for phase in range(rule.phases):
        subs = [
            rule.vectors(phase, upd, n, ctx, broadcast, state=(states or {}).get(site))
            for site, (upd, n) in sorted(sites.items())
        ]
        out = rule.combine(phase, plain_sum(subs), ctx, glob, broadcast)
        if isinstance(out, Aggregate):
            if phase != rule.phases - 1:
                raise AssertionError(f"aggregate returned early, at phase {phase}")
            return out
        broadcast = out
    raise AssertionError("no aggregate after the last phase")


def updates_of(sites: Mapping[str, tuple[Adapter, int]]) -> dict[str, tuple[LocalUpdate, int]]:
    """Wrap adapters as LocalUpdates."""
    return {s: (LocalUpdate(adapter=a), n) for s, (a, n) in sites.items()}


def delta(agg_adapter: Adapter) -> dict[str, np.ndarray]:
    """s·B·A per module in float64 numpy."""
    return {m: f.scaling * (f.B.double().numpy() @ f.A.double().numpy()) for m, f in agg_adapter.items()}


def weights(sites: Mapping[str, tuple[Any, int]]) -> dict[str, float]:
    """p_i = n_i / Σ n."""
    total = sum(n for _, n in sites.values())
    return {s: n / total for s, (_, n) in sites.items()}


def exact_target(sites: Mapping[str, tuple[Adapter, int]]) -> dict[str, np.ndarray]:
    """Σ p_i s_i B_i A_i with explicit loops in float64 numpy."""
    p = weights(sites)
    out: dict[str, np.ndarray] = {}
    for m, (d, k) in SHAPES.items():
        acc = np.zeros((d, k))
        for s, (ad, _) in sites.items():
            f = ad[m]
            acc += p[s] * f.scaling * (f.B.double().numpy() @ f.A.double().numpy())
        out[m] = acc
    return out


def rel_err(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float:
    """‖got − want‖_F / ‖want‖_F over all modules."""
    num = sum(float(np.sum((got[m] - want[m]) ** 2)) for m in want)
    den = sum(float(np.sum(want[m] ** 2)) for m in want)
    return (num / den) ** 0.5

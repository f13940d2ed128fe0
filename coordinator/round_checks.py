"""Checks the coordinator makes on a round's sums and result before it publishes anything.

A site controls its own submission. Under secure aggregation the coordinator sees only sums, so what
it can check is (1) each value lies in the clip range (the secure sum enforces it), (2) the summed
sample count equals the sum of the counts the federation assigned to the contributors (a site that
inflates its count, or submits a negative one that cancels the honest counts, changes the sum), and
(3) the new global's norm is not a large multiple of the previous global's. Each check returns a
reason string (the round is discarded with it) or None.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from ..strategies.base import N_KEY, Aggregate
from .config import FederationConfig


def count_problem(sums: Mapping[str, np.ndarray], expected: float, contributors: int, resolution: float) -> str | None:
    """Why the summed count disagrees with the assigned counts beyond rounding (None: it agrees)."""
    if N_KEY not in sums:
        return f"the sums carry no sample count ({N_KEY!r})"
    got = float(np.asarray(sums[N_KEY], np.float64).reshape(-1)[0])
    tolerance = (contributors + 1) * resolution + 1e-6 * abs(expected)
    if not math.isfinite(got) or abs(got - expected) > tolerance:
        return (f"summed sample count {got:.6g} differs from the {expected:.6g} the contributors were assigned "
                f"(tolerance {tolerance:.3g}): a site submitted a count other than its own")
    return None


def aggregate_norm(agg: Aggregate | None) -> float:
    """‖ΔW‖_F summed over modules (for factors, via the r×r Gram matrices: no d×k product is formed)."""
    if agg is None:
        return 0.0
    total = 0.0
    for f in (agg.adapter or {}).values():
        a, b = f.A.to(torch.float64), f.B.to(torch.float64)
        gram = float(torch.trace((b.T @ b) @ (a @ a.T)))
        total += f.scaling ** 2 * max(gram, 0.0)
    for d in (agg.dense or {}).values():
        total += float(torch.sum(d.to(torch.float64) ** 2))
    return math.sqrt(total)


def norm_growth_problem(agg: Aggregate, previous: Aggregate | None, limit: float | None) -> str | None:
    """Why the new global's norm is implausible next to the previous one's (None: fine or no bound)."""
    new = aggregate_norm(agg)
    if not math.isfinite(new):
        return f"the aggregate's norm is {new}"
    if limit is None or previous is None:
        return None
    old = aggregate_norm(previous)
    if old > 0 and new > limit * old:
        return (f"the aggregate's norm {new:.4g} is {new / old:.1f}x the previous global's {old:.4g} "
                f"(max_norm_growth {limit})")
    return None


def federation_shapes(fed: FederationConfig, glob: Aggregate | None) -> dict[str, tuple[int, int]] | None:
    """The federation's targets from the operator's config, else from the newest version; None if neither."""
    if fed.target_shapes is not None:
        return {k: (int(d), int(kk)) for k, (d, kk) in fed.target_shapes.items()}
    if glob is None:
        return None
    shapes: dict[str, tuple[int, int]] = {}
    for name, f in (glob.adapter or {}).items():
        shapes[name] = (int(f.B.shape[0]), int(f.A.shape[1]))
    for name, d in (glob.dense or {}).items():
        shapes[name] = (int(d.shape[0]), int(d.shape[1]))
    return shapes or None


def shape_diff(declared: Mapping[str, tuple[int, int]], target: Mapping[str, tuple[int, int]]) -> str:
    """A short description of how a site's targets differ from the federation's."""
    missing = sorted(set(target) - set(declared))[:2]
    extra = sorted(set(declared) - set(target))[:2]
    wrong = sorted(k for k in set(target) & set(declared) if tuple(declared[k]) != tuple(target[k]))[:2]
    parts = [f"missing {missing}" if missing else "", f"unknown {extra}" if extra else "",
             ", ".join(f"{k} is {tuple(declared[k])} not {tuple(target[k])}" for k in wrong)]
    return "; ".join(p for p in parts if p) or "none"

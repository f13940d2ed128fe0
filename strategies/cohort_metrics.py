"""Training and evaluation metrics as extra vectors of the first secure sum: the coordinator sees cohort means only.

Client half (``pack``): for each metric m a site reports, the 2-vector ``[n·m, n]·clip / (scale·M)``
under ``__metric__/<m>`` (``scale`` is the round's public weight scale, ``clip`` the secure sum's
declared range and ``M`` a public constant, so the cohort mean of a metric up to ``M`` fits the range
whatever the clip), and its clipped-value count under ``__metric__/clipped`` as
``count·clip / COUNT_SCALE``. A metric a site does not report is ``[0, 0]``,
so every site declares the same layout. Server half (``split``): the summed vectors give the
n-weighted cohort mean ``Σ n·m / Σ n`` of each metric and the cohort's total clipped count —
nothing about any one site (with fewer than two contributors nothing is decoded at all).

Which metrics a site reports is its own decision (``agent/secure_sum.py``): with DP on, only the
evaluation loss (computed on the eval split, which DP does not cover; see docs/privacy.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

import numpy as np

__all__ = ["PREFIX", "NAMES", "TRAINING_NAMES", "pack", "split", "is_metric"]

PREFIX: Final = "__metric__/"
NAMES: Final = ("loss_before", "loss_after", "eval_loss", "steps")
"""Metrics summed securely (every site declares all of them)."""
TRAINING_NAMES: Final = frozenset({"loss_before", "loss_after", "steps"})
"""Computed on training records: never reported under DP."""
RANGE: Final = 64.0
"""Public divisor M of the metric vectors: cohort means of metrics up to M stay inside the declared range."""
COUNT_SCALE: Final = float(2**24)
"""Per-site clipped counts up to 2^24 fit the declared range (resolution about n/128 counts for n sites)."""
CLIPPED: Final = PREFIX + "clipped"


def is_metric(name: str) -> bool:
    """Whether a vector name is a cohort-metric vector (not part of the rule's sums)."""
    return name.startswith(PREFIX)


def pack(metrics: Mapping[str, float | None], n: float, scale: float, clipped: int = 0,
         names: Iterable[str] = NAMES, clip: float = 1.0) -> dict[str, np.ndarray]:
    """The metric vectors of one site (``n``: its sample count; ``scale``: the round's weight scale;
    ``clip``: the secure sum's declared range)."""
    out: dict[str, np.ndarray] = {}
    div = scale * RANGE / clip
    for name in names:
        value = metrics.get(name)
        if value is None or not math.isfinite(float(value)):
            out[PREFIX + name] = np.zeros(2)
        else:
            out[PREFIX + name] = np.array([n * float(value) / div, n / div])
    out[CLIPPED] = np.array([float(clipped) * clip / COUNT_SCALE])
    return out


def split(sums: Mapping[str, np.ndarray], clip: float = 1.0) -> tuple[dict[str, np.ndarray],
                                                                       dict[str, float | int | None]]:
    """(the rule's sums, the cohort metrics) from one secure sum's decoded result (``clip``: its declared range)."""
    rule = {k: v for k, v in sums.items() if not is_metric(k)}
    cohort: dict[str, float | int | None] = {}
    for key, value in sums.items():
        if key == CLIPPED:
            cohort["clipped"] = max(0, int(round(float(np.asarray(value).ravel()[0]) * COUNT_SCALE / clip)))
        elif is_metric(key):
            total, weight = (float(x) for x in np.asarray(value, np.float64).ravel()[:2])
            cohort[key[len(PREFIX):]] = round(total / weight, 5) if weight > 1e-9 else None
    return rule, cohort

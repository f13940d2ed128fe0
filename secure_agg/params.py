"""Secure-aggregation parameters: threshold, neighbour graph, ring and fixed point.

The fixed point is chosen so that the sum of ``max_sites`` values, each clipped to
``[-clip, clip]`` and stochastically rounded (which can add one unit), still fits the
signed range of the ring: ``max_sites * (clip * 2**frac_bits + 1) <= 2**(ring_bits-1) - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

import numpy as np

from .errors import Overflow

__all__ = ["SecAggParams", "default_params", "max_frac_bits", "FULL_GRAPH_MAX_SITES", "RING_BITS"]

RING_BITS: Final = (32, 64)
"""Supported ring sizes: Z_{2^32} (4 bytes per value) and Z_{2^64}."""

FULL_GRAPH_MAX_SITES: Final = 64
"""Cohorts up to this size use the full graph (SecAgg); larger ones use SecAgg+."""


def max_frac_bits(max_sites: int, clip: float, ring_bits: int) -> int | None:
    """Return the largest fractional bit count whose n-fold sum cannot overflow, or None."""
    limit = Fraction(2 ** (ring_bits - 1) - 1, max_sites) - 1
    best: int | None = None
    for bits in range(ring_bits):
        if Fraction(clip) * 2**bits > limit:
            break
        best = bits
    return best


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """Validated parameters of one secure sum (shared by every site and the server)."""

    threshold: int
    """Minimum number of surviving sites; also the Shamir threshold on the full graph."""
    clip: float
    """Declared value range ``[-clip, clip]``; values outside are clipped and counted."""
    max_sites: int
    """Largest cohort these parameters are sized for (overflow safety of the sum)."""
    degree: int | None = None
    """None: full graph (SecAgg). Else: SecAgg+ neighbours per site (even, >= 2)."""
    ring_bits: int = 32
    """Ring Z_{2^ring_bits}: 32 or 64."""
    frac_bits: int | None = None
    """Fractional bits of the fixed point; derived (the most that cannot overflow) when None."""
    share_threshold: int | None = None
    """SecAgg+ only: shares needed among a site's ``degree + 1`` holders; default majority."""

    def __post_init__(self) -> None:
        if not _is_int(self.max_sites) or self.max_sites < 1:
            raise ValueError(f"max_sites must be an int >= 1, got {self.max_sites!r}")
        if not _is_int(self.threshold) or not 1 <= self.threshold <= self.max_sites:
            raise ValueError(f"threshold must be an int in [1, {self.max_sites}], got {self.threshold!r}")
        if not isinstance(self.clip, (int, float)) or not math.isfinite(self.clip) or self.clip <= 0:
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if self.ring_bits not in RING_BITS:
            raise ValueError(f"ring_bits must be 32 or 64, got {self.ring_bits!r}")
        self._check_graph()
        self._resolve_frac_bits()

    def _check_graph(self) -> None:
        if self.degree is None:
            if self.share_threshold is not None:
                raise ValueError("share_threshold is only meaningful with a SecAgg+ degree")
            return
        if not _is_int(self.degree) or self.degree < 2 or self.degree % 2:
            raise ValueError(f"degree must be None or an even int >= 2, got {self.degree!r}")
        shares = self.share_threshold
        if shares is None:
            object.__setattr__(self, "share_threshold", self.degree // 2 + 1)
        elif not _is_int(shares) or not 1 <= shares <= self.degree + 1:
            raise ValueError(f"share_threshold must be an int in [1, {self.degree + 1}], got {shares!r}")

    def _resolve_frac_bits(self) -> None:
        most = max_frac_bits(self.max_sites, float(self.clip), self.ring_bits)
        if self.frac_bits is None:
            if most is None:
                raise Overflow(
                    f"frac_bits: {self.max_sites} values in [-{self.clip}, {self.clip}] overflow "
                    f"a {self.ring_bits}-bit ring even without fractional bits"
                )
            object.__setattr__(self, "frac_bits", most)
        elif not _is_int(self.frac_bits) or self.frac_bits < 0:
            raise ValueError(f"frac_bits must be an int >= 0, got {self.frac_bits!r}")
        elif most is None or self.frac_bits > most:
            raise Overflow(
                f"frac_bits={self.frac_bits} lets {self.max_sites} values of magnitude {self.clip} "
                f"overflow a {self.ring_bits}-bit ring (at most {most})"
            )

    @property
    def scale(self) -> float:
        """Fixed-point scale ``2**frac_bits``."""
        return float(2 ** (self.frac_bits or 0))

    @property
    def ring_dtype(self) -> np.dtype[np.unsignedinteger]:
        """Numpy dtype of ring elements (``uint32`` or ``uint64``)."""
        return np.dtype(np.uint32 if self.ring_bits == 32 else np.uint64)

    @property
    def bytes_per_value(self) -> int:
        """Bytes each value takes on the wire."""
        return self.ring_bits // 8

    def is_full_graph(self, cohort_size: int) -> bool:
        """Whether a cohort of this size uses the full graph (every pair are neighbours)."""
        return self.degree is None or self.degree >= cohort_size - 1

    def shares_needed(self, cohort_size: int) -> int:
        """Shamir threshold of each site's secrets for a cohort of this size."""
        if self.is_full_graph(cohort_size) or self.share_threshold is None:
            return self.threshold
        return self.share_threshold


def default_degree(n_sites: int) -> int | None:
    """Full graph up to 64 sites, else the even number nearest above 3·log2(n) (SecAgg+)."""
    if n_sites <= FULL_GRAPH_MAX_SITES:
        return None
    k = math.ceil(3 * math.log2(n_sites))
    return min(k + k % 2, n_sites - 1 - (n_sites - 1) % 2)


def default_params(
    n_sites: int,
    clip: float,
    *,
    min_frac_bits: int = 0,
    threshold: int | None = None,
    degree: int | None | Literal["auto"] = "auto",
    ring_bits: int | None = None,
) -> SecAggParams:
    """Parameters for ``n_sites``: t = n//2+1, graph by size, the smallest ring giving ``min_frac_bits``."""
    if not _is_int(n_sites) or n_sites < 1:
        raise ValueError(f"n_sites must be an int >= 1, got {n_sites!r}")
    if not _is_int(min_frac_bits) or min_frac_bits < 0:
        raise ValueError(f"min_frac_bits must be an int >= 0, got {min_frac_bits!r}")
    if not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    if ring_bits is not None and ring_bits not in RING_BITS:
        raise ValueError(f"ring_bits must be None, 32 or 64, got {ring_bits!r}")
    chosen_degree = default_degree(n_sites) if degree == "auto" else degree
    for bits in RING_BITS if ring_bits is None else (ring_bits,):
        most = max_frac_bits(n_sites, float(clip), bits)
        if most is not None and most >= min_frac_bits:
            return SecAggParams(
                threshold=n_sites // 2 + 1 if threshold is None else threshold,
                clip=clip,
                max_sites=n_sites,
                degree=chosen_degree,
                ring_bits=bits,
            )
    raise Overflow(
        f"min_frac_bits={min_frac_bits}: {n_sites} values in [-{clip}, {clip}] do not fit "
        f"{'any supported ring' if ring_bits is None else f'a {ring_bits}-bit ring'} with that precision"
    )

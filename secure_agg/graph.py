"""Who masks with whom: the full graph (SecAgg) or a random k-regular graph (SecAgg+).

The SecAgg+ graph is a Harary graph on a pseudo-random ring: sites are ordered by
``SHA-256(seed || site)`` and each is joined to the ``k/2`` nearest sites on either side.
It is symmetric, every site has exactly ``k`` neighbours, and every party derives the same
graph from public data (the cohort and the announced nonce).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

from .messages import SiteId

__all__ = ["Graph", "neighbours", "prune"]

Graph = Mapping[SiteId, frozenset[SiteId]]


def neighbours(sites: Sequence[SiteId], degree: int | None, seed: bytes) -> dict[SiteId, frozenset[SiteId]]:
    """Neighbour sets of ``sites``; full graph when ``degree`` is None or >= len(sites) - 1."""
    unique = sorted(set(sites))
    if len(unique) != len(sites):
        raise ValueError(f"sites must be distinct, got {len(sites)} names for {len(unique)} sites")
    n = len(unique)
    if degree is None or degree >= n - 1:
        everyone = frozenset(unique)
        return {site: everyone - {site} for site in unique}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree must be even and >= 2, got {degree}")
    ring = sorted(unique, key=lambda s: hashlib.sha256(seed + b"|" + s.encode()).digest())
    half = degree // 2
    return {
        site: frozenset(ring[(pos + off) % n] for off in range(-half, half + 1) if off)
        for pos, site in enumerate(ring)
    }


def prune(alive: Collection[SiteId], graph: Graph, need: int) -> set[SiteId]:
    """Drop, until stable, every site whose alive neighbours plus itself are fewer than ``need``."""
    kept = set(alive)
    changed = True
    while changed:
        weak = {s for s in kept if len(graph[s] & kept) + 1 < need}
        kept -= weak
        changed = bool(weak)
    return kept

"""Neighbour graphs: symmetric, k-regular, deterministic; pruning of under-supported sites."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquilt.secure_agg import SiteId
from fedquilt.secure_agg.graph import neighbours, prune


def _sites(n: int) -> list[SiteId]:
    return [SiteId(f"s{i}") for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 120), half=st.integers(1, 20), seed=st.binary(min_size=1, max_size=8))
def test_symmetric_and_regular(n: int, half: int, seed: bytes) -> None:
    degree = 2 * half
    graph = neighbours(_sites(n), degree, seed)
    expected = min(degree, n - 1)
    for site, peers in graph.items():
        assert site not in peers and len(peers) == expected
        assert all(site in graph[p] for p in peers)


def test_deterministic_from_seed_and_order_independent() -> None:
    sites = _sites(40)
    assert neighbours(sites, 6, b"nonce") == neighbours(list(reversed(sites)), 6, b"nonce")
    assert neighbours(sites, 6, b"nonce") != neighbours(sites, 6, b"other")


def test_full_graph() -> None:
    graph = neighbours(_sites(5), None, b"x")
    assert graph[SiteId("s0")] == frozenset(_sites(5)[1:])


def test_rejects_odd_degree_and_duplicates() -> None:
    with pytest.raises(ValueError, match="even"):
        neighbours(_sites(10), 3, b"x")
    with pytest.raises(ValueError, match="distinct"):
        neighbours([SiteId("a"), SiteId("a")], None, b"x")


def test_prune_removes_sites_without_enough_live_holders() -> None:
    graph = neighbours(_sites(12), 4, b"seed")
    victim = SiteId("s0")
    alive = set(graph) - graph[victim]
    kept = prune(alive, graph, need=3)
    assert victim not in kept and kept == alive - {victim}
    assert prune(set(graph), graph, need=5) == set(graph)

"""Partitioners: disjoint, complete, seeded, and skewed the way their names say."""

from __future__ import annotations

import numpy as np
import pytest

from fedquilt.simulation.partition import PartitionError, by_column, dirichlet, iid, label_histogram


def _check_cover(parts: list[list[int]], n: int) -> None:
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # disjoint and complete


def test_iid_is_an_even_random_cover() -> None:
    parts = iid(103, 10, np.random.default_rng(0))
    _check_cover(parts, 103)
    assert {len(p) for p in parts} <= {10, 11}
    assert parts != iid(103, 10, np.random.default_rng(1))
    assert parts == iid(103, 10, np.random.default_rng(0))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = [i % 2 for i in range(2000)]

    def skew(alpha: float) -> float:
        parts = dirichlet(labels, 10, alpha, np.random.default_rng(3))
        _check_cover(parts, len(labels))
        hist = np.array(label_histogram(labels, parts, 2), dtype=float)
        return float(np.mean(np.abs(hist[:, 0] / hist.sum(1) - 0.5)))

    s01, s05, s100 = skew(0.1), skew(0.5), skew(100.0)
    assert s01 > s05 > s100 and s01 > 0.3 and s100 < 0.05


def test_column_keeps_groups_whole() -> None:
    values = [f"movie-{i % 37}" for i in range(500)]
    parts = by_column(values, 10, np.random.default_rng(0))
    _check_cover(parts, 500)
    owner = {}
    for s, p in enumerate(parts):
        for i in p:
            assert owner.setdefault(values[i], s) == s
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 14  # greedy balance: within one group's size


@pytest.mark.parametrize("call, match", [
    (lambda: iid(3, 5, np.random.default_rng(0)), "cannot split 3 rows over 5 sites"),
    (lambda: dirichlet([0, 1] * 10, 3, 0.0, np.random.default_rng(0)), "alpha must be > 0"),
    (lambda: by_column(["a", "b"] * 5, 3, np.random.default_rng(0)), "2 distinct values, fewer than 3 sites"),
])
def test_impossible_splits_say_why(call, match: str) -> None:
    with pytest.raises(PartitionError, match=match):
        call()

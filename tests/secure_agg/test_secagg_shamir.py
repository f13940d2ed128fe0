"""Shamir sharing: round trips, threshold, perfect hiding of t-1 shares, encoding."""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquilt.secure_agg.shamir import MAX_SECRET_BYTES, PRIME, Share, combine, split


def _interpolate(points: list[tuple[int, int]], x: int) -> int:
    """Slow reference: Lagrange interpolation of ``points`` evaluated at ``x`` (mod PRIME)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num, den = num * (x - xj) % PRIME, den * (xi - xj) % PRIME
        total += yi * num * pow(den, -1, PRIME)
    return total % PRIME


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(max_size=MAX_SECRET_BYTES), data=st.data())
def test_any_t_shares_reconstruct(secret: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 9))
    t = data.draw(st.integers(1, n))
    shares = split(secret, t, n)
    count = data.draw(st.integers(t, n))
    assert combine(data.draw(st.permutations(shares))[:count]) == secret


def test_every_subset_of_size_t_works_and_keeps_leading_zeros() -> None:
    secret = b"\x00\x00" + secrets.token_bytes(30)
    shares = split(secret, 3, 5)
    for subset in itertools.combinations(shares, 3):
        assert combine(list(subset)) == secret


def test_t_minus_one_shares_give_a_wrong_secret() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 4, 6)
    with pytest.raises(ValueError, match="do not reconstruct"):
        combine(shares[:3])


def test_t_minus_one_shares_are_consistent_with_any_secret() -> None:
    # Perfect hiding: for any other secret there is a polynomial of degree t-1 through the same
    # t-1 shares, so those shares say nothing about which secret was shared.
    t, secret, other = 4, secrets.token_bytes(32), secrets.token_bytes(32)
    seen = split(secret, t, 6)[: t - 1]
    other_point = (0, int.from_bytes(b"\x01" + other, "big"))
    forged = Share(5, _interpolate([other_point] + [(s.index, s.value) for s in seen], 5))
    assert combine(seen + [forged]) == other
    assert combine(split(secret, t, 6)[:t]) == secret


def test_share_encoding_round_trips_and_rejects_garbage() -> None:
    share = split(b"k" * 32, 2, 3)[1]
    assert Share.from_bytes(share.to_bytes()) == share
    assert len(share.to_bytes()) == 68
    with pytest.raises(ValueError, match="68 bytes"):
        Share.from_bytes(share.to_bytes()[:-1])
    with pytest.raises(ValueError, match="out of range"):
        Share.from_bytes(bytes(68))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="t <= n"):
        split(b"x", 3, 2)
    with pytest.raises(ValueError, match="at most 64 bytes"):
        split(bytes(65), 1, 1)
    share = split(b"x", 1, 2)[0]
    with pytest.raises(ValueError, match="distinct"):
        combine([share, share])

"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1).

A secret of up to 64 bytes is encoded as the integer ``0x01 || secret`` (the marker keeps
leading zero bytes and lets :func:`combine` reject a reconstruction from too few or corrupted
shares with overwhelming probability). Any t-1 shares are consistent with every secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["PRIME", "MAX_SECRET_BYTES", "Share", "split", "combine"]

PRIME: Final = 2**521 - 1
"""The field modulus, a Mersenne prime."""
MAX_SECRET_BYTES: Final = 64
"""Longest secret that fits the field together with its marker byte."""
_VALUE_BYTES: Final = 66
_INDEX_BYTES: Final = 2


@dataclass(frozen=True)
class Share:
    """One point ``(index, value)`` of the sharing polynomial."""

    index: int
    value: int

    def to_bytes(self) -> bytes:
        """Fixed-length encoding: 2-byte index then 66-byte value, big-endian."""
        return self.index.to_bytes(_INDEX_BYTES, "big") + self.value.to_bytes(_VALUE_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Decode :meth:`to_bytes`; raise ValueError on a malformed share."""
        if len(data) != _INDEX_BYTES + _VALUE_BYTES:
            raise ValueError(f"share must be {_INDEX_BYTES + _VALUE_BYTES} bytes, got {len(data)}")
        share = cls(int.from_bytes(data[:_INDEX_BYTES], "big"), int.from_bytes(data[_INDEX_BYTES:], "big"))
        if share.index == 0 or share.value >= PRIME:
            raise ValueError(f"share index {share.index} or value out of range")
        return share


def split(secret: bytes, t: int, n: int) -> list[Share]:
    """Split ``secret`` into ``n`` shares (indices 1..n), any ``t`` of which reconstruct it."""
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"secret must be at most {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= t <= n < 2 ** (8 * _INDEX_BYTES):
        raise ValueError(f"need 1 <= t <= n < 65536, got t={t}, n={n}")
    coefficients = [int.from_bytes(b"\x01" + secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def combine(shares: Sequence[Share]) -> bytes:
    """Reconstruct the secret from shares (at least t); raise ValueError if they do not decode."""
    xs = [s.index for s in shares]
    if not shares or len(set(xs)) != len(xs) or min(xs) < 1:
        raise ValueError(f"need distinct positive share indices, got {xs}")
    total = 0
    for i, share in enumerate(shares):
        num, den = 1, 1
        for j, x in enumerate(xs):
            if j != i:
                num = num * x % PRIME
                den = den * (x - share.index) % PRIME
        total = (total + share.value * num * pow(den, -1, PRIME)) % PRIME
    encoded = total.to_bytes(_VALUE_BYTES, "big").lstrip(b"\x00")
    if not encoded or encoded[0] != 1 or len(encoded) > MAX_SECRET_BYTES + 1:
        raise ValueError(f"{len(shares)} shares do not reconstruct a valid secret (too few or corrupted)")
    return encoded[1:]

"""Pairwise seeds (X25519 + HKDF) and share encryption (AES-GCM with bound associated data)."""

from __future__ import annotations

import pytest

from fedquilt.secure_agg import DecryptionFailed
from fedquilt.secure_agg.aead import associated_data, decrypt, encrypt
from fedquilt.secure_agg.keys import Purpose, generate_key_pair, private_key_from_bytes, shared_seed


def test_seed_is_symmetric_and_separated_by_session_purpose_and_context() -> None:
    a, b = generate_key_pair(), generate_key_pair()
    sid = b"s" * 32
    seed = shared_seed(a.private, b.public, sid, Purpose.MASK)
    assert seed == shared_seed(b.private, a.public, sid, Purpose.MASK) and len(seed) == 32
    assert seed != shared_seed(a.private, b.public, sid, Purpose.SHARE_ENCRYPTION)
    assert seed != shared_seed(a.private, b.public, b"t" * 32, Purpose.MASK)
    assert seed != shared_seed(a.private, b.public, sid, Purpose.MASK, b"H(Q)")
    restored = private_key_from_bytes(a.private_bytes())
    assert shared_seed(restored, b.public, sid, Purpose.MASK) == seed


def test_low_order_public_key_is_refused() -> None:
    with pytest.raises(ValueError):
        shared_seed(generate_key_pair().private, bytes(32), b"s", Purpose.MASK)


def test_aead_round_trip_and_binding() -> None:
    key, ad = b"k" * 32, associated_data(b"sid", "alice", "bob", 2)
    ct = encrypt(key, b"share bytes", ad)
    assert decrypt(key, ct, ad) == b"share bytes"
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    with pytest.raises(DecryptionFailed, match="authentication"):
        decrypt(key, tampered, ad)
    for other in (associated_data(b"sid2", "alice", "bob", 2), associated_data(b"sid", "bob", "alice", 2),
                  associated_data(b"sid", "alice", "bob", 3)):
        with pytest.raises(DecryptionFailed):
            decrypt(key, ct, other)
    with pytest.raises(DecryptionFailed, match="truncated"):
        decrypt(key, ct[:20], ad)
    assert associated_data(b"ab", "c", "d", 1) != associated_data(b"a", "bc", "d", 1)

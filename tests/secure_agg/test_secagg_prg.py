"""Mask PRG: known answers against AES directly, chunk boundaries, in-place add/subtract."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedquilt.secure_agg.prg import CHUNK_BYTES, Keystream, apply_masks, keystream

SEED = bytes(range(32))


def _aes_ctr_zeros(seed: bytes, nbytes: int) -> bytes:
    return Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor().update(bytes(nbytes))


def test_known_answer_first_block_is_aes_of_counter_zero() -> None:
    # Independent of CTR mode: block i of the keystream is AES-256-ECB(seed, i as 128-bit big-endian).
    ecb = Cipher(algorithms.AES(SEED), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(3))
    assert keystream(SEED, 12, np.uint32).tobytes() == blocks
    assert keystream(SEED, 1, np.uint32)[0] == int.from_bytes(blocks[:4], "little")


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("count", [1, 5, CHUNK_BYTES // 8 - 1, CHUNK_BYTES // 4 + 3, 3 * CHUNK_BYTES // 4 + 17])
def test_mask_equals_aes_ctr_of_zeros_across_chunks(dtype: type, count: int) -> None:
    width = np.dtype(dtype).itemsize
    expected = np.frombuffer(_aes_ctr_zeros(SEED, count * width), np.dtype(dtype).newbyteorder("<"))
    assert np.array_equal(keystream(SEED, count, dtype), expected)


def test_add_then_subtract_is_identity_and_wraps() -> None:
    rng = np.random.default_rng(0)
    acc = rng.integers(0, 2**32, 100_003, dtype=np.uint32)
    original = acc.copy()
    seeds = [bytes([i]) * 32 for i in range(5)]
    apply_masks(acc, seeds[:3], seeds[3:])
    assert not np.array_equal(acc, original)
    expected = (original.astype(np.int64) + sum(keystream(s, acc.size).astype(np.int64) for s in seeds[:3])
                - sum(keystream(s, acc.size).astype(np.int64) for s in seeds[3:])) % 2**32
    assert np.array_equal(acc, expected.astype(np.uint32))
    apply_masks(acc, seeds[3:], seeds[:3])
    assert np.array_equal(acc, original)


def test_streams_differ_per_seed_and_reads_continue() -> None:
    assert not np.array_equal(keystream(SEED, 64), keystream(bytes(32), 64))
    stream = Keystream(SEED)
    first = stream.read(8, np.uint32).copy()
    second = stream.read(8, np.uint32).copy()
    assert np.array_equal(np.concatenate([first, second]), keystream(SEED, 16))


def test_rejects_bad_seed_and_accumulator() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        keystream(bytes(16), 4)
    with pytest.raises(ValueError, match="uint32/uint64"):
        apply_masks(np.zeros(4, np.int32), [SEED], [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds"):
        Keystream(SEED).read(CHUNK_BYTES, np.uint32)

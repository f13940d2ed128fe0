"""Mask generator: the AES-256-CTR keystream of a 32-byte seed, read as ring words.

``PRG(seed)`` is AES-256 in CTR mode, key = the full 32-byte seed, initial counter block = 16
zero bytes, applied to zeros; word ``i`` of a mask is bytes ``[w*i, w*(i+1))`` of the keystream
read little-endian (w = 4 or 8). Each seed keys exactly one stream, so the fixed IV is safe.

Masks are applied chunk by chunk: for each chunk of the accumulator (small enough to stay in
cache) every cipher context writes its next keystream bytes into one reused buffer which is
added to or subtracted from the chunk in place, with wrapping unsigned arithmetic. No array
the size of the vector is ever allocated, so the cost is close to the keystream itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["SEED_BYTES", "CHUNK_BYTES", "Keystream", "keystream", "apply_masks"]

SEED_BYTES: Final = 32
"""Length of every mask seed (an AES-256 key)."""
CHUNK_BYTES: Final = 1 << 17
"""Bytes of keystream produced per call; sized to keep the working set in L2."""

_IV: Final = bytes(16)
_ZEROS: Final = memoryview(bytes(CHUNK_BYTES))
RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]


def _encryptor(seed: bytes) -> CipherContext:
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.AES(seed), modes.CTR(_IV)).encryptor()


def _buffer() -> tuple[memoryview, npt.NDArray[np.uint8]]:
    """One chunk of output space (update_into wants 15 spare bytes), as memoryview and array."""
    raw = bytearray(CHUNK_BYTES + 16)
    return memoryview(raw), np.frombuffer(raw, np.uint8)


def _check_ring(acc: np.ndarray) -> None:
    if acc.dtype not in (np.uint32, np.uint64) or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError(f"accumulator must be a contiguous 1-D uint32/uint64 array, got {acc.dtype} {acc.shape}")


class Keystream:
    """One seed's keystream, read sequentially in chunks into a reused buffer."""

    def __init__(self, seed: bytes) -> None:
        self._ctx = _encryptor(seed)
        self._out, self._buf = _buffer()

    def read(self, count: int, dtype: npt.DTypeLike) -> np.ndarray:
        """Next ``count`` words of ``dtype`` (at most one chunk); the view is reused by the next read."""
        nbytes = count * np.dtype(dtype).itemsize
        if nbytes > CHUNK_BYTES:
            raise ValueError(f"read of {nbytes} bytes exceeds the {CHUNK_BYTES}-byte chunk")
        self._ctx.update_into(_ZEROS[:nbytes], self._out)
        return self._buf[:nbytes].view(np.dtype(dtype).newbyteorder("<"))


def keystream(seed: bytes, count: int, dtype: npt.DTypeLike = np.uint32) -> np.ndarray:
    """A fresh array holding the first ``count`` words of ``PRG(seed)`` (tests and small vectors)."""
    out = np.zeros(count, np.dtype(dtype))
    apply_masks(out, add=[seed], subtract=[])
    return out


def apply_masks(acc: RingArray, add: Sequence[bytes], subtract: Sequence[bytes]) -> None:
    """In place: ``acc += sum(PRG(s) for s in add) - sum(PRG(s) for s in subtract)`` (mod 2^w)."""
    _check_ring(acc)
    plus = [_encryptor(seed) for seed in add]
    minus = [_encryptor(seed) for seed in subtract]
    width = acc.dtype.itemsize
    words = CHUNK_BYTES // width
    out, buf = _buffer()
    for start in range(0, acc.shape[0], words):
        dst = acc[start:start + words]
        nbytes = dst.shape[0] * width
        data = _ZEROS[:nbytes]
        mask = buf[:nbytes].view(acc.dtype)
        for ctx in plus:
            ctx.update_into(data, out)
            np.add(dst, mask, out=dst)
        for ctx in minus:
            ctx.update_into(data, out)
            np.subtract(dst, mask, out=dst)

"""Fixed-point encoding: clip, stochastic rounding, ring encoding and decoding of sums.

A value x becomes ``floor(clip(x) * 2**f + u)`` with ``u ~ U[0, 1)`` (unbiased rounding) and
is stored in two's complement in Z_{2^32} or Z_{2^64}. A sum of such values is decoded by
reading it back as a signed integer and dividing by ``2**f``. Work is done in small chunks
with reused scratch buffers so an 8M-value vector never allocates an 8M-value temporary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from .errors import InputError
from .layout import VectorLayout
from .params import SecAggParams
from .prg import CHUNK_BYTES, Keystream

__all__ = ["quantize_into", "quantize", "decode_sum"]

_CHUNK = CHUNK_BYTES // 4
_NOISE_UNIT = 2.0**-32
RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]


class _Scratch:
    """Reused per-call buffers, one chunk long."""

    def __init__(self, chunk: int) -> None:
        self.value = np.empty(chunk, np.float64)
        self.noise = np.empty(chunk, np.float64)
        self.flag = np.empty(chunk, np.bool_)


def _clip_scaled(t: npt.NDArray[np.float64], bound: float, flag: npt.NDArray[np.bool_]) -> int:
    """Clip scaled values to ``[-bound, bound]`` in place; return how many were outside."""
    if math.isnan(float(np.add.reduce(t))):
        raise InputError("input contains NaN")
    clipped = int(np.count_nonzero(np.greater(t, bound, out=flag)))
    clipped += int(np.count_nonzero(np.less(t, -bound, out=flag)))
    np.clip(t, -bound, bound, out=t)
    return clipped


def _quantize_chunk(src: npt.NDArray[np.floating], dst: npt.NDArray[np.signedinteger],
                    clip: float, scale: float, noise: Keystream, s: _Scratch) -> int:
    m = src.shape[0]
    t, u = s.value[:m], s.noise[:m]
    # Two cheap reductions decide whether clipping is needed at all; NaN makes the test fail too.
    inside = -clip <= float(np.minimum.reduce(src)) and float(np.maximum.reduce(src)) <= clip
    np.multiply(src, scale, out=t)  # exact: scale is a power of two
    clipped = 0 if inside else _clip_scaled(t, clip * scale, s.flag[:m])
    np.multiply(noise.read(m, np.uint32), _NOISE_UNIT, out=u)
    np.add(t, u, out=t)
    np.floor(t, out=t)
    np.copyto(dst, t, casting="unsafe")
    return clipped


def quantize_into(values: npt.ArrayLike, out: RingArray, *, clip: float, scale: float,
                  noise: Keystream) -> int:
    """Encode ``values`` into the ring array ``out`` (same size); return how many were clipped."""
    src = np.asarray(values)
    if src.dtype.kind != "f":
        src = src.astype(np.float64)
    src = src.reshape(-1)
    if src.shape != out.shape:
        raise InputError(f"{src.shape[0]} values do not fit an output of shape {out.shape}")
    signed: npt.NDArray[np.signedinteger] = out.view(np.int32 if out.dtype == np.uint32 else np.int64)
    scratch = _Scratch(min(_CHUNK, max(src.shape[0], 1)))
    clipped = 0
    for start in range(0, src.shape[0], _CHUNK):
        stop = min(start + _CHUNK, src.shape[0])
        clipped += _quantize_chunk(src[start:stop], signed[start:stop], clip, scale, noise, scratch)
    return clipped


def quantize(vectors: Mapping[str, npt.ArrayLike], layout: VectorLayout, params: SecAggParams,
             *, rounding_seed: bytes | None = None, out: RingArray | None = None) -> tuple[RingArray, int]:
    """Encode named arrays (sorted-name order) into one ring vector; return it and the clip count."""
    layout.check(vectors)
    noise = Keystream(os.urandom(32) if rounding_seed is None else rounding_seed)
    if out is None:
        out = np.empty(layout.size, params.ring_dtype)
    elif out.dtype != params.ring_dtype or out.shape != (layout.size,):
        raise InputError(f"out must be {params.ring_dtype} of shape ({layout.size},)")
    clipped = 0
    for name, _, sl in layout.slices():
        clipped += quantize_into(vectors[name], out[sl], clip=params.clip, scale=params.scale, noise=noise)
    return out, clipped


def decode_sum(ring_sum: RingArray, params: SecAggParams) -> npt.NDArray[np.float64]:
    """Decode a ring sum of at most ``params.max_sites`` values to float64 (two's complement)."""
    if ring_sum.dtype != params.ring_dtype:
        raise InputError(f"ring sum has dtype {ring_sum.dtype}, expected {params.ring_dtype}")
    signed = ring_sum.view(np.int32 if ring_sum.dtype == np.uint32 else np.int64)
    return signed.astype(np.float64) / params.scale

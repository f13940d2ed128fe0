"""Parameters and fixed-point encoding: overflow bounds, round trips, clipping counts, rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquilt.secure_agg import Overflow, SecAggParams, VectorLayout, default_params
from fedquilt.secure_agg.errors import InputError
from fedquilt.secure_agg.quantize import decode_sum, quantize


def _encode(x: np.ndarray, params: SecAggParams, seed: int = 0) -> tuple[np.ndarray, int]:
    return quantize({"x": x}, VectorLayout.flat(x.size), params, rounding_seed=bytes([seed]) * 32)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), clip=st.floats(1e-3, 1e3), ring=st.sampled_from([32, 64]))
def test_n_extreme_values_never_overflow(n: int, clip: float, ring: int) -> None:
    params = default_params(n, clip, ring_bits=ring)
    for sign in (1.0, -1.0):
        q, clipped = _encode(np.full(4, sign * clip), params)
        assert clipped == 0
        total = sum((q.astype(object) for _ in range(n)), start=np.zeros(4, object)) % 2**ring
        decoded = decode_sum(total.astype(params.ring_dtype), params)
        assert np.allclose(decoded, sign * n * clip, rtol=0, atol=n / params.scale)
    assert params.frac_bits is not None
    with pytest.raises(Overflow, match="frac_bits"):
        SecAggParams(threshold=1, clip=clip, max_sites=n, ring_bits=ring, frac_bits=params.frac_bits + 1)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=50), n=st.integers(1, 100))
def test_round_trip_within_one_step_and_clipping_counted(values: list[float], n: int) -> None:
    params = default_params(n, 1.0)
    x = np.array(values)
    q, clipped = _encode(x, params)
    assert clipped == int(np.count_nonzero(np.abs(x) > 1.0))
    assert np.all(np.abs(decode_sum(q, params) - np.clip(x, -1, 1)) < 1 / params.scale)


def test_stochastic_rounding_is_unbiased() -> None:
    params = SecAggParams(threshold=1, clip=1.0, max_sites=1, frac_bits=2)
    x = np.full(200_000, 0.1)  # 0.4 steps: rounds to 0 or 1 step
    q, _ = _encode(x, params)
    decoded = decode_sum(q, params)
    assert set(np.unique(decoded)) == {0.0, 0.25}
    assert abs(decoded.mean() - 0.1) < 0.002


def test_rounding_is_reproducible_from_the_seed() -> None:
    params = default_params(3, 1.0)
    x = np.linspace(-1, 1, 1001)
    assert np.array_equal(_encode(x, params, 1)[0], _encode(x, params, 1)[0])
    assert not np.array_equal(_encode(x, params, 1)[0], _encode(x, params, 2)[0])


def test_float32_input_and_several_named_arrays() -> None:
    params = default_params(4, 2.0)
    arrays = {"b": np.ones((2, 3), np.float32), "a": np.full(5, -0.5, np.float32)}
    layout = VectorLayout.of(arrays)
    assert [name for name, _ in layout.entries] == ["a", "b"] and layout.size == 11
    q, _ = quantize(arrays, layout, params, rounding_seed=bytes(32))
    out = layout.split(decode_sum(q, params))
    assert np.allclose(out["a"], -0.5) and np.allclose(out["b"], 1.0) and out["b"].shape == (2, 3)
    with pytest.raises(InputError, match="shape"):
        quantize({"a": np.ones(5), "b": np.ones(6)}, layout, params)
    with pytest.raises(InputError, match="expected arrays"):
        quantize({"a": np.ones(5)}, layout, params)


def test_nan_is_rejected() -> None:
    with pytest.raises(InputError, match="NaN"):
        _encode(np.array([0.0, math.nan]), default_params(2, 1.0))


def test_default_params_choices() -> None:
    small = default_params(10, 1.0)
    assert (small.threshold, small.degree, small.ring_bits, small.frac_bits) == (6, None, 32, 27)
    big = default_params(1000, 1.0)
    assert big.threshold == 501 and big.degree == 30 and big.share_threshold == 16
    assert default_params(100, 1.0, min_frac_bits=24).ring_bits == 32
    precise = default_params(100, 1.0, min_frac_bits=26)
    assert precise.ring_bits == 64 and precise.frac_bits is not None and precise.frac_bits >= 26
    with pytest.raises(Overflow, match="min_frac_bits"):
        default_params(100, 1e6, min_frac_bits=50)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"threshold": 0}, "threshold"), ({"threshold": 11}, "threshold"), ({"clip": -1.0}, "clip"),
    ({"clip": math.inf}, "clip"), ({"ring_bits": 16}, "ring_bits"), ({"degree": 3}, "degree"),
    ({"degree": 4, "share_threshold": 6}, "share_threshold"), ({"share_threshold": 2}, "share_threshold"),
    ({"frac_bits": -1}, "frac_bits"), ({"max_sites": 0}, "max_sites"),
])
def test_params_name_the_bad_field(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"threshold": 6, "clip": 1.0, "max_sites": 10}
    with pytest.raises(ValueError, match=field):
        SecAggParams(**{**base, **kwargs})  # type: ignore[arg-type]

"""Properties of dyadic requantization (reference semantics; backends are
checked bit-exact against it in test_kernels_exact.py)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intengine.kernels.errors import KernelInputError
from intengine.kernels.requant import (
    MAX_SHIFT,
    quantize_multiplier,
    quantize_multipliers,
    requantize_ref,
    rescale_add_ref,
)
from strategies import int_arrays, multipliers


@given(multipliers(2**-31, 2**29.9))
def test_multiplier_is_normalized_and_accurate(real):
    m, s = quantize_multiplier(real)
    assert 2**30 <= m < 2**31 and 1 <= s <= MAX_SHIFT
    assert abs(Fraction(m, 2**s) - Fraction(real)) <= Fraction(real) * Fraction(1, 2**31)


def test_multiplier_edge_cases():
    # a mantissa that rounds up to 2^31 must not overflow int32
    m, s = quantize_multiplier(1.0 - 2.0**-40)
    assert (m, s) == (2**30, 30)
    assert quantize_multiplier(0.0) == (0, 1)
    m, s = quantize_multiplier(-0.75)
    assert m == -(3 * 2**29) and s == 31
    m, s = quantize_multiplier(2.0**-70)  # tiny: mantissa bits are dropped, shift capped
    assert s == MAX_SHIFT and 0 <= m < 2**31
    for bad in (2.0**30, float("inf"), float("nan")):
        with pytest.raises(KernelInputError):
            quantize_multiplier(bad)


def _exact(x, m, s):
    """floor((x*m + 2^(s-1)) / 2^s) with Python integers."""
    return (int(x) * int(m) + (1 << (s - 1))) >> s


@given(
    st.integers(-(2**32) + 1, 2**32 - 1),
    st.integers(-(2**31) + 1, 2**31 - 1),
    st.integers(1, MAX_SHIFT),
)
def test_rounding_rule_and_no_overflow_over_full_range(x, m, s):
    got = requantize_ref(np.array([x], dtype=np.int64), m, s, out_bits=32)
    want = max(-(2**31 - 1), min(2**31 - 1, _exact(x, m, s)))
    assert int(got[0]) == want


@given(int_arrays(np.int32, (64,)), multipliers(2**-30, 2**4), st.sampled_from([8, 16, 22, 32]))
def test_error_within_half_a_step(x, real, bits):
    m, s = quantize_multiplier(real)
    y = requantize_ref(x, m, s, bits).astype(np.int64)
    q = 2 ** (bits - 1) - 1
    for xi, yi in zip(x.tolist(), y.tolist()):
        exact = Fraction(xi) * Fraction(m, 2**s)
        if -q <= exact <= q:
            # half-up rounding: within half a step, ties go up
            assert -Fraction(1, 2) < yi - exact <= Fraction(1, 2)
            # and vs the true real multiplier, within half a step plus the mantissa error
            assert abs(yi - Fraction(xi) * Fraction(real)) <= Fraction(1, 2) + abs(xi) * Fraction(real) * Fraction(1, 2**31)
        else:
            assert yi == (q if exact > 0 else -q)


@given(int_arrays(np.int32, (200,)), multipliers(2**-20, 2**2))
def test_monotone_and_symmetric_range(x, real):
    m, s = quantize_multiplier(real)
    xs = np.sort(x)
    y = requantize_ref(xs, m, s, 8)
    assert y.dtype == np.int8
    assert np.all(np.diff(y.astype(np.int64)) >= 0)
    assert y.min() >= -127 and y.max() <= 127  # -128 never produced


def test_per_channel_and_negative_multiplier():
    x = np.array([[100, 100, 100]], dtype=np.int32)
    m, s = quantize_multipliers([0.5, -0.25, 1.0])
    assert requantize_ref(x, m, s, 8).tolist() == [[50, -25, 100]]
    # ties round up (towards +inf) for both signs
    assert requantize_ref(np.array([3, -3, 5, -5], np.int32), *quantize_multiplier(0.5), 8).tolist() == [2, -1, 3, -2]


def test_rescale_add_is_sum_of_rounded_branches():
    a = np.array([10, -7, 127], dtype=np.int8)
    b = np.array([300, 301, -5000], dtype=np.int32)
    ma, sa = quantize_multiplier(0.5)
    mb, sb = quantize_multiplier(0.25)
    want = [math.floor(10 * 0.5 + 0.5) + math.floor(300 * 0.25 + 0.5), -3 + 75, 64 - 1250]
    got = rescale_add_ref(a, ma, sa, b, mb, sb, out_bits=16)
    assert got.dtype == np.int16 and got.tolist() == want
    assert rescale_add_ref(a, ma, sa, b, mb, sb, out_bits=8).tolist() == [80, 72, -127]


def test_bad_arguments_are_named():
    x = np.zeros(4, np.int32)
    with pytest.raises(KernelInputError, match="out_bits"):
        requantize_ref(x, 2**30, 31, out_bits=40)
    with pytest.raises(KernelInputError, match=r"shift must lie in \[1, 62\], got 0$"):
        requantize_ref(x, 2**30, 0)
    with pytest.raises(KernelInputError, match=r"got 70 at channel 2$"):  # the first bad channel, by value
        requantize_ref(x, 2**30, np.array([5, 6, 70, 80], np.int32))
    with pytest.raises(KernelInputError, match=r"\|m_i32\| < 2\^31, got -2147483648 at channel 1$"):
        requantize_ref(x, np.array([1, -(2**31), 1, 1], np.int64), 31)
    with pytest.raises(KernelInputError, match="m_i32"):
        requantize_ref(x, np.array([1, 2], np.int32), 31)
    with pytest.raises(KernelInputError, match="dtype"):
        requantize_ref(x.astype(np.float32), 2**30, 31)
    with pytest.raises(KernelInputError, match="same shape"):
        rescale_add_ref(x, 2**30, 31, np.zeros(3, np.int32), 2**30, 31)

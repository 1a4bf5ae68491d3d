"""Symmetric quantize / dequantize semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intengine.kernels.errors import KernelInputError
from intengine.kernels.quant import dequantize_ref, quantize_ref, symmetric_scale
from strategies import scales


@given(st.integers(0, 2**32 - 1), scales())
def test_roundtrip_error_is_half_a_step_inside_range(seed, s):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-127, 127, 500) * s).astype(np.float32)
    q = quantize_ref(x, np.float32(s))
    assert q.dtype == np.int8
    err = np.abs(dequantize_ref(q, np.float32(s)).astype(np.float64) - x)
    assert np.all(err <= 0.5 * s * (1 + 1e-6) + 1e-12)


def test_range_is_symmetric_and_saturates():
    x = np.array([-1e6, -127.5, 126.5, 127.49, 1e6], np.float32)
    assert quantize_ref(x, np.float32(1.0)).tolist() == [-127, -127, 126, 127, 127]  # -128 never appears


def test_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32)
    assert quantize_ref(x, np.float32(1.0)).tolist() == [0, 2, 2, 0, -2]


def test_per_channel_weights_axis0():
    w = np.array([[1.2, -2.0], [30.0, 16.0]], np.float32)
    s = symmetric_scale(np.abs(w).max(axis=1))
    q = quantize_ref(w, s, axis=0)
    assert q.tolist() == [[76, -127], [127, 68]]
    np.testing.assert_allclose(dequantize_ref(q, s, axis=0), w, atol=s.max() / 2)


def test_bad_input():
    with pytest.raises(KernelInputError, match="float32"):
        quantize_ref(np.zeros(3, np.float64), 1.0)
    with pytest.raises(KernelInputError, match="NaN"):
        quantize_ref(np.array([np.nan], np.float32), 1.0)
    with pytest.raises(KernelInputError, match="scale"):
        quantize_ref(np.zeros(3, np.float32), 0.0)
    with pytest.raises(KernelInputError, match="length 3"):
        quantize_ref(np.zeros((2, 3), np.float32), np.ones(2, np.float32), axis=-1)

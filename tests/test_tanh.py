"""i-tanh: accuracy against float tanh, saturation, exact odd symmetry, overflow, argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from intengine.kernels import softmax as sm
from intengine.kernels.errors import KernelInputError
from intengine.kernels.softmax import SCALE_MAX, SCALE_MIN
from intengine.kernels.tanh import tanh_cpu, tanh_params, tanh_ref

LN2 = math.log(2.0)
I64 = 1 << 63
APPROX_BOUND = 1.71e-3  # claimed: |y/Q - tanh(x·S)| ≤ 0.5/Q + 1.71e-3
SCALES = [SCALE_MIN, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3, 1.0, 4.0, SCALE_MAX]


def tanh_py(x: int, m: int, shift: int, q: int) -> int:
    """i-tanh in unbounded Python ints, asserting every intermediate fits int64."""
    a = abs(x)
    t = (a * m) >> shift
    z, f = t >> sm.T_FRAC_BITS, t & sm.T_FRAC_MASK
    g = ((sm.ALPHA_I64 * f) >> sm.T_FRAC_BITS) - sm.BETA_I64
    big_l = max(sm.EXP_ONE + ((g * f) >> sm.POLY_SHIFT), sm.EXP_HALF)
    e = big_l >> min(z, sm.Z_ZERO)
    den = sm.EXP_ONE + e
    num = 2 * q * (sm.EXP_ONE - e) + den
    for v in (a * m, t, sm.ALPHA_I64 * f, g * f, num, 2 * den):
        assert -I64 <= v < I64
    y = num // (2 * den)
    return -y if x < 0 else y


def _grid(s):
    top = int(min(2**31 - 1, math.ceil(12.0 / s)))  # tanh saturates (to 1 - 1e-10) well before 12
    dense = np.arange(0, min(top, 600_000) + 1, dtype=np.int64)
    spread = np.linspace(0, top, 50_001).astype(np.int64)
    pos = np.unique(np.concatenate([dense, spread, [2**31 - 1]]))
    return np.concatenate([-pos[::-1], pos[1:]]).astype(np.int32)


@pytest.mark.parametrize("s", SCALES)
def test_tanh_dense_grid_8bit(s):
    p = tanh_params(s, 8)
    x = _grid(s)
    y = tanh_ref(x, **p.kernel_args)
    assert y.dtype == np.int8 and p.out_scale == 1 / 127
    np.testing.assert_array_equal(tanh_cpu(x, **p.kernel_args), y)
    err = np.abs(y / 127.0 - np.tanh(x.astype(np.float64) * s))
    assert err.max() <= 0.5 / 127 + APPROX_BOUND, err.max() * 127
    assert err.max() * 127 <= 0.72  # < 1 output step
    # saturation and odd symmetry, bit for bit
    assert y[0] == -127 and y[-1] == 127 and y[len(y) // 2] == 0
    np.testing.assert_array_equal(y[::-1], -y)
    assert np.all(np.diff(y.astype(np.int64)) >= 0)  # monotone


@pytest.mark.parametrize("bits", [4, 12, 16, 24, 32])
@pytest.mark.parametrize("s", [1e-4, 0.01, 0.3])
def test_tanh_wider_outputs(bits, s):
    p = tanh_params(s, bits)
    q = 2 ** (bits - 1) - 1
    assert p.out_bits == bits and p.out_scale == 1 / q
    x = _grid(s)[::7]
    y = tanh_ref(x, **p.kernel_args)
    assert y.dtype == {4: np.int8, 12: np.int16, 16: np.int16, 24: np.int32, 32: np.int32}[bits]
    np.testing.assert_array_equal(tanh_cpu(x, **p.kernel_args), y)
    err = np.abs(y.astype(np.float64) / q - np.tanh(x.astype(np.float64) * s))
    assert err.max() <= 0.5 / q + APPROX_BOUND
    assert np.abs(y).max() <= q
    np.testing.assert_array_equal(tanh_ref(-x[x > -(2**31)], **p.kernel_args), -y[x > -(2**31)])


def test_tanh_random_inputs_all_dtypes():
    rng = np.random.default_rng(9)
    for dtype, s in [(np.int8, 0.03), (np.int8, 1.0), (np.int16, 3e-4), (np.int32, 2e-6)]:
        info = np.iinfo(dtype)
        x = rng.integers(-info.max, info.max, 20_000, endpoint=True).astype(dtype)
        p = tanh_params(s)
        y = tanh_ref(x, **p.kernel_args)
        np.testing.assert_array_equal(tanh_cpu(x, **p.kernel_args), y)
        err = np.abs(y / 127.0 - np.tanh(x.astype(np.float64) * s))
        assert err.max() <= 0.5 / 127 + APPROX_BOUND


@pytest.mark.parametrize(
    "m,shift,bits",
    [(2**31 - 1, 1, 32), (2**31 - 1, 62, 32), (1, 1, 8)]
    + [(tanh_params(s, b).m_i32, tanh_params(s, b).shift, b) for s in (SCALE_MIN, SCALE_MAX) for b in (8, 32)],
)
def test_tanh_extremes_match_python_ints(m, shift, bits):
    q = 2 ** (bits - 1) - 1
    x = np.array([0, 1, -1, 2**31 - 1, -(2**31) + 1, -(2**31), 12345, -98765432], np.int32)
    want = [tanh_py(int(v), m, shift, q) for v in x]
    np.testing.assert_array_equal(tanh_ref(x, m, shift, bits), want)
    np.testing.assert_array_equal(tanh_cpu(x, m, shift, bits), want)


def test_tanh_int32_min_saturates():
    p = tanh_params(1e-3)
    x = np.array([-(2**31), 2**31 - 1], np.int32)
    np.testing.assert_array_equal(tanh_ref(x, **p.kernel_args), [-127, 127])


def test_tanh_shapes():
    p = tanh_params(0.05)
    for shape in [(), (0,), (1,), (3, 0, 2), (2, 3, 5)]:
        x = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape) - 7
        y = tanh_cpu(x, **p.kernel_args)
        assert y.shape == shape and y.dtype == np.int8
        np.testing.assert_array_equal(y, tanh_ref(x, **p.kernel_args))
    xt = np.arange(-50, 50, dtype=np.int32).reshape(10, 10).T  # non-contiguous input
    np.testing.assert_array_equal(tanh_cpu(xt, **p.kernel_args), tanh_ref(xt, **p.kernel_args))


@pytest.mark.parametrize("fn", [tanh_ref, tanh_cpu])
def test_tanh_bad_input(fn):
    p = tanh_params(0.1)
    with pytest.raises(KernelInputError, match=r"\bx\b"):
        fn(np.zeros(3, np.float32), p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match=r"\bx\b"):
        fn([1, 2, 3], p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match="m_i32"):
        fn(np.zeros(3, np.int8), 2**31, p.shift)
    with pytest.raises(KernelInputError, match="shift"):
        fn(np.zeros(3, np.int8), p.m_i32, 0)
    with pytest.raises(KernelInputError, match="out_bits"):
        fn(np.zeros(3, np.int8), p.m_i32, p.shift, 33)
    with pytest.raises(KernelInputError, match="out_bits"):
        fn(np.zeros(3, np.int8), p.m_i32, p.shift, 1)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), SCALE_MAX * 4, SCALE_MIN / 4])
def test_tanh_params_reject_bad_scale(bad):
    with pytest.raises(KernelInputError, match="scale_in"):
        tanh_params(bad)


def test_tanh_params_reject_bad_bits():
    with pytest.raises(KernelInputError, match="out_bits"):
        tanh_params(0.1, out_bits=40)


def test_tanh_params_multiplier():
    for s in SCALES:
        p = tanh_params(s)
        assert type(p.m_i32) is int and type(p.shift) is int and 2**30 <= p.m_i32 < 2**31
        assert p.m_i32 * 2.0**-p.shift == pytest.approx(2 * s / LN2 * 2**20, rel=2**-30)


@pytest.mark.cuda
def test_tanh_cuda_device_array():
    from intengine.kernels import registry

    if not registry.load_cuda():
        pytest.skip(registry.cuda_unavailable_reason())
    from numba import cuda

    p = tanh_params(0.02, 16)
    x = np.array([[-(2**31), -5, 0, 3], [2**31 - 1, 100, -100, 1]], np.int32)
    got = registry.get_kernel("tanh", "cuda")(cuda.to_device(x), **p.kernel_args)
    assert hasattr(got, "copy_to_host")  # stays a device array
    np.testing.assert_array_equal(got.copy_to_host(), tanh_ref(x, **p.kernel_args))

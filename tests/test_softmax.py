"""i-exp and i-softmax: accuracy against float, mask semantics, overflow, argument checks.

Bit-exactness of every backend on drawn cases lives in test_kernels_exact.py
(cases: cases_softmax.py); here the cpu kernel is also checked on a
realistic attention shape.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intengine.kernels import softmax as sm
from intengine.kernels.errors import KernelInputError
from intengine.kernels.softmax import (
    SCALE_MAX,
    SCALE_MIN,
    exp_cpu,
    exp_params,
    exp_ref,
    softmax_cpu,
    softmax_params,
    softmax_ref,
)
from strategies import int_arrays, key_masks, log_uniform

LN2 = math.log(2.0)
EXP_BOUND = 1.92e-3  # claimed: |e·2^-30 - exp(x·S)| ≤ 1.92e-3·2^-z + 2^-29
SOFTMAX_BOUND = 3.35e-3  # claimed per probability, < 1/255
I64 = 1 << 63
SCALES = [SCALE_MIN, 1e-5, 1e-4, 1e-3, 3e-3, 0.01, 0.1, 0.3, 1.0, 5.0, SCALE_MAX]


# ----------------------------------------------------------------------------- exact Python-int model


def exp_py(u: int, m: int, shift: int) -> int:
    """The i-exp core in unbounded Python ints, asserting every intermediate fits int64."""
    vals = []
    t = (u * m) >> shift
    vals += [u * m, t]
    z, f = t >> sm.T_FRAC_BITS, t & sm.T_FRAC_MASK
    a = sm.ALPHA_I64 * f
    g = (a >> sm.T_FRAC_BITS) - sm.BETA_I64
    gf = g * f
    vals += [a, g, gf]
    big_l = max(sm.EXP_ONE + (gf >> sm.POLY_SHIFT), sm.EXP_HALF)
    vals.append(big_l)
    assert all(-I64 <= v < I64 for v in vals), vals
    return big_l >> min(z, sm.Z_ZERO)


def softmax_py(row, keep, m, shift):
    kept = [int(v) for v, k in zip(row, keep) if k]
    if not kept:
        return [0] * len(row)
    mx = max(kept)
    e = [exp_py(mx - int(v), m, shift) if k else 0 for v, k in zip(row, keep)]
    total = sum(e)
    num = 255 << sm.SOFTMAX_NORM_BITS
    assert total < I64 and num < I64
    factor = num // total
    out = []
    for ej in e:
        prod = ej * factor + (1 << (sm.SOFTMAX_NORM_BITS - 1))
        assert prod < I64
        out.append(prod >> sm.SOFTMAX_NORM_BITS)
    return out


def float_softmax(x, s, keep):
    z = np.where(keep, x.astype(np.float64) * s, -np.inf)
    mx = z.max(axis=-1, keepdims=True)
    e = np.where(keep, np.exp(z - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
    tot = e.sum(axis=-1, keepdims=True)
    return np.divide(e, tot, out=np.zeros_like(e), where=tot > 0)


# ----------------------------------------------------------------------------- constants and params


def test_polynomial_constants_rederive():
    a, b = sm.POLY_A, sm.POLY_B
    assert sm.ALPHA_I64 == round(a * LN2**2 * 2**31)
    assert sm.BETA_I64 == round(b * LN2 * 2**31)
    assert sm.POLY_SHIFT == 21 and sm.EXP_ONE == 2**30


@pytest.mark.parametrize("s", SCALES)
def test_params_are_integers(s):
    p = exp_params(s)
    assert type(p.m_i32) is int and type(p.shift) is int
    assert 2**30 <= p.m_i32 < 2**31 and 1 <= p.shift <= 62
    assert p.m_i32 * 2.0**-p.shift == pytest.approx(s / LN2 * 2**20, rel=2**-30)
    assert p.out_scale == 2.0**-30
    q = softmax_params(s)
    assert (q.m_i32, q.shift) == (p.m_i32, p.shift) and q.out_scale == 1 / 255
    assert q.kernel_args == {"m_i32": q.m_i32, "shift": q.shift}


# ----------------------------------------------------------------------------- i-exp accuracy


@pytest.mark.parametrize("s", SCALES)
def test_exp_dense_grid(s):
    p = exp_params(s)
    top = int(min(2**31, math.ceil(40.0 / s)))  # covers exp(x·S) down to e^-40, or the whole int32 range
    dense = np.arange(0, min(top, 1_500_000) + 1, dtype=np.int64)
    spread = np.linspace(0, top, 100_001).astype(np.int64)
    x = -np.unique(np.concatenate([dense, spread]))
    x = x.astype(np.int32) if x.min() >= -(2**31) else np.maximum(x, -(2**31)).astype(np.int32)
    y = exp_ref(x, p.m_i32, p.shift)
    assert y.dtype == np.int32 and y.min() >= 0 and y.max() <= 2**30
    np.testing.assert_array_equal(exp_cpu(x, p.m_i32, p.shift), y)
    xr = x.astype(np.float64) * s
    err = np.abs(y * 2.0**-30 - np.exp(xr))
    z = np.floor(-xr / LN2)
    assert np.all(err <= EXP_BOUND * 2.0**-z + 2.0**-29), err.max()
    first = xr > -LN2  # the (-ln2, 0] octave: absolute error relative to 1.0
    if first.sum() > 1:
        assert err[first].max() <= 2e-3
    # e is non-increasing in |x| (the L >= 2^29 floor holds across octaves)
    assert np.all(np.diff(y.astype(np.int64)) <= 0)


def test_exp_first_octave_error_matches_polynomial():
    s = 1e-5  # 69315 grid points in (-ln2, 0]
    p = exp_params(s)
    x = -np.arange(0, int(LN2 / s) + 1, dtype=np.int32)
    err = np.abs(exp_ref(x, p.m_i32, p.shift) * 2.0**-30 - np.exp(x * s))
    assert 1.90e-3 < err.max() <= 1.92e-3  # I-BERT's polynomial: 1.913e-3


def test_exp_positive_inputs_saturate_at_one():
    p = exp_params(0.01)
    x = np.array([0, 1, 100, 2**31 - 1], np.int32)
    np.testing.assert_array_equal(exp_ref(x, p.m_i32, p.shift), [2**30] * 4)
    np.testing.assert_array_equal(exp_cpu(x, p.m_i32, p.shift), [2**30] * 4)


@pytest.mark.parametrize("m,shift", [(2**31 - 1, 1), (2**31 - 1, 62), (1, 1), (2**30, 20)])
def test_exp_extremes_match_python_ints(m, shift):
    x = np.array([0, -1, -2, -(2**20) - 1, -(2**31) + 1, -(2**31), -123456789], np.int32)
    want = [exp_py(-int(v), m, shift) for v in x]
    np.testing.assert_array_equal(exp_ref(x, m, shift), want)
    np.testing.assert_array_equal(exp_cpu(x, m, shift), want)


@pytest.mark.parametrize("s", [SCALE_MIN, SCALE_MAX, 1e-3])
def test_exp_params_extremes_match_python_ints(s):
    p = exp_params(s)
    rng = np.random.default_rng(3)
    x = np.concatenate([[0, -1, -(2**31), -(2**31) + 1], -rng.integers(0, 2**31, 200)]).astype(np.int32)
    want = [exp_py(-int(v), p.m_i32, p.shift) for v in x]
    np.testing.assert_array_equal(exp_ref(x, p.m_i32, p.shift), want)


# ----------------------------------------------------------------------------- i-softmax accuracy


@pytest.mark.parametrize("s", [1e-4, 1e-3, 0.01, 0.05, 0.2, 1.0])
def test_softmax_random_rows_vs_float(s):
    rng = np.random.default_rng(int(s * 1e6))
    p = softmax_params(s)
    worst = 0.0
    for n in (1, 2, 3, 17, 128, 300):
        sigma = rng.choice([0.3, 1.0, 3.0, 8.0], size=(400, 1))
        x = np.clip(np.rint(rng.standard_normal((400, n)) * sigma / s), -(2**31 - 1), 2**31 - 1).astype(np.int32)
        keep = rng.random((400, n)) < 0.85
        y = softmax_ref(x, keep, p.m_i32, p.shift)
        np.testing.assert_array_equal(softmax_cpu(x, keep, p.m_i32, p.shift), y)
        ref = float_softmax(x, s, keep)
        worst = max(worst, float(np.abs(y / 255.0 - ref).max()))
        # row sums: each kept key rounds by at most half a step
        k = ((ref > 0) & keep).sum(axis=-1)
        dev = np.abs(y.sum(axis=-1, dtype=np.int64) - np.where(keep.any(-1), 255, 0))
        assert np.all(dev <= np.ceil(0.5 * k)), dev.max()
    assert worst <= SOFTMAX_BOUND, worst


def test_softmax_row_sum_statistics():
    """Row sums deviate from 255 exactly as much as float softmax rounded to 1/255 does.

    The deviation is a property of the uint8 format (many tail keys round to 0:
    rows of 128 keys with x·S ~ N(0, 2²) lose 7.6 steps on average); i-exp adds
    at most a few steps to it.
    """
    s = 0.01
    p = softmax_params(s)
    rng = np.random.default_rng(7)
    for sigma in (0.5, 2.0, 8.0):
        x = np.rint(rng.standard_normal((1000, 128)) * sigma / s).astype(np.int32)
        y = softmax_ref(x, None, p.m_i32, p.shift).astype(np.int64)
        dev = y.sum(axis=-1) - 255
        exact = np.rint(float_softmax(x, s, np.ones(x.shape, bool)) * 255).sum(axis=-1) - 255
        assert np.abs(dev - exact).max() <= 6
        assert abs(dev.mean() - exact.mean()) <= 0.25
        assert np.abs(dev).max() <= 64  # hard bound k/2 for k = 128 keys


def test_softmax_one_hot_and_uniform():
    p = softmax_params(0.1)
    x = np.array([[0, 0, 0, 127], [5, 5, 5, 5], [7, 0, 0, 0]], np.int8)
    y = softmax_ref(x, None, p.m_i32, p.shift)
    np.testing.assert_array_equal(y[0], [0, 0, 0, 255])  # 1.0 is representable exactly
    np.testing.assert_array_equal(y[1], [64, 64, 64, 64])  # round(255/4 = 63.75)
    assert y.dtype == np.uint8


def test_softmax_extreme_rows_match_python_ints():
    rng = np.random.default_rng(11)
    lo, hi = -(2**31), 2**31 - 1
    rows = [
        np.array([lo, hi, 0, hi, lo + 1], np.int64),
        np.array([lo] * 5, np.int64),
        np.array([hi, hi - 1, hi - 2, hi - 1000, lo], np.int64),
        rng.integers(lo, hi, 5, endpoint=True),
    ]
    x = np.stack(rows).astype(np.int32)
    keep = np.ones(x.shape, bool)
    keep[3, 0] = False
    for m, shift in [(2**31 - 1, 1), (1, 62)] + [(lambda q: (q.m_i32, q.shift))(softmax_params(s)) for s in (SCALE_MIN, SCALE_MAX, 1e-5)]:
        want = np.array([softmax_py(r, k, m, shift) for r, k in zip(x, keep)])
        np.testing.assert_array_equal(softmax_ref(x, keep, m, shift), want)
        np.testing.assert_array_equal(softmax_cpu(x, keep, m, shift), want)


def test_softmax_long_row_sum_bound():
    """A long row of equal scores: the int64 sum reaches n·2^30 without overflow."""
    n = 1 << 20
    x = np.zeros((1, n), np.int16)
    p = softmax_params(1.0)
    y = softmax_cpu(x, None, p.m_i32, p.shift)
    np.testing.assert_array_equal(y, softmax_ref(x, None, p.m_i32, p.shift))
    assert y.max() == 0  # 255/2^20 rounds to 0 — the documented 1/255 resolution


# ----------------------------------------------------------------------------- mask semantics


def _pair(x, mask, p):
    y = softmax_ref(x, mask, p.m_i32, p.shift)
    np.testing.assert_array_equal(softmax_cpu(x, mask, p.m_i32, p.shift), y)
    return y


def test_mask_semantics():
    rng = np.random.default_rng(5)
    p = softmax_params(0.02)
    x = rng.integers(-500, 500, (2, 3, 4, 9)).astype(np.int32)
    mask = rng.random((2, 1, 1, 9)) < 0.6
    mask[1, 0, 0, :] = False  # batch 1 fully masked
    mask[0, 0, 0, 0] = True
    y = _pair(x, mask, p)
    full = np.broadcast_to(mask, x.shape)
    assert np.all(y[~full] == 0), "masked keys must be exactly 0"
    assert np.all(y[1] == 0), "a fully masked row is all zeros"
    # masked scores do not matter, even at the int32 extremes
    x2 = np.where(full, x, rng.choice([-(2**31), 2**31 - 1], x.shape)).astype(np.int32)
    np.testing.assert_array_equal(_pair(x2, mask, p), y)
    # broadcast mask == materialised mask == uint8 mask with any nonzero value
    np.testing.assert_array_equal(_pair(x, np.ascontiguousarray(full), p), y)
    np.testing.assert_array_equal(_pair(x, mask.astype(np.uint8) * np.uint8(3), p), y)
    np.testing.assert_array_equal(_pair(x, mask[0], p)[0], _pair(x[:1], mask[:1], p)[0])
    # kept keys match an unmasked softmax over just those keys
    sub = x[0, 0, 0][mask[0, 0, 0]]
    np.testing.assert_array_equal(y[0, 0, 0][mask[0, 0, 0]], _pair(sub, None, p))
    # all-ones mask == no mask; keys-axis-broadcast mask masks whole rows
    np.testing.assert_array_equal(_pair(x, np.ones((9,), bool), p), _pair(x, None, p))
    rowmask = np.zeros((2, 3, 4, 1), bool)
    rowmask[0, 1] = True
    yr = _pair(x, rowmask, p)
    assert np.all(yr[0, 1] == _pair(x, None, p)[0, 1]) and yr.sum() == yr[0, 1].sum()


def test_empty_and_tiny_shapes():
    p = softmax_params(0.1)
    for shape in [(0,), (3, 0), (0, 5), (1,), (1, 1)]:
        x = np.zeros(shape, np.int32)
        y = _pair(x, None, p)
        assert y.shape == shape and y.dtype == np.uint8
    assert _pair(np.array([-7], np.int8), None, p).tolist() == [255]
    e = exp_ref(np.int32(-3), *exp_params(0.1).kernel_args.values())
    assert e.shape == () and e.dtype == np.int32


# ----------------------------------------------------------------------------- realistic shape


def test_cpu_bit_exact_attention_shape():
    rng = np.random.default_rng(2024)
    s = 0.004
    p = softmax_params(s)
    x = rng.integers(-3000, 3000, (8, 12, 128, 128)).astype(np.int32)
    mask = np.ones((8, 1, 1, 128), bool)
    for b in range(8):
        mask[b, 0, 0, 64 + 8 * b:] = False  # padded sequences
    y = softmax_cpu(x, mask, p.m_i32, p.shift)
    np.testing.assert_array_equal(y, softmax_ref(x, mask, p.m_i32, p.shift))
    np.testing.assert_array_equal(softmax_cpu(x, None, p.m_i32, p.shift), softmax_ref(x, None, p.m_i32, p.shift))
    sel = (slice(0, 2),)
    ref = float_softmax(x[sel], s, np.broadcast_to(mask[sel], x[sel].shape))
    assert np.abs(y[sel] / 255.0 - ref).max() <= SOFTMAX_BOUND


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [softmax_ref, softmax_cpu])
def test_softmax_bad_input(fn):
    p = softmax_params(0.1)
    x = np.zeros((2, 4), np.int32)
    with pytest.raises(KernelInputError, match=r"\bx\b"):
        fn(x.astype(np.float32), None, p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match=r"\bx\b"):
        fn(x.astype(np.int64), None, p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match=r"\bx\b"):
        fn(np.int32(3), None, p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match="mask"):
        fn(x, np.ones((3,), bool), p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match="mask"):
        fn(x, np.ones((2, 4), np.float32), p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match="mask"):
        fn(x, np.ones((1, 2, 4), bool), p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match="mask"):
        fn(x, [[1, 1, 1, 1]], p.m_i32, p.shift)
    with pytest.raises(KernelInputError, match="m_i32"):
        fn(x, None, 2**31, p.shift)
    with pytest.raises(KernelInputError, match="m_i32"):
        fn(x, None, 0, p.shift)
    with pytest.raises(KernelInputError, match="m_i32"):
        fn(x, None, 1.5, p.shift)
    with pytest.raises(KernelInputError, match="shift"):
        fn(x, None, p.m_i32, 63)
    with pytest.raises(KernelInputError, match="shift"):
        fn(x, None, p.m_i32, 0)


@pytest.mark.parametrize("fn", [exp_ref, exp_cpu])
def test_exp_bad_input(fn):
    with pytest.raises(KernelInputError, match=r"\bx\b"):
        fn(np.zeros(3, np.float64), 2**30, 10)
    with pytest.raises(KernelInputError, match=r"\bx\b"):
        fn(np.zeros(3, np.uint8), 2**30, 10)
    with pytest.raises(KernelInputError, match="m_i32"):
        fn(np.zeros(3, np.int32), -5, 10)
    with pytest.raises(KernelInputError, match="shift"):
        fn(np.zeros(3, np.int32), 2**30, np.int64(99))


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), SCALE_MIN / 2, SCALE_MAX * 2])
def test_params_reject_bad_scales(bad):
    with pytest.raises(KernelInputError, match="scale_in"):
        exp_params(bad)
    with pytest.raises(KernelInputError, match="scale_in"):
        softmax_params(bad)


# ----------------------------------------------------------------------------- cuda (simulator without a GPU)


@pytest.mark.cuda
def test_cuda_device_arrays_stay_on_device():
    from intengine.kernels import registry

    if not registry.load_cuda():
        pytest.skip(registry.cuda_unavailable_reason())
    from numba import cuda

    rng = np.random.default_rng(1)
    p = softmax_params(0.05)
    x = rng.integers(-200, 200, (2, 3, 6)).astype(np.int16)
    mask = rng.random((2, 1, 6)) < 0.7
    mask[1] = False
    want = softmax_ref(x, mask, p.m_i32, p.shift)
    got = registry.get_kernel("softmax", "cuda")(cuda.to_device(x), cuda.to_device(mask), p.m_i32, p.shift)
    assert hasattr(got, "copy_to_host")  # stays a device array
    np.testing.assert_array_equal(got.copy_to_host(), want)
    host = registry.get_kernel("softmax", "cuda")(x, mask, p.m_i32, p.shift)
    assert isinstance(host, np.ndarray) and host.dtype == np.uint8
    np.testing.assert_array_equal(host, want)
    xe = -np.abs(x).astype(np.int32)
    e = registry.get_kernel("exp", "cuda")(cuda.to_device(xe), p.m_i32, p.shift)
    np.testing.assert_array_equal(e.copy_to_host(), exp_ref(xe, p.m_i32, p.shift))


# ----------------------------------------------------------------------------- cpu row kernels: paths and buffers


@st.composite
def softmax_inputs(draw):
    dtype = draw(st.sampled_from([np.int8, np.int16, np.int32]))
    lead = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=3)))
    n = draw(st.sampled_from([1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 100, 129]))
    shape = lead + (n,)
    wide = draw(st.booleans())
    lo, hi = (None, None) if wide else (-3000 if dtype != np.int8 else -100, 3000 if dtype != np.int8 else 100)
    x = draw(int_arrays(dtype, shape, lo, hi))
    return x, draw(key_masks(shape)), draw(log_uniform(SCALE_MIN, SCALE_MAX))


@given(softmax_inputs())
def test_cpu_equals_ref_property(case):
    """Every cpu path (dense / masked rows, pairs and single rows, trimmed masked tails, odd lengths,
    int8/16/32 with extremes, any supported scale) is bit-exact with the reference."""
    x, mask, s = case
    p = softmax_params(s)
    np.testing.assert_array_equal(softmax_cpu(x, mask, p.m_i32, p.shift), softmax_ref(x, mask, p.m_i32, p.shift))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_cpu_int16_masked_rows_extremes(dtype):
    """int16 scores (the model's) and int8/int32 with the dtype extremes, fully masked rows,
    masks that end anywhere (rows stop at the last kept key), one row per mask row (single-row path)."""
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    p = softmax_params(6e-4)
    for n in (1, 5, 16, 17, 100, 128, 131):
        x = rng.integers(info.min, info.max, (3, 5, n), endpoint=True).astype(dtype)
        x[0, 0] = info.min
        x[0, 1] = info.max
        x[0, 2, ::2] = info.min
        x[0, 2, 1::2] = info.max
        cut = rng.integers(0, n + 1, (3, 5, 1))
        cut[1] = 0  # fully masked rows
        masks = [None, np.arange(n) < cut, (np.arange(n) < cut) & (rng.random((3, 5, n)) < 0.8),
                 (np.arange(n) < cut[:, :1]), np.zeros(n, bool), rng.random((1, 5, n)) < 0.5]
        for mask in masks:
            y = _pair(x, mask, p)
            if mask is not None:
                assert np.all(y[~np.broadcast_to(mask, x.shape)] == 0)
    odd = rng.integers(-3000, 3000, (7, 33)).astype(dtype if dtype != np.int8 else np.int16)
    _pair(odd, None, p)  # an odd number of rows: the last one runs alone


def test_mask_layout_matches_the_broadcast_mask():
    rng = np.random.default_rng(3)
    x_shape = (2, 3, 4, 9)
    for mshape in [(2, 1, 1, 9), (1, 1, 1, 9), (9,), (4, 9), (1, 3, 1, 9), (2, 3, 4, 9), (2, 1, 4, 1), (3, 1, 9)]:
        mask = rng.random(mshape) < 0.5
        mask2, inner, row_idx = sm.mask_layout(mask, x_shape)
        got_idx = row_idx if row_idx is not None else np.arange(24) // inner
        np.testing.assert_array_equal(mask2[got_idx] != 0, np.broadcast_to(mask, x_shape).reshape(24, 9))
    mask2, inner, row_idx = sm.mask_layout(None, x_shape)
    assert row_idx is None and inner == 24 and np.all(mask2 == 1)
    nk, dense = np.empty(4, np.int64), np.empty(4, np.uint8)
    sm.mask_spans(np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]], np.uint8), nk, dense)
    assert nk.tolist() == [0, 1, 3, 3] and dense.tolist() == [1, 1, 0, 1]


def test_out_buffer():
    rng = np.random.default_rng(4)
    p = softmax_params(0.01)
    x = rng.integers(-500, 500, (2, 3, 17)).astype(np.int16)
    mask = rng.random((2, 1, 17)) < 0.7
    buf = np.full(x.shape, 7, np.uint8)
    got = softmax_cpu(x, mask, p.m_i32, p.shift, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, softmax_ref(x, mask, p.m_i32, p.shift))
    empty = np.empty((0, 4), np.uint8)
    assert softmax_cpu(np.zeros((0, 4), np.int32), None, p.m_i32, p.shift, out=empty) is empty
    bad = [np.empty((2, 3, 16), np.uint8), np.empty(x.shape, np.int8), np.empty((2, 3, 34), np.uint8)[..., ::2],
           np.empty(x.shape, np.uint8).tolist()]
    ro = np.empty(x.shape, np.uint8)
    ro.flags.writeable = False
    for b in bad + [ro]:
        with pytest.raises(KernelInputError, match=r"out must be .*uint8.*\(2, 3, 17\)"):
            softmax_cpu(x, mask, p.m_i32, p.shift, out=b)

"""Kernel cases for softmax.py (ops "exp", "softmax") and tanh.py (op "tanh").

Protocol: tests/strategies.py.  Values mix "realistic" spans (|x·S| up to a
few tens) with the full dtype range (extremes), scales cover the whole
supported range [2^-24, 2^8], masks include broadcast forms and fully
masked rows.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.registry import get_kernel
from intengine.kernels.softmax import SCALE_MAX, SCALE_MIN, exp_params, softmax_params
from intengine.kernels.tanh import tanh_params
from strategies import INT_RANGES, Case, dims, int_arrays, log_uniform, scales, shapes

IN_DTYPES = st.sampled_from([np.int8, np.int16, np.int32, np.int32])


def any_scale() -> st.SearchStrategy[float]:
    """Typical scales (1e-5..1) most of the time, the documented ends sometimes."""
    return st.one_of(scales(), scales(), log_uniform(SCALE_MIN, SCALE_MAX), st.sampled_from([SCALE_MIN, SCALE_MAX]))


@st.composite
def values(draw, dtype, shape, scale, signed=True):
    """Integers either within a realistic real span (|x·S| ≤ span) or over the whole dtype range."""
    d_lo, d_hi = INT_RANGES[dtype]
    if draw(st.booleans()):
        span = draw(st.sampled_from([0.5, 4.0, 20.0, 60.0]))
        hi = int(min(d_hi, max(1, span / scale)))
    else:
        hi = d_hi
    arr = draw(int_arrays(dtype, shape, lo=-hi, hi=hi if signed else 0))
    if dtype == np.int32 and draw(st.booleans()):  # the int32 corner the symmetric strategies never draw
        flat = arr.reshape(-1)
        if flat.size:
            flat[0] = -(2**31)
    return arr


@st.composite
def _exp(draw, small):
    shape = draw(shapes(max_dims=3, max_side=6 if small else 40))
    dtype = draw(IN_DTYPES)
    s = draw(any_scale())
    x = draw(values(dtype, shape, s, signed=draw(st.booleans())))
    p = exp_params(s)
    return Case("exp", lambda b: get_kernel("exp", b)(x, p.m_i32, p.shift), f"{x.dtype}{shape} S={s:.3g}")


@st.composite
def _tanh(draw, small):
    shape = draw(shapes(max_dims=3, max_side=6 if small else 40))
    dtype = draw(IN_DTYPES)
    s = draw(any_scale())
    x = draw(values(dtype, shape, s))
    p = tanh_params(s, draw(st.sampled_from([8, 8, 4, 16, 32])))
    return Case("tanh", lambda b: get_kernel("tanh", b)(x, **p.kernel_args), f"{x.dtype}{shape} S={s:.3g} {p.out_bits}b")


@st.composite
def _mask(draw, shape, rng):
    """None, a full mask, or one broadcast over some leading axes / the key axis; bool or uint8."""
    kind = draw(st.sampled_from(["none", "full", "bcast", "bcast", "keys1"]))
    if kind == "none":
        return None
    if kind == "full":
        mshape = shape
    elif kind == "keys1":  # broadcast along the keys: whole rows kept or masked
        mshape = shape[:-1] + (1,)
    else:  # [B, 1, 1, T]-like: drop leading dims or set them to 1
        keep_axes = [draw(st.booleans()) for _ in shape[:-1]]
        mshape = tuple(d if k else 1 for d, k in zip(shape[:-1], keep_axes)) + (shape[-1],)
        if draw(st.booleans()):
            mshape = mshape[draw(st.integers(0, len(mshape) - 1)):]
    p_keep = draw(st.sampled_from([1.0, 0.9, 0.5, 0.1]))
    m = rng.random(mshape) < p_keep
    if m.ndim >= 2 and m.shape[0] > 0 and draw(st.booleans()):
        m[0] = False  # fully masked rows
    if draw(st.booleans()):
        m = m.astype(np.uint8) * np.uint8(draw(st.sampled_from([1, 1, 7])))  # nonzero = keep
    return m


@st.composite
def _softmax(draw, small):
    if small:
        lead = draw(shapes(max_dims=2, max_side=3, min_dims=0))
        n = draw(dims(9))
    else:
        lead = draw(shapes(max_dims=3, max_side=6, min_dims=0))
        n = draw(st.one_of(dims(300), st.sampled_from([128, 300])))
    shape = tuple(lead) + (n,)
    dtype = draw(IN_DTYPES)
    s = draw(any_scale())
    x = draw(values(dtype, shape, s))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = draw(_mask(shape, rng))
    p = softmax_params(s)
    label = f"{x.dtype}{shape} S={s:.3g} mask={None if mask is None else (mask.dtype, mask.shape)}"
    return Case("softmax", lambda b: get_kernel("softmax", b)(x, mask, p.m_i32, p.shift), label)


CASES = {"exp": _exp, "softmax": _softmax, "tanh": _tanh}

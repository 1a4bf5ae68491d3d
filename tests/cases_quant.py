"""Kernel cases for quant.py and requant.py (protocol: tests/strategies.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.registry import get_kernel
from strategies import Case, int_arrays, multiplier_sets, scales, shapes

OUT_BITS = st.sampled_from([8, 8, 16, 22, 32])
IN_DTYPES = st.sampled_from([np.int8, np.int16, np.int32, np.int32])


def _shape(small):
    return shapes(max_dims=3 if small else 4, max_side=6 if small else 40)


@st.composite
def _requantize(draw, small):
    shape = draw(_shape(small))
    x = draw(int_arrays(draw(IN_DTYPES), shape))
    m, s = draw(multiplier_sets(shape[-1]))
    bits = draw(OUT_BITS)
    return Case("requantize", lambda b: get_kernel("requantize", b)(x, m, s, bits), f"{x.dtype}{shape} bits={bits}")


@st.composite
def _rescale_add(draw, small):
    shape = draw(_shape(small))
    a = draw(int_arrays(draw(IN_DTYPES), shape))
    c = draw(int_arrays(draw(IN_DTYPES), shape))
    ma, sa = draw(multiplier_sets(shape[-1]))
    mb, sb = draw(multiplier_sets(shape[-1]))
    bits = draw(OUT_BITS)
    return Case(
        "rescale_add", lambda b: get_kernel("rescale_add", b)(a, ma, sa, c, mb, sb, bits), f"{a.dtype}+{c.dtype}{shape}"
    )


@st.composite
def _quantize(draw, small):
    shape = draw(_shape(small))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * draw(st.sampled_from([0.01, 1.0, 30.0]))).astype(np.float32)
    axis = draw(st.sampled_from([None, -1, 0]))
    s = draw(scales())
    if axis is None:
        scale = np.float32(s)
    else:
        scale = (s * rng.uniform(0.2, 2.0, shape[axis])).astype(np.float32)
    if draw(st.booleans()):  # exact ties: values on half-integer multiples of the scale
        x = ((rng.integers(-300, 300, shape) + 0.5) * np.float32(s)).astype(np.float32)
        scale = np.float32(s) if axis is None else np.full(shape[axis], s, np.float32)
    bits = draw(st.sampled_from([8, 8, 16]))
    return Case("quantize", lambda b: get_kernel("quantize", b)(x, scale, axis, bits), f"{shape} axis={axis}")


@st.composite
def _dequantize(draw, small):
    shape = draw(_shape(small))
    q = draw(int_arrays(draw(st.sampled_from([np.int8, np.int16])), shape))
    axis = draw(st.sampled_from([None, -1, 0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = np.float32(draw(scales())) if axis is None else rng.uniform(1e-4, 1, shape[axis]).astype(np.float32)
    return Case("dequantize", lambda b: get_kernel("dequantize", b)(q, scale, axis), f"{shape} axis={axis}")


CASES = {
    "quantize": _quantize,
    "dequantize": _dequantize,
    "requantize": _requantize,
    "rescale_add": _rescale_add,
}

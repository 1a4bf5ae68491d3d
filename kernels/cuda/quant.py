"""numba.cuda quantize / dequantize (bit-exact with ``kernels/quant.py``)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .._util import container_for_bits, qmax_for_bits
from ..errors import KernelInputError
from ..quant import _check_scale, _scale_vector
from ..registry import register
from ._util import any_device, blocks_for, finish, to_device


@cuda.jit(device=True, inline=True)
def _round_half_even(v):
    r = math.floor(v + 0.5)
    if r - v == 0.5 and r % 2.0 != 0.0:  # exact tie resolved upwards to an odd value
        r -= 1.0
    return r


@cuda.jit
def _quantize_kernel(x, s_f64, chans, inner, q, out):
    start = cuda.grid(1)
    for i in range(start, x.size, cuda.gridsize(1)):
        c = (i // inner) % chans
        v = np.float64(x[i]) / s_f64[c]
        v = min(max(v, -q - 1.0), q + 1.0)
        r = _round_half_even(v)
        out[i] = min(max(r, -q), q)


@cuda.jit
def _dequantize_kernel(qa, s_f32, chans, inner, out):
    start = cuda.grid(1)
    for i in range(start, qa.size, cuda.gridsize(1)):
        c = (i // inner) % chans
        out[i] = np.float32(qa[i]) * s_f32[c]


@register("quantize", "cuda")
def quantize_cuda(x, scale, axis: int | None = None, bits: int = 8):
    """CUDA version of :func:`~intengine.kernels.quant.quantize_ref` (bit-exact).

    Unlike the reference it does not scan the input for NaN/inf (that would
    cost a device round trip); pass finite values.
    """
    if x.dtype != np.float32:
        raise KernelInputError(f"quantize expects float32 input, got {x.dtype}")
    out_dtype = container_for_bits(bits)
    vec, chans, inner = _scale_vector(x.shape, scale, axis)
    _check_scale(vec)
    x_d = to_device(x)
    out_d = cuda.device_array(x.shape, dtype=out_dtype)
    if x_d.size:
        _quantize_kernel[blocks_for(x_d.size), 256](
            x_d.reshape(x_d.size), to_device(vec.astype(np.float64)), chans, inner, qmax_for_bits(bits), out_d.reshape(x_d.size)
        )
    return finish(out_d, any_device(x))


@register("dequantize", "cuda")
def dequantize_cuda(q, scale, axis: int | None = None):
    """CUDA version of :func:`~intengine.kernels.quant.dequantize_ref` (bit-exact)."""
    if np.dtype(q.dtype).kind not in "iu":
        raise KernelInputError(f"dequantize expects an integer array, got {q.dtype}")
    vec, chans, inner = _scale_vector(q.shape, scale, axis)
    q_d = to_device(q)
    out_d = cuda.device_array(q.shape, dtype=np.float32)
    if q_d.size:
        _dequantize_kernel[blocks_for(q_d.size), 256](q_d.reshape(q_d.size), to_device(vec), chans, inner, out_d.reshape(q_d.size))
    return finish(out_d, any_device(q))

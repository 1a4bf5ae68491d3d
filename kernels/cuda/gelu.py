"""numba.cuda i-GELU (bit-exact with ``kernels/gelu.py``): grid-stride elementwise."""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..gelu import _check_gelu_args, _lane_consts
from ..registry import register
from ._util import any_device, blocks_for, finish, to_device, THREADS_1D


@cuda.jit(device=True, inline=True)
def gelu_dev(x_i64, lsh, rsh, half, clip, b_int, c_int, m_erf, h_erf, shift_erf, w0, w_max, h_out, out_shift, q):
    """Device twin of ``kernels.gelu.gelu_lane`` (same constants: ``kernels.gelu._lane_consts``)."""
    a_i64 = x_i64 if x_i64 >= 0 else -x_i64
    a_i64 = min(((a_i64 << lsh) + half) >> rsh, clip)
    d_i64 = a_i64 + b_int
    poly_i64 = d_i64 * d_i64 + c_int
    if x_i64 < 0:
        poly_i64 = -poly_i64
    w_i64 = ((poly_i64 * m_erf + h_erf) >> shift_erf) + w0  # |poly·m_erf| < 2^62
    w_i64 = min(max(w_i64, np.int64(0)), w_max)
    y_i64 = (x_i64 * w_i64 + h_out) >> out_shift  # |x·w| ≤ 2^61
    return min(max(y_i64, -q), q)


@cuda.jit
def _gelu_kernel(x, lsh, rsh, half, clip, b_int, c_int, m_erf, h_erf, shift_erf, w0, w_max, h_out, out_shift, q, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = gelu_dev(np.int64(x[i]), lsh, rsh, half, clip, b_int, c_int, m_erf, h_erf, shift_erf, w0, w_max,
                          h_out, out_shift, q)


@register("gelu", "cuda")
def gelu_cuda(x, in_shift: int, b_int: int, c_int: int, m_erf: int, shift_erf: int, w0: int, out_shift: int,
              out_bits: int = 32):
    """CUDA version of :func:`~intengine.kernels.gelu.gelu_ref` (bit-exact)."""
    out_dtype, q, ints = _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, out_bits)
    consts = _lane_consts(*ints[:7], q)
    x_d = to_device(x)
    out_d = cuda.device_array(x.shape, dtype=out_dtype)
    n = x_d.size
    if n:
        _gelu_kernel[min(blocks_for(n), 4096), THREADS_1D](x_d.reshape(n), *consts, out_d.reshape(n))
    return finish(out_d, any_device(x))

"""numba.cuda i-GELU (bit-exact with ``kernels/gelu.py``): grid-stride elementwise."""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..gelu import ERF_FRAC_BITS, I32_MAX, _check_gelu_args, gelu_args_scalar
from ..registry import register
from ._util import any_device, blocks_for, finish, to_device, THREADS_1D
from .requant import round_shift_dev, saturate_dev


@cuda.jit(device=True, inline=True)
def gelu_dev(x_i64, lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift):
    """Device twin of ``kernels.gelu.gelu_scalar`` (saturated int32 value as int64)."""
    a_i64 = x_i64 if x_i64 >= 0 else -x_i64
    a_i64 = min(((a_i64 << lsh) + half) >> rsh, clip)
    d_i64 = a_i64 + b_int
    poly_i64 = d_i64 * d_i64 + c_int
    if x_i64 < 0:
        poly_i64 = -poly_i64
    one = np.int64(1) << ERF_FRAC_BITS
    erf_i64 = min(max(round_shift_dev(poly_i64, m_erf, shift_erf), -one), one)
    return saturate_dev(round_shift_dev(x_i64 * (one + erf_i64), np.int64(1), out_shift), np.int64(I32_MAX))


@cuda.jit
def _gelu_kernel(x, lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift, out):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        out[i] = gelu_dev(np.int64(x[i]), lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift)


@cuda.jit
def _gelu_requant_kernel(x, lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift, m_i64, s_i64, q, out):
    cols = m_i64.size
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y = gelu_dev(np.int64(x[i]), lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift)
        c = i % cols
        out[i] = saturate_dev(round_shift_dev(y, m_i64[c], s_i64[c]), q)


@register("gelu", "cuda")
def gelu_cuda(x, in_shift: int, b_int: int, c_int: int, m_erf: int, shift_erf: int, out_shift: int,
              m_i32=None, shift=None, out_bits: int = 8):
    """CUDA version of :func:`~intengine.kernels.gelu.gelu_ref` (bit-exact)."""
    out_dtype, q, m_vec, s_vec = _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, out_shift,
                                                  m_i32, shift, out_bits)
    consts = gelu_args_scalar(in_shift, b_int, c_int, m_erf, shift_erf, out_shift)
    x_d = to_device(x)
    out_d = cuda.device_array(x.shape, dtype=out_dtype)
    n = x_d.size
    if n:
        xf, of = x_d.reshape(n), out_d.reshape(n)
        grid = min(blocks_for(n), 4096)
        if m_vec is None:
            _gelu_kernel[grid, THREADS_1D](xf, *consts, of)
        else:
            _gelu_requant_kernel[grid, THREADS_1D](xf, *consts, to_device(m_vec), to_device(s_vec), np.int64(q), of)
    return finish(out_d, any_device(x))

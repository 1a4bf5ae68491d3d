"""numba.cuda i-tanh (bit-exact with ``kernels/tanh.py``): grid-stride elementwise."""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..registry import register
from ..softmax import EXP_ONE
from ..tanh import _check_tanh_args
from ._util import THREADS_1D, any_device, blocks_for, finish, to_device
from .softmax import exp_core_dev


@cuda.jit(device=True, inline=True)
def tanh_core_dev(x_i64, m_i64, s_i64, q_i64):
    """Device ``Q·tanh(x·S)``, rounded half up away from 0 (see ``tanh_ref``)."""
    a_i64 = -x_i64 if x_i64 < 0 else x_i64
    e_i64 = exp_core_dev(a_i64, m_i64, s_i64)
    den_i64 = EXP_ONE + e_i64
    y_i64 = (2 * q_i64 * (EXP_ONE - e_i64) + den_i64) // (2 * den_i64)
    return -y_i64 if x_i64 < 0 else y_i64


@cuda.jit
def _tanh_kernel(x, m_i64, s_i64, q_i64, out):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.size, stride):
        out[i] = tanh_core_dev(np.int64(x[i]), m_i64, s_i64, q_i64)


@register("tanh", "cuda")
def tanh_cuda(x, m_i32: int, shift: int, out_bits: int = 8):
    """CUDA version of :func:`~intengine.kernels.tanh.tanh_ref` (bit-exact)."""
    m, s, out_dtype, q = _check_tanh_args(x, m_i32, shift, out_bits)
    out_d = cuda.device_array(x.shape, dtype=out_dtype)
    n = int(np.prod(x.shape, dtype=np.int64))
    if n:
        _tanh_kernel[blocks_for(n), THREADS_1D](
            to_device(x).reshape(n), np.int64(m), np.int64(s), np.int64(q), out_d.reshape(n)
        )
    return finish(out_d, any_device(x))

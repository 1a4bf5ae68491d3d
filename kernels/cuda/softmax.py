"""numba.cuda i-exp and i-softmax (bit-exact with ``kernels/softmax.py``).

* ``exp``: grid-stride elementwise loop.
* ``softmax``: one thread block (``SOFTMAX_TPB`` threads) per row; the row max
  and the int64 sum are shared-memory tree reductions (integer, hence
  order-independent and bit-exact); the exponentials are recomputed in the
  normalisation pass instead of being stored.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from ..registry import register
from ..softmax import (
    ALPHA_I64,
    BETA_I64,
    EXP_HALF,
    EXP_ONE,
    INPUT_DTYPES,
    POLY_SHIFT,
    SOFTMAX_NORM_BITS,
    SOFTMAX_OUT_LEVELS,
    T_FRAC_BITS,
    T_FRAC_MASK,
    Z_ZERO,
    check_mask,
    check_multiplier,
    check_softmax_input,
    mask_layout,
)
from .._util import check_int
from ._util import THREADS_1D, any_device, blocks_for, finish, to_device

SOFTMAX_TPB = 128  # threads per row block (power of two)
_I64_MIN = -(1 << 63)
_NORM_NUM = SOFTMAX_OUT_LEVELS << SOFTMAX_NORM_BITS
_NORM_HALF = 1 << (SOFTMAX_NORM_BITS - 1)


@cuda.jit(device=True, inline=True)
def exp_core_dev(u_i64, m_i64, s_i64):
    """Device i-exp core: ``exp(-u·S)·2^30`` for int64 ``u ∈ [0, 2^32)`` (see softmax.py)."""
    t_i64 = (u_i64 * m_i64) >> s_i64
    z_i64 = t_i64 >> T_FRAC_BITS
    f_i64 = t_i64 & T_FRAC_MASK
    g_i64 = ((ALPHA_I64 * f_i64) >> T_FRAC_BITS) - BETA_I64
    l_i64 = max(EXP_ONE + ((g_i64 * f_i64) >> POLY_SHIFT), EXP_HALF)
    return l_i64 >> min(z_i64, Z_ZERO)


@cuda.jit
def _exp_kernel(x, m_i64, s_i64, out):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.size, stride):
        v = np.int64(x[i])
        u = -v if v < 0 else np.int64(0)
        out[i] = exp_core_dev(u, m_i64, s_i64)


@cuda.jit
def _softmax_kernel(x, n, has_mask, mask2, row_idx, m_i64, s_i64, out):
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    red = cuda.shared.array(SOFTMAX_TPB, dtype=numba.int64)
    base = r * n
    mr = row_idx[r]
    # 1. max over kept keys (_I64_MIN = none kept)
    mx = np.int64(_I64_MIN)
    for c in range(tid, n, SOFTMAX_TPB):
        if not has_mask or mask2[mr, c] != 0:
            mx = max(mx, np.int64(x[base + c]))
    red[tid] = mx
    cuda.syncthreads()
    step = SOFTMAX_TPB // 2
    while step > 0:
        if tid < step:
            red[tid] = max(red[tid], red[tid + step])
        cuda.syncthreads()
        step //= 2
    mx = red[0]
    cuda.syncthreads()
    if mx == _I64_MIN:  # fully masked row (uniform across the block)
        for c in range(tid, n, SOFTMAX_TPB):
            out[base + c] = 0
        return
    # 2. int64 sum of the exponentials
    acc = np.int64(0)
    for c in range(tid, n, SOFTMAX_TPB):
        if not has_mask or mask2[mr, c] != 0:
            acc += exp_core_dev(mx - np.int64(x[base + c]), m_i64, s_i64)
    red[tid] = acc
    cuda.syncthreads()
    step = SOFTMAX_TPB // 2
    while step > 0:
        if tid < step:
            red[tid] = red[tid] + red[tid + step]
        cuda.syncthreads()
        step //= 2
    total = red[0]
    # 3. normalise (one division per thread, same value everywhere)
    factor = np.int64(_NORM_NUM) // total
    for c in range(tid, n, SOFTMAX_TPB):
        e = np.int64(0)
        if not has_mask or mask2[mr, c] != 0:
            e = exp_core_dev(mx - np.int64(x[base + c]), m_i64, s_i64)
        out[base + c] = (e * factor + _NORM_HALF) >> SOFTMAX_NORM_BITS


def _flat(dev):
    return dev.reshape(dev.size)


@register("exp", "cuda")
def exp_cuda(x, m_i32: int, shift: int):
    """CUDA version of :func:`~intengine.kernels.softmax.exp_ref` (bit-exact)."""
    check_int("x", x, INPUT_DTYPES)
    m, s = check_multiplier(m_i32, shift)
    out_d = cuda.device_array(x.shape, dtype=np.int32)
    n = int(np.prod(x.shape, dtype=np.int64))
    if n:
        x_d = to_device(x)
        _exp_kernel[blocks_for(n), THREADS_1D](_flat(x_d), np.int64(m), np.int64(s), _flat(out_d))
    return finish(out_d, any_device(x))


@register("softmax", "cuda")
def softmax_cuda(x, mask, m_i32: int, shift: int):
    """CUDA version of :func:`~intengine.kernels.softmax.softmax_ref` (bit-exact).

    A device ``mask`` is copied to the host once to build its compact row form
    (masks are small: ``[B, 1, 1, T]`` in attention).
    """
    check_softmax_input(x)
    keep_on_device = any_device(x, mask)
    shape = tuple(x.shape)
    mask = check_mask(mask, shape)
    m, s = check_multiplier(m_i32, shift)
    out_d = cuda.device_array(shape, dtype=np.uint8)
    size = int(np.prod(shape, dtype=np.int64))
    if size:
        mask2, inner, row_idx = mask_layout(mask, shape)
        n = shape[-1]
        rows = size // n
        if row_idx is None:  # row r reads mask row r // inner
            row_idx = np.arange(rows, dtype=np.int64) // inner
        has_mask = mask is not None
        _softmax_kernel[rows, SOFTMAX_TPB](
            _flat(to_device(x)), np.int64(n), has_mask, to_device(mask2), to_device(row_idx),
            np.int64(m), np.int64(s), _flat(out_d),
        )
    return finish(out_d, keep_on_device)

"""numba.cuda i-sqrt and i-LayerNorm (bit-exact with ``kernels/layernorm.py``).

``isqrt``: grid-stride elementwise.  ``add_layernorm``: the ``rescale_add`` and ``layernorm``
kernels in sequence.  ``layernorm``: one block per row
(grid-stride over rows), the three row reductions (Σx, max|y|, Σys²) in
shared memory, the scalar row statistics computed by thread 0.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._util import check_int, qmax_for_bits
from ..errors import KernelInputError
from ..layernorm import (BIAS_FRAC, FACTOR_BITS, ISQRT_UPDATES, NORM_BITS, _check_add_bits, _check_layernorm_args,
                         _eps_min_shift)
from ..registry import register
from ._util import any_device, blocks_for, finish, is_device, to_device, THREADS_1D
from .requant import rescale_add_cuda, round_shift_dev, saturate_dev

LN_THREADS = 128  # threads per row block (power of two; fewer for short rows)
MAX_ROW_BLOCKS = 65535


@cuda.jit(device=True, inline=True)
def bit_length_dev(v_i64):
    n = 0
    for step in (32, 16, 8, 4, 2, 1):
        if v_i64 >= (np.int64(1) << step):
            v_i64 >>= step
            n += step
    return n + (1 if v_i64 > 0 else 0)


@cuda.jit(device=True, inline=True)
def isqrt_dev(n_i64):
    """``⌊√n⌋`` for ``0 ≤ n < 2^63``; at most 7 loop passes."""
    if n_i64 <= 1:
        return n_i64
    x_i64 = np.int64(1) << ((bit_length_dev(n_i64) + 1) >> 1)
    for _ in range(ISQRT_UPDATES + 1):
        y_i64 = (x_i64 + n_i64 // x_i64) >> 1
        if y_i64 >= x_i64:
            break
        x_i64 = y_i64
    return x_i64


@cuda.jit(device=True, inline=True)
def shift_signed_dev(v_i64, sh):
    if sh >= 0:
        return v_i64 >> min(sh, np.int64(62))
    return v_i64 << (-sh)


@cuda.jit
def _isqrt_kernel(n, out):
    for i in range(cuda.grid(1), n.size, cuda.gridsize(1)):
        out[i] = isqrt_dev(np.int64(n[i]))


@cuda.jit(device=True, inline=True)
def _block_sum(buf, v, tid, nt):
    buf[tid] = v
    cuda.syncthreads()
    stride = nt >> 1
    while stride > 0:
        if tid < stride:
            buf[tid] += buf[tid + stride]
        cuda.syncthreads()
        stride >>= 1
    r = buf[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True, inline=True)
def _block_max(buf, v, tid, nt):
    buf[tid] = v
    cuda.syncthreads()
    stride = nt >> 1
    while stride > 0:
        if tid < stride:
            buf[tid] = max(buf[tid], buf[tid + stride])
        cuda.syncthreads()
        stride >>= 1
    r = buf[0]
    cuda.syncthreads()
    return r


@cuda.jit
def _layernorm_kernel(x2, m_i64, s_i64, b_i64, eps_m, eps_e, keep, sh_eps, q, out2):
    buf = cuda.shared.array(LN_THREADS, dtype=np.int64)
    stat = cuda.shared.array(2, dtype=np.int64)
    rows, c = x2.shape
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    one = np.int64(1)
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        acc = np.int64(0)
        for i in range(tid, c, nt):
            acc += np.int64(x2[r, i])
        total = _block_sum(buf, acc, tid, nt)
        mx = np.int64(0)
        for i in range(tid, c, nt):
            y = np.int64(c) * np.int64(x2[r, i]) - total
            mx = max(mx, y if y >= 0 else -y)
        mx = _block_max(buf, mx, tid, nt)
        sh = np.int64(0)
        if mx > 0:
            sh = max(np.int64(bit_length_dev(mx)) - keep, sh_eps)
        var = np.int64(0)
        if mx > 0:
            for i in range(tid, c, nt):
                ys = shift_signed_dev(np.int64(c) * np.int64(x2[r, i]) - total, sh)
                var += ys * ys
        var = _block_sum(buf, var, tid, nt)
        if tid == 0:
            factor = np.int64(0)
            if mx > 0:
                if eps_m != 0:
                    e_tot = eps_e + 2 * sh
                    if e_tot >= 0:
                        var += eps_m >> min(e_tot, np.int64(62))
                    else:
                        var += eps_m << (-e_tot)
                std = isqrt_dev(var)
                if std > 0:
                    factor = (one << FACTOR_BITS) // std
            stat[0] = factor
        cuda.syncthreads()
        factor = stat[0]
        for i in range(tid, c, nt):
            ys = shift_signed_dev(np.int64(c) * np.int64(x2[r, i]) - total, sh)
            y_norm = round_shift_dev(ys * factor, one, np.int64(FACTOR_BITS - NORM_BITS))
            v = round_shift_dev(y_norm, m_i64[i], s_i64[i]) + b_i64[i]
            out2[r, i] = saturate_dev(round_shift_dev(v, one, np.int64(BIAS_FRAC)), q)
        cuda.syncthreads()


@register("isqrt", "cuda")
def isqrt_cuda(n):
    """CUDA version of :func:`~intengine.kernels.layernorm.isqrt_ref` (bit-exact).

    Host inputs are checked for negative values; device inputs are not (a
    device round trip), and negative entries there give unspecified results.
    """
    check_int("n", n, (np.int32, np.int64))
    if not is_device(n) and n.size and np.asarray(n).min() < 0:
        raise KernelInputError("n must be non-negative for isqrt")
    n_d = to_device(n)
    out_d = cuda.device_array(n.shape, dtype=np.int64)
    size = n_d.size
    if size:
        _isqrt_kernel[min(blocks_for(size), 4096), THREADS_1D](n_d.reshape(size), out_d.reshape(size))
    return finish(out_d, any_device(n))


@register("layernorm", "cuda")
def layernorm_cuda(x, m_i32, shift, bias_i64, eps_m: int, eps_e: int, out_bits: int = 8):
    """CUDA version of :func:`~intengine.kernels.layernorm.layernorm_ref` (bit-exact)."""
    out_dtype, m_vec, s_vec, b_vec = _check_layernorm_args(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits)
    c = tuple(x.shape)[-1]
    x_d = to_device(x)
    out_d = cuda.device_array(x.shape, dtype=out_dtype)
    rows = x_d.size // c if c else 0
    if rows:
        threads = min(LN_THREADS, 1 << max(c - 1, 0).bit_length())
        keep = (62 - int(c - 1).bit_length()) // 2
        _layernorm_kernel[min(rows, MAX_ROW_BLOCKS), threads](
            x_d.reshape(rows, c), to_device(m_vec), to_device(s_vec), to_device(b_vec), np.int64(eps_m),
            np.int64(eps_e), np.int64(keep), np.int64(_eps_min_shift(eps_m, eps_e)),
            np.int64(qmax_for_bits(out_bits)), out_d.reshape(rows, c),
        )
    return finish(out_d, any_device(x))


@register("add_layernorm", "cuda")
def add_layernorm_cuda(a, m_a, shift_a, b, m_b, shift_b, add_bits: int, m_i32, shift, bias_i64, eps_m: int, eps_e: int,
                       out_bits: int = 8):
    """CUDA version of :func:`~intengine.kernels.layernorm.add_layernorm_ref` (bit-exact): the
    ``rescale_add`` and ``layernorm`` kernels back to back, the sum kept on the device."""
    _check_add_bits(add_bits)
    x_d = rescale_add_cuda(to_device(a), m_a, shift_a, to_device(b), m_b, shift_b, add_bits)
    return finish(layernorm_cuda(x_d, m_i32, shift, bias_i64, eps_m, eps_e, out_bits), any_device(a, b))

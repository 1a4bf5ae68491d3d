"""numba.cuda i-sqrt and i-LayerNorm (bit-exact with ``kernels/layernorm.py``).

``isqrt``: grid-stride elementwise.  ``add_layernorm``: the ``rescale_add`` and ``layernorm``
kernels in sequence.  ``layernorm``: one block per row (grid-stride over rows), int64
throughout: the row reductions (Σx with min/max x, then Σy²) in shared memory, the scalar
row quantities computed by thread 0 and published through shared memory, ``y`` recomputed
in the output pass.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._util import check_int, qmax_for_bits
from ..errors import KernelInputError
from ..layernorm import (ISQRT_UPDATES, NARROW_BITS, NARROW_Z_BITS, WIDE_BITS, _check_add_bits, _check_layernorm_args,
                         _eps_min_shift, y_bits)
from ..registry import register
from ._util import any_device, blocks_for, finish, is_device, to_device, THREADS_1D
from .requant import rescale_add_cuda, saturate_dev

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


@cuda.jit
def _isqrt_kernel(n, out):
    for i in range(cuda.grid(1), n.size, cuda.gridsize(1)):
        out[i] = isqrt_dev(np.int64(n[i]))


@cuda.jit(device=True, inline=True)
def _eps_term_dev(eps_m, eps_e, sh):
    """``⌊eps_m·2^(-eps_e - 2·sh)⌋`` (0 without eps), as ``eps_scaled`` in ``kernels/layernorm.py``."""
    if eps_m == 0:
        return np.int64(0)
    e_tot = eps_e + 2 * sh
    if e_tot >= 0:
        return eps_m >> min(e_tot, np.int64(62))
    return eps_m << min(-e_tot, np.int64(62))


@cuda.jit(device=True, inline=True)
def _reduce_stats(buf, tid, nt):
    """Tree reduction of ``buf [3, LN_THREADS]``: row 0 summed, row 1 min, row 2 max, into column 0."""
    cuda.syncthreads()
    stride = nt >> 1
    while stride > 0:
        if tid < stride:
            buf[0, tid] += buf[0, tid + stride]
            buf[1, tid] = min(buf[1, tid], buf[1, tid + stride])
            buf[2, tid] = max(buf[2, tid], buf[2, tid + stride])
        cuda.syncthreads()
        stride >>= 1


@cuda.jit(device=True, inline=True)
def _reduce_sum(buf, tid, nt):
    """Tree reduction of ``buf[0, :nt]`` (sum) into ``buf[0, 0]``."""
    cuda.syncthreads()
    stride = nt >> 1
    while stride > 0:
        if tid < stride:
            buf[0, tid] += buf[0, tid + stride]
        cuda.syncthreads()
        stride >>= 1


@cuda.jit
def _layernorm_kernel(x2, m_i64, s_i64, b_i64, eps_m, eps_e, yb, fb, k, zdrop, zq, sh_eps, q, out2):
    """Rows of :func:`~intengine.kernels.layernorm.layernorm_ref`, one block per row (grid-stride).

    Pass 1 reduces ``Σx, min x, max x``; thread 0 derives ``q, L, R`` and ``c0 = h(R) - ρ``
    (``y = ((x - q)·2^L + c0) >> R``).  Pass 2 reduces ``Σy²``; thread 0 derives ``F`` and
    ``zs``.  Pass 3 recomputes ``y`` and writes ``out``.  Profile constants: ``fb`` (F bits), ``k``
    (``YB - 14`` narrow, 0 wide), ``zdrop`` (``zs = b - k - zdrop``: 1 narrow, 0 wide), ``zq`` (z clamp).
    """
    buf = cuda.shared.array((3, LN_THREADS), dtype=np.int64)
    stat = cuda.shared.array(6, dtype=np.int64)  # q, L, R, c0 | F, zs
    rows, c = x2.shape
    c_i64 = np.int64(c)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    one = np.int64(1)
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        sum_i64 = np.int64(0)
        lo_i64 = np.int64((1 << 31) - 1)
        hi_i64 = np.int64(-(1 << 31))
        for i in range(tid, c, nt):
            x_i64 = np.int64(x2[r, i])
            sum_i64 += x_i64
            lo_i64 = min(lo_i64, x_i64)
            hi_i64 = max(hi_i64, x_i64)
        buf[0, tid] = sum_i64
        buf[1, tid] = lo_i64
        buf[2, tid] = hi_i64
        _reduce_stats(buf, tid, nt)
        sh = np.int64(0)
        if tid == 0:
            total_i64 = buf[0, 0]
            q_i64 = total_i64 // c_i64  # floor (Python semantics), also for a negative sum
            r_i64 = total_i64 - q_i64 * c_i64
            dev_i64 = max(buf[2, 0] - q_i64, q_i64 - buf[1, 0])
            sh = max(np.int64(bit_length_dev(dev_i64)) - yb, sh_eps)
            lsh = max(-sh, np.int64(0))
            rsh = min(max(sh, np.int64(0)), np.int64(62))
            rho_i64 = ((r_i64 << (lsh + 1)) + c_i64) // (2 * c_i64)
            stat[0] = q_i64
            stat[1] = lsh
            stat[2] = rsh
            stat[3] = ((one << rsh) >> 1) - rho_i64
        cuda.syncthreads()
        q_i64, lsh, rsh, c0_i64 = stat[0], stat[1], stat[2], stat[3]
        var_i64 = np.int64(0)
        for i in range(tid, c, nt):
            y_i64 = (((np.int64(x2[r, i]) - q_i64) << lsh) + c0_i64) >> rsh
            var_i64 += y_i64 * y_i64
        buf[0, tid] = var_i64
        _reduce_sum(buf, tid, nt)
        if tid == 0:
            std_i64 = isqrt_dev(buf[0, 0] + _eps_term_dev(eps_m, eps_e, sh))
            bl = np.int64(bit_length_dev(std_i64))
            stat[4] = ((one << (bl + fb)) - 1) // std_i64 if std_i64 > 0 else np.int64(0)
            stat[5] = max(bl - k - zdrop, np.int64(0))
        cuda.syncthreads()
        f_i64, zs = stat[4], stat[5]
        hk_i64 = (one << k) >> 1
        hz_i64 = (one << zs) >> 1
        for i in range(tid, c, nt):
            y_i64 = (((np.int64(x2[r, i]) - q_i64) << lsh) + c0_i64) >> rsh
            z_i64 = min(max((((y_i64 + hk_i64) >> k) * f_i64 + hz_i64) >> zs, -zq), zq)
            out2[r, i] = saturate_dev((z_i64 * m_i64[i] + b_i64[i]) >> s_i64[i], q)


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
        yb = y_bits(c)
        narrow = out_bits <= 8
        fb, k, zdrop = (NARROW_BITS, yb - NARROW_BITS, 1) if narrow else (WIDE_BITS, 0, 0)
        zq = (1 << NARROW_Z_BITS) - 1 if narrow else 1 << 62
        _layernorm_kernel[min(rows, MAX_ROW_BLOCKS), threads](
            x_d.reshape(rows, c), to_device(m_vec), to_device(s_vec), to_device(b_vec), np.int64(eps_m),
            np.int64(eps_e), np.int64(yb), np.int64(fb), np.int64(k), np.int64(zdrop), np.int64(zq),
            np.int64(_eps_min_shift(eps_m, eps_e)), np.int64(qmax_for_bits(out_bits)), out_d.reshape(rows, c),
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

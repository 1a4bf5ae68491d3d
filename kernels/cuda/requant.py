"""numba.cuda requantization kernels (bit-exact with ``kernels/requant.py``)."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._util import qmax_for_bits
from ..errors import KernelInputError
from ..registry import register
from ..requant import _check_requant_args
from ._util import any_device, blocks_for, finish, to_device


@cuda.jit(device=True, inline=True)
def round_shift_dev(x_i64, m_i64, s_i64):
    """Device ``floor((x·m + 2^(s-1)) / 2^s)``; shared by fused CUDA epilogues."""
    return ((x_i64 * m_i64 >> (s_i64 - 1)) + 1) >> 1


@cuda.jit(device=True, inline=True)
def saturate_dev(v_i64, q):
    return min(max(v_i64, -q), q)


@cuda.jit
def _requantize_kernel(x, m_i64, s_i64, q, out):
    n = x.size
    cols = m_i64.size
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        c = i % cols
        out[i] = saturate_dev(round_shift_dev(np.int64(x[i]), m_i64[c], s_i64[c]), q)


@cuda.jit
def _rescale_add_kernel(a, ma, sa, b, mb, sb, q, out):
    n = a.size
    cols = ma.size
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        c = i % cols
        v = round_shift_dev(np.int64(a[i]), ma[c], sa[c]) + round_shift_dev(np.int64(b[i]), mb[c], sb[c])
        out[i] = saturate_dev(v, q)


def _flat(dev):
    return dev.reshape(dev.size)


@register("requantize", "cuda")
def requantize_cuda(x, m_i32, shift, out_bits: int = 8):
    """CUDA version of :func:`~intengine.kernels.requant.requantize_ref` (bit-exact)."""
    out_dtype, m_vec, s_vec = _check_requant_args(x, m_i32, shift, out_bits)
    x_d = to_device(x)
    out_d = cuda.device_array(x.shape, dtype=out_dtype)
    n = x_d.size
    if n:
        _requantize_kernel[blocks_for(n), 256](_flat(x_d), to_device(m_vec), to_device(s_vec), qmax_for_bits(out_bits), _flat(out_d))
    return finish(out_d, any_device(x))


@register("rescale_add", "cuda")
def rescale_add_cuda(a, m_a, shift_a, b, m_b, shift_b, out_bits: int = 8):
    """CUDA version of :func:`~intengine.kernels.requant.rescale_add_ref` (bit-exact)."""
    if a.shape != b.shape:
        raise KernelInputError(f"rescale_add operands must have the same shape, got {a.shape} and {b.shape}")
    out_dtype, ma, sa = _check_requant_args(a, m_a, shift_a, out_bits)
    _, mb, sb = _check_requant_args(b, m_b, shift_b, out_bits)
    a_d, b_d = to_device(a), to_device(b)
    out_d = cuda.device_array(a.shape, dtype=out_dtype)
    n = a_d.size
    if n:
        _rescale_add_kernel[blocks_for(n), 256](
            _flat(a_d), to_device(ma), to_device(sa), _flat(b_d), to_device(mb), to_device(sb),
            qmax_for_bits(out_bits), _flat(out_d),
        )
    return finish(out_d, any_device(a, b))

"""numba.cuda relative-position gather and scatter-add (bit-exact with ``kernels/gather.py``): one thread per output."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._util import container_for_bits, qmax_for_bits
from ..gather import _check_gather_args, _check_scatter_args, _check_scores_args
from ..registry import register
from ..requant import _requant_vectors_checked
from ._util import THREADS_1D, any_device, blocks_for, finish, to_device
from .requant import round_shift_dev, saturate_dev


@cuda.jit(device=True, inline=True)
def _unflatten3(k, t, tp):
    """``(n, i, j)`` of the flat index ``k`` into a C-ordered ``[*, t, tp]`` array."""
    n = k // (t * tp)
    r = k - n * t * tp
    i = r // tp
    return n, i, r - i * tp


@cuda.jit
def _gather_kernel(x3, idx, out3):
    lead, t, tp = out3.shape
    start = cuda.grid(1)
    for k in range(start, lead * t * tp, cuda.gridsize(1)):
        n, i, j = _unflatten3(k, t, tp)
        out3[n, i, j] = x3[n, i, idx[i, j]]


@register("rel_gather", "cuda")
def rel_gather_cuda(x, index):
    """CUDA version of :func:`~intengine.kernels.gather.rel_gather_ref`."""
    _check_gather_args(x, index)
    shape = tuple(x.shape)
    t, tp = shape[-2], tuple(index.shape)[1]
    lead = int(np.prod(shape[:-2], dtype=np.int64))
    out_d = cuda.device_array((lead, t, tp), dtype=x.dtype)
    if out_d.size:
        idx = index if hasattr(index, "copy_to_host") else np.ascontiguousarray(index, dtype=np.int64)
        _gather_kernel[blocks_for(out_d.size), THREADS_1D](to_device(x).reshape(lead, t, shape[-1]), to_device(idx), out_d)
    return finish(out_d.reshape(shape[:-1] + (tp,)), any_device(x))


@cuda.jit
def _scatter_kernel(p3, idx, out3):
    lead, t, size = out3.shape
    tp = p3.shape[2]
    start = cuda.grid(1)
    for k in range(start, lead * t * size, cuda.gridsize(1)):
        n, i, d = _unflatten3(k, t, size)
        acc_i32 = np.int32(0)
        for j in range(tp):
            if idx[i, j] == d:
                acc_i32 += np.int32(p3[n, i, j])
        out3[n, i, d] = min(acc_i32, np.int32(255))


@register("rel_scatter_add", "cuda")
def rel_scatter_add_cuda(p, index, size):
    """CUDA version of :func:`~intengine.kernels.gather.rel_scatter_add_ref` (one thread per output bucket)."""
    _check_scatter_args(p, index, size)
    shape = tuple(p.shape)
    t, tp = shape[-2], shape[-1]
    lead = int(np.prod(shape[:-2], dtype=np.int64))
    out_d = cuda.device_array((lead, t, int(size)), dtype=np.uint8)
    if out_d.size:
        idx = index if hasattr(index, "copy_to_host") else np.ascontiguousarray(index, dtype=np.int64)
        _scatter_kernel[blocks_for(out_d.size), THREADS_1D](to_device(p).reshape(lead, t, tp), to_device(idx), out_d)
    return finish(out_d.reshape(shape[:-1] + (int(size),)), any_device(p))


@cuda.jit
def _scores_kernel(qk3, c3, ic, p3, ip, ma1, sa1, mb1, sb1, q1, ma2, sa2, mb2, sb2, q2, out3):
    heads, t = out3.shape[0], out3.shape[1]
    start = cuda.grid(1)
    for k in range(start, heads * t * t, cuda.gridsize(1)):
        h, i, j = _unflatten3(k, t, t)
        v1 = (round_shift_dev(np.int64(qk3[h, i, j]), ma1[j], sa1[j])
              + round_shift_dev(np.int64(c3[h, i, ic[i, j]]), mb1[j], sb1[j]))
        v1 = saturate_dev(v1, q1)
        v2 = (round_shift_dev(v1, ma2[j], sa2[j])
              + round_shift_dev(np.int64(p3[h, j, ip[j, i]]), mb2[j], sb2[j]))
        out3[h, i, j] = saturate_dev(v2, q2)


@register("rel_scores", "cuda")
def rel_scores_cuda(qk, c2p_all, c2p_index, p2c_all, p2c_index, m_a1, shift_a1, m_b1, shift_b1, bits1: int, m_a2,
                    shift_a2, m_b2, shift_b2, bits2: int):
    """CUDA version of :func:`~intengine.kernels.gather.rel_scores_ref` (one thread per score)."""
    _check_scores_args(qk, c2p_all, c2p_index, p2c_all, p2c_index)
    shape = tuple(qk.shape)
    t = shape[-1]
    vecs = []
    for bits, pairs in ((bits1, ((m_a1, shift_a1), (m_b1, shift_b1))), (bits2, ((m_a2, shift_a2), (m_b2, shift_b2)))):
        for m, s in pairs:
            _, m_vec, s_vec = _requant_vectors_checked(m, s, bits, t)
            vecs += [to_device(np.ascontiguousarray(m_vec, np.int64)), to_device(np.ascontiguousarray(s_vec, np.int64))]
    lead = int(np.prod(shape[:-2], dtype=np.int64))
    out_d = cuda.device_array((lead, t, t), dtype=container_for_bits(bits2))
    if out_d.size:
        idx = [i if hasattr(i, "copy_to_host") else np.ascontiguousarray(i, dtype=np.int64)
               for i in (c2p_index, p2c_index)]
        _scores_kernel[blocks_for(out_d.size), THREADS_1D](
            to_device(qk).reshape(lead, t, t), to_device(c2p_all).reshape(lead, t, tuple(c2p_all.shape)[-1]),
            to_device(idx[0]), to_device(p2c_all).reshape(lead, t, tuple(p2c_all.shape)[-1]), to_device(idx[1]),
            *vecs[:4], np.int64(qmax_for_bits(bits1)), *vecs[4:], np.int64(qmax_for_bits(bits2)), out_d)
    return finish(out_d.reshape(shape), any_device(qk, c2p_all, p2c_all))

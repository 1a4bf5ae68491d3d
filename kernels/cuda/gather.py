"""numba.cuda relative-position gather and scatter-add (bit-exact with ``kernels/gather.py``): one thread per output."""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..gather import _check_gather_args, _check_scatter_args
from ..registry import register
from ._util import THREADS_1D, any_device, blocks_for, finish, to_device


@cuda.jit
def _gather_kernel(x3, idx, out3):
    lead, t, tp = out3.shape
    start = cuda.grid(1)
    for k in range(start, lead * t * tp, cuda.gridsize(1)):
        n = k // (t * tp)
        r = k - n * t * tp
        i = r // tp
        j = r - i * tp
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
        n = k // (t * size)
        r = k - n * t * size
        i = r // size
        d = r - i * size
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

"""numba.cuda table lookup (bit-exact with ``kernels/lut.py``): grid-stride elementwise."""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..lut import _check_lut_args
from ..registry import register
from ._util import THREADS_1D, any_device, blocks_for, finish, to_device


@cuda.jit
def _lut_kernel(x, table, out):
    start = cuda.grid(1)
    for i in range(start, x.size, cuda.gridsize(1)):
        out[i] = table[np.int32(x[i]) + 128]


@register("lut", "cuda")
def lut_cuda(x, table):
    """CUDA version of :func:`~intengine.kernels.lut.lut_ref`."""
    _check_lut_args(x, table)
    out_d = cuda.device_array(x.shape, dtype=table.dtype)
    n = int(np.prod(x.shape, dtype=np.int64))
    if n:
        _lut_kernel[blocks_for(n), THREADS_1D](to_device(x).reshape(n), to_device(table), out_d.reshape(n))
    return finish(out_d, any_device(x))

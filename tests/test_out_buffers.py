"""``out=``: the cpu kernels write into the runtime's planned buffers (requant, tanh, gather family, lut)."""

from __future__ import annotations

import numpy as np
import pytest

from intengine.kernels.errors import KernelInputError
from intengine.kernels.gather import rel_gather_cpu, rel_scatter_add_cpu
from intengine.kernels.lut import lut_cpu
from intengine.kernels.requant import requantize_cpu, rescale_add_cpu
from intengine.kernels.tanh import tanh_cpu

rng = np.random.default_rng(3)
X32 = rng.integers(-(2**20), 2**20, (3, 4, 7)).astype(np.int32)
Y8 = rng.integers(-127, 128, (3, 4, 7)).astype(np.int8)
P8 = rng.integers(0, 256, (2, 4, 4)).astype(np.uint8)
IDX = np.array([[0, 1, 1, 2]] * 4)

CALLS = {
    "requantize": (lambda out=None: requantize_cpu(X32, 1 << 29, 40, out=out), (3, 4, 7), np.int8),
    "rescale_add": (lambda out=None: rescale_add_cpu(X32, 1 << 30, 31, Y8, 1 << 30, 20, 16, out=out), (3, 4, 7),
                    np.int16),
    "tanh_i8": (lambda out=None: tanh_cpu(Y8, 1 << 30, 36, out=out), (3, 4, 7), np.int8),
    "tanh_i32": (lambda out=None: tanh_cpu(X32, 1 << 30, 50, out=out), (3, 4, 7), np.int8),
    "rel_gather": (lambda out=None: rel_gather_cpu(X32, IDX[:, :2] + 3, out=out), (3, 4, 2), np.int32),
    "rel_scatter_add": (lambda out=None: rel_scatter_add_cpu(P8, IDX, 3, out=out), (2, 4, 3), np.uint8),
    "lut": (lambda out=None: lut_cpu(Y8, np.arange(256).astype(np.int16), out=out), (3, 4, 7), np.int16),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_out_is_written_and_returned(name):
    call, shape, dtype = CALLS[name]
    want = call()
    out = np.full(shape, 7, dtype)
    got = call(out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("bad", ["shape", "dtype", "strided", "list"])
def test_a_wrong_out_is_refused_by_name(name, bad):
    call, shape, dtype = CALLS[name]
    out = {"shape": lambda: np.empty(shape[:-1] + (shape[-1] + 1,), dtype),
           "dtype": lambda: np.empty(shape, np.int64),
           "strided": lambda: np.empty(shape[:-1] + (2 * shape[-1],), dtype)[..., ::2],
           "list": lambda: [0] * int(np.prod(shape))}[bad]()
    with pytest.raises(KernelInputError, match=r"^out must be a writeable C-contiguous numpy array"):
        call(out=out)

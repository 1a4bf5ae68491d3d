"""The permute kernels: the parallel path against numpy at the attention blocks' shapes, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from intengine.kernels import layout
from intengine.kernels.errors import KernelInputError


@pytest.mark.parametrize("perm", [layout.SWAP_MIDDLE, layout.SWAP_LAST])
@pytest.mark.parametrize("dtype", [np.int8, np.int32])
def test_parallel_path_matches_numpy(perm, dtype):
    x = np.random.default_rng(0).integers(-100, 100, (3, 128, 12, 64)).astype(dtype)  # batch 3: >= PAR_MIN_SIZE
    assert x.size >= layout.PAR_MIN_SIZE
    want = np.transpose(x, perm)
    out = np.empty(want.shape, dtype)
    got = layout.transpose_cpu(x, perm, out=out)
    assert got is out
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(layout.transpose_ref(x, perm), want)


def test_non_contiguous_input_takes_numpy():
    x = np.random.default_rng(1).integers(-100, 100, (4, 128, 12, 128)).astype(np.int8)[..., ::2]
    np.testing.assert_array_equal(layout.transpose_cpu(x, layout.SWAP_MIDDLE), np.transpose(x, layout.SWAP_MIDDLE))


def test_bad_perm_and_out_are_named():
    x = np.zeros((2, 3, 4), np.int8)
    with pytest.raises(KernelInputError,
                       match=r"perm must be a permutation of the 3 axes of x \(shape \(2, 3, 4\)\), got \(0, 0, 1\)"):
        layout.transpose_cpu(x, (0, 0, 1))
    with pytest.raises(KernelInputError, match="out must be"):
        layout.transpose_cpu(x, (2, 1, 0), out=np.empty((2, 3, 4), np.int8))

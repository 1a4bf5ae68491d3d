"""Relative-position gather / scatter-add: meaning and bad input (bit-exactness: test_kernels_exact.py)."""

from __future__ import annotations

import numpy as np
import pytest

from intengine.kernels.errors import KernelInputError
from intengine.kernels.gather import (index_for_length, rel_gather_cpu, rel_gather_ref, rel_scatter_add_cpu,
                                      rel_scatter_add_ref, toeplitz_diagonal)


def _nezha_index(t: int, span: int) -> np.ndarray:
    j_minus_i = np.arange(t)[None, :] - np.arange(t)[:, None]
    return np.clip(j_minus_i, -span, span) + span


@pytest.mark.parametrize("fn", [rel_scatter_add_ref, rel_scatter_add_cpu])
def test_scatter_add_turns_the_relative_value_sum_into_a_small_product(fn):
    # Σ_j p_ij · table[δ(i, j)] == Σ_d out[i, d] · table[d]   (exact while no bucket saturates)
    rng = np.random.default_rng(0)
    t, span, d = 9, 3, 5
    idx = _nezha_index(t, span)
    p = rng.integers(0, 40, (2, t, t)).astype(np.uint8)
    table = rng.integers(-127, 128, (2 * span + 1, d))
    buckets = fn(p, idx, 2 * span + 1)
    assert buckets.dtype == np.uint8 and buckets.shape == (2, t, 2 * span + 1)
    want = np.einsum("nij,ijd->nid", p.astype(np.int64), table[idx])
    np.testing.assert_array_equal(buckets.astype(np.int64) @ table, want)


@pytest.mark.parametrize("fn", [rel_scatter_add_ref, rel_scatter_add_cpu])
def test_scatter_add_saturates_at_255(fn):
    p = np.full((1, 4), 100, np.uint8)
    out = fn(p, np.zeros((1, 4), np.int64), 2)
    np.testing.assert_array_equal(out, [[255, 0]])


@pytest.mark.parametrize("fn", [rel_gather_ref, rel_gather_cpu])
def test_gather_picks_table_columns(fn):
    x = np.arange(12, dtype=np.int32).reshape(1, 3, 4)
    idx = np.array([[3, 0], [1, 1], [2, 3]])
    np.testing.assert_array_equal(fn(x, idx), [[[3, 0], [5, 5], [10, 11]]])


@pytest.mark.parametrize("fn", [rel_scatter_add_ref, rel_scatter_add_cpu])
@pytest.mark.parametrize("args,match", [
    ((np.zeros((2, 3), np.int8), np.zeros((2, 3), np.int64), 4), "p must"),
    ((np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.int64), 4), r"share \[T, T'\]"),
    ((np.zeros((2, 3), np.uint8), np.full((2, 3), 4), 4), r"index values must lie in \[0, 4\)"),
    ((np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.int64), 0), "size must be a positive integer"),
    ((np.zeros((2, 3), np.uint8), np.zeros((2, 3), np.float32), 4), "index must"),
])
def test_scatter_add_rejects_bad_input(fn, args, match):
    with pytest.raises(KernelInputError, match=match):
        fn(*args)


@pytest.mark.parametrize("fn", [rel_gather_ref, rel_gather_cpu])
@pytest.mark.parametrize("args,match", [
    ((np.zeros((2, 3), np.int32), np.zeros((3, 2), np.int64)), "must share T"),
    ((np.zeros((2, 3), np.int32), np.full((2, 2), 3)), r"index values must lie in \[0, 3\)"),
    ((np.zeros((2, 3), np.float32), np.zeros((2, 2), np.int64)), "x must"),
])
def test_gather_rejects_bad_input(fn, args, match):
    with pytest.raises(KernelInputError, match=match):
        fn(*args)


def test_index_for_length_slices_and_extends():
    """``t ≤ n``: the leading block; ``t > n`` with ``extend``: the saturating Toeplitz extension
    (``d(clip(i - j, ±(n - 1)))``), equal to the clamped distance table built at that length."""
    n, span = 7, 3

    def clamped(t):
        i, j = np.indices((t, t))
        return np.clip(i - j + span, 0, 2 * span - 1)

    index = clamped(n)
    np.testing.assert_array_equal(index_for_length(index, 4), index[:4, :4])
    np.testing.assert_array_equal(index_for_length(index, n, extend=True), index)
    for t in (n + 1, 3 * n):
        got = index_for_length(index, t, extend=True)
        assert got.dtype == index.dtype
        np.testing.assert_array_equal(got, clamped(t))
    with pytest.raises(KernelInputError, match="exceeds the 7 positions"):
        index_for_length(index, n + 1)
    with pytest.raises(KernelInputError, match="Toeplitz"):
        index_for_length(index[:, ::-1], n + 1, extend=True)
    assert toeplitz_diagonal(index[:, :-1]) is None

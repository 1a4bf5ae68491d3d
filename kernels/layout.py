"""Axis permutes of integer tensors (the attention blocks' head split and merge), with a
parallel CPU kernel for the two permutes the lowering emits.

The lowering splits a ``[B, T, H·d]`` projection into heads with ``reshape`` and
``transpose`` (perm ``(0, 2, 1, 3)``), hands ``P·V`` its right operand transposed
(``(0, 1, 3, 2)``) and merges the heads back (``(0, 2, 1, 3)``).  numpy copies these
strided views on one thread; at batch 8 they took 5-10 % of a RoBERTa-base forward pass.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from ._util import output_array
from .errors import KernelInputError
from .registry import register

__all__ = ["transpose_ref", "transpose_cpu"]

SWAP_MIDDLE = (0, 2, 1, 3)  # [B, T, H, d] <-> [B, H, T, d]
SWAP_LAST = (0, 1, 3, 2)  # [B, H, T, d] -> [B, H, d, T]
PAR_MIN_SIZE = 1 << 18  # elements; below this numpy's one-thread copy beat the parallel kernel (batch 1: 13 vs 20 µs)


def _check_perm(x, perm) -> tuple[int, ...]:
    try:
        ok = _valid_perm(tuple(perm), np.ndim(x))
    except TypeError:  # not iterable, or unhashable entries
        ok = None
    if ok is None:
        raise KernelInputError(f"perm must be a permutation of the {np.ndim(x)} axes of x (shape "
                               f"{tuple(np.shape(x))}), got {perm!r}")
    return ok


@functools.lru_cache(maxsize=64)
def _valid_perm(perm: tuple, ndim: int) -> tuple[int, ...] | None:
    """``perm`` as a tuple of ints when it permutes ``range(ndim)``, else None (cached: the
    runtime passes the same few permutations on every call)."""
    try:
        ints = tuple(int(p) for p in perm)
    except (TypeError, ValueError):
        return None
    return ints if sorted(ints) == list(range(ndim)) else None


@register("transpose", "ref")
def transpose_ref(x: np.ndarray, perm) -> np.ndarray:
    """``out = x`` with its axes permuted (numpy's ``transpose``: axis ``k`` of ``out`` is axis
    ``perm[k]`` of ``x``), C-contiguous.

    * ``x``: any dtype and shape; ``perm``: a permutation of ``range(x.ndim)``.
    * Output: ``x``'s dtype, shape ``[x.shape[p] for p in perm]``.  Pure data movement: no
      arithmetic, so no rounding and no overflow.
    """
    return np.transpose(np.asarray(x), _check_perm(x, perm)).copy()  # (a C-order copy; keeps 0-d arrays 0-d)


@numba.njit(parallel=True, cache=True)
def _swap_middle(x, out):
    """``out[b, h, t, :] = x[b, t, h, :]``, one task per ``(b, h)``."""
    nb, nt, nh, nd = x.shape
    for bh in numba.prange(nb * nh):
        b = bh // nh
        h = bh - b * nh
        for t in range(nt):
            for d in range(nd):
                out[b, h, t, d] = x[b, t, h, d]


@numba.njit(parallel=True, cache=True)
def _swap_last(x, out):
    """``out[b, h, d, t] = x[b, h, t, d]``, one task per ``(b, h)``."""
    nb, nh, nt, nd = x.shape
    for bh in numba.prange(nb * nh):
        b = bh // nh
        h = bh - b * nh
        for d in range(nd):
            for t in range(nt):
                out[b, h, d, t] = x[b, h, t, d]


@register("transpose", "cpu")
def transpose_cpu(x: np.ndarray, perm, *, out=None) -> np.ndarray:
    """:func:`transpose_ref` (the same array): C-contiguous 4-D inputs of at least
    ``PAR_MIN_SIZE`` elements permuted by ``SWAP_MIDDLE`` or ``SWAP_LAST`` go through a
    parallel numba loop (batch 8, RoBERTa-base heads: 2.3-2.5x numpy's copy), anything else
    through numpy.  ``out``: optional C-contiguous array of the output's shape and ``x``'s
    dtype, written and returned."""
    perm = _check_perm(x, perm)
    x = np.asarray(x)
    out = output_array(out, tuple(x.shape[p] for p in perm), x.dtype)
    if x.ndim == 4 and x.size >= PAR_MIN_SIZE and x.flags.c_contiguous and perm in (SWAP_MIDDLE, SWAP_LAST):
        (_swap_middle if perm == SWAP_MIDDLE else _swap_last)(x, out)
    else:
        np.copyto(out, np.transpose(x, perm))
    return out

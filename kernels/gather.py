"""Relative-position gather (DeBERTa's c2p / p2c terms): an integer data-movement kernel.

``rel_gather(x, index)`` picks, in every row ``i`` of ``x [..., T, N]``, the ``T'`` columns
``index[i, :]`` of the table row: ``out[..., i, j] = x[..., i, index[i, j]]``.  In DeBERTa, ``x``
is ``Q·Krᵀ`` over all ``2S`` relative distances and ``index`` the clamped / log-bucketed
distance ``δ(i, j)`` sliced to the current length, so the output is the ``[T, T]`` score term.
"""

from __future__ import annotations

import numba
import numpy as np

from ._util import check_int
from .errors import KernelInputError
from .registry import register

__all__ = ["rel_gather_ref", "rel_gather_cpu"]


def _check_gather_args(x, index) -> None:
    check_int("x", x, (np.int8, np.uint8, np.int16, np.int32, np.int64))
    check_int("index", index, (np.int32, np.int64))
    shape, ishape = tuple(x.shape), tuple(index.shape)
    if len(shape) < 2 or len(ishape) != 2 or ishape[0] != shape[-2]:
        raise KernelInputError(f"rel_gather: x [..., T, N] and index [T, T'] must share T, got x {shape}, index {ishape}")
    host = index.copy_to_host() if hasattr(index, "copy_to_host") else np.asarray(index)
    if host.size and (int(host.min()) < 0 or int(host.max()) >= shape[-1]):
        raise KernelInputError(f"rel_gather: index values must lie in [0, {shape[-1]}), got "
                               f"[{int(host.min())}, {int(host.max())}]")


@register("rel_gather", "ref")
def rel_gather_ref(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``out[..., i, j] = x[..., i, index[i, j]]`` (numpy specification).

    * ``x``: any integer dtype (int32 accumulators in DeBERTa), ``[..., T, N]``.
    * ``index``: int32/int64 ``[T, T']`` with ``0 ≤ index < N`` (checked).
    * Output: ``x``'s dtype, ``[..., T, T']``.  Pure data movement: no arithmetic, no rounding,
      no overflow.
    """
    _check_gather_args(x, index)
    x = np.asarray(x)
    idx = np.asarray(index, dtype=np.int64)
    return np.take_along_axis(x, np.broadcast_to(idx, x.shape[:-1] + (idx.shape[1],)), axis=-1)


@numba.njit(parallel=True, cache=True)
def _gather_rows(x3, idx, out3):
    lead, t, tp = out3.shape
    for task in numba.prange(lead * t):
        n = task // t
        i = task - n * t
        for j in range(tp):
            out3[n, i, j] = x3[n, i, idx[i, j]]


@register("rel_gather", "cpu")
def rel_gather_cpu(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """numba :func:`rel_gather_ref` (bit-exact): one parallel task per ``(batch, row)``."""
    _check_gather_args(x, index)
    x = np.asarray(x)
    shape = x.shape
    x3 = np.ascontiguousarray(x).reshape(-1, shape[-2], shape[-1])
    idx = np.ascontiguousarray(index, dtype=np.int64)
    out3 = np.empty((x3.shape[0], shape[-2], idx.shape[1]), x.dtype)
    if out3.size:
        _gather_rows(x3, idx, out3)
    return out3.reshape(shape[:-1] + (idx.shape[1],))

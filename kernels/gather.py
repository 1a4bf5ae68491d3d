"""Relative-position gather and scatter-add: integer data movement along relative distances.

``rel_gather(x, index)`` (DeBERTa's c2p / p2c terms) picks, in every row ``i`` of
``x [..., T, N]``, the ``T'`` columns ``index[i, :]`` of the table row:
``out[..., i, j] = x[..., i, index[i, j]]``.  In DeBERTa, ``x`` is ``Q·Krᵀ`` over all ``2S``
relative distances and ``index`` the clamped / log-bucketed distance ``δ(i, j)`` sliced to the
current length, so the output is the ``[T, T]`` score term.

``rel_scatter_add(p, index, size)`` (NEZHA's relative value term) is its transpose: it sums, in
every row ``i``, the u8 probabilities ``p[..., i, j]`` of the keys ``j`` at the same relative
distance bucket ``index[i, j]``, so that ``Σ_j p_ij·table[δ(i, j)] = Σ_d out[i, d]·table[d]``
becomes one small matmul.
"""

from __future__ import annotations

import numba
import numpy as np

from ._util import check_int, is_int_scalar, output_array
from .errors import KernelInputError
from .registry import register

__all__ = ["rel_gather_ref", "rel_gather_cpu", "rel_scatter_add_ref", "rel_scatter_add_cpu", "toeplitz_diagonal",
           "index_for_length"]


def toeplitz_diagonal(index) -> np.ndarray | None:
    """``d`` (int64, ``2n - 1`` entries) with ``index[i, j] == d[i - j + n - 1]`` for every entry of
    the square ``[n, n]`` table (a relative-position index: clamped or log-bucketed ``i - j``),
    else ``None``."""
    index = np.asarray(index)
    if index.ndim != 2 or index.shape[0] != index.shape[1] or index.shape[0] == 0:
        return None
    n = index.shape[0]
    d = np.concatenate([index[0, :0:-1], index[:, 0]]).astype(np.int64)  # i - j = -(n-1) .. n-1
    i, j = np.indices(index.shape)
    return d if np.array_equal(index, d[i - j + n - 1]) else None


def index_for_length(index: np.ndarray, t: int, extend: bool = False) -> np.ndarray:
    """The ``[t, t]`` relative-position index of sequence length ``t`` from a captured ``[n, n]`` table.

    ``t ≤ n``: the leading ``[t, t]`` block.  ``t > n`` needs ``extend``: the table must then be a
    *saturating Toeplitz* table, ``index[i, j] = d(i - j)`` with ``d`` constant beyond the
    distances ``±(n - 1)`` it holds (DeBERTa's clamped / log-bucketed distances captured past
    their saturation point), and the block is ``d(clip(i - j, -(n - 1), n - 1))``.  Otherwise
    :class:`KernelInputError` names the lengths.  Integer data movement only.
    """
    n = index.shape[0]
    if t <= n:
        return index[:t, :t]
    if not extend:
        raise KernelInputError(f"sequence length {t} exceeds the {n} positions of the relative-position index")
    d = toeplitz_diagonal(index)
    if d is None:
        raise KernelInputError("an extendable relative-position index must be a square Toeplitz table "
                               "(index[i, j] a function of i - j)")
    pos = np.arange(t, dtype=np.int64)
    dist = np.clip(pos[:, None] - pos[None, :], -(n - 1), n - 1) + (n - 1)
    return d[dist].astype(index.dtype)


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
def rel_gather_cpu(x: np.ndarray, index: np.ndarray, out=None) -> np.ndarray:
    """numba :func:`rel_gather_ref` (bit-exact): one parallel task per ``(batch, row)``;
    ``out``: optional preallocated result."""
    _check_gather_args(x, index)
    x = np.asarray(x)
    shape = x.shape
    x3 = np.ascontiguousarray(x).reshape(-1, shape[-2], shape[-1])
    idx = np.ascontiguousarray(index, dtype=np.int64)
    result = output_array(out, shape[:-1] + (idx.shape[1],), x.dtype)
    out3 = result.reshape(x3.shape[0], shape[-2], idx.shape[1])
    if out3.size:
        _gather_rows(x3, idx, out3)
    return result


# ----------------------------------------------------------------------------- scatter-add

MAX_SCATTER_KEYS = 1 << 23  # 255 · T' < 2^31: the int32 bucket sums cannot overflow


def _check_scatter_args(p, index, size) -> None:
    check_int("p", p, (np.uint8,))
    check_int("index", index, (np.int32, np.int64))
    shape, ishape = tuple(p.shape), tuple(index.shape)
    if len(shape) < 2 or len(ishape) != 2 or ishape != shape[-2:]:
        raise KernelInputError(f"rel_scatter_add: p [..., T, T'] and index [T, T'] must share [T, T'], got p {shape}, "
                               f"index {ishape}")
    if not is_int_scalar(size) or size < 1:
        raise KernelInputError(f"rel_scatter_add: size must be a positive integer, got {size!r}")
    if shape[-1] > MAX_SCATTER_KEYS:
        raise KernelInputError(f"rel_scatter_add: at most {MAX_SCATTER_KEYS} keys per row (int32 sums), got {shape[-1]}")
    host = index.copy_to_host() if hasattr(index, "copy_to_host") else np.asarray(index)
    if host.size and (int(host.min()) < 0 or int(host.max()) >= size):
        raise KernelInputError(f"rel_scatter_add: index values must lie in [0, {size}), got "
                               f"[{int(host.min())}, {int(host.max())}]")


@register("rel_scatter_add", "ref")
def rel_scatter_add_ref(p: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
    """``out[..., i, d] = min(Σ_{j : index[i, j] = d} p[..., i, j], 255)`` (numpy specification).

    * ``p``: uint8 ``[..., T, T']`` (softmax probabilities at scale 1/255).
    * ``index``: int32/int64 ``[T, T']`` with ``0 ≤ index < size`` (checked).
    * Output: uint8 ``[..., T, size]`` at ``p``'s scale.  The sums are exact (int32 accumulators:
      ``255·T' < 2^31`` for ``T' ≤ 2^23``, checked) and saturate at 255; no rounding.  A bucket
      never exceeds its row's total, which exceeds 255 only by the softmax's rounding.
    """
    _check_scatter_args(p, index, size)
    p = np.asarray(p)
    t, tp = p.shape[-2:]
    lead = int(np.prod(p.shape[:-2], dtype=np.int64))
    idx = np.asarray(index, dtype=np.int64)
    rows = (np.arange(lead)[:, None, None] * t + np.arange(t)[None, :, None]) * size + idx[None]
    acc = np.bincount(rows.ravel(), weights=p.reshape(-1), minlength=lead * t * size)  # float64: exact below 2^53
    return np.minimum(acc, 255).astype(np.uint8).reshape(p.shape[:-1] + (size,))


@numba.njit(parallel=True, cache=True)
def _scatter_rows(p3, idx, out3):
    lead, t, size = out3.shape
    tp = p3.shape[2]
    for task in numba.prange(lead * t):
        n = task // t
        i = task - n * t
        acc_i32 = np.zeros(size, np.int32)
        for j in range(tp):
            acc_i32[idx[i, j]] += np.int32(p3[n, i, j])
        for d in range(size):
            out3[n, i, d] = min(acc_i32[d], 255)


@register("rel_scatter_add", "cpu")
def rel_scatter_add_cpu(p: np.ndarray, index: np.ndarray, size: int, out=None) -> np.ndarray:
    """numba :func:`rel_scatter_add_ref` (bit-exact): one parallel task per ``(batch, row)``;
    ``out``: optional preallocated result."""
    _check_scatter_args(p, index, size)
    p = np.asarray(p)
    shape = p.shape
    p3 = np.ascontiguousarray(p).reshape(-1, shape[-2], shape[-1])
    idx = np.ascontiguousarray(index, dtype=np.int64)
    result = output_array(out, shape[:-1] + (int(size),), np.uint8)
    out3 = result.reshape(p3.shape[0], shape[-2], int(size))
    if out3.size:
        _scatter_rows(p3, idx, out3)
    return result

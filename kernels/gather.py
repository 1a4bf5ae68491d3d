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

``rel_scores`` (DeBERTa's score sum) fuses both gathers, the p2c transpose and the two rescaled
adds of a layer; its ``ref`` is that composition.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._llvm import all_ints, args_i64
from ._util import check_int, container_for_bits, is_int_scalar, memo_frozen, output_array, qmax_for_bits
from .errors import KernelInputError
from .registry import register
from .requant import _scalar_multiplier, rescale_add_cpu, rescale_add_ref, rshift_round, wide_vectors

__all__ = ["rel_gather_ref", "rel_gather_cpu", "rel_scatter_add_ref", "rel_scatter_add_cpu", "rel_scores_ref",
           "rel_scores_cpu", "toeplitz_diagonal", "index_for_length"]


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


# ----------------------------------------------------------------------------- DeBERTa's score sum

def _check_scores_args(qk, c2p_all, c2p_index, p2c_all, p2c_index) -> None:
    shape = tuple(qk.shape)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise KernelInputError(f"rel_scores: qk must be [..., T, T], got {shape}")
    for name, x, index in (("c2p_all", c2p_all, c2p_index), ("p2c_all", p2c_all, p2c_index)):
        if tuple(x.shape)[:-1] != shape[:-1] or tuple(index.shape) != shape[-2:]:
            raise KernelInputError(f"rel_scores: {name} must be [..., T, N] with qk's leading dims and its index "
                                   f"[T, T] (T = {shape[-1]}), got {name} {tuple(x.shape)}, index "
                                   f"{tuple(index.shape)}")
        _check_gather_args(x, index)


@register("rel_scores", "ref")
def rel_scores_ref(qk: np.ndarray, c2p_all: np.ndarray, c2p_index: np.ndarray, p2c_all: np.ndarray,
                   p2c_index: np.ndarray, m_a1, shift_a1, m_b1, shift_b1, bits1: int, m_a2, shift_a2, m_b2, shift_b2,
                   bits2: int) -> np.ndarray:
    """DeBERTa's disentangled attention scores from its three products (numpy specification).

    Formula: exactly the composition of the specifications it fuses::

        c2p     = rel_gather_ref(c2p_all, c2p_index)                     # content → position
        p2c     = swapaxes(rel_gather_ref(p2c_all, p2c_index), -1, -2)   # position → content
        partial = rescale_add_ref(qk, m_a1, shift_a1, c2p, m_b1, shift_b1, bits1)
        out     = rescale_add_ref(partial, m_a2, shift_a2, p2c, m_b2, shift_b2, bits2)

    * ``qk``: ``[..., T, T]``; ``c2p_all``, ``p2c_all``: ``[..., T, N]`` (the products with the
      relative tables, over every distance); integer dtypes as :func:`rel_gather_ref` (int32 in
      DeBERTa); indices int32/int64 ``[T, T]``, in range (checked).
    * Multipliers, ``bits1``/``bits2``, output (``bits2`` container, int16 in DeBERTa), rounding
      (half up in each branch, saturation of ``partial`` and ``out``) and overflow bound: those
      of :func:`~intengine.kernels.requant.rescale_add_ref`.

    Backends fuse it (no ``[..., T, T]`` intermediate goes through memory); the runtime rewrites
    the two gathers, the transpose and the two ``rescale_add`` of each DeBERTa layer into it.
    """
    _check_scores_args(qk, c2p_all, c2p_index, p2c_all, p2c_index)
    c2p = rel_gather_ref(c2p_all, c2p_index)
    p2c = np.swapaxes(rel_gather_ref(p2c_all, p2c_index), -1, -2)
    partial = rescale_add_ref(qk, m_a1, shift_a1, c2p, m_b1, shift_b1, bits1)
    return rescale_add_ref(partial, m_a2, shift_a2, p2c, m_b2, shift_b2, bits2)


@intrinsic
def _transpose16(typingctx, src_addr, src_stride, dst_addr, dst_stride):
    """``dst[c][r] = src[r][c]`` for a 16×16 int32 tile (row strides in bytes; integer addresses).

    16 row loads, four butterfly stages of two-input shuffles (distance 8, 4, 2, 1: rows ``r``
    and ``r + d`` exchange their ``d``-element blocks; ``vpermt2d`` on AVX-512), 16 row stores.
    """
    args = (src_addr, src_stride, dst_addr, dst_stride)
    if not all_ints(args):
        return None

    def codegen(context, builder, signature, llargs):
        src, sst, dst, dstr = args_i64(context, builder, signature, llargs)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        v16 = ir.VectorType(i32, 16)
        rows = []
        for r in range(16):
            ptr = builder.inttoptr(builder.add(src, builder.mul(sst, ir.Constant(i64, r))), v16.as_pointer())
            ld = builder.load(ptr)
            ld.align = 4
            rows.append(ld)
        for d in (8, 4, 2, 1):
            lo = ir.Constant(v16, [e if e & d == 0 else 16 + e - d for e in range(16)])
            hi = ir.Constant(v16, [e + d if e & d == 0 else 16 + e for e in range(16)])
            for r in range(16):
                if r & d == 0:
                    x, y = rows[r], rows[r + d]
                    rows[r], rows[r + d] = builder.shuffle_vector(x, y, lo), builder.shuffle_vector(x, y, hi)
        for r in range(16):
            ptr = builder.inttoptr(builder.add(dst, builder.mul(dstr, ir.Constant(i64, r))), v16.as_pointer())
            builder.store(rows[r], ptr).align = 4
        return context.get_dummy_value()

    return types.void(*args), codegen


@numba.njit(inline="always")
def _gather_row(src, index_row, base, step, dst):
    """``dst[j] = src[index_row[j]]``; a run (``index_row[j] = base + step·j``, ``step = ±1``)
    is a contiguous or reversed copy, without index loads."""
    n = dst.shape[0]
    if step == 1:
        for j in range(n):
            dst[j] = src[base + j]
    elif step == -1:
        for j in range(n):
            dst[j] = src[base - j]
    else:
        for j in range(n):
            dst[j] = src[index_row[j]]


def _index_runs(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of an index table: ``(base, step)`` with ``index[r, j] = base + step·j`` for every
    ``j`` and ``step = ±1``, else ``step = 0`` (a clamped row: indexed gather)."""
    idx = np.asarray(index, dtype=np.int64)
    base = np.ascontiguousarray(idx[:, 0])
    step = np.zeros(idx.shape[0], np.int64)
    j = np.arange(idx.shape[1], dtype=np.int64)
    for s in (1, -1):
        step[np.all(idx == base[:, None] + s * j[None, :], axis=1)] = s
    if idx.shape[1] == 1:
        step[:] = 1
    return base, step


_index_runs_cached = memo_frozen(maxsize=64)(_index_runs)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _scores_heads(qk3, c3, ic, cbase, cstep, p3, ip, pbase, pstep, ma1, ha1, sa1, mb1, hb1, sb1, q1, ma2, ha2, sa2,
                  mb2, hb2, sb2, q2, out3):
    """One parallel task per ``[T, T]`` head.  The p2c term is gathered 16 rows at a time into an
    L1 block and transposed into an L2-resident ``[T, T]`` scratch by 16×16 register tiles
    (:func:`_transpose16`); then per row the c2p row is gathered into an L1 buffer and both
    rescaled adds run on contiguous rows (int32 multipliers: ``vpmuldq``; ``|v·m| < 2^62`` so
    each branch is the one-add :func:`~intengine.kernels.requant.rshift_round`).  Index rows that
    are runs (:func:`_index_runs`) are copied without index loads."""
    heads, t = out3.shape[0], out3.shape[1]
    full = t - t % 16
    for h in numba.prange(heads):
        wide_vectors()
        # int32 multipliers, sign-extended inside the outlined loop body so that LLVM sees 32-bit
        # operands (vpmuldq); an i64 argument of the parfor function would give vpmullq
        ma1_i64, mb1_i64 = np.int64(np.int32(ma1)), np.int64(np.int32(mb1))
        ma2_i64, mb2_i64 = np.int64(np.int32(ma2)), np.int64(np.int32(mb2))
        scratch_i32 = np.empty((t, t), np.int32)
        block_i32 = np.empty((16, t), np.int32)
        for jb in range(0, t, 16):
            nj = min(16, t - jb)
            for r in range(nj):
                _gather_row(p3[h, jb + r], ip[jb + r], pbase[jb + r], pstep[jb + r], block_i32[r])
            if nj == 16:
                for ib in range(0, full, 16):
                    _transpose16(block_i32.ctypes.data + 4 * ib, 4 * t,
                                 scratch_i32.ctypes.data + 4 * (ib * t + jb), 4 * t)
                for i in range(full, t):
                    for r in range(16):
                        scratch_i32[i, jb + r] = block_i32[r, i]
            else:
                for i in range(t):
                    for r in range(nj):
                        scratch_i32[i, jb + r] = block_i32[r, i]
        c2p_i32 = np.empty(t, np.int32)
        for i in range(t):
            _gather_row(c3[h, i], ic[i], cbase[i], cstep[i], c2p_i32)
            qk_row, p2c_row, out_row = qk3[h, i], scratch_i32[i], out3[h, i]
            for j in range(t):
                v1_i64 = (rshift_round(np.int64(qk_row[j]) * ma1_i64, ha1, sa1)
                          + rshift_round(np.int64(c2p_i32[j]) * mb1_i64, hb1, sb1))
                v1_i64 = np.int64(np.int32(min(max(v1_i64, -q1), q1)))  # |v1| ≤ q1 < 2^31: 32×32→64 products
                v2_i64 = (rshift_round(v1_i64 * ma2_i64, ha2, sa2)
                          + rshift_round(np.int64(p2c_row[j]) * mb2_i64, hb2, sb2))
                out_row[j] = min(max(v2_i64, -q2), q2)


@register("rel_scores", "cpu")
def rel_scores_cpu(qk: np.ndarray, c2p_all: np.ndarray, c2p_index: np.ndarray, p2c_all: np.ndarray,
                   p2c_index: np.ndarray, m_a1, shift_a1, m_b1, shift_b1, bits1: int, m_a2, shift_a2, m_b2, shift_b2,
                   bits2: int, out=None) -> np.ndarray:
    """numba :func:`rel_scores_ref` (bit-exact): one pass per head for int32 products and
    per-tensor multipliers (DeBERTa's case), otherwise the cpu kernels it composes, in turn.
    ``out``: optional preallocated result."""
    _check_scores_args(qk, c2p_all, c2p_index, p2c_all, p2c_index)
    sc = [_scalar_multiplier(n, m, s) for n, m, s in (("a1", m_a1, shift_a1), ("b1", m_b1, shift_b1),
                                                     ("a2", m_a2, shift_a2), ("b2", m_b2, shift_b2))]
    arrays = (qk, c2p_all, p2c_all)
    if not (all(sc) and all(isinstance(a, np.ndarray) and a.dtype == np.int32 for a in arrays)
            and is_int_scalar(bits1) and 2 <= bits1 <= 32):
        c2p = rel_gather_cpu(c2p_all, c2p_index)
        p2c = np.ascontiguousarray(np.swapaxes(rel_gather_cpu(p2c_all, p2c_index), -1, -2))
        partial = rescale_add_cpu(qk, m_a1, shift_a1, c2p, m_b1, shift_b1, bits1)
        return rescale_add_cpu(partial, m_a2, shift_a2, p2c, m_b2, shift_b2, bits2, out=out)
    result = output_array(out, qk.shape, container_for_bits(bits2))
    t = qk.shape[-1]
    if result.size:
        (ma1, sa1), (mb1, sb1), (ma2, sa2), (mb2, sb2) = sc
        c3 = np.ascontiguousarray(c2p_all).reshape(-1, t, c2p_all.shape[-1])
        p3 = np.ascontiguousarray(p2c_all).reshape(-1, t, p2c_all.shape[-1])
        i64 = np.int64
        ic, ip = (np.ascontiguousarray(i, dtype=i64) for i in (c2p_index, p2c_index))
        _scores_heads(np.ascontiguousarray(qk).reshape(-1, t, t), c3, ic, *_index_runs_cached(c2p_index), p3, ip,
                      *_index_runs_cached(p2c_index), i64(ma1), i64(1 << (sa1 - 1)), i64(sa1), i64(mb1),
                      i64(1 << (sb1 - 1)), i64(sb1), i64(qmax_for_bits(bits1)), i64(ma2), i64(1 << (sa2 - 1)),
                      i64(sa2), i64(mb2), i64(1 << (sb2 - 1)), i64(sb2), i64(qmax_for_bits(bits2)),
                      result.reshape(-1, t, t))
    return result

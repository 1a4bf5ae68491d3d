"""int8 GEMM family: weight prepacking, ``linear`` (x·Wᵀ + b) and batched ``matmul`` (A·Bᵀ).

Both products accumulate exactly in int32 and either return the int32
accumulators or apply the dyadic requantization of
:func:`~intengine.kernels.requant.requantize_ref` in a fused epilogue (the
int32 tile never goes back to memory as the result).

Backends
--------
* ``ref``   numpy (exact float64 BLAS products, see :func:`linear_ref`).
* ``cpu``   numba, dispatched on the host CPU at import (``kernels/_vnni.py``):

  - **AMX** (``_vnni.HAVE_AMX``: AMX-INT8 and Linux granted the tile state;
    used when ``M ≥ 32``): 32×32 blocks from 2×2 tiles, ``tdpbssd`` on int8
    activations read in place (no copy when ``K % 64 == 0``), ``tdpbusd`` on
    uint8 ones; each block goes through a 4 KB scratch tile and is
    requantized by the block epilogue IR (``_vnni.epib_*``).
  - **AVX-512 VNNI** (``_vnni.HAVE_VNNI``): an 8×48 register-blocked
    micro-kernel calling ``vpdpbusd`` (24 zmm accumulators); int8
    activations are offset to uint8 (``x ^ 0x80 = x + 128``) and the offset
    removed with the precomputed ``128·Σ_k w[n, k]`` folded into the
    accumulators' initial value; the requantization runs on the accumulator
    registers before the only store.
  - ``linear``: weights prepacked once as ``[Np/16, Kp/4, 16, 4]`` (``Np``,
    ``Kp`` padded to 32 and 64), parallel over (column panel, row chunk) with
    numba ``prange``; one parallel region per call.  Read-only bias/m/shift
    (the runtime's constants) are validated and padded once per layer
    (:func:`_bind_linear`).
  - batched ``matmul`` (:func:`_mm_amx`, :func:`_mm_vnni`): one parallel
    region per call; a task (batch entry, column group, row chunk) packs its
    own columns of B into a task-local buffer, or reads a constant B packed
    once by ``pack_matmul_b``; Python-side shape checks and batch maps are
    cached per shape.
  - elsewhere :func:`linear_portable` / :func:`matmul_portable`
    (``torch._int_mm`` for the int32 product + a numba epilogue, or plain
    numba loops), bit-exact and callable directly on any host.
* ``cuda``  numba.cuda, ``kernels/cuda/gemm.py``.

``pack_matmul_b(b)`` (every backend) packs a constant right operand of
``matmul`` once; ``matmul(a, packed)`` equals ``matmul(a, b)`` bit for bit.
``linear_cpu``/``matmul_cpu`` take ``out=``: a writeable C-contiguous numpy
array of exactly the output's shape and dtype, written and returned.

Overflow bound (all backends): the exact result must fit in int32.
``|x·w| ≤ 128·128`` for int8 × int8 and ``≤ 255·128`` for uint8 × int8, so
with ``K ≤ MAX_K = 65536`` and ``|bias| < 2^30`` every accumulator satisfies
``|acc| ≤ K·255·128 + |bias| < 2^31`` (int8: ``K·2^14 + 2^30 < 2^31``).  Both
limits are checked at call time (``KernelInputError``).  Inside the VNNI/AMX
kernels partial sums (offset by +128 on VNNI) wrap modulo 2^32
(``vpdpbusd``/``tdpb*d`` do not saturate), which is harmless because the
final value is in range.
"""

from __future__ import annotations

import collections
import functools
import math
import warnings
from dataclasses import dataclass

import numba
import numpy as np

from . import _vnni
from ._util import check_int, container_for_bits, is_int_scalar, memo_frozen, qmax_for_bits
from .errors import KernelInputError
from .registry import register
from .requant import MAX_SHIFT, MIN_SHIFT, MULT_BITS, _check_requant_args, requantize_ref, round_shift, saturate

MAX_K = 1 << 16  # reduction length limit (int32 accumulators cannot overflow below it)
MAX_ABS_BIAS = 1 << 30  # |bias| must be < 2^30
PANEL = _vnni.NR_BLOCK * _vnni.NBLK_MAX  # output columns per VNNI task (48)


# ----------------------------------------------------------------------------- argument checks


@dataclass(frozen=True)
class Epilogue:
    """Validated output stage: int32 accumulators, or requantization to ``out_bits``.

    ``m_i32`` (int32) and ``s_i64`` (int64) always hold ``max(N, 1)`` entries;
    kernels sign-extend ``m`` to 64 bits before the product.
    """

    requant: bool
    out_dtype: type
    m_i32: np.ndarray  # [N]
    s_i64: np.ndarray  # [N]
    q: int


@functools.lru_cache(maxsize=256)
def _const_epilogue(n: int, m: int | None, s: int | None, out_bits: int) -> Epilogue:
    width = max(n, 1)
    if m is None:
        e = Epilogue(False, np.int32, np.zeros(width, np.int32), np.ones(width, np.int64), 0)
    else:
        e = Epilogue(True, container_for_bits(out_bits), np.full(width, m, np.int32), np.full(width, s, np.int64),
                     qmax_for_bits(out_bits))
    e.m_i32.setflags(write=False)
    e.s_i64.setflags(write=False)
    return e


def epilogue_params(n: int, m_i32, shift, out_bits: int) -> Epilogue:
    """Check ``m_i32``/``shift``/``out_bits`` for ``n`` output channels (same rules and messages as requantize).

    Fast paths (this runs on every call): integer scalars are validated in
    Python and their broadcast vectors cached; int32/int64 vectors of length
    ``n`` are range-checked with two reductions each.  Anything else, and every
    failure, goes through :func:`~intengine.kernels.requant._check_requant_args`.
    """
    if m_i32 is None and shift is None:
        return _const_epilogue(n, None, None, 8)
    if m_i32 is None or shift is None:
        raise KernelInputError("m_i32 and shift must be given together (or both omitted for int32 output)")
    if (is_int_scalar(m_i32) and is_int_scalar(shift) and is_int_scalar(out_bits)
            and abs(int(m_i32)) < (1 << MULT_BITS) and MIN_SHIFT <= int(shift) <= MAX_SHIFT and 2 <= int(out_bits) <= 32):
        return _const_epilogue(n, int(m_i32), int(shift), int(out_bits))
    if (isinstance(m_i32, np.ndarray) and isinstance(shift, np.ndarray) and m_i32.shape == (n,) == shift.shape
            and n > 0 and m_i32.dtype in (np.int32, np.int64) and shift.dtype in (np.int32, np.int64)
            and is_int_scalar(out_bits) and 2 <= int(out_bits) <= 32):
        if (int(m_i32.min()) > -(1 << MULT_BITS) and int(m_i32.max()) < (1 << MULT_BITS)
                and int(shift.min()) >= MIN_SHIFT and int(shift.max()) <= MAX_SHIFT):
            return Epilogue(True, container_for_bits(out_bits), np.ascontiguousarray(m_i32, dtype=np.int32),
                            np.ascontiguousarray(shift, dtype=np.int64), qmax_for_bits(out_bits))
    out_dtype, m_vec, s_vec = _check_requant_args(np.empty((0, n), np.int32), m_i32, shift, out_bits)
    if n == 0:
        m_vec, s_vec = np.zeros(1, np.int64), np.ones(1, np.int64)
    return Epilogue(True, out_dtype, m_vec.astype(np.int32), s_vec, qmax_for_bits(out_bits))


def _check_k(k: int) -> None:
    if k > MAX_K:
        raise KernelInputError(f"reduction length K={k} exceeds MAX_K={MAX_K} (int32 accumulators could overflow)")


def check_bias(bias, n: int) -> np.ndarray | None:
    """Validate an optional int32 bias ``[N]``; returns it as a host array (or None)."""
    if bias is None:
        return None
    check_int("bias_i32", bias, (np.int32,))
    if tuple(bias.shape) != (n,):
        raise KernelInputError(f"bias_i32 must have shape ({n},), got {tuple(bias.shape)}")
    host = bias.copy_to_host() if hasattr(bias, "copy_to_host") else np.asarray(bias)
    if host.size and (int(host.min()) <= -MAX_ABS_BIAS or int(host.max()) >= MAX_ABS_BIAS):
        raise KernelInputError("bias_i32 must satisfy |bias| < 2^30 (int32 accumulator bound)")
    return np.ascontiguousarray(host)


def check_weight(w) -> None:
    check_int("w_i8", w, (np.int8,))
    if len(w.shape) != 2:
        raise KernelInputError(f"w_i8 must be 2-D [N, K], got shape {tuple(w.shape)}")
    _check_k(w.shape[1])


def check_linear_x(x, k: int) -> None:
    check_int("x_i8", x, (np.int8,))
    shape = tuple(x.shape)  # (device arrays of the CUDA simulator do not index shapes from the end)
    if len(shape) < 1 or shape[-1] != k:
        raise KernelInputError(f"x_i8 must have shape [..., K={k}] to match the packed weight, got {shape}")


def matmul_shapes(a, b) -> tuple[tuple[int, ...], int, int, int]:
    """Validate ``matmul`` operands; return ``(batch_shape, M, N, K)``."""
    check_int("a", a, (np.int8, np.uint8))
    check_int("b", b, (np.int8,))
    a_shape, b_shape = tuple(a.shape), tuple(b.shape)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise KernelInputError(f"a [..., M, K] and b [..., N, K] must be at least 2-D, got {a_shape}, {b_shape}")
    if a_shape[-1] != b_shape[-1]:
        raise KernelInputError(f"a and b must share the last (K) axis, got a {a_shape} and b {b_shape}")
    try:
        batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        raise KernelInputError(
            f"leading (batch) dims of a {a_shape} and b {b_shape} do not broadcast"
        ) from None
    _check_k(a_shape[-1])
    return batch, a_shape[-2], b_shape[-2], a_shape[-1]


def batch_maps(batch, a_batch, b_batch) -> tuple[np.ndarray, np.ndarray]:
    """For each flattened output batch index, the flattened batch index into a and into b."""
    na = int(np.prod(a_batch, dtype=np.int64))
    nb = int(np.prod(b_batch, dtype=np.int64))
    ia = np.broadcast_to(np.arange(na, dtype=np.int64).reshape(a_batch), batch).ravel()
    ib = np.broadcast_to(np.arange(nb, dtype=np.int64).reshape(b_batch), batch).ravel()
    return np.ascontiguousarray(ia), np.ascontiguousarray(ib)


# ----------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class RefPackedWeight:
    """``ref`` backend packed weight: the int8 ``[N, K]`` matrix itself."""

    w_i8: np.ndarray

    @property
    def n(self) -> int:
        return self.w_i8.shape[0]

    @property
    def k(self) -> int:
        return self.w_i8.shape[1]


def _exact_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ swapaxes(b)`` exactly, as int64.

    float64 BLAS is exact here: each product is at most 255·128 < 2^15 and each
    partial sum at most K·2^15 ≤ 2^31 < 2^53, so no rounding ever happens
    (whatever the summation order or FMA use).
    """
    return np.matmul(a.astype(np.float64), np.swapaxes(b.astype(np.float64), -1, -2)).astype(np.int64)


def _check_packed(packed, cls, backend: str):
    if not isinstance(packed, cls):
        raise KernelInputError(
            f"packed must be the result of get_kernel('pack_weight', {backend!r}) ({cls.__name__}), got {type(packed).__name__}"
        )


@register("pack_weight", "ref")
def pack_weight_ref(w_i8: np.ndarray) -> RefPackedWeight:
    """Prepack an int8 weight ``[N, K]`` (``nn.Linear`` layout) for :func:`linear_ref`.

    The ``ref`` form is just a read-only contiguous copy.  Other backends use
    their own layout (cpu: VNNI ``[N/16, K/4, 16, 4]`` + ``128·Σw``; cuda:
    device arrays); a packed weight only works with its own backend's
    ``linear``.  Runs once, at lowering time.  ``K ≤ MAX_K``.
    """
    check_weight(w_i8)
    w = np.array(w_i8, dtype=np.int8, order="C", copy=True)
    w.setflags(write=False)
    return RefPackedWeight(w)


@register("linear", "ref")
def linear_ref(x_i8: np.ndarray, packed: RefPackedWeight, bias_i32=None, m_i32=None, shift=None, out_bits: int = 8):
    """Integer linear layer ``y = x · Wᵀ + b``, optionally requantized.

    Formula, for ``x [..., K]`` and ``W [N, K]``::

        acc[..., n] = Σ_k x[..., k] · W[n, k] + bias[n]           (exact, int32)
        y[..., n]   = clip(floor((acc · m[n] + 2^(s[n]-1)) / 2^s[n]), -Q, Q)   if m_i32 given

    * ``x_i8``: int8 ``[..., K]``; ``packed``: from ``pack_weight`` of the same
      backend; ``bias_i32``: int32 ``[N]`` or None.
    * Without ``m_i32``/``shift``: returns the int32 accumulators ``[..., N]``
      (``out_bits`` is ignored).  With them (scalars or per-output-channel
      ``[N]`` vectors from ``quantize_multiplier``): returns
      ``requantize_ref(acc, m_i32, shift, out_bits)`` – int8 in [-127, 127] for
      ``out_bits=8``, int16/int32 containers for 16/32 – rounding half up,
      symmetric saturation.
    * Overflow: ``|acc| ≤ K·128·128 + |bias| < 2^31`` is guaranteed by the
      checked limits ``K ≤ 65536`` and ``|bias| < 2^30``.
    """
    _check_packed(packed, RefPackedWeight, "ref")
    check_linear_x(x_i8, packed.k)
    bias = check_bias(bias_i32, packed.n)
    ep = epilogue_params(packed.n, m_i32, shift, out_bits)
    acc = _exact_product(x_i8, packed.w_i8)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    acc_i32 = acc.astype(np.int32)
    if not ep.requant:
        return acc_i32
    return requantize_ref(acc_i32, m_i32, shift, out_bits)


@register("matmul", "ref")
def matmul_ref(a: np.ndarray, b, m_i32=None, shift=None, out_bits: int = 8):
    """Batched integer ``A · Bᵀ`` ("NT" layout), optionally requantized.

    Formula, for ``a [..., M, K]`` and ``b [..., N, K]``::

        acc[..., m, n] = Σ_k a[..., m, k] · b[..., n, k]          (exact, int32)
        y = requantize_ref(acc, m_i32, shift, out_bits)           if m_i32 given

    * ``a``: int8, or uint8 (softmax probabilities 0..255); ``b``: int8.  Q·Kᵀ
      is ``matmul(q, k)``; P·V is ``matmul(p, vᵀ)`` (pass V transposed,
      ``[..., d, seq]``).
    * Leading dims broadcast like numpy (e.g. ``b [H, N, K]`` against
      ``a [B, H, M, K]`` for DeBERTa position tables).
    * Output ``[*broadcast(batch), M, N]``: int32 without ``m_i32``/``shift``;
      with them (scalar or per-column ``[N]``) requantized as in
      :func:`~intengine.kernels.requant.requantize_ref`.
    * ``b`` may also be the result of ``pack_matmul_b`` of the same backend
      (a constant operand packed once); the result is identical.
    * Overflow: ``|acc| ≤ K·255·128 < 2^31`` for ``K ≤ 65536`` (checked).
    """
    b, _ = _unpack_b(b, RefPackedMatmulB, "ref")
    batch, mm, nn, kk = matmul_shapes(a, b)
    ep = epilogue_params(nn, m_i32, shift, out_bits)
    acc_i32 = _exact_product(a, b).astype(np.int32)
    acc_i32 = np.broadcast_to(acc_i32, batch + (mm, nn))
    if not ep.requant:
        return np.ascontiguousarray(acc_i32)
    return requantize_ref(np.ascontiguousarray(acc_i32), m_i32, shift, out_bits)


# ----------------------------------------------------------------------------- cpu: packing


def _prod(dims) -> int:
    return math.prod(int(d) for d in dims)


def _round_up(v: int, to: int) -> int:
    return (v + to - 1) // to * to


def aligned_zeros(shape, dtype, align: int = 64) -> np.ndarray:
    """Zeroed array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.zeros(nbytes + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off:off + nbytes].view(dtype).reshape(shape)


@numba.njit(inline="always")
def _pack_block(w8, w32, out32, corr, t, nbb, need_corr):
    """Column block ``t = (batch, nb)``: 4-byte words of 16 rows → ``out32[b, nb, :, j]``; optional 128·Σw."""
    bi = t // nbb
    nb = t - bi * nbb
    n = w8.shape[1]
    k = w8.shape[2]
    kq = w32.shape[2]
    for j in range(min(16, n - nb * 16)):
        r = nb * 16 + j
        src = w32[bi, r]
        for kb in range(kq):
            out32[bi, nb, kb, j] = src[kb]
        if need_corr:
            row = w8[bi, r]
            acc = 0
            for kk in range(k):
                acc += np.int64(row[kk])
            corr[bi, r] = np.int32(128 * acc)


@numba.njit(parallel=True, cache=True)
def _pack_par(w8, w32, out32, corr, need_corr):
    nbb = (w8.shape[1] + 15) // 16
    for t in numba.prange(w8.shape[0] * nbb):
        _pack_block(w8, w32, out32, corr, t, nbb, need_corr)


@numba.njit(cache=True)
def _pack_ser(w8, w32, out32, corr, need_corr):
    nbb = (w8.shape[1] + 15) // 16
    for t in range(w8.shape[0] * nbb):
        _pack_block(w8, w32, out32, corr, t, nbb, need_corr)


PACK_PARALLEL_BYTES = 1 << 20  # smaller operands (attention K/V per call) pack on one thread


def pack_vnni(w3: np.ndarray, need_corr: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pack int8 ``[B, N, K]`` → (``[B, Np/16, Kp/4, 16, 4]`` int8, 64-byte aligned; ``128·Σw`` int32 ``[B, Np]``).

    Zero padded to ``Np = ⌈N/32⌉·32`` and ``Kp = ⌈K/64⌉·64`` so that AMX reads
    whole 16×64-byte B tiles (the VNNI kernel just multiplies the zeros).  The
    correction is only computed with ``need_corr`` (else zeros): AMX multiplies
    int8 × int8 directly and uint8 activations need none.
    """
    nbat, n, k = w3.shape
    npad = _round_up(max(n, 1), _vnni.AMX_NR)
    kpad = _round_up(max(k, 1), _vnni.AMX_KC)
    wp = aligned_zeros((nbat, npad // 16, kpad // 4, 16, 4), np.int8)
    corr = np.zeros((nbat, npad), np.int32)
    if n and k:
        w8 = np.ascontiguousarray(w3)
        if k % 4:
            w8p = np.zeros((nbat, n, _round_up(k, 4)), np.int8)
            w8p[:, :, :k] = w8
        else:
            w8p = w8
        w32 = w8p.view(np.int32)
        out32 = wp.view(np.int32).reshape(nbat, npad // 16, kpad // 4, 16)
        pack = _pack_par if w3.size >= PACK_PARALLEL_BYTES else _pack_ser
        pack(w8, w32, out32, corr, need_corr)
    return wp, corr


def unpack_vnni(wp: np.ndarray, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`pack_vnni` for one matrix ``[NB, KB, 16, 4]`` → ``[N, K]``."""
    nb, kb = wp.shape[:2]
    return np.ascontiguousarray(wp.transpose(0, 2, 1, 3).reshape(nb * 16, kb * 4)[:n, :k])


@dataclass(frozen=True)
class CpuPackedWeight:
    """``cpu`` backend packed weight.

    ``layout == "vnni"``: ``data`` int8 ``[⌈N/16⌉, ⌈K/4⌉, 16, 4]`` (64-byte
    aligned, zero padded) and ``corr_i32 [Np] = 128·Σ_k w[n, k]``.
    ``layout == "nk"`` (hosts without VNNI): ``data`` is the int8 ``[N, K]`` matrix.
    """

    layout: str
    n: int
    k: int
    data: np.ndarray
    corr_i32: np.ndarray | None = None

    def nk(self) -> np.ndarray:
        """The weight as int8 ``[N, K]`` (a view or an unpacked copy)."""
        if self.layout == "nk":
            return self.data
        return unpack_vnni(self.data, self.n, self.k)


def pack_weight_portable(w_i8: np.ndarray) -> CpuPackedWeight:
    check_weight(w_i8)
    w = np.array(w_i8, dtype=np.int8, order="C", copy=True)
    w.setflags(write=False)
    return CpuPackedWeight("nk", w.shape[0], w.shape[1], w)


def pack_weight_vnni(w_i8: np.ndarray) -> CpuPackedWeight:
    check_weight(w_i8)
    wp, corr = pack_vnni(np.asarray(w_i8)[None])
    wp, corr = wp[0], corr[0]
    wp.setflags(write=False)
    corr.setflags(write=False)
    return CpuPackedWeight("vnni", w_i8.shape[0], w_i8.shape[1], wp, corr)


@register("pack_weight", "cpu")
def pack_weight_cpu(w_i8: np.ndarray) -> CpuPackedWeight:
    """Prepack ``w_i8 [N, K]`` for :func:`linear_cpu` (see :func:`pack_weight_ref`).

    VNNI hosts: layout ``[⌈N/16⌉, ⌈K/4⌉, 16, 4]`` plus the int32 correction
    ``128·Σ_k w[n, k]``; other hosts: the plain ``[N, K]`` matrix.
    """
    return pack_weight_vnni(w_i8) if _vnni.HAVE_VNNI else pack_weight_portable(w_i8)


# ----------------------------------------------------------------------------- cpu: portable
#
# Hosts without AVX-512 VNNI.  The int32 product comes from torch._int_mm
# (oneDNN s8×s8→s32, exact; uint8 A is offset to int8 and corrected with
# 128·Σb), followed by a numba epilogue with the scalar requant helpers.  If
# torch._int_mm is unavailable, plain numba loops (4 columns per pass, int32
# accumulators; ~10-40 GOPS) compute the product instead.


@numba.njit(parallel=True, cache=True)
def _gemm_plain(a3, b3, ia, ib, acc3):
    """acc3[t] = a3[ia[t]] · b3[ib[t]]ᵀ in int32, plain loops."""
    nt = ia.shape[0]
    mm = a3.shape[1]
    nn = b3.shape[1]
    kk = a3.shape[2]
    n4 = nn // 4 * 4
    for r in numba.prange(nt * mm):
        t = r // mm
        i = r - t * mm
        arow = a3[ia[t], i]
        bmat = b3[ib[t]]
        orow = acc3[t, i]
        for j in range(0, n4, 4):
            b0 = bmat[j]
            b1 = bmat[j + 1]
            b2 = bmat[j + 2]
            b3_ = bmat[j + 3]
            c0 = np.int32(0)
            c1 = np.int32(0)
            c2 = np.int32(0)
            c3 = np.int32(0)
            for k in range(kk):
                x = np.int32(arow[k])
                c0 = np.int32(c0 + x * np.int32(b0[k]))
                c1 = np.int32(c1 + x * np.int32(b1[k]))
                c2 = np.int32(c2 + x * np.int32(b2[k]))
                c3 = np.int32(c3 + x * np.int32(b3_[k]))
            orow[j] = c0
            orow[j + 1] = c1
            orow[j + 2] = c2
            orow[j + 3] = c3
        for j in range(n4, nn):
            brow = bmat[j]
            c = np.int32(0)
            for k in range(kk):
                c = np.int32(c + np.int32(arow[k]) * np.int32(brow[k]))
            orow[j] = c


@numba.njit(parallel=True, cache=True)
def _epilogue3(acc3, ib, init2, requant, m_i32, s_i64, q, out3):
    """out3[t, i, j] = epilogue(acc3[t, i, j] + init2[ib[t], j]) with ``round_shift``/``saturate``."""
    nt, mm, nn = acc3.shape
    for r in numba.prange(nt * mm):
        t = r // mm
        i = r - t * mm
        arow = acc3[t, i]
        orow = out3[t, i]
        ini = init2[ib[t]]
        for j in range(nn):
            v = np.int64(arow[j]) + np.int64(ini[j])
            if requant:
                orow[j] = saturate(round_shift(v, np.int64(m_i32[j]), s_i64[j]), q)
            else:
                orow[j] = v


# torch 2.13's CPU _int_mm returns garbage for K == 1 (a [N, 1]ᵀ view is
# ambiguous in strides); tiny reductions use the numba loops instead.
TORCH_MIN_K = 8


def _int_mm():
    """``torch._int_mm`` or None (torch missing or too old)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return getattr(torch, "_int_mm", None)


def _run_portable(a3, b3, ia, ib, bias, ep: Epilogue, mm: int, nn: int, use_torch: bool | None,
                  out: np.ndarray | None = None) -> np.ndarray:
    out3 = np.empty((ia.shape[0], mm, nn), dtype=ep.out_dtype) if out is None else out.reshape(ia.shape[0], mm, nn)
    if out3.size == 0:
        return out3
    init2 = np.zeros((b3.shape[0], nn), np.int32)
    if bias is not None:
        init2[:] = bias
    int_mm = _int_mm() if use_torch is not False else None
    if use_torch and int_mm is None:
        raise KernelInputError("use_torch=True but torch._int_mm is not available")
    if a3.shape[2] == 0:
        acc3 = np.zeros(out3.shape, np.int32)
    elif int_mm is not None and a3.shape[2] >= TORCH_MIN_K:
        import torch

        if a3.dtype == np.uint8:  # a = (a - 128) + 128: int8 operand plus 128·Σ_k b
            a3 = (a3 ^ np.uint8(0x80)).view(np.int8)
            init2 += (128 * b3.sum(axis=2, dtype=np.int64)).astype(np.int32)
        acc3 = np.empty(out3.shape, np.int32)
        with warnings.catch_warnings():  # read-only packed weights: torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            a_t, b_t = torch.from_numpy(a3), torch.from_numpy(b3)
        for t in range(ia.shape[0]):
            torch._int_mm(a_t[ia[t]], b_t[ib[t]].t(), out=torch.from_numpy(acc3[t]))
    else:
        acc3 = np.empty(out3.shape, np.int32)
        _gemm_plain(a3, b3, ia, ib, acc3)
    _epilogue3(acc3, ib, init2, ep.requant, ep.m_i32, ep.s_i64, ep.q, out3)
    return out3


def linear_portable(x_i8: np.ndarray, packed: CpuPackedWeight, bias_i32=None, m_i32=None, shift=None, out_bits: int = 8,
                    *, use_torch: bool | None = None, out: np.ndarray | None = None):
    """Portable :func:`linear_ref` (no VNNI needed); bit-exact, accepts either cpu layout.

    ``use_torch``: None = torch._int_mm when available, False = plain numba loops.
    The int32 product is materialised here (not fused), unlike the VNNI/AMX path.
    ``out``: see :func:`linear_cpu`.
    """
    _check_packed(packed, CpuPackedWeight, "cpu")
    check_linear_x(x_i8, packed.k)
    bias = check_bias(bias_i32, packed.n)
    ep = epilogue_params(packed.n, m_i32, shift, out_bits)
    n, k = packed.n, packed.k
    shape = tuple(x_i8.shape[:-1]) + (n,)
    out3 = None if out is None else _check_out(out, shape, ep.out_dtype)
    x2 = np.ascontiguousarray(x_i8).reshape(_prod(x_i8.shape[:-1]), k)
    res = _run_portable(x2[None], packed.nk()[None], _ZERO_MAP, _ZERO_MAP, bias, ep, x2.shape[0], n, use_torch, out3)
    return res.reshape(shape) if out3 is None else out3


def matmul_portable(a: np.ndarray, b, m_i32=None, shift=None, out_bits: int = 8, *, use_torch: bool | None = None,
                    out: np.ndarray | None = None):
    """Portable :func:`matmul_ref` (no VNNI needed); bit-exact; ``use_torch`` as in :func:`linear_portable`.

    ``b``: int8 array or :class:`CpuPackedMatmulB`; ``out``: see :func:`matmul_cpu`.
    """
    b, _ = _unpack_b(b, CpuPackedMatmulB, "cpu")
    batch, mm, nn, kk = matmul_shapes(a, b)
    ep = epilogue_params(nn, m_i32, shift, out_bits)
    shape = batch + (mm, nn)
    out3 = None if out is None else _check_out(out, shape, ep.out_dtype)
    ia, ib = _cached_batch_maps(batch, tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    a3 = np.ascontiguousarray(a).reshape(_prod(a.shape[:-2]), mm, kk)
    b3 = np.ascontiguousarray(b).reshape(_prod(b.shape[:-2]), nn, kk)
    res = _run_portable(a3, b3, ia, ib, None, ep, mm, nn, use_torch, out3)
    return res.reshape(shape) if out3 is None else out3


_ZERO_MAP = np.zeros(1, np.int64)


# ----------------------------------------------------------------------------- cpu: VNNI


MR = _vnni.MR


@numba.njit(inline="always")
def _ukernel(mode, nblk, a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows):
    """Dispatch to the compile-time micro-kernel variant (``_vnni.make_ukernel``)."""
    if mode == 0:
        if nblk == 3:
            _vnni.ukernel_raw_3(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        elif nblk == 2:
            _vnni.ukernel_raw_2(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        else:
            _vnni.ukernel_raw_1(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
    elif mode == 1:
        if nblk == 3:
            _vnni.ukernel_rq8_3(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        elif nblk == 2:
            _vnni.ukernel_rq8_2(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        else:
            _vnni.ukernel_rq8_1(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
    elif mode == 2:
        if nblk == 3:
            _vnni.ukernel_rq16_3(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        elif nblk == 2:
            _vnni.ukernel_rq16_2(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        else:
            _vnni.ukernel_rq16_1(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
    elif mode == 3:
        if nblk == 3:
            _vnni.ukernel_rq32_3(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        elif nblk == 2:
            _vnni.ukernel_rq32_2(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)
        else:
            _vnni.ukernel_rq32_1(a, lda, b, bstr, kg, init, m, s, q, o, ldo, rows)


@numba.njit(inline="always")
def _ukernel_store(mode, nblk, a, lda, b, bstr, kg, init, m, s, q, out2, m0, n0, ncols, esize, rows, scratch):
    """:func:`_ukernel` on rows ``m0..m0+rows-1`` and columns ``n0..`` of ``out2`` (bytes ``[M, N·esize]``);
    a partial panel (``ncols < 16·nblk``) goes through ``scratch`` (``MR·PANEL·4`` bytes) and only
    its valid bytes are copied."""
    nn = out2.shape[1] // esize
    if ncols == nblk * 16:
        _ukernel(mode, nblk, a, lda, b, bstr, kg, init, m, s, q, np.int64(out2.ctypes.data) + (m0 * nn + n0) * esize,
                 nn, rows)
    else:
        _ukernel(mode, nblk, a, lda, b, bstr, kg, init, m, s, q, np.int64(scratch.ctypes.data), PANEL, rows)
        nbytes = ncols * esize
        for i in range(rows):
            r0 = i * PANEL * esize
            out2[m0 + i, n0 * esize:n0 * esize + nbytes] = scratch[r0:r0 + nbytes]


@numba.njit(parallel=True, cache=True)
def _gemm_vnni(xu, wp, init2, ia, ib, mm, nn, m_chunks, mode, m_i32, s_i64, q, out_b, esize):
    """Batched VNNI GEMM with the epilogue fused into the micro-kernel.

    xu [Ba, Mp, Kp] uint8 (Mp % MR == 0), wp [Bb, NB, KB, 16, 4] int8,
    init2 [Bb, Np] int32 (bias − offset correction), m_i32/s_i64 [Np];
    out_b [Bt, mm, nn·esize] uint8: the output's bytes (so that this compiles
    once for every output dtype); ``mode`` is ``_vnni.RAW32`` (int32 out) or
    ``RQ8/RQ16/RQ32`` (``esize`` 1/2/4).  Tasks: (batch, PANEL-column panel,
    chunk of MR-row tiles), split across threads.  Tiles are requantized
    straight from the accumulator registers and stored in the final dtype; a
    partial last panel (``N % 16 != 0``) is stored to a scratch tile first and
    its valid bytes copied.
    """
    nt = ia.shape[0]
    kp = xu.shape[2]
    kb = wp.shape[2]
    nblk_max = PANEL // 16
    n_panels = (nn + PANEL - 1) // PANEL
    m_tiles = (mm + MR - 1) // MR
    tiles_per_chunk = (m_tiles + m_chunks - 1) // m_chunks
    b_stride = kb * 64
    ntasks = nt * n_panels * m_chunks
    for task in numba.prange(ntasks):
        t = task // (n_panels * m_chunks)
        rem = task - t * (n_panels * m_chunks)
        p = rem // m_chunks
        ch = rem - p * m_chunks
        scratch = np.empty(MR * PANEL * 4, np.uint8)  # rows PANEL·esize bytes apart
        a_base = np.int64(xu[ia[t]].ctypes.data)
        b_mat = wp[ib[t]]
        ini = init2[ib[t]]
        out2 = out_b[t]
        nb0 = p * nblk_max
        nblk = min(nblk_max, (nn + 15) // 16 - nb0)
        n0 = nb0 * 16
        ncols = min(nblk * 16, nn - n0)
        b_addr = b_mat[nb0].ctypes.data
        init_addr = ini.ctypes.data + n0 * 4
        m_addr = m_i32.ctypes.data + n0 * 4
        s_addr = s_i64.ctypes.data + n0 * 8
        mt_end = min(m_tiles, (ch + 1) * tiles_per_chunk)
        for mt in range(ch * tiles_per_chunk, mt_end):
            m0 = mt * MR
            rows = min(MR, mm - m0)
            _ukernel_store(mode, nblk, a_base + m0 * kp, kp, b_addr, b_stride, kb, init_addr, m_addr, s_addr, q, out2,
                           m0, n0, ncols, esize, rows, scratch)


AMX_KBLOCK = 64  # 64-byte K steps per AMX K block (4096 bytes; measured: blocking at 768-1536 bytes did not help)
AMX_MIN_M = 32  # below this the 32-row AMX tile wastes more than the VNNI kernel loses
AMX_MIN_K = 1  # with the block epilogue AMX beats VNNI at every K measured (8..4096, M = 128, N = 768)


def _want_amx(mm: int, kk: int) -> bool:
    return _vnni.HAVE_AMX and mm >= AMX_MIN_M and kk >= AMX_MIN_K


@numba.njit(parallel=True, cache=True)
def _gemm_amx(a_main, a_tail, signed, wp, init2, ia, ib, mm, nn, m_chunks, mode, m_i32, s_i64, q, out_b, esize, cfg):
    """Batched AMX GEMM with fused epilogue, 32×32 tiles.

    a_main [Ba, ≥M_full, lda] int8/uint8 bytes (lda ≥ Kp, Kp = 64·kchunks, may
    be the caller's array itself), a_tail [Ba, 32, Kp] holding rows
    ``M_full = 32·⌊M/32⌋ .. M-1`` zero padded; ``signed``: A is int8
    (``tdpbssd``, no offset) or uint8 (``tdpbusd``); other arguments as
    :func:`_gemm_vnni` (init2 holds the bias only).  Each task owns a 32×32
    int32 scratch tile (4 KB, L1): ``amx_32x32_*`` fills it over the whole K,
    then the block epilogue intrinsic requantizes it (``epib_*``, per-column
    constants loaded once per block; a partial last panel goes through a
    scratch block and its valid bytes are copied).  Tasks are numbered row
    chunk major (``m_chunks`` from :func:`_amx_m_chunks`): the static
    ``prange`` split gives each thread whole row chunks, whose A rows stay in
    its L2 while the 32-column panels of B stream past.
    """
    nt = ia.shape[0]
    lda = a_main.shape[2]
    kp = a_tail.shape[2]
    kchunks = kp // 64
    m_full = (mm // 32) * 32
    n_panels = (nn + 31) // 32
    m_tiles = (mm + 31) // 32
    tiles_per_chunk = (m_tiles + m_chunks - 1) // m_chunks
    ntasks = nt * n_panels * m_chunks
    cfg_addr = np.int64(cfg.ctypes.data)
    for task in numba.prange(ntasks):
        t = task // (n_panels * m_chunks)
        rem = task - t * (n_panels * m_chunks)
        ch = rem // n_panels  # row-chunk major: a thread's consecutive tasks share their A rows (L2)
        p = rem - ch * n_panels
        mt0 = ch * tiles_per_chunk
        mt_end = min(m_tiles, mt0 + tiles_per_chunk)
        cbuf = np.empty((max(mt_end - mt0, 1), 32, 32), np.int32)
        orow_scratch = np.empty(32 * 32 * 4, np.uint8)
        a_base = np.int64(a_main[ia[t]].ctypes.data)
        tail_base = np.int64(a_tail[ia[t]].ctypes.data)
        b_mat = wp[ib[t]]
        ini = init2[ib[t]]
        out2 = out_b[t]
        n0 = p * 32
        ncols = min(32, nn - n0)
        b0 = b_mat[2 * p].ctypes.data
        b1 = b_mat[2 * p + 1].ctypes.data
        init_addr = ini.ctypes.data + n0 * 4
        m_addr = m_i32.ctypes.data + n0 * 4
        s_addr = s_i64.ctypes.data + n0 * 8
        # K blocks (only for K > 4096 bytes): the panel's B block stays cached while
        # the chunk's A tiles stream past it; partial sums wait in cbuf between blocks.
        first = True
        for kb0 in range(0, kchunks, AMX_KBLOCK):
            nk = min(AMX_KBLOCK, kchunks - kb0)
            last = kb0 + nk == kchunks
            for mt in range(mt0, mt_end):
                m0 = mt * 32
                if m0 < m_full:
                    a_addr = a_base + m0 * lda + kb0 * 64
                    a_stride = lda
                else:
                    a_addr = tail_base + kb0 * 64
                    a_stride = kp
                ctile = cbuf[mt - mt0]
                c_addr = ctile.ctypes.data
                cfg_now = cfg_addr if first else 0  # ldtilecfg once per task (per thread)
                first = False
                if signed:
                    _vnni.amx_32x32_ss(cfg_now, a_addr, a_stride, b0 + kb0 * 1024, b1 + kb0 * 1024, nk, c_addr, kb0)
                else:
                    _vnni.amx_32x32_us(cfg_now, a_addr, a_stride, b0 + kb0 * 1024, b1 + kb0 * 1024, nk, c_addr, kb0)
                if not last:
                    continue
                # one block epilogue: init/m/s loaded once per 32×32 block
                _epib_store(mode, c_addr, min(32, mm - m0), init_addr, m_addr, s_addr, q, out2, m0, n0, ncols, esize,
                            orow_scratch)
        _vnni.amx_release()


_AMX_CFG = _vnni.amx_tile_config()
_VNNI_MODES = {1: _vnni.RQ8, 2: _vnni.RQ16, 4: _vnni.RQ32}


def _m_chunks(tasks_without_split: int, m_tiles: int) -> int:
    threads = numba.get_num_threads()
    if tasks_without_split >= 4 * threads:
        return 1
    return max(1, min(m_tiles, -(-4 * threads // max(tasks_without_split, 1))))


AMX_A_CHUNK_BYTES = 1 << 20  # rows of A one task keeps in L2 (2 MB per core here) while it sweeps the panels
AMX_A_SHARED_BYTES = 1 << 19  # up to this much A, every thread keeps all of A and takes its share of the panels


def _amx_m_chunks(mm: int, kp: int) -> int:
    """Row chunks of the AMX ``linear`` (tasks run row-chunk major, see :func:`_gemm_amx`).

    * A small A (``M·K ≤ 512 KB``): one chunk, so each thread sweeps its share
      of the column panels with all of A in its L2 and reads only its share of B.
    * A larger A: a multiple of the thread count, each chunk at most ~1 MB of
      A, so a thread reads its A rows once and streams B past them once per
      chunk (M = 1024, K = 3072, N = 768: 2–4 chunks ran 1.25× faster than one
      panel-major sweep, which re-read all 3 MB of A from L3 for every
      32-column panel).
    """
    if mm * kp <= AMX_A_SHARED_BYTES:
        return 1
    threads = numba.get_num_threads()
    per_thread = -(-mm * kp // (threads * AMX_A_CHUNK_BYTES))
    return max(1, min((mm + 31) // 32, threads * per_thread))


@dataclass(frozen=True)
class _LinearBind:
    """Everything ``linear`` derives from (packed weight, bias, m, shift, out_bits), validated once.

    ``m_vec``/``s_vec``: the epilogue padded to ``Np`` lanes; ``init_bias [1, Np]``:
    the bias (AMX); ``init_corr [1, Np]``: bias − ``128·Σw`` (VNNI, offset int8 x).
    """

    ep: Epilogue
    m_vec: np.ndarray
    s_vec: np.ndarray
    init_bias: np.ndarray
    init_corr: np.ndarray
    wp3: np.ndarray


@memo_frozen(maxsize=4096, immutable=(CpuPackedWeight,))
def _bind_linear(packed: CpuPackedWeight, bias_i32, m_i32, shift, out_bits) -> _LinearBind:
    """Validate and prepare ``linear``'s per-layer arguments (cached by :func:`memo_frozen`: the
    runtime's read-only constants are checked and padded once per layer, later calls skip
    ``check_bias``/``epilogue_params`` and five allocations)."""
    _check_packed(packed, CpuPackedWeight, "cpu")
    if packed.layout != "vnni":
        raise KernelInputError("linear_vnni needs a weight packed with layout 'vnni' (pack_weight_vnni)")
    bias = check_bias(bias_i32, packed.n)
    ep = epilogue_params(packed.n, m_i32, shift, out_bits)
    nn = packed.n
    npad = packed.data.shape[0] * 16
    m_vec, s_vec = _pad_epilogue(ep, npad)
    init_bias = np.zeros((1, npad), np.int32)
    if bias is not None:
        init_bias[0, :nn] = bias
    init_corr = init_bias - packed.corr_i32[None]
    for arr in (m_vec, s_vec, init_bias, init_corr):
        arr.setflags(write=False)
    return _LinearBind(ep, m_vec, s_vec, init_bias, init_corr, packed.data[None])


@functools.lru_cache(maxsize=64)
def _empty_tail(kp: int) -> np.ndarray:
    return np.empty((1, 0, kp), np.uint8)


def _run_vnni(a3, bind: _LinearBind, mm: int, nn: int, use_amx: bool | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Run the AMX or the VNNI ``linear`` driver on ``a3 [1, M, K]`` int8 with a bound layer.

    ``use_amx``: None = AMX when available, ``M ≥ AMX_MIN_M`` and ``K ≥ AMX_MIN_K``; ``out``: a
    checked output array holding ``mm·nn`` elements of ``ep.out_dtype`` (or None).
    """
    ep = bind.ep
    wp = bind.wp3
    nbat_a, _, kk = a3.shape
    kp = wp.shape[2] * 4
    if use_amx is None:
        use_amx = _want_amx(mm, kk)
    elif use_amx and not _vnni.HAVE_AMX:
        raise KernelInputError("use_amx=True but AMX-INT8 is not available on this host")
    out3 = np.empty((1, mm, nn), dtype=ep.out_dtype) if out is None else out.reshape(1, mm, nn)
    if out3.size == 0:
        return out3
    esize = out3.dtype.itemsize
    mode = _VNNI_MODES[esize] if ep.requant else _vnni.RAW32
    out_b = out3.view(np.uint8)
    a_u8 = a3.view(np.uint8)
    if use_amx:
        m_full = (mm // 32) * 32
        if kk == kp and a3.flags.c_contiguous:
            a_main = a_u8  # read in place: no copy of the activations
        else:
            a_main = aligned_zeros((nbat_a, m_full, kp), np.uint8)
            a_main[:, :, :kk] = a_u8[:, :m_full]
        if m_full == mm:  # no partial row tile: the kernel only reads the tail's K width
            a_tail = _empty_tail(kp)
        else:
            a_tail = aligned_zeros((nbat_a, 32, kp), np.uint8)
            a_tail[:, : mm - m_full, :kk] = a_u8[:, m_full:]
        chunks = _amx_m_chunks(mm, kp)
        _gemm_amx(a_main, a_tail, True, wp, bind.init_bias, _ZERO_MAP, _ZERO_MAP, mm, nn, chunks, mode, bind.m_vec,
                  bind.s_vec, ep.q, out_b, esize, _AMX_CFG)
    else:
        xu = aligned_zeros((nbat_a, _round_up(mm, MR), kp), np.uint8)
        # vpdpbusd multiplies u8 × s8: offset x by +128 and take 128·Σw back out (init_corr)
        np.bitwise_xor(a_u8, np.uint8(0x80), out=xu[:, :mm, :kk])
        n_panels = (nn + PANEL - 1) // PANEL
        chunks = _m_chunks(n_panels, (mm + MR - 1) // MR)
        _gemm_vnni(xu, wp, bind.init_corr, _ZERO_MAP, _ZERO_MAP, mm, nn, chunks, mode, bind.m_vec, bind.s_vec, ep.q,
                   out_b, esize)
    return out3


# ----------------------------------------------------------------------------- cpu: batched matmul
#
# Attention products are many small GEMMs (Q·Kᵀ: 128×128×64 per head, P·V:
# 128×64×128): per call, the old route packed B in Python, copied A, built
# index maps and then ran one task per (head, 48-column panel).  Here one
# parallel region does everything: a task owns (batch entry, column group,
# row chunk), packs its own columns of B into a task-local VNNI buffer (or
# reads the packed constant of ``pack_matmul_b``), stages A tiles only when
# they cannot be read in place, runs the AMX or VNNI product and requantizes
# straight into the output.


@numba.njit(inline="always")
def _pack_cols(b8, b32, bi, nb0, nblocks, nn, kk, bw32, corr_i32, need_corr):
    """Pack 16-column blocks ``nb0 .. nb0+nblocks-1`` of ``b8[bi]`` (int8 ``[N, K]``) into ``bw32``.

    ``bw32`` int32 ``[nblocks, KQ, 16]`` (every word written, padding zeroed;
    word ``[lb, kq, j]`` holds ``b[16·(nb0+lb)+j, 4·kq : 4·kq+4]`` as
    little-endian bytes); ``b32`` is ``b8`` viewed as int32 words when
    ``K % 4 == 0`` (else unused).  With ``need_corr``:
    ``corr_i32[16·lb + j] = 128·Σ_k b[row, k]`` (``|Σ| ≤ K·128 ≤ 2^23``, fits int32).
    """
    kq = bw32.shape[1]
    kfull = kk // 4
    for lb in range(nblocks):
        r0 = (nb0 + lb) * 16
        nvalid = max(0, min(16, nn - r0))
        dst = bw32[lb]
        if kk % 4 == 0 and nvalid == 16:
            blk = b32[bi, r0:r0 + 16]
            k16 = kfull // 16 * 16
            src_addr = np.int64(blk.ctypes.data)
            dst_addr = np.int64(dst.ctypes.data)
            for kb0 in range(0, k16, 16):  # 16×16 word blocks transposed in registers
                _vnni.transpose16x16_i32(src_addr + 4 * kb0, 4 * kfull, dst_addr + 64 * kb0)
            for kb in range(k16, kfull):  # contiguous 64-byte stores, strided 4-byte loads
                o = dst[kb]
                for j in range(16):
                    o[j] = blk[j, kb]
        else:
            for j in range(16):
                if j >= nvalid:
                    for kb in range(kfull):
                        dst[kb, j] = 0
                    continue
                row = b8[bi, r0 + j]
                for kb in range(kfull):
                    k0 = 4 * kb
                    w_i64 = ((np.int64(row[k0]) & 0xFF) | ((np.int64(row[k0 + 1]) & 0xFF) << 8)
                             | ((np.int64(row[k0 + 2]) & 0xFF) << 16) | ((np.int64(row[k0 + 3]) & 0xFF) << 24))
                    dst[kb, j] = np.int32(w_i64 - (w_i64 >> 31 << 32))
        for kb in range(kfull, kq):  # K padding (and the partial last 4-byte group)
            for j in range(16):
                dst[kb, j] = 0
        if kk % 4 != 0:
            for j in range(nvalid):
                row = b8[bi, r0 + j]
                w_i64 = np.int64(0)
                for e in range(kk - 4 * kfull):
                    w_i64 |= (np.int64(row[4 * kfull + e]) & 0xFF) << (8 * e)
                dst[kfull, j] = np.int32(w_i64 - (w_i64 >> 31 << 32))
        if need_corr:
            for j in range(16):
                acc_i64 = np.int64(0)
                if j < nvalid:
                    row = b8[bi, r0 + j]
                    for k in range(kk):
                        acc_i64 += np.int64(row[k])
                corr_i32[16 * lb + j] = np.int32(128 * acc_i64)


@numba.njit(cache=True)
def _keep_alive(a, b, c, d):
    """A use of task-local buffers after the last raw-address access (numba frees arrays after their last use)."""
    return a.size + b.size + c.size + d.size


@numba.njit(inline="always")
def _epib(mode, c, ldc, rows, init, m, s, q, o, ldo):
    if mode == 0:
        _vnni.epib_raw(c, ldc, rows, init, m, s, q, o, ldo)
    elif mode == 1:
        _vnni.epib_rq8(c, ldc, rows, init, m, s, q, o, ldo)
    elif mode == 2:
        _vnni.epib_rq16(c, ldc, rows, init, m, s, q, o, ldo)
    else:
        _vnni.epib_rq32(c, ldc, rows, init, m, s, q, o, ldo)


@numba.njit(inline="always")
def _epib_store(mode, c_addr, rows, init, m, s, q, out2, m0, n0, ncols, esize, scratch):
    """:func:`_epib` of a ``rows × 32`` int32 tile (rows 128 bytes apart) into rows ``m0..`` and
    columns ``n0..`` of ``out2`` (bytes ``[M, N·esize]``); a partial panel (``ncols < 32``) goes
    through ``scratch`` (32·32·4 bytes) and only its valid bytes are copied."""
    ldo = out2.shape[1]
    if ncols == 32:
        _epib(mode, c_addr, 128, rows, init, m, s, q, np.int64(out2.ctypes.data) + m0 * ldo + n0 * esize, ldo)
    else:
        _epib(mode, c_addr, 128, rows, init, m, s, q, np.int64(scratch.ctypes.data), 32 * esize)
        nbytes = ncols * esize
        for i in range(rows):
            out2[m0 + i, n0 * esize:n0 * esize + nbytes] = scratch[i * 32 * esize:i * 32 * esize + nbytes]


@numba.njit(cache=True)
def _mm_groups(nt, n_panels, m_tiles, split_m, threads):
    """(column groups, row chunks) per batch entry: aim at ≥ 4 tasks per thread.

    Column groups first (each task packs only its own columns of B); row
    chunks only when ``split_m`` (a prepacked B: no repacking per chunk).
    """
    want = 4 * threads
    if nt >= want:
        return 1, 1
    n_groups = max(1, min(n_panels, (want + nt - 1) // max(nt, 1)))
    m_chunks = 1
    if split_m and nt * n_groups < want:
        m_chunks = max(1, min(m_tiles, (want + nt * n_groups - 1) // (nt * n_groups)))
    return n_groups, m_chunks


@numba.njit(inline="always")
def _mm_task(task, n_groups, m_chunks, ppg, tpc, n_panels, m_tiles):
    """Task ``task`` of the batched matmul drivers → (batch entry, panels ``p0..p1``, row tiles ``mt0..mt1``).

    Tasks run batch entry, then column group (``ppg`` panels), then row chunk (``tpc`` tiles);
    a trailing group or chunk may be empty (``p0 ≥ p1`` or ``mt0 ≥ mt1``).
    """
    t = task // (n_groups * m_chunks)
    rem = task - t * (n_groups * m_chunks)
    g = rem // m_chunks
    ch = rem - g * m_chunks
    p0 = g * ppg
    mt0 = ch * tpc
    return t, p0, min(n_panels, p0 + ppg), mt0, min(m_tiles, mt0 + tpc)


@numba.njit(parallel=True, cache=True)
def _mm_amx(a3, signed, b8, b32, wp, prepacked, ia, ib, mm, nn, kk, mode, m_i32, s_i64, zinit, q, out_b, esize, cfg,
            threads):
    """Batched ``A·Bᵀ`` on AMX: 32×32 blocks, whole K per block, block epilogue.

    a3 [Ba, M, K] uint8 bytes of the int8 (``signed``: ``tdpbssd``) or uint8
    (``tdpbusd``) operand, read in place for full row tiles when ``K % 64 == 0``,
    else staged into a zero-padded 32×Kp task buffer.  B: ``prepacked`` →
    ``wp [Bb, Np/16, Kp/4, 16, 4]`` (``pack_vnni``); else each task packs its
    column group of ``b8 [Bb, N, K]`` (``b32``: its int32 words) itself.
    m_i32/s_i64/zinit hold ≥ ⌈N/32⌉·32 entries; out_b [Bt, M, N·esize] bytes.
    Tasks: (batch entry, group of 32-column panels, chunk of 32-row tiles),
    see :func:`_mm_groups` (rows are split only with ``prepacked`` B).
    """
    nt = ia.shape[0]
    kq = (kk + 63) // 64 * 16
    kp = kq * 4
    kchunks = kq // 16
    n_panels = (nn + 31) // 32
    m_tiles = (mm + 31) // 32
    n_groups, m_chunks = _mm_groups(nt, n_panels, m_tiles, prepacked, threads)
    ppg = (n_panels + n_groups - 1) // n_groups
    tpc = (m_tiles + m_chunks - 1) // m_chunks
    in_place = kk == kp
    cfg_addr = np.int64(cfg.ctypes.data)
    dummy = np.zeros(1, np.int32)
    for task in numba.prange(nt * n_groups * m_chunks):
        t, p0, p1, mt0, mt1 = _mm_task(task, n_groups, m_chunks, ppg, tpc, n_panels, m_tiles)
        if p0 < p1 and mt0 < mt1:
            if prepacked:
                bmat = wp[ib[t]]
                bstride = np.int64(bmat.shape[1] * 64)
                b_base = np.int64(bmat.ctypes.data) + 2 * p0 * bstride
                bloc = np.zeros((0, 0, 16), np.int32)
            else:
                bloc = np.empty((2 * (p1 - p0), kq, 16), np.int32)
                _pack_cols(b8, b32, ib[t], 2 * p0, 2 * (p1 - p0), nn, kk, bloc, dummy, False)
                bstride = np.int64(kq * 64)
                b_base = np.int64(bloc.ctypes.data)
            stage = (not in_place) or mm % 32 != 0
            abuf = np.zeros((32 if stage else 0, kp), np.uint8)
            cbuf = np.empty((32, 32), np.int32)
            oscr = np.empty(32 * 32 * 4, np.uint8)
            c_addr = np.int64(cbuf.ctypes.data)
            a_t = a3[ia[t]]
            a_base = np.int64(a_t.ctypes.data)
            out2 = out_b[t]
            first = True
            for mt in range(mt0, mt1):
                m0 = mt * 32
                rows = min(32, mm - m0)
                if in_place and rows == 32:
                    a_addr = a_base + m0 * kk
                    lda = kk
                else:
                    for i in range(rows):
                        src = a_t[m0 + i]
                        dst = abuf[i]
                        for k in range(kk):
                            dst[k] = src[k]
                    a_addr = np.int64(abuf.ctypes.data)
                    lda = kp
                for p in range(p0, p1):
                    b0 = b_base + 2 * (p - p0) * bstride
                    cfg_now = cfg_addr if first else np.int64(0)  # ldtilecfg once per task
                    first = False
                    if signed:
                        _vnni.amx_32x32_ss(cfg_now, a_addr, lda, b0, b0 + bstride, kchunks, c_addr, 0)
                    else:
                        _vnni.amx_32x32_us(cfg_now, a_addr, lda, b0, b0 + bstride, kchunks, c_addr, 0)
                    n0 = p * 32
                    ncols = min(32, nn - n0)
                    m_addr = np.int64(m_i32.ctypes.data) + n0 * 4
                    s_addr = np.int64(s_i64.ctypes.data) + n0 * 8
                    z_addr = np.int64(zinit.ctypes.data)
                    _epib_store(mode, c_addr, rows, z_addr, m_addr, s_addr, q, out2, m0, n0, ncols, esize, oscr)
            _vnni.amx_release()
            _keep_alive(bloc, abuf, cbuf, oscr)  # the kernels used their addresses: free them only now


@numba.njit(parallel=True, cache=True)
def _mm_vnni(a3, signed, b8, b32, wp, corr2, prepacked, ia, ib, mm, nn, kk, mode, m_i32, s_i64, q, out_b, esize,
             threads):
    """Batched ``A·Bᵀ`` with the 8×48 VNNI micro-kernel, epilogue in registers.

    Arguments as :func:`_mm_amx`; ``corr2 [Bb, Np]`` (= ``128·Σb``) is read
    for int8 A with ``prepacked`` B, else computed while packing.  A tiles of
    8 rows are staged as uint8 (int8 A: ``x ^ 0x80 = x + 128``, the offset
    taken back out through the initial accumulators ``-128·Σb``).
    Tasks: (batch entry, group of 48-column panels, chunk of 8-row tiles).
    """
    nt = ia.shape[0]
    kg = (kk + 3) // 4
    n_panels = (nn + PANEL - 1) // PANEL
    nbt = (nn + 15) // 16
    m_tiles = (mm + MR - 1) // MR
    n_groups, m_chunks = _mm_groups(nt, n_panels, m_tiles, prepacked, threads)
    ppg = (n_panels + n_groups - 1) // n_groups
    tpc = (m_tiles + m_chunks - 1) // m_chunks
    nblk_max = PANEL // 16
    for task in numba.prange(nt * n_groups * m_chunks):
        t, p0, p1, mt0, mt1 = _mm_task(task, n_groups, m_chunks, ppg, tpc, n_panels, m_tiles)
        if p0 < p1 and mt0 < mt1:
            nb0 = p0 * nblk_max
            nbl = min(nbt, p1 * nblk_max) - nb0
            init = np.zeros(nbl * 16, np.int32)
            if prepacked:
                bmat = wp[ib[t]]
                bstride = np.int64(bmat.shape[1] * 64)
                b_base = np.int64(bmat.ctypes.data) + nb0 * bstride
                bloc = np.zeros((0, 0, 16), np.int32)
                if signed:
                    cb = corr2[ib[t]]
                    for c in range(nbl * 16):
                        init[c] = -cb[nb0 * 16 + c]
            else:
                bloc = np.empty((nbl, kg, 16), np.int32)
                _pack_cols(b8, b32, ib[t], nb0, nbl, nn, kk, bloc, init, signed)
                if signed:
                    for c in range(nbl * 16):
                        init[c] = -init[c]
                bstride = np.int64(kg * 64)
                b_base = np.int64(bloc.ctypes.data)
            abuf = np.zeros((MR, kg * 4), np.uint8)
            a_addr = np.int64(abuf.ctypes.data)
            scratch = np.empty(MR * PANEL * 4, np.uint8)
            a_t = a3[ia[t]]
            out2 = out_b[t]
            flip = np.uint8(0x80) if signed else np.uint8(0)
            for mt in range(mt0, mt1):
                m0 = mt * MR
                rows = min(MR, mm - m0)
                for i in range(rows):
                    src = a_t[m0 + i]
                    dst = abuf[i]
                    for k in range(kk):
                        dst[k] = src[k] ^ flip
                for p in range(p0, p1):
                    nbp = p * nblk_max
                    nblk = min(nblk_max, nbt - nbp)
                    n0 = p * PANEL
                    ncols = min(nblk * 16, nn - n0)
                    b_addr = b_base + (nbp - nb0) * bstride
                    init_addr = np.int64(init.ctypes.data) + (nbp - nb0) * 64
                    m_addr = np.int64(m_i32.ctypes.data) + n0 * 4
                    s_addr = np.int64(s_i64.ctypes.data) + n0 * 8
                    _ukernel_store(mode, nblk, a_addr, kg * 4, b_addr, bstride, kg, init_addr, m_addr, s_addr, q,
                                   out2, m0, n0, ncols, esize, rows, scratch)
            _keep_alive(bloc, abuf, scratch, init)  # the kernels used their addresses: free them only now


def linear_vnni(x_i8: np.ndarray, packed: CpuPackedWeight, bias_i32=None, m_i32=None, shift=None, out_bits: int = 8,
                *, use_amx: bool | None = None, out: np.ndarray | None = None):
    """VNNI/AMX :func:`linear_ref` (needs ``_vnni.HAVE_VNNI`` and a ``vnni``-layout packed weight).

    ``use_amx``: None picks AMX when ``_vnni.HAVE_AMX``, ``M ≥ AMX_MIN_M`` and ``K ≥ AMX_MIN_K``;
    True/False force the AMX or the VNNI micro-kernel (True needs HAVE_AMX).  ``out``: see :func:`linear_cpu`.
    """
    bind = _bind_linear(packed, bias_i32, m_i32, shift, out_bits)
    n, k = packed.n, packed.k
    if not (type(x_i8) is np.ndarray and x_i8.dtype == np.int8 and x_i8.ndim >= 1 and x_i8.shape[-1] == k):
        check_linear_x(x_i8, k)
    shape = x_i8.shape[:-1] + (n,)
    out3 = None if out is None else _check_out(out, shape, bind.ep.out_dtype)
    rows = _prod(x_i8.shape[:-1])
    x3 = (x_i8 if x_i8.flags.c_contiguous else np.ascontiguousarray(x_i8)).reshape(1, rows, k)
    res = _run_vnni(x3, bind, rows, n, use_amx, out3)
    return res.reshape(shape) if out3 is None else out3




def _check_out(out, shape, dtype) -> np.ndarray:
    """The caller's ``out``: a writeable C-contiguous numpy array of exactly ``shape`` and ``dtype`` (else KernelInputError)."""
    dtype = np.dtype(dtype)
    if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
            and out.flags.writeable):
        got = (f"{type(out).__name__} {getattr(out, 'dtype', '?')}{tuple(getattr(out, 'shape', ()))}"
               f"{'' if getattr(getattr(out, 'flags', None), 'c_contiguous', True) else ' (not C-contiguous)'}"
               f"{'' if getattr(getattr(out, 'flags', None), 'writeable', True) else ' (read-only)'}")
        raise KernelInputError(
            f"out must be a writeable C-contiguous numpy array of dtype {dtype.name} and shape {shape}, got {got}")
    return out


@functools.lru_cache(maxsize=512)
def _cached_batch_maps(batch: tuple, a_batch: tuple, b_batch: tuple) -> tuple[np.ndarray, np.ndarray]:
    ia, ib = batch_maps(batch, a_batch, b_batch)
    ia.setflags(write=False)
    ib.setflags(write=False)
    return ia, ib


def _pad_epilogue(ep: Epilogue, npad: int) -> tuple[np.ndarray, np.ndarray]:
    """New ``m_i32``/``s_i64`` vectors of ``npad`` lanes (the kernels read whole 16/32-lane groups;
    padding lanes: m = 0, shift = 1)."""
    n = min(ep.m_i32.shape[0], npad)
    m_vec = np.zeros(npad, np.int32)
    s_vec = np.ones(npad, np.int64)
    m_vec[:n] = ep.m_i32[:n]
    s_vec[:n] = ep.s_i64[:n]
    return m_vec, s_vec


_PADDED_MS: dict = {}  # id(const Epilogue) -> (epilogue, m_i32, s_i64, zeros): the lru-cached epilogues live on


def _padded_epilogue(ep: Epilogue, npad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m_i32``, ``s_i64`` padded to ``npad`` lanes (the kernels read whole 16/32-lane groups) and ``npad`` zeros."""
    key = (id(ep), npad)
    hit = _PADDED_MS.get(key)
    if hit is not None and hit[0] is ep:
        return hit[1], hit[2], hit[3]
    m_vec, s_vec = _pad_epilogue(ep, npad)
    zeros = np.zeros(npad, np.int32)
    if not ep.m_i32.flags.writeable and not ep.s_i64.flags.writeable and len(_PADDED_MS) < 1024:
        _PADDED_MS[key] = (ep, m_vec, s_vec, zeros)  # read-only vectors: a cached epilogue from _const_epilogue
    return m_vec, s_vec, zeros


class PackedMatmulB:
    """Base of every backend's packed constant ``matmul`` operand (what ``pack_matmul_b`` returns):
    a backend's ``matmul`` recognises packed operands by this type and rejects another backend's."""


class _HostPackedMatmulB(PackedMatmulB):
    """Shape and dtype of a packed operand that keeps its int8 array ``b_i8`` on the host."""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.b_i8.shape

    @property
    def dtype(self):
        return self.b_i8.dtype


@dataclass(frozen=True)
class CpuPackedMatmulB(_HostPackedMatmulB):
    """``cpu`` form of a constant ``matmul`` right operand (from :func:`pack_matmul_b_cpu`).

    ``b_i8``: the int8 ``[..., N, K]`` array (read-only copy; the portable
    path and shape checks use it).  VNNI hosts also hold ``wp`` int8
    ``[Bb, ⌈N/32⌉·2, ⌈K/64⌉·16, 16, 4]`` (``pack_vnni``, ``Bb`` = product of
    the leading dims) and ``corr_i32 [Bb, Np] = 128·Σ_k b[n, k]``; else None.
    """

    b_i8: np.ndarray
    wp: np.ndarray | None = None
    corr_i32: np.ndarray | None = None


@dataclass(frozen=True)
class RefPackedMatmulB(_HostPackedMatmulB):
    """``ref`` form of a constant ``matmul`` right operand: a read-only copy of the int8 array."""

    b_i8: np.ndarray


def _check_matmul_b(b) -> None:
    check_int("b", b, (np.int8,))
    if len(b.shape) < 2:
        raise KernelInputError(f"b [..., N, K] must be at least 2-D, got {tuple(b.shape)}")
    _check_k(b.shape[-1])


def _readonly_copy(b) -> np.ndarray:
    arr = np.array(b, dtype=np.int8, order="C", copy=True)
    arr.setflags(write=False)
    return arr


@register("pack_matmul_b", "ref")
def pack_matmul_b_ref(b: np.ndarray) -> RefPackedMatmulB:
    """Pack a constant right operand ``b`` int8 ``[..., N, K]`` of :func:`matmul_ref` once (bind time).

    ``matmul(a, pack_matmul_b(b))`` is bit-identical to ``matmul(a, b)`` on
    the same backend (broadcasting, dtypes, requantization unchanged); the
    packed object only works with its own backend's ``matmul`` (cpu: the
    VNNI/AMX layout and ``128·Σb``, so that no call repacks the table; ref:
    a read-only copy).  ``K ≤ MAX_K``.
    """
    _check_matmul_b(b)
    return RefPackedMatmulB(_readonly_copy(b))


@register("pack_matmul_b", "cpu")
def pack_matmul_b_cpu(b: np.ndarray) -> CpuPackedMatmulB:
    """``cpu`` :func:`pack_matmul_b_ref`: ``[Bb, Np/16, Kp/4, 16, 4]`` int8 + ``128·Σb`` on VNNI hosts."""
    _check_matmul_b(b)
    b_i8 = _readonly_copy(b)
    if not _vnni.HAVE_VNNI:
        return CpuPackedMatmulB(b_i8)
    nn, kk = b_i8.shape[-2:]
    wp, corr = pack_vnni(b_i8.reshape(_prod(b_i8.shape[:-2]), nn, kk), need_corr=True)
    wp.setflags(write=False)
    corr.setflags(write=False)
    return CpuPackedMatmulB(b_i8, wp, corr)


def _unpack_b(b, cls, backend: str):
    """(raw int8 b, packed object or None) for ``matmul(a, b)`` on ``backend``."""
    if isinstance(b, PackedMatmulB):
        if not isinstance(b, cls):
            raise KernelInputError(
                f"b must be an int8 array or the result of get_kernel('pack_matmul_b', {backend!r}) ({cls.__name__}), "
                f"got {type(b).__name__}")
        return b.b_i8, b
    return b, None


_Spec = collections.namedtuple("_Spec", "shape dtype")  # stands in for an array in the cached shape checks


@functools.lru_cache(maxsize=1024)
def _mm_geometry(a_shape: tuple, a_dtype, b_shape: tuple, b_dtype):
    """Checked ``matmul`` geometry (cached per shapes/dtypes; errors are raised, never cached).

    Returns ``(out_shape, M, N, K, Ba, Bb, ia, ib)``: ``Ba``/``Bb`` the flattened
    batch sizes of a and b, ``ia``/``ib`` the read-only batch index maps.
    """
    batch, mm, nn, kk = matmul_shapes(_Spec(a_shape, a_dtype), _Spec(b_shape, b_dtype))
    ia, ib = _cached_batch_maps(batch, a_shape[:-2], b_shape[:-2])
    return batch + (mm, nn), mm, nn, kk, _prod(a_shape[:-2]), _prod(b_shape[:-2]), ia, ib


AMX_MM_MIN_M = 32  # batched matmul: AMX from one full 32-row tile (the block epilogue made K = 64 worth it)
PREPACK_TASKS = 8  # raw B with fewer (batch × column panel) tasks than this and several row tiles: pack B once up front


def matmul_vnni(a: np.ndarray, b, m_i32=None, shift=None, out_bits: int = 8, *, use_amx: bool | None = None,
                out: np.ndarray | None = None):
    """VNNI/AMX :func:`matmul_ref` in one parallel region (see :func:`_mm_amx`, :func:`_mm_vnni`).

    ``b``: int8 array (each task packs the columns it needs) or a
    :class:`CpuPackedMatmulB` (packed once).  ``use_amx``: None = AMX when
    available and ``M ≥ AMX_MM_MIN_M``; True/False force it.  ``out``: see
    :func:`matmul_cpu`.
    """
    if type(b) is CpuPackedMatmulB:
        b_raw, packed = b.b_i8, b
    else:
        b_raw, packed = _unpack_b(b, CpuPackedMatmulB, "cpu")
    try:
        shape, mm, nn, kk, na, nb, ia, ib = _mm_geometry(tuple(a.shape), a.dtype, tuple(b_raw.shape), b_raw.dtype)
    except (AttributeError, TypeError):  # not arrays, or unhashable odd objects: the uncached checks say why
        matmul_shapes(a, b_raw)
        raise
    ep = epilogue_params(nn, m_i32, shift, out_bits)
    out3 = np.empty(shape, ep.out_dtype) if out is None else _check_out(out, shape, ep.out_dtype)
    if out3.size == 0:
        return out3
    if kk == 0:
        out3[...] = 0  # an empty sum, and requantize(0) == 0
        return out3
    nt = ia.shape[0]
    if use_amx is None:
        use_amx = _vnni.HAVE_AMX and mm >= AMX_MM_MIN_M
    elif use_amx and not _vnni.HAVE_AMX:
        raise KernelInputError("use_amx=True but AMX-INT8 is not available on this host")
    a3 = (a if a.flags.c_contiguous else np.ascontiguousarray(a)).reshape(na, mm, kk).view(np.uint8)
    if packed is None and nt * -(-nn // (32 if use_amx else PANEL)) < PREPACK_TASKS and mm > 32 and nn * kk >= 4096:
        packed = pack_matmul_b_cpu(b_raw)  # few tasks: split rows too, over one packed B
    if packed is not None and packed.wp is not None:
        b8, b32 = _EMPTY_B, _EMPTY_B32
        wp, corr2, prepacked = packed.wp, packed.corr_i32, True
    else:
        b8 = (b_raw if b_raw.flags.c_contiguous else np.ascontiguousarray(b_raw)).reshape(nb, nn, kk)
        b32 = b8.view(np.int32) if kk % 4 == 0 else _EMPTY_B32
        wp, corr2, prepacked = _EMPTY_WP, _EMPTY_CORR, False
    esize = out3.dtype.itemsize
    mode = _VNNI_MODES[esize] if ep.requant else _vnni.RAW32
    out_b = out3.reshape(nt, mm, nn).view(np.uint8)
    m_vec, s_vec, zinit = _padded_epilogue(ep, _round_up(nn, 32))
    if use_amx:
        _mm_amx(a3, a.dtype == np.int8, b8, b32, wp, prepacked, ia, ib, mm, nn, kk, mode, m_vec, s_vec, zinit, ep.q,
                out_b, esize, _AMX_CFG, numba.get_num_threads())
    else:
        _mm_vnni(a3, a.dtype == np.int8, b8, b32, wp, corr2, prepacked, ia, ib, mm, nn, kk, mode, m_vec, s_vec, ep.q,
                 out_b, esize, numba.get_num_threads())
    return out3


_EMPTY_B = np.zeros((1, 1, 1), np.int8)
_EMPTY_B32 = np.zeros((1, 1, 1), np.int32)
_EMPTY_WP = np.zeros((1, 1, 1, 16, 4), np.int8)
_EMPTY_CORR = np.zeros((1, 1), np.int32)


@register("linear", "cpu")
def linear_cpu(x_i8: np.ndarray, packed: CpuPackedWeight, bias_i32=None, m_i32=None, shift=None, out_bits: int = 8,
               *, out: np.ndarray | None = None):
    """numba :func:`linear_ref` (bit-exact): VNNI micro-kernel when available, else :func:`linear_portable`.

    ``out``: None (a new array) or a writeable C-contiguous numpy array of
    exactly the output's shape ``[..., N]`` and dtype, written and returned
    (``KernelInputError`` naming ``out`` otherwise).
    """
    if _vnni.HAVE_VNNI and isinstance(packed, CpuPackedWeight) and packed.layout == "vnni":
        return linear_vnni(x_i8, packed, bias_i32, m_i32, shift, out_bits, out=out)
    return linear_portable(x_i8, packed, bias_i32, m_i32, shift, out_bits, out=out)


@register("matmul", "cpu")
def matmul_cpu(a: np.ndarray, b, m_i32=None, shift=None, out_bits: int = 8, *, out: np.ndarray | None = None):
    """numba :func:`matmul_ref` (bit-exact): VNNI/AMX kernels when available, else :func:`matmul_portable`.

    ``b``: int8 ``[..., N, K]`` or the :class:`CpuPackedMatmulB` of
    :func:`pack_matmul_b_cpu` (same result, no per-call packing).  ``out``:
    None (a new array) or a writeable C-contiguous numpy array of exactly the
    output's shape and dtype, written and returned (``KernelInputError`` otherwise).
    """
    if _vnni.HAVE_VNNI:
        return matmul_vnni(a, b, m_i32, shift, out_bits, out=out)
    return matmul_portable(a, b, m_i32, shift, out_bits, out=out)

"""Dyadic requantization: integer rescaling by a multiplier and a right shift.

A real rescale factor ``r`` (for example ``S_in * S_w / S_out``) is turned into
an integer pair ``(m_i32, shift)`` once, at lowering time, by
:func:`quantize_multiplier`; at run time only integer multiply, add and shift
are used.  All three backends implement exactly the formula of
:func:`requantize_ref`.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._llvm import all_ints
from ._util import (channel_vector, check_int, container_for_bits, cpu_has, is_int_scalar, memo_frozen,
                    output_array, qmax_for_bits)
from .errors import KernelInputError
from .registry import register

MULT_BITS = 31  # |m_i32| in [2^30, 2^31 - 1]
MIN_SHIFT = 1
MAX_SHIFT = 62
INPUT_BOUND = 1 << 32  # |x| < 2^32 keeps |x * m| < 2^63


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Split a real multiplier into ``(m_i32, shift)`` with ``real ≈ m_i32 · 2^-shift``.

    * ``|m_i32|`` lies in ``[2^30, 2^31 - 1]`` (a 31-bit mantissa, sign carried
      by ``m_i32``), and ``shift`` in ``[1, 62]``; ``real == 0`` gives ``(0, 1)``.
    * The mantissa is rounded half up.  A mantissa that would round up to
      ``2^31`` (the case that overflowed int32 in the reference port) is
      replaced by ``2^30`` with ``shift - 1``, which is the same value.
    * Relative error: ``|m·2^-shift - real| ≤ 2^-31 · |real|`` while
      ``|real| ≥ 2^-31``; smaller multipliers lose mantissa bits (``shift`` is
      capped at 62) and are represented to within ``2^-63`` absolute.
    * Valid for ``|real| < 2^30``; larger values raise ``KernelInputError``.
    """
    real = float(real)
    if not math.isfinite(real):
        raise KernelInputError(f"multiplier must be finite, got {real}")
    if real == 0.0:
        return 0, MIN_SHIFT
    mant, exp = math.frexp(abs(real))  # abs(real) = mant * 2^exp, mant in [0.5, 1)
    m = math.floor(mant * (1 << MULT_BITS) + 0.5)  # exact in float64
    shift = MULT_BITS - exp
    if m == 1 << MULT_BITS:
        m >>= 1
        shift -= 1
    if shift < MIN_SHIFT:
        raise KernelInputError(f"multiplier {real!r} is too large (|real| must be < 2^30)")
    if shift > MAX_SHIFT:
        drop = shift - MAX_SHIFT
        m = (m + (1 << (drop - 1))) >> drop if drop < 64 else 0
        shift = MAX_SHIFT
    return (-m if real < 0 else m), shift


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of :func:`quantize_multiplier`: returns ``(m_i32[C], shift_i32[C])``."""
    pairs = [quantize_multiplier(r) for r in np.asarray(reals, dtype=np.float64).ravel()]
    m_i32 = np.array([p[0] for p in pairs], dtype=np.int32)
    shift_i32 = np.array([p[1] for p in pairs], dtype=np.int32)
    return m_i32, shift_i32


def _requant_vectors_checked(m_i32, shift, out_bits, c: int):
    out_dtype = container_for_bits(out_bits)
    m_vec = channel_vector("m_i32", m_i32, c, np.int64)
    s_vec = channel_vector("shift", shift, c, np.int64)
    bad_m = np.flatnonzero(np.abs(m_vec) >= (1 << MULT_BITS))
    if bad_m.size:
        raise KernelInputError(f"m_i32 must satisfy |m_i32| < 2^31, got {m_vec[bad_m[0]]}"
                               f"{_at_channel(bad_m[0], m_i32)}")
    bad_s = np.flatnonzero((s_vec < MIN_SHIFT) | (s_vec > MAX_SHIFT))
    if bad_s.size:
        raise KernelInputError(f"shift must lie in [{MIN_SHIFT}, {MAX_SHIFT}], got {s_vec[bad_s[0]]}"
                               f"{_at_channel(bad_s[0], shift)}")
    return out_dtype, m_vec, s_vec


def _at_channel(i: int, given) -> str:
    """The suffix naming channel ``i`` when the caller gave a per-channel vector (not a broadcast scalar)."""
    return f" at channel {i}" if np.size(given) > 1 else ""


def _check_requant_args(x, m_i32, shift, out_bits):
    """``(out_dtype, m int64[C], shift int64[C])`` for ``x [..., C]`` (fresh, checked vectors)."""
    check_int("x", x, (np.int8, np.int16, np.int32, np.int64))
    shape = tuple(x.shape)  # (device arrays of the CUDA simulator do not index shapes from the end)
    return _requant_vectors_checked(m_i32, shift, out_bits, shape[-1] if shape else 1)


@memo_frozen()
def _requant_consts_cpu(m_i32, shift, out_bits, c: int):
    """Checked ``(out_dtype, m int32[C], shift int64[C])`` of the numba kernels (read-only;
    cached per constant set, see :func:`memo_frozen`)."""
    out_dtype, m_vec, s_vec = _requant_vectors_checked(m_i32, shift, out_bits, c)
    m32 = m_vec.astype(np.int32)
    for v in (m32, s_vec):
        v.setflags(write=False)
    return out_dtype, m32, s_vec


def _check_requant_args_cpu(x, m_i32, shift, out_bits):
    check_int("x", x, (np.int8, np.int16, np.int32, np.int64))
    return _requant_consts_cpu(m_i32, shift, out_bits, x.shape[-1] if x.ndim else 1)


def _round_shift_ref(x_i64: np.ndarray, m_i64: np.ndarray, s_i64: np.ndarray) -> np.ndarray:
    """``floor((x·m + 2^(s-1)) / 2^s)`` evaluated as ``((x·m >> (s-1)) + 1) >> 1``."""
    return ((x_i64 * m_i64 >> (s_i64 - 1)) + 1) >> 1


@register("requantize", "ref")
def requantize_ref(x: np.ndarray, m_i32, shift, out_bits: int = 8) -> np.ndarray:
    """Rescale integers by ``m_i32 · 2^-shift`` and saturate to ``out_bits``.

    Formula (per element, channel ``c`` = index on the last axis)::

        y = clip(floor((x · m[c] + 2^(shift[c]-1)) / 2^shift[c]), -Q, Q),  Q = 2^(out_bits-1) - 1

    * ``x``: int8/int16/int32/int64 with ``|x| < 2^32`` (not checked at run time).
    * ``m_i32``, ``shift``: scalars or vectors over the last axis, from
      :func:`quantize_multiplier` (``|m| < 2^31``, ``shift`` in [1, 62]).
    * Output: int8 for ``out_bits ≤ 8``, int16 for ≤ 16, int32 for ≤ 32; the
      range is symmetric, ``[-Q, Q]`` (int8: [-127, 127]).
    * Rounding: half up (ties toward +inf), then saturation.
    * Overflow: ``|x · m| < 2^32 · 2^31 = 2^63``; the rounding term is added
      after a ``shift - 1`` right shift, so no intermediate exceeds int64.
    """
    out_dtype, m_vec, s_vec = _check_requant_args(x, m_i32, shift, out_bits)
    q = qmax_for_bits(out_bits)
    y_i64 = _round_shift_ref(x.astype(np.int64), m_vec, s_vec)
    return np.clip(y_i64, -q, q).astype(out_dtype)


@register("rescale_add", "ref")
def rescale_add_ref(a: np.ndarray, m_a, shift_a, b: np.ndarray, m_b, shift_b, out_bits: int = 8) -> np.ndarray:
    """Add two integer tensors held at different scales into one output scale.

    Formula (``R(x, m, s) = floor((x·m + 2^(s-1)) / 2^s)`` as in :func:`requantize_ref`)::

        y = clip(R(a, m_a, shift_a) + R(b, m_b, shift_b), -Q, Q)

    with ``m_a·2^-shift_a = S_a / S_out`` and ``m_b·2^-shift_b = S_b / S_out``.
    Used for residual adds (I-BERT keeps the sum at 22 bits) and for summing
    DeBERTa's three attention-score terms.

    * ``a``, ``b``: int8/int16/int32/int64 of the same shape, ``|x| < 2^32``.
    * Multipliers and shifts: scalars or vectors over the last axis.
    * Output: container of ``out_bits`` as in :func:`requantize_ref`.
    * Rounding: each branch rounds half up on its own, so the sum is within
      1 output step of the exact rescaled sum (0.5 per branch).
    * Overflow: each branch as in :func:`requantize_ref`; the two rounded
      branches are below 2^32 each, so their int64 sum cannot overflow.
    """
    if a.shape != b.shape:
        raise KernelInputError(f"rescale_add operands must have the same shape, got {a.shape} and {b.shape}")
    out_dtype, ma, sa = _check_requant_args(a, m_a, shift_a, out_bits)
    _, mb, sb = _check_requant_args(b, m_b, shift_b, out_bits)
    q = qmax_for_bits(out_bits)
    y_i64 = _round_shift_ref(a.astype(np.int64), ma, sa) + _round_shift_ref(b.astype(np.int64), mb, sb)
    return np.clip(y_i64, -q, q).astype(out_dtype)


# ----------------------------------------------------------------------------- numba CPU: shared SIMD helpers


def _detect_vbmi() -> bool:
    """True when numba compiles for a CPU with AVX-512F/BW/VBMI (``vpermi2b``).

    Honours numba's ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` (a portable
    build must not contain VBMI); ``INTENGINE_DISABLE_VBMI=1`` turns it off.
    """
    return cpu_has(("avx512f", "avx512bw", "avx512vbmi"), "INTENGINE_DISABLE_VBMI")


HAVE_VBMI: bool = _detect_vbmi()


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the enclosing (outlined ``prange``) function with 512-bit registers.

    LLVM's tuning for recent Xeons prefers 256-bit vectors; the integer kernels
    here gain from 8 int64 / 16 int32 lanes.  Adds the function attributes
    ``prefer-vector-width``/``min-legal-vector-width`` = 512 (a hint: no effect
    without AVX-512).  Emits no instruction; call it inside the ``prange`` body.
    """

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        for a in ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"'):
            set.add(attrs, a)  # string attributes: llvmlite's checked add() only knows keywords
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def _lut64(typingctx, src_addr, dst_addr, table_addr):
    """``dst[0:64] = table[u8(src[0:64])]`` for a 256-byte table (AVX-512 VBMI).

    Two ``vpermi2b`` look the 64 indices up in the halves ``table[0:128]`` and
    ``table[128:256]`` (7-bit indices), the top bit of each index selects the
    half.  Arguments are integer addresses (``arr.ctypes.data``).
    """
    if not all_ints((src_addr, dst_addr, table_addr)):
        return None

    def codegen(context, builder, signature, args):
        src, dst, tab = args
        i64 = ir.IntType(64)
        v64 = ir.VectorType(ir.IntType(8), 64)
        ptr = v64.as_pointer()

        def load(addr):
            return builder.load(builder.inttoptr(addr, ptr), align=1)

        t = [load(builder.add(tab, ir.Constant(i64, 64 * k))) for k in range(4)]
        idx = load(src)
        perm = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v64, [v64, v64, v64]),
                                              "llvm.x86.avx512.vpermi2var.qi.512")
        lo = builder.call(perm, [t[0], idx, t[1]])
        hi = builder.call(perm, [t[2], idx, t[3]])
        res = builder.select(builder.icmp_signed("<", idx, ir.Constant(v64, None)), hi, lo)
        builder.store(res, builder.inttoptr(dst, ptr), align=1)
        return context.get_dummy_value()

    return types.none(src_addr, dst_addr, table_addr), codegen


LUT_CHUNK = 1 << 16  # elements per parallel task of the table kernels


@numba.njit(parallel=True, cache=True)
def _lut8_vbmi(x1, table, out1):
    """``out1[i] = table[u8(x1[i])]``: 1-byte inputs and outputs, 256-byte table, 64 lanes per step."""
    n = x1.size
    xa = x1.ctypes.data
    oa = out1.ctypes.data
    ta = table.ctypes.data
    for k in numba.prange((n + LUT_CHUNK - 1) // LUT_CHUNK):
        lo = k * LUT_CHUNK
        hi = min(n, lo + LUT_CHUNK)
        i = lo
        while i + 64 <= hi:
            _lut64(xa + i, oa + i, ta)
            i += 64
        for j in range(i, hi):
            out1[j] = table[np.uint8(x1[j])]


@numba.njit(parallel=True, cache=True)
def _lut_flat(x1, table, out1):
    """``out1[i] = table[u8(x1[i])]`` (portable; any output dtype)."""
    n = x1.size
    for k in numba.prange((n + LUT_CHUNK - 1) // LUT_CHUNK):
        for j in range(k * LUT_CHUNK, min(n, (k + 1) * LUT_CHUNK)):
            out1[j] = table[np.uint8(x1[j])]


def lut_u8(x: np.ndarray, table: np.ndarray, out: np.ndarray, use_vbmi: bool | None = None) -> None:
    """Apply a 256-entry table to an 8-bit tensor: ``out = table[x.view(uint8)]`` (contiguous ``x``, ``out``).

    ``table`` is indexed by the input *byte* (for int8 ``x``, entry ``v & 255``
    holds the value for ``v``).  One-byte tables go through ``vpermi2b`` when
    the host has AVX-512 VBMI (``use_vbmi=None``: detect).
    """
    if use_vbmi is None:
        use_vbmi = HAVE_VBMI
    x1, o1 = x.reshape(-1), out.reshape(-1)
    if use_vbmi and table.itemsize == 1 and o1.dtype.itemsize == 1:
        _lut8_vbmi(x1, table, o1)
    else:
        _lut_flat(x1, table, o1)


# ----------------------------------------------------------------------------- numba CPU


@numba.njit(inline="always")
def round_shift(x_i64, m_i64, s_i64):
    """Scalar ``floor((x·m + 2^(s-1)) / 2^s)`` (numba); shared by fused epilogues."""
    return ((x_i64 * m_i64 >> (s_i64 - 1)) + 1) >> 1


@numba.njit(inline="always")
def saturate(v_i64, q):
    if v_i64 > q:
        return q
    if v_i64 < -q:
        return -q
    return v_i64


@numba.njit(inline="always")
def rshift_round(p_i64, h_i64, s_i64):
    """``floor((p + h) / 2^s)`` with ``h = 2^(s-1)``: :func:`round_shift` of a product ``p``.

    Equal to ``((p >> (s-1)) + 1) >> 1`` whenever ``p + 2^(s-1)`` does not
    overflow, i.e. ``|p| < 2^62`` for every ``s ≤ 62`` (one add and one shift).
    """
    return (p_i64 + h_i64) >> s_i64


def requant_vectors(m_vec: np.ndarray, s_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel ``(m_i32, half_i64, shift_i64)`` of a validated epilogue (``half = 2^(shift-1)``).

    int32 multipliers let LLVM use ``vpmuldq`` (32×32→64) instead of a 64-bit multiply.
    """
    s64 = np.ascontiguousarray(s_vec, dtype=np.int64)
    return np.ascontiguousarray(m_vec, dtype=np.int32), np.left_shift(np.int64(1), s64 - 1), s64


# requantize / rescale_add accept int64 inputs up to 2^32 (|x·m| < 2^63): they keep the
# two-shift form of round_shift, which cannot overflow.


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _requantize_2d(x2, m_i32, s_i64, q, out2):
    rows, cols = x2.shape
    for r in numba.prange(rows):
        wide_vectors()
        xr = x2[r]
        orow = out2[r]
        for c in range(cols):
            v = round_shift(np.int64(xr[c]), np.int64(m_i32[c]), s_i64[c])
            orow[c] = min(max(v, -q), q)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _rescale_add_2d(a2, ma, sa, b2, mb, sb, q, out2):
    rows, cols = a2.shape
    for r in numba.prange(rows):
        wide_vectors()
        ar = a2[r]
        br = b2[r]
        orow = out2[r]
        for c in range(cols):
            v = (round_shift(np.int64(ar[c]), np.int64(ma[c]), sa[c])
                 + round_shift(np.int64(br[c]), np.int64(mb[c]), sb[c]))
            orow[c] = min(max(v, -q), q)


def as_rows(x: np.ndarray) -> np.ndarray:
    """View ``x`` as a contiguous 2-D ``[rows, last_axis]`` array."""
    x = np.ascontiguousarray(x)
    return x.reshape(-1, x.shape[-1] if x.ndim else 1)


@register("requantize", "cpu")
def requantize_cpu(x: np.ndarray, m_i32, shift, out_bits: int = 8, out=None) -> np.ndarray:
    """numba version of :func:`requantize_ref` (bit-exact); ``out``: optional preallocated result."""
    out_dtype, m_vec, s_vec = _check_requant_args_cpu(x, m_i32, shift, out_bits)
    out = output_array(out, x.shape, out_dtype)
    if out.size:
        _requantize_2d(as_rows(x), m_vec, s_vec, np.int64(qmax_for_bits(out_bits)), as_rows(out))
    return out


FLAT_CHUNK = 1 << 14  # elements per parallel task of the flat per-tensor kernels


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _rescale_add_flat(a1, ma_i64, ha_i64, sa_i64, b1, mb_i64, hb_i64, sb_i64, q, out1):
    """Per-tensor :func:`_rescale_add_2d` over flat arrays of at most 32-bit integers.

    ``|x| ≤ 2^31`` and ``|m| < 2^31`` give ``|x·m| < 2^62``, so each branch is the
    one-add form ``(x·m + 2^(s-1)) >> s`` (:func:`rshift_round`), equal to
    :func:`round_shift`; the multipliers are int32 values (``vpmuldq``) and the
    shifts uniform, so the loop vectorizes on 8 int64 lanes.
    """
    n = a1.size
    for k in numba.prange((n + FLAT_CHUNK - 1) // FLAT_CHUNK):
        wide_vectors()
        # sign-extended inside the outlined parfor body: LLVM then sees 32-bit operands (vpmuldq)
        ma = np.int64(np.int32(ma_i64))
        mb = np.int64(np.int32(mb_i64))
        for i in range(k * FLAT_CHUNK, min(n, (k + 1) * FLAT_CHUNK)):
            v = (rshift_round(np.int64(a1[i]) * ma, ha_i64, sa_i64)
                 + rshift_round(np.int64(b1[i]) * mb, hb_i64, sb_i64))
            out1[i] = min(max(v, -q), q)


def _scalar_multiplier(name: str, m, s) -> tuple[int, int] | None:
    """``(m, shift)`` as checked Python ints when both are integer scalars, else None."""
    if not (is_int_scalar(m) and is_int_scalar(s)):
        return None
    m, s = int(m), int(s)
    if abs(m) >= 1 << MULT_BITS:
        raise KernelInputError(f"m_{name} must satisfy |m| < 2^31, got {m}")
    if not MIN_SHIFT <= s <= MAX_SHIFT:
        raise KernelInputError(f"shift_{name} must lie in [{MIN_SHIFT}, {MAX_SHIFT}], got {s}")
    return m, s


_NARROW = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


@register("rescale_add", "cpu")
def rescale_add_cpu(a: np.ndarray, m_a, shift_a, b: np.ndarray, m_b, shift_b, out_bits: int = 8,
                    out=None) -> np.ndarray:
    """numba version of :func:`rescale_add_ref` (bit-exact); ``out``: optional preallocated result.

    Per-tensor (integer scalar) multipliers on int8/16/32 operands take a flat
    kernel (:func:`_rescale_add_flat`); everything else the per-channel one.
    """
    if a.shape != b.shape:
        raise KernelInputError(f"rescale_add operands must have the same shape, got {a.shape} and {b.shape}")
    sc_a, sc_b = _scalar_multiplier("a", m_a, shift_a), _scalar_multiplier("b", m_b, shift_b)
    if (sc_a and sc_b and isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype in _NARROW
            and b.dtype in _NARROW):
        out = output_array(out, a.shape, container_for_bits(out_bits))
        if out.size:
            (ma, sa), (mb, sb) = sc_a, sc_b
            _rescale_add_flat(np.ascontiguousarray(a).reshape(-1), np.int64(ma), np.int64(1 << (sa - 1)),
                              np.int64(sa), np.ascontiguousarray(b).reshape(-1), np.int64(mb),
                              np.int64(1 << (sb - 1)), np.int64(sb), np.int64(qmax_for_bits(out_bits)),
                              out.reshape(-1))
        return out
    out_dtype, ma, sa = _check_requant_args_cpu(a, m_a, shift_a, out_bits)
    _, mb, sb = _check_requant_args_cpu(b, m_b, shift_b, out_bits)
    out = output_array(out, a.shape, out_dtype)
    if out.size:
        _rescale_add_2d(as_rows(a), ma, sa, as_rows(b), mb, sb,
                        np.int64(qmax_for_bits(out_bits)), as_rows(out))
    return out

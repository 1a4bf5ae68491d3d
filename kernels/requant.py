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

from ._util import channel_vector, check_int, container_for_bits, qmax_for_bits
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


def _check_requant_args(x, m_i32, shift, out_bits):
    check_int("x", x, (np.int8, np.int16, np.int32, np.int64))
    out_dtype = container_for_bits(out_bits)
    c = x.shape[-1] if x.ndim else 1
    m_vec = channel_vector("m_i32", m_i32, c, np.int64)
    s_vec = channel_vector("shift", shift, c, np.int64)
    if np.any(np.abs(m_vec) >= (1 << MULT_BITS)):
        raise KernelInputError("m_i32 must satisfy |m_i32| < 2^31")
    if np.any((s_vec < MIN_SHIFT) | (s_vec > MAX_SHIFT)):
        raise KernelInputError(f"shift must lie in [{MIN_SHIFT}, {MAX_SHIFT}], got {s_vec.min()}..{s_vec.max()}")
    return out_dtype, m_vec, s_vec


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


@numba.njit(parallel=True, cache=True)
def _requantize_2d(x2, m_i64, s_i64, q, out2):
    rows, cols = x2.shape
    for r in numba.prange(rows):
        for c in range(cols):
            out2[r, c] = saturate(round_shift(np.int64(x2[r, c]), m_i64[c], s_i64[c]), q)


@numba.njit(parallel=True, cache=True)
def _rescale_add_2d(a2, ma, sa, b2, mb, sb, q, out2):
    rows, cols = a2.shape
    for r in numba.prange(rows):
        for c in range(cols):
            v = round_shift(np.int64(a2[r, c]), ma[c], sa[c]) + round_shift(np.int64(b2[r, c]), mb[c], sb[c])
            out2[r, c] = saturate(v, q)


def as_rows(x: np.ndarray) -> np.ndarray:
    """View ``x`` as a contiguous 2-D ``[rows, last_axis]`` array."""
    x = np.ascontiguousarray(x)
    return x.reshape(-1, x.shape[-1] if x.ndim else 1)


@register("requantize", "cpu")
def requantize_cpu(x: np.ndarray, m_i32, shift, out_bits: int = 8) -> np.ndarray:
    """numba version of :func:`requantize_ref` (bit-exact)."""
    out_dtype, m_vec, s_vec = _check_requant_args(x, m_i32, shift, out_bits)
    out = np.empty(x.shape, dtype=out_dtype)
    _requantize_2d(as_rows(x), m_vec, s_vec, qmax_for_bits(out_bits), as_rows(out))
    return out


@register("rescale_add", "cpu")
def rescale_add_cpu(a: np.ndarray, m_a, shift_a, b: np.ndarray, m_b, shift_b, out_bits: int = 8) -> np.ndarray:
    """numba version of :func:`rescale_add_ref` (bit-exact)."""
    if a.shape != b.shape:
        raise KernelInputError(f"rescale_add operands must have the same shape, got {a.shape} and {b.shape}")
    out_dtype, ma, sa = _check_requant_args(a, m_a, shift_a, out_bits)
    _, mb, sb = _check_requant_args(b, m_b, shift_b, out_bits)
    out = np.empty(a.shape, dtype=out_dtype)
    _rescale_add_2d(as_rows(a), ma, sa, as_rows(b), mb, sb, qmax_for_bits(out_bits), as_rows(out))
    return out

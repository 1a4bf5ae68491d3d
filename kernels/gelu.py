"""i-GELU: I-BERT's integer GELU (second-order erf polynomial), with the
reference port's two defects fixed.

* **Sign folded.**  The port's erf/output scale is negative (``a < 0``); here
  the erf polynomial is renormalised once by a *negative* dyadic multiplier
  (``m_erf < 0``) into a fixed-point erf with 29 fractional bits, so every
  scale handed on is positive.
* **Shift adapted to S.**  Instead of a fixed ``>> 14``, the input is first
  brought to a working scale ``S_t = S · 2^t`` in ``[2^-14, 2^-13)`` (a left
  shift for coarse 8-bit scales, a rounded right shift for fine int32 scales
  such as GEMM accumulators at ``S_x·S_w``), which fixes the width of every
  intermediate independently of ``S`` and keeps the polynomial constants
  accurate to ~2^-15 relative.

:func:`gelu_params` (float, lowering time) produces the integers;
``gelu_ref`` (numpy) is the specification and ``gelu_cpu`` (numba) is
bit-exact with it.  The CUDA kernel lives in ``kernels/cuda/gelu.py``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np

from ._util import channel_vector, check_int, container_for_bits, qmax_for_bits
from .errors import KernelInputError
from .registry import register
from .requant import (MAX_SHIFT, MIN_SHIFT, MULT_BITS, lut_u8, quantize_multiplier, requant_vectors, round_shift,
                      wide_vectors)

# I-BERT's erf polynomial  L(u) = sgn(u) [a (min(|u|, -b) + b)^2 + 1]
GELU_A = -0.2888
GELU_B = -1.769

WORK_EXP = -13  # working scale S_t = S·2^t lies in [2^(WORK_EXP-1), 2^WORK_EXP)
ERF_FRAC_BITS = 29  # fixed-point erf: erf ≈ E_F · 2^-29, |E_F| ≤ 2^29
MAX_OUT_FRAC = ERF_FRAC_BITS  # out_shift = 30 - out_frac ≥ 1
I32_MAX = (1 << 31) - 1
SCALE_MIN = 1e-12  # supported input scales
SCALE_MAX = 256.0
IN_SHIFT_MIN = -24
IN_SHIFT_MAX = 40


@dataclass(frozen=True)
class GeluParams:
    """Integers of one i-GELU instance (from :func:`gelu_params`).

    ``out_scale`` (float, positive) is the scale of the int32 output ``y``:
    ``GELU(x·S) ≈ y · out_scale`` with ``out_scale = S · 2^-out_frac``.
    """

    in_shift: int  # t: > 0 rounded right shift of |x|, < 0 left shift
    b_int: int  # floor(b / S_t'), S_t' = S·2^t / sqrt(2); negative
    c_int: int  # floor(1 / (a · S_t'^2)); negative
    m_erf: int  # m_erf · 2^-shift_erf ≈ 2^29 / c_int  (negative: the folded sign)
    shift_erf: int
    out_shift: int  # 30 - out_frac
    out_frac: int  # the output has out_frac more fractional bits than the input
    in_scale: float
    out_scale: float

    @property
    def kernel_args(self) -> dict:
        """Keyword arguments of the ``gelu`` kernels (integers only)."""
        return dict(
            in_shift=self.in_shift, b_int=self.b_int, c_int=self.c_int,
            m_erf=self.m_erf, shift_erf=self.shift_erf, out_shift=self.out_shift,
        )


def gelu_params(scale: float, in_bits: int = 8) -> GeluParams:
    """Integer constants of i-GELU for an input at scale ``scale`` (lowering time).

    * ``scale``: the input step ``S`` in ``[1e-12, 256]`` (8-bit activations,
      int32 GEMM accumulators at ``S_x·S_w``, ...).
    * ``in_bits`` (2..32): the inputs satisfy ``|x| ≤ 2^(in_bits-1) - 1`` (8
      for int8, 32 for a full int32 accumulator, 22 for a 22-bit sum, or the
      bits of a calibrated accumulator range).  It only sets the output
      scale: ``out_frac = min(32 - in_bits, 29)`` extra fractional bits, the
      most that keeps ``|y| < 2^31`` (``|GELU(x)| ≤ |x|``).

    Working scale: with ``S = mant·2^e`` (``mant ∈ [0.5, 1)``), ``t = -13 - e``
    so ``S_t = S·2^t ∈ [2^-14, 2^-13)`` and ``S_t' = S_t/√2``; then
    ``b_int = ⌊b/S_t'⌋ ∈ [-40993, -20495]``, ``c_int = ⌊1/(a·S_t'^2)⌋ ∈
    [-1.86e9, -4.6e8]`` and ``(m_erf, shift_erf)`` is ``quantize_multiplier``
    of ``2^29 / c_int`` (negative, magnitude in [0.28, 1.2]).
    """
    s = float(scale)
    if not (math.isfinite(s) and SCALE_MIN <= s <= SCALE_MAX):
        raise KernelInputError(f"gelu_params: scale must lie in [{SCALE_MIN}, {SCALE_MAX}], got {scale!r}")
    if not isinstance(in_bits, (int, np.integer)) or isinstance(in_bits, bool) or not 2 <= in_bits <= 32:
        raise KernelInputError(f"gelu_params: in_bits must be an integer in [2, 32], got {in_bits!r}")
    _, e = math.frexp(s)
    t = WORK_EXP - e
    s_t = math.ldexp(s, t) / math.sqrt(2.0)
    b_int = math.floor(GELU_B / s_t)
    c_int = math.floor(1.0 / (GELU_A * s_t * s_t))
    m_erf, shift_erf = quantize_multiplier(math.ldexp(1.0, ERF_FRAC_BITS) / c_int)
    out_frac = min(32 - int(in_bits), MAX_OUT_FRAC)
    return GeluParams(
        in_shift=t, b_int=b_int, c_int=c_int, m_erf=m_erf, shift_erf=shift_erf,
        out_shift=ERF_FRAC_BITS + 1 - out_frac, out_frac=out_frac, in_scale=s, out_scale=math.ldexp(s, -out_frac),
    )


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, out_shift, m_i32, shift, out_bits):
    """Validate the kernel arguments; returns (out_dtype, Q, m_vec, s_vec) (vectors None without epilogue)."""
    check_int("x", x, (np.int8, np.int16, np.int32))
    ints = dict(in_shift=in_shift, b_int=b_int, c_int=c_int, m_erf=m_erf, shift_erf=shift_erf, out_shift=out_shift)
    for name, v in ints.items():
        if not _is_int(v):
            raise KernelInputError(f"{name} must be an integer, got {type(v).__name__}")
    if not IN_SHIFT_MIN <= in_shift <= IN_SHIFT_MAX:
        raise KernelInputError(f"in_shift must lie in [{IN_SHIFT_MIN}, {IN_SHIFT_MAX}], got {in_shift}")
    if not -(1 << 16) < b_int < 0:
        raise KernelInputError(f"b_int must lie in (-2^16, 0), got {b_int}")
    if not (-(1 << 31) < c_int < 0 and b_int * b_int + c_int < (1 << 31)):
        raise KernelInputError(f"c_int must lie in (-2^31, 0) with b_int^2 + c_int < 2^31, got {c_int}")
    if not 0 < -m_erf < (1 << MULT_BITS):
        raise KernelInputError(f"m_erf must lie in (-2^31, 0), got {m_erf}")
    if not MIN_SHIFT <= shift_erf <= MAX_SHIFT:
        raise KernelInputError(f"shift_erf must lie in [{MIN_SHIFT}, {MAX_SHIFT}], got {shift_erf}")
    if not 1 <= out_shift <= ERF_FRAC_BITS + 1:
        raise KernelInputError(f"out_shift must lie in [1, {ERF_FRAC_BITS + 1}], got {out_shift}")
    if m_i32 is None and shift is None:
        return np.int32, I32_MAX, None, None
    if m_i32 is None or shift is None:
        raise KernelInputError("m_i32 and shift must be given together (fused requantization) or both be None")
    out_dtype = container_for_bits(out_bits)
    c = x.shape[-1] if x.ndim else 1
    m_vec = channel_vector("m_i32", m_i32, c, np.int64)
    s_vec = channel_vector("shift", shift, c, np.int64)
    if np.any(np.abs(m_vec) >= (1 << MULT_BITS)):
        raise KernelInputError("m_i32 must satisfy |m_i32| < 2^31")
    if np.any((s_vec < MIN_SHIFT) | (s_vec > MAX_SHIFT)):
        raise KernelInputError(f"shift must lie in [{MIN_SHIFT}, {MAX_SHIFT}]")
    return out_dtype, qmax_for_bits(out_bits), m_vec, s_vec


@register("gelu", "ref")
def gelu_ref(x: np.ndarray, in_shift: int, b_int: int, c_int: int, m_erf: int, shift_erf: int, out_shift: int,
             m_i32=None, shift=None, out_bits: int = 8) -> np.ndarray:
    """Integer GELU (I-BERT i-GELU, sign folded, shift adapted to the scale).

    Formula (per element; integer constants from :func:`gelu_params`;
    ``R(v, m, s) = floor((v·m + 2^(s-1)) / 2^s)`` as in requant)::

        a_t = min(|x| << -t  if t ≤ 0  else  (|x| + 2^(t-1)) >> t,   -b_int)
        L   = sgn(x) · ((a_t + b_int)^2 + c_int)           # erf(x·S/√2) ≈ L / c_int
        E   = clip(R(L, m_erf, shift_erf), -2^29, 2^29)     # erf in Q29, sign folded (m_erf < 0)
        y   = sat32(R(x · (2^29 + E), 1, out_shift))        # GELU(x·S) ≈ y · S · 2^-(30-out_shift)
        out = y                                       without epilogue (int32)
        out = clip(R(y, m_i32[c], shift[c]), -Q, Q)   with the fused requantize epilogue

    i.e. ``GELU(x) = x/2·(1 + erf(x/√2))`` with I-BERT's polynomial
    ``erf(u) ≈ sgn(u)[a(min(|u|,-b)+b)^2 + 1]``, ``a = -0.2888``, ``b = -1.769``.

    * ``x``: int8, int16 or int32 at scale ``S``; ``t = in_shift`` brings the
      erf argument to ``S_t = S·2^t ∈ [2^-14, 2^-13)``.
    * Output: int32 at ``out_scale = S·2^-out_frac`` (``out_frac = 30 -
      out_shift = min(32 - in_bits, 29)``, see :func:`gelu_params`), saturated
      to ``±(2^31-1)`` (reachable only if ``|x|`` exceeds the declared
      ``in_bits``).  With ``m_i32, shift`` (scalars or vectors over the last
      axis, ``m·2^-shift = out_scale / S_out``) the output is the requantized
      ``out_bits`` container (int8 by default), identical to
      ``requantize_ref(gelu_ref(x, ...), m_i32, shift, out_bits)``.
    * Rounding: the input right shift and every ``R`` round half up; the
      polynomial constants are floors (as in I-BERT).
    * Overflow bound (int64, any int8/16/32 ``x``, any supported ``S``): the
      left shift ``|x| << -t < 2^31·2^24 = 2^55``; ``a_t ≤ -b_int < 2^15.33``;
      ``(a_t + b_int)^2 ≤ b_int^2 < 2^30.7`` and ``|L| ≤ max(b_int^2 + c_int,
      -c_int) < 2^31`` (int32); ``|L·m_erf| < 2^62``; ``0 ≤ 2^29 + E ≤ 2^30``
      so ``|x·(2^29+E)| < 2^61``.  For ``|x| ≤ 2^(in_bits-1)-1``,
      ``|y| ≤ |x|·2^out_frac < 2^31`` (no saturation).
    * Accuracy (tests/test_gelu.py): the wide output is within 6e-5 (plus
      half an output step) of I-BERT's real polynomial, i.e. on ``[-4, 4]``
      RMS ≈ 0.0082 and max ≈ 0.0182 against exact erf-GELU, for 8-bit and
      int32 scales alike.
    """
    out_dtype, q, m_vec, s_vec = _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, out_shift,
                                                  m_i32, shift, out_bits)
    x_i64 = x.astype(np.int64)
    abs_i64 = np.abs(x_i64)
    if in_shift <= 0:
        abs_i64 = abs_i64 << np.int64(-in_shift)
    else:
        abs_i64 = (abs_i64 + np.int64(1 << (in_shift - 1))) >> np.int64(in_shift)
    abs_i64 = np.minimum(abs_i64, np.int64(-b_int))
    poly_i64 = (abs_i64 + np.int64(b_int)) ** 2 + np.int64(c_int)
    poly_i64 = np.sign(x_i64) * poly_i64
    erf_i64 = ((poly_i64 * np.int64(m_erf) >> np.int64(shift_erf - 1)) + 1) >> 1
    one = np.int64(1 << ERF_FRAC_BITS)
    erf_i64 = np.clip(erf_i64, -one, one)
    wide_i64 = x_i64 * (one + erf_i64)
    y_i64 = ((wide_i64 >> np.int64(out_shift - 1)) + 1) >> 1
    y_i64 = np.clip(y_i64, -I32_MAX, I32_MAX)
    if m_vec is None:
        return y_i64.astype(np.int32)
    out_i64 = ((y_i64 * m_vec >> (s_vec - 1)) + 1) >> 1
    return np.clip(out_i64, -q, q).astype(out_dtype)


# ----------------------------------------------------------------------------- numba CPU


@numba.njit(inline="always")
def gelu_scalar(x_i64, lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift):
    """Scalar i-GELU up to the saturated int32 value (as int64), branch-free.

    ``lsh = max(-t, 0)``, ``rsh = max(t, 0)``, ``half = 2^rsh >> 1``,
    ``clip = -b_int`` (see :func:`gelu_args_scalar`).
    """
    a_i64 = min(((abs(x_i64) << lsh) + half) >> rsh, clip)
    d_i64 = _sext32(a_i64 + b_int)
    poly_i64 = _sext32(d_i64 * d_i64 + c_int)
    if x_i64 < 0:
        poly_i64 = -poly_i64
    one = np.int64(1) << ERF_FRAC_BITS
    erf_i64 = min(max(round_shift(poly_i64, _sext32(m_erf), shift_erf), -one), one)
    return min(max(round_shift(x_i64 * _sext32(one + erf_i64), np.int64(1), out_shift), -I32_MAX), I32_MAX)


@numba.njit(inline="always")
def _sext32(v_i64):
    """Identity on values in int32 range; tells LLVM the operand is 32-bit (vpmuldq)."""
    return np.int64(np.int32(v_i64))


def gelu_args_scalar(in_shift, b_int, c_int, m_erf, shift_erf, out_shift) -> tuple:
    """The int64 argument tuple of :func:`gelu_scalar` (and its CUDA twin)."""
    lsh = max(-int(in_shift), 0)
    rsh = max(int(in_shift), 0)
    return tuple(np.int64(v) for v in (lsh, rsh, (1 << rsh) >> 1, -int(b_int), b_int, c_int, m_erf, shift_erf,
                                       out_shift))


@numba.njit(parallel=True, cache=True)
def _gelu_flat(x1, lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift, out1):
    """Scalar-code i-GELU over a flat array (kept as the straightforward reference twin)."""
    n = x1.size
    nchunk = (n + 8191) // 8192
    for k in numba.prange(nchunk):
        hi = min(n, (k + 1) * 8192)
        for i in range(k * 8192, hi):
            out1[i] = gelu_scalar(np.int64(x1[i]), lsh, rsh, half, clip, b_int, c_int, m_erf, shift_erf, out_shift)


@numba.njit(inline="always")
def gelu_simd(x_i64, lsh, rsh, half, clip, b_int, c_int, m_erf_i32, h_erf, shift_erf, h_out, out_shift):
    """:func:`gelu_scalar` shaped for SIMD (bit-identical), up to the saturated int32 ``y``.

    Every product is 32×32→64 bits (``vpmuldq``): ``d² `` (``|d| < 2^16``),
    ``±L·m_erf`` (``|L| < 2^31``), ``x·(2^29 + E)``.  Each ``R(p, m, s)`` is
    ``(p + 2^(s-1)) >> s`` (``h_* = 2^(s-1)``), equal to the two-shift form since
    ``|p| < 2^62`` (see the overflow bound of :func:`gelu_ref`).
    """
    a_i64 = min(((abs(x_i64) << lsh) + half) >> rsh, clip)
    d_i64 = np.int64(np.int32(a_i64 + b_int))
    poly_i64 = d_i64 * d_i64 + c_int  # |poly| < 2^31
    poly_i64 = -poly_i64 if x_i64 < 0 else poly_i64
    one = np.int64(1) << ERF_FRAC_BITS
    erf_i64 = (np.int64(np.int32(poly_i64)) * np.int64(m_erf_i32) + h_erf) >> shift_erf
    w_i64 = np.int64(np.int32(min(max(erf_i64, -one), one) + one))  # 2^29 + E ∈ [0, 2^30]
    y_i64 = (x_i64 * w_i64 + h_out) >> out_shift
    return min(max(y_i64, np.int64(-I32_MAX)), np.int64(I32_MAX))


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _gelu_rows(x2, lsh, rsh, half, clip, b_int, c_int, m_erf_i32, h_erf, shift_erf, h_out, out_shift, out2):
    rows, cols = x2.shape
    for r in numba.prange(rows):
        wide_vectors()
        xr = x2[r]
        orow = out2[r]
        if lsh > 0:  # (t < 0: rsh = 0, half = 0) one shift direction per loop: shifts are scarce ports
            for c in range(cols):
                orow[c] = np.int32(gelu_simd(np.int64(xr[c]), lsh, np.int64(0), np.int64(0), clip, b_int, c_int,
                                             m_erf_i32, h_erf, shift_erf, h_out, out_shift))
        else:
            for c in range(cols):
                orow[c] = np.int32(gelu_simd(np.int64(xr[c]), np.int64(0), rsh, half, clip, b_int, c_int, m_erf_i32,
                                             h_erf, shift_erf, h_out, out_shift))


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _gelu_requant_rows(x2, lsh, rsh, half, clip, b_int, c_int, m_erf_i32, h_erf, shift_erf, h_out, out_shift,
                       m_i32, h_i64, s_i64, q, out2):
    rows, cols = x2.shape
    for r in numba.prange(rows):
        wide_vectors()
        xr = x2[r]
        orow = out2[r]
        if lsh > 0:  # (t < 0: rsh = 0, half = 0) one shift direction per loop
            for c in range(cols):
                y_i64 = gelu_simd(np.int64(xr[c]), lsh, np.int64(0), np.int64(0), clip, b_int, c_int, m_erf_i32,
                                  h_erf, shift_erf, h_out, out_shift)
                v_i64 = (np.int64(np.int32(y_i64)) * np.int64(m_i32[c]) + h_i64[c]) >> s_i64[c]  # |y·m| < 2^62
                orow[c] = min(max(v_i64, -q), q)
        else:
            for c in range(cols):
                y_i64 = gelu_simd(np.int64(xr[c]), np.int64(0), rsh, half, clip, b_int, c_int, m_erf_i32, h_erf,
                                  shift_erf, h_out, out_shift)
                v_i64 = (np.int64(np.int32(y_i64)) * np.int64(m_i32[c]) + h_i64[c]) >> s_i64[c]
                orow[c] = min(max(v_i64, -q), q)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _lut_requant_2d(x2, table_i32, m_i32, h_i64, s_i64, q, out2):
    """int8 inputs, per-channel epilogue: ``y = table[u8(x)]`` then requantize."""
    rows, cols = x2.shape
    for r in numba.prange(rows):
        wide_vectors()
        xr = x2[r]
        orow = out2[r]
        for c in range(cols):
            y_i64 = np.int64(table_i32[np.uint8(xr[c])])
            v_i64 = (y_i64 * np.int64(m_i32[c]) + h_i64[c]) >> s_i64[c]
            orow[c] = min(max(v_i64, -q), q)


INT8_BY_BYTE = np.arange(256, dtype=np.uint8).view(np.int8)  # byte b holds the int8 value with that bit pattern
LUT_MIN_SIZE = 1024  # int8 inputs from this size on go through a 256-entry table


@functools.lru_cache(maxsize=256)
def _int8_table(ints: tuple, m: int | None, s: int | None, out_bits: int) -> np.ndarray:
    """``gelu_ref`` of every int8 value, indexed by the input byte; requantized when ``m, s`` are scalars."""
    if m is None:
        table = gelu_ref(INT8_BY_BYTE, *ints)
    else:
        table = gelu_ref(INT8_BY_BYTE, *ints, m_i32=m, shift=s, out_bits=out_bits)
    table.flags.writeable = False
    return table


@register("gelu", "cpu")
def gelu_cpu(x: np.ndarray, in_shift: int, b_int: int, c_int: int, m_erf: int, shift_erf: int, out_shift: int,
             m_i32=None, shift=None, out_bits: int = 8) -> np.ndarray:
    """numba version of :func:`gelu_ref` (bit-exact, parallel over rows, 512-bit SIMD).

    int8 inputs (from ``LUT_MIN_SIZE`` elements on) go through a 256-entry
    table of :func:`gelu_ref` (cached per parameters): with a per-tensor
    epilogue the table holds the requantized outputs (``vpermi2b`` for int8
    out), otherwise the int32 ``y`` and the per-channel epilogue follows.
    """
    out_dtype, q, m_vec, s_vec = _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, out_shift,
                                                  m_i32, shift, out_bits)
    x = np.ascontiguousarray(x).reshape(x.shape)  # (keeps 0-d inputs 0-d)
    out = np.empty(x.shape, dtype=out_dtype)
    if x.size == 0:
        return out
    x2 = x.reshape(-1, x.shape[-1] if x.ndim else 1)
    o2 = out.reshape(x2.shape)
    ints = tuple(int(v) for v in (in_shift, b_int, c_int, m_erf, shift_erf, out_shift))
    per_tensor = m_vec is not None and bool(np.all(m_vec == m_vec[0]) and np.all(s_vec == s_vec[0]))
    if x.dtype == np.int8 and x.size >= LUT_MIN_SIZE:
        if m_vec is None or per_tensor:
            key = (None, None) if m_vec is None else (int(m_vec[0]), int(s_vec[0]))
            lut_u8(x2, _int8_table(ints, *key, int(out_bits)), o2)
        else:
            table = _int8_table(ints, None, None, int(out_bits))
            _lut_requant_2d(x2, table, *requant_vectors(m_vec, s_vec), np.int64(q), o2)
        return out
    lsh, rsh = max(-ints[0], 0), max(ints[0], 0)
    consts = (np.int64(lsh), np.int64(rsh), np.int64((1 << rsh) >> 1), np.int64(-b_int), np.int64(b_int),
              np.int64(c_int), np.int32(m_erf), np.int64(1 << (shift_erf - 1)), np.int64(shift_erf),
              np.int64(1 << (out_shift - 1)), np.int64(out_shift))
    if m_vec is None:
        _gelu_rows(x2, *consts, o2)
    else:
        _gelu_requant_rows(x2, *consts, *requant_vectors(m_vec, s_vec), np.int64(q), o2)
    return out

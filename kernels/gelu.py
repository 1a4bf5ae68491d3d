"""i-GELU: I-BERT's integer GELU (second-order erf polynomial), with the
reference port's defects fixed and the output requantization folded in.

* **Sign folded.**  The port's erf/output scale is negative (``a < 0``); here
  the erf polynomial is renormalised once by a *negative* dyadic multiplier
  (``m_erf < 0``) into ``w ≈ w0·(1 + erf)`` with ``w0 ≤ 2^29``, so every
  scale handed on is positive.
* **Shift adapted to S.**  Instead of a fixed ``>> 14``, the input is first
  brought to a working scale ``S_t = S · 2^t`` in ``[2^-14, 2^-13)`` (a left
  shift for coarse 8-bit scales, a rounded right shift for fine int32 scales
  such as GEMM accumulators at ``S_x·S_w``), which fixes the width of every
  intermediate independently of ``S`` and keeps the polynomial constants
  accurate to ~2^-15 relative.
* **One rounding to the output.**  ``out = R(x·w, out_shift)``: the output
  scale (an int8 activation step, or the wide int32 scale a LayerNorm reads)
  is folded into ``w0`` and ``m_erf`` at lowering time, so there is no
  intermediate int32 GELU value rounded a second time.

:func:`gelu_params` (float, lowering time) produces the integers;
``gelu_ref`` (numpy) is the specification and ``gelu_cpu`` (numba) is
bit-exact with it: int8 inputs through a 256-entry table, int32 inputs in 16
int32 lanes (hand-written vector IR, :func:`_gelu_codegen`) wherever
:func:`_fast_plan` proves the 32-bit bounds for the constants, everything else
in 8 int64 lanes.  The CUDA kernel lives in ``kernels/cuda/gelu.py``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._llvm import all_ints, args_i64, counted_loop, join_dwords, lane_ops, pack_i8x64, vec_helpers
from ._util import check_int, container_for_bits, is_int_scalar, output_array, qmax_for_bits
from .errors import KernelInputError
from .registry import register
from .requant import MAX_SHIFT, MIN_SHIFT, MULT_BITS, lut_u8, quantize_multiplier, wide_vectors

# I-BERT's erf polynomial  L(u) = sgn(u) [a (min(|u|, -b) + b)^2 + 1]
GELU_A = -0.2888
GELU_B = -1.769

WORK_EXP = -13  # working scale S_t = S·2^t lies in [2^(WORK_EXP-1), 2^WORK_EXP)
W0_BITS = 29  # w0 ≤ 2^29: w ≤ 2^30, |x·w| ≤ 2^61
WIDE_FRAC_MAX = 29  # the wide output has at most 29 more fractional bits than the input
I32_MAX = (1 << 31) - 1
SCALE_MIN = 1e-12  # supported input scales
SCALE_MAX = 256.0
IN_SHIFT_MIN = -24
IN_SHIFT_MAX = 40
OUT_SHIFT_MAX = 62
CONST_NAMES = ("in_shift", "b_int", "c_int", "m_erf", "shift_erf", "w0", "out_shift", "out_bits")


@dataclass(frozen=True)
class GeluParams:
    """Integers of one i-GELU instance (from :func:`gelu_params`).

    ``GELU(x·in_scale) ≈ out · out_scale``; ``out_scale = in_scale·2^out_shift / (2·w0)``.
    """

    in_shift: int  # t: > 0 rounded right shift of |x|, < 0 left shift
    b_int: int  # floor(b / S_t'), S_t' = S·2^t / sqrt(2); negative
    c_int: int  # floor(1 / (a · S_t'^2)); negative
    m_erf: int  # m_erf · 2^-shift_erf ≈ w0 / c_int  (negative: the folded sign)
    shift_erf: int
    w0: int  # w = w0·(1 + erf), 1 ≤ w0 ≤ 2^29
    out_shift: int
    out_bits: int
    in_scale: float
    out_scale: float

    @property
    def kernel_args(self) -> dict:
        """Keyword arguments of the ``gelu`` kernels (integers only)."""
        return {k: int(getattr(self, k)) for k in CONST_NAMES}


def gelu_params(scale: float, in_bits: int = 8, out_scale: float | None = None, out_bits: int = 8) -> GeluParams:
    """Integer constants of i-GELU for an input at scale ``scale`` (lowering time).

    * ``scale``: the input step ``S`` in ``[1e-12, 256]`` (8-bit activations,
      int32 GEMM accumulators at ``S_x·S_w``, ...).
    * ``out_scale=None``: the *wide* int32 output (what a LayerNorm reads):
      ``w0 = 2^29``, ``out_frac = min(32 - in_bits, 29)`` extra fractional bits
      (``out_shift = 30 - out_frac``, ``out_scale = S·2^-out_frac``), the most
      that keeps ``|out| < 2^31`` for ``|x| ≤ 2^(in_bits-1) - 1``
      (``|GELU(x)| ≤ |x|``); ``in_bits`` (2..32) only serves this.
    * ``out_scale=S_out``: the output is requantized to ``out_bits`` at
      ``S_out`` in the same rounding: ``w0·2^-out_shift ≈ S / (2·S_out)``
      with ``w0 ∈ [2^28, 2^29]`` (``out_shift`` capped at 62, where ``w0``
      gets smaller; a ratio ``S / S_out`` outside ``[2^-62, 2^29)`` is refused).

    Working scale: with ``S = mant·2^e`` (``mant ∈ [0.5, 1)``), ``t = -13 - e``
    so ``S_t = S·2^t ∈ [2^-14, 2^-13)`` and ``S_t' = S_t/√2``; then
    ``b_int = ⌊b/S_t'⌋ ∈ [-40993, -20495]``, ``c_int = ⌊1/(a·S_t'^2)⌋ ∈
    [-1.86e9, -4.6e8]`` and ``(m_erf, shift_erf)`` is ``quantize_multiplier``
    of ``w0 / c_int`` (negative).
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
    if out_scale is None:
        out_frac = min(32 - int(in_bits), WIDE_FRAC_MAX)
        w0, out_shift, bits, s_out = 1 << W0_BITS, W0_BITS + 1 - out_frac, 32, math.ldexp(s, -out_frac)
    else:
        s_out = float(out_scale)
        if not (math.isfinite(s_out) and s_out > 0):
            raise KernelInputError(f"gelu_params: out_scale must be a positive finite float, got {out_scale!r}")
        qmax_for_bits(out_bits)
        g = s / (2.0 * s_out)  # w0·2^-out_shift
        _, ge = math.frexp(g)
        out_shift = min(W0_BITS - ge, OUT_SHIFT_MAX)
        w0 = round(math.ldexp(g, out_shift))
        if out_shift < 1 or w0 < 1:
            raise KernelInputError(f"gelu_params: scale / out_scale = {s / s_out:.3g} is outside [2^-62, 2^29)")
        bits = int(out_bits)
    m_erf, shift_erf = quantize_multiplier(w0 / c_int)
    return GeluParams(in_shift=t, b_int=b_int, c_int=c_int, m_erf=m_erf, shift_erf=shift_erf, w0=w0,
                      out_shift=out_shift, out_bits=bits, in_scale=s, out_scale=s_out)


@functools.lru_cache(maxsize=256)
def _check_consts(in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, out_bits) -> tuple:
    """Validate the integer constants (cached per set); returns ``(out_dtype, Q)``."""
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
    if not 1 <= w0 <= (1 << W0_BITS):
        raise KernelInputError(f"w0 must lie in [1, 2^{W0_BITS}], got {w0}")
    if not 1 <= out_shift <= OUT_SHIFT_MAX:
        raise KernelInputError(f"out_shift must lie in [1, {OUT_SHIFT_MAX}], got {out_shift}")
    return np.dtype(container_for_bits(out_bits)), qmax_for_bits(out_bits)


def _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, out_bits) -> tuple:
    """Validate the kernel arguments; returns ``(out_dtype, Q, the eight constants as ints)``."""
    check_int("x", x, (np.int8, np.int16, np.int32))
    consts = (in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, out_bits)
    for name, v in zip(CONST_NAMES, consts):
        if not is_int_scalar(v):
            raise KernelInputError(f"{name} must be an integer, got {type(v).__name__}")
    ints = tuple(int(v) for v in consts)
    return (*_check_consts(*ints), ints)


@register("gelu", "ref")
def gelu_ref(x: np.ndarray, in_shift: int, b_int: int, c_int: int, m_erf: int, shift_erf: int, w0: int,
             out_shift: int, out_bits: int = 32) -> np.ndarray:
    """Integer GELU (I-BERT i-GELU, sign folded, shift adapted to the scale, one output rounding).

    Formula (per element; integer constants from :func:`gelu_params`;
    ``R(v, s) = floor((v + 2^(s-1)) / 2^s)``)::

        a_t = min(|x| << -t  if t ≤ 0  else  (|x| + 2^(t-1)) >> t,   -b_int)
        L   = sgn(x) · ((a_t + b_int)^2 + c_int)           # erf(x·S/√2) ≈ L / c_int
        w   = clip(w0 + R(L · m_erf, shift_erf), 0, 2·w0)  # ≈ w0·(1 + erf), sign folded (m_erf < 0)
        out = clip(R(x · w, out_shift), -Q, Q)             # Q = 2^(out_bits-1) - 1

    i.e. ``GELU(x) = x/2·(1 + erf(x/√2))`` with I-BERT's polynomial
    ``erf(u) ≈ sgn(u)[a(min(|u|,-b)+b)^2 + 1]``, ``a = -0.2888``, ``b = -1.769``,
    and ``GELU(x·S) ≈ out · S·2^out_shift / (2·w0)``.

    * ``x``: int8, int16 or int32 at scale ``S``; ``t = in_shift`` brings the
      erf argument to ``S_t = S·2^t ∈ [2^-14, 2^-13)``.
    * Output: the smallest signed container of ``out_bits`` (2..32 bits:
      int8 / int16 / int32), saturated to ``±Q``.  :func:`gelu_params` makes
      either the wide int32 output (``w0 = 2^29``, no saturation for inputs
      within the declared ``in_bits``) or a requantized one at a given
      output scale (``w0 ∈ [2^28, 2^29]``).
    * Rounding: the input right shift and both ``R`` round half up (one
      rounding to the output); the polynomial constants are floors (as in
      I-BERT).
    * Overflow bound (int64, any int8/16/32 ``x``, any accepted constants):
      the left shift ``|x| << -t < 2^31·2^24 = 2^55``; ``a_t ≤ -b_int <
      2^16``; ``(a_t + b_int)^2 ≤ b_int^2`` and ``|L| ≤ max(b_int^2 + c_int,
      -c_int) < 2^31`` (int32); ``|L·m_erf| < 2^62``; ``0 ≤ w ≤ 2·w0 ≤ 2^30``
      so ``|x·w| ≤ 2^61``; each ``R`` is evaluated as ``((v >> (s-1)) + 1) >> 1``.
    * Accuracy (tests/test_gelu.py): ``out · out_scale`` is within half an
      output step plus 6e-5 of I-BERT's real polynomial (on ``[-4, 4]``: RMS
      ≈ 0.0082 and max ≈ 0.0182 against exact erf-GELU for the wide output),
      for 8-bit and int32 input scales alike.
    """
    out_dtype, q, _ = _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, out_bits)
    x_i64 = x.astype(np.int64)
    abs_i64 = np.abs(x_i64)
    if in_shift <= 0:
        abs_i64 = abs_i64 << np.int64(-in_shift)
    else:
        abs_i64 = (abs_i64 + np.int64(1 << (in_shift - 1))) >> np.int64(in_shift)
    abs_i64 = np.minimum(abs_i64, np.int64(-b_int))
    poly_i64 = (abs_i64 + np.int64(b_int)) ** 2 + np.int64(c_int)
    poly_i64 = np.sign(x_i64) * poly_i64
    w_i64 = np.int64(w0) + (((poly_i64 * np.int64(m_erf) >> np.int64(shift_erf - 1)) + 1) >> 1)
    w_i64 = np.clip(w_i64, 0, np.int64(2 * w0))
    out_i64 = (((x_i64 * w_i64) >> np.int64(out_shift - 1)) + 1) >> 1
    return np.clip(out_i64, -q, q).astype(out_dtype)


# ----------------------------------------------------------------------------- numba CPU


@numba.njit(inline="always")
def gelu_lane(x_i64, lsh, rsh, half, clip, b_int, c_int, m_erf_i32, h_erf, shift_erf, w0, w_max, h_out, out_shift,
              q):
    """:func:`gelu_ref` of one element (int64 lanes), bit-identical, shaped for SIMD.

    ``lsh = max(-t, 0)``, ``rsh = max(t, 0)``, ``half = 2^rsh >> 1``, ``clip = -b_int``,
    ``h_erf = 2^(shift_erf-1)``, ``w_max = 2·w0``, ``h_out = 2^(out_shift-1)``
    (:func:`_lane_consts`).  Products are 32×32→64 bits (``vpmuldq``): ``d²``
    (``|d| < 2^16``), ``L·m_erf`` (``|L| < 2^31``), ``x·w`` (``w ≤ 2^30``); each
    ``R(p, s)`` is ``(p + 2^(s-1)) >> s``, equal to the two-shift form since
    ``|p| ≤ 2^62`` (the overflow bound of :func:`gelu_ref`).
    """
    a_i64 = min(((abs(x_i64) << lsh) + half) >> rsh, clip)
    d_i64 = np.int64(np.int32(a_i64 + b_int))
    poly_i64 = d_i64 * d_i64 + c_int  # |poly| < 2^31
    poly_i64 = -poly_i64 if x_i64 < 0 else poly_i64
    w_i64 = ((np.int64(np.int32(poly_i64)) * np.int64(m_erf_i32) + h_erf) >> shift_erf) + w0
    w_i64 = np.int64(np.int32(min(max(w_i64, np.int64(0)), w_max)))
    y_i64 = (x_i64 * w_i64 + h_out) >> out_shift
    return min(max(y_i64, -q), q)


def _lane_consts(in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, q) -> tuple:
    """The int64 constants of :func:`gelu_lane` (and of its CUDA twin) after ``x``."""
    lsh, rsh = max(-in_shift, 0), max(in_shift, 0)
    return (np.int64(lsh), np.int64(rsh), np.int64((1 << rsh) >> 1), np.int64(-b_int), np.int64(b_int),
            np.int64(c_int), np.int32(m_erf), np.int64(1 << (shift_erf - 1)), np.int64(shift_erf), np.int64(w0),
            np.int64(2 * w0), np.int64(1 << (out_shift - 1)), np.int64(out_shift), np.int64(q))


LANE_CHUNK = 1 << 13  # elements per parallel task


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _gelu_lanes(x1, lsh, rsh, half, clip, b_int, c_int, m_erf_i32, h_erf, shift_erf, w0, w_max, h_out, out_shift, q,
                out1):
    """:func:`gelu_lane` over a flat array, 8 int64 lanes (any input dtype and output container)."""
    n = x1.size
    for k in numba.prange((n + LANE_CHUNK - 1) // LANE_CHUNK):
        wide_vectors()
        for i in range(k * LANE_CHUNK, min(n, (k + 1) * LANE_CHUNK)):
            out1[i] = gelu_lane(np.int64(x1[i]), lsh, rsh, half, clip, b_int, c_int, m_erf_i32, h_erf, shift_erf, w0,
                                w_max, h_out, out_shift, q)


# ----------------------------------------------------------------------------- int32 inputs: 16-lane vector IR

BLOCK = 64  # int32 inputs per step of the vector loop (four 16-lane vectors)
BLOCK_CHUNK = 256  # steps per parallel task (16384 elements)


def _gelu_codegen(left: bool, i8_out: bool, yclamp: bool):
    """LLVM IR of ``for i < nblk``: :func:`gelu_ref` of 64 int32 ``x``, bit-identical.

    Lanes: ``a, d, L`` and the sign live in 16 int32 lanes (exact: ``a ≤ -b_int < 2^16``,
    ``d² < 2^32`` wraps to the exact ``|L| < 2^31``); ``L·m_erf`` and ``x·w`` are 32×32→64
    bits (``vpmuldq``) on the even and odd lanes (odd ones moved down by ``vpshufd``):

    * ``w = (±L·m_erf + 2^(se-1) + w0·2^se) >> se`` (``w0`` added inside the floor);
      :func:`_fast_plan` checked that it lies in ``[0, 2·w0]`` for every reachable ``L``,
      so the reference's clip is a no-op;
    * ``i8_out`` (``out_bits = 8``, ``s = out_shift ≥ 33``):
      ``⌊(x·w + 2^(s-1)) / 2^s⌋ = (hi32(x·w) + 2^(s-33)) >> (s - 32)`` in 16 int32 lanes
      (``|hi32| ≤ 2^29``), then clipped to ±127 and packed, 64 bytes per step (:func:`pack_i8x64`);
    * int32 out (``s ≤ 31``): ``clip(R(p, s), ±Q) = R(clip(p, vlo, vhi), s)`` with
      ``vhi = Q·2^s - 2^(s-1)``, ``vlo = -Q·2^s - 2^(s-1)`` (``R`` is non-decreasing,
      ``R(vhi) = Q``); ``yclamp=False`` where :func:`_fast_plan` proved ``|R(x·w, s)| ≤ Q``
      for every int32 ``x``.

    ``left``: ``a = min(min(|x|, lim) << lsh, clip)`` with ``lim = (clip >> lsh) + 1`` (equal
    to ``min(|x| << lsh, clip)``, never above 2^32); else ``a = min((|x| + half) >> rsh, clip)``
    (``|x| + half ≤ 2^31 + 2^30`` as uint32 for ``rsh ≤ 31``).
    """

    def codegen(context, builder, signature, args):
        xa, oa, nblk, sh, rnd, clip_, b_, c_, m_, hw_, se_, vlo_, vhi_, hout_, os_, hq_, sq_ = args
        i32, i64, v16, v8, load, splat, at = vec_helpers(builder)
        c32 = lambda k: ir.Constant(v16, [k] * 16)
        smin, smax, even, odd = lane_ops(builder)

        def sext_lo(q):  # int64 lanes holding int32 values (so LLVM picks vpmuldq)
            return even(builder.bitcast(q, v16))

        def umin(a, b):
            return builder.select(builder.icmp_unsigned("<", a, b), a, b)

        m64 = splat(builder.sext(builder.trunc(m_, i32), i64), v8)
        hw, se, clip = splat(hw_, v8), splat(se_, v8), splat(clip_)

        def products(x):  # x·w on the even and odd lanes (int64)
            neg = builder.icmp_signed("<", x, c32(0))
            ax = builder.select(neg, builder.sub(c32(0), x), x)  # |x| as uint32 (|-2^31| = 2^31)
            if left:  # rnd = lim
                a = umin(builder.shl(umin(ax, splat(rnd)), splat(sh)), clip)
            else:  # rnd = half
                a = umin(builder.lshr(builder.add(ax, splat(rnd)), splat(sh)), clip)
            d = builder.add(a, splat(b_))
            poly = builder.add(builder.mul(d, d), splat(c_))
            poly = builder.select(neg, builder.sub(c32(0), poly), poly)
            w_lo = builder.ashr(builder.add(builder.mul(even(poly), m64), hw), se)
            w_hi = builder.ashr(builder.add(builder.mul(odd(poly), m64), hw), se)
            return builder.mul(even(x), sext_lo(w_lo)), builder.mul(odd(x), sext_lo(w_hi))

        if i8_out:
            hq, sq = splat(hq_), splat(sq_)

            def body(i, _):
                base = at(xa, i, 4 * BLOCK)
                r = []
                for k in range(4):
                    p_lo, p_hi = products(load(builder.add(base, ir.Constant(i64, 64 * k))))
                    r.append(builder.ashr(builder.add(join_dwords(builder, p_lo, p_hi, 1), hq), sq))
                st = builder.store(pack_i8x64(builder, r), builder.inttoptr(at(oa, i, BLOCK), v16.as_pointer()))
                st.align = 1
                return []
        else:
            vlo, vhi, hout, osh = splat(vlo_, v8), splat(vhi_, v8), splat(hout_, v8), splat(os_, v8)

            def body(i, _):
                for k in range(4):
                    p_lo, p_hi = products(load(at(builder.add(xa, ir.Constant(i64, 64 * k)), i, 4 * BLOCK)))
                    if yclamp:
                        p_lo, p_hi = smax(smin(p_lo, vhi), vlo), smax(smin(p_hi, vhi), vlo)
                    y_lo = builder.ashr(builder.add(p_lo, hout), osh)
                    y_hi = builder.ashr(builder.add(p_hi, hout), osh)
                    dst = at(builder.add(oa, ir.Constant(i64, 64 * k)), i, 4 * BLOCK)
                    st = builder.store(join_dwords(builder, y_lo, y_hi), builder.inttoptr(dst, v16.as_pointer()))
                    st.align = 4
                return []

        counted_loop(builder, nblk, [], body)
        return context.get_dummy_value()

    return codegen


def _make_gelu_blocks(left: bool, i8_out: bool, yclamp: bool):
    def gelu_blocks(typingctx, x_addr, o_addr, nblk, sh, rnd, clip, b_int, c_int, m_erf, h_w, shift_erf, vlo, vhi,
                    h_out, out_shift, h_q, s_q):
        args = (x_addr, o_addr, nblk, sh, rnd, clip, b_int, c_int, m_erf, h_w, shift_erf, vlo, vhi, h_out, out_shift,
                h_q, s_q)
        if not all_ints(args):
            return None

        def codegen(context, builder, signature, llargs):
            ll = args_i64(context, builder, signature, llargs)
            return _gelu_codegen(left, i8_out, yclamp)(context, builder, signature, ll)

        return types.none(*args), codegen

    return intrinsic(gelu_blocks)


# one intrinsic per mode = 4·left + 2·i8_out + yclamp (i8_out never clamps y)
_blk_0, _blk_1, _blk_2, _blk_4, _blk_5, _blk_6 = (
    _make_gelu_blocks(bool(k & 4), bool(k & 2), bool(k & 1)) for k in (0, 1, 2, 4, 5, 6))


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _gelu_blocks(x1, mode, sh, rnd, clip, b_int, c_int, m_erf, h_w, shift_erf, vlo, vhi, h_out, out_shift, h_q, s_q,
                 lane, out1):
    """Flat i-GELU over int32 ``x1`` in 64-element steps (:func:`_gelu_codegen`), the tail of
    ``< 64`` elements by :func:`gelu_lane` (``lane``: its constants).  ``out1`` is int8
    (``mode & 2``) or int32."""
    n = x1.size
    nblk = n // BLOCK
    xa = x1.ctypes.data
    oa = out1.ctypes.data
    osz = out1.itemsize
    for k in numba.prange((nblk + BLOCK_CHUNK - 1) // BLOCK_CHUNK):
        lo = k * BLOCK_CHUNK
        cnt = min(nblk, lo + BLOCK_CHUNK) - lo
        xk, ok = xa + 4 * BLOCK * lo, oa + osz * BLOCK * lo
        c = (sh, rnd, clip, b_int, c_int, m_erf, h_w, shift_erf, vlo, vhi, h_out, out_shift, h_q, s_q)
        if mode == 0:
            _blk_0(xk, ok, cnt, *c)
        elif mode == 1:
            _blk_1(xk, ok, cnt, *c)
        elif mode == 2:
            _blk_2(xk, ok, cnt, *c)
        elif mode == 4:
            _blk_4(xk, ok, cnt, *c)
        elif mode == 5:
            _blk_5(xk, ok, cnt, *c)
        else:
            _blk_6(xk, ok, cnt, *c)
    for j in range(nblk * BLOCK, n):
        out1[j] = gelu_lane(np.int64(x1[j]), lane[0], lane[1], lane[2], lane[3], lane[4], lane[5], lane[6], lane[7],
                            lane[8], lane[9], lane[10], lane[11], lane[12], lane[13])


@functools.lru_cache(maxsize=256)
def _w_range(b_int: int, c_int: int, m_erf: int, shift_erf: int, w0: int) -> tuple[int, int, int, int]:
    """Range of ``w = (±L·m_erf + 2^(se-1) + w0·2^se) >> se`` (before the clip) over
    ``L = d² + c_int``, ``d ∈ [b_int, 0]`` (a superset of the reachable ``d = a + b_int``):
    ``(min, max)`` for ``x > 0`` (``+L``) then for ``x < 0`` (``-L``).  Exact in int64 (the
    caller checked ``|L·m_erf| + 2^(se-1) + w0·2^se < 2^63``); cached per constant set."""
    d_i64 = np.arange(b_int, 1, dtype=np.int64)
    l_i64 = d_i64 * d_i64 + np.int64(c_int)
    h_i64 = np.int64((1 << (shift_erf - 1)) + (w0 << shift_erf))
    w_pos_i64 = (l_i64 * np.int64(m_erf) + h_i64) >> np.int64(shift_erf)
    w_neg_i64 = (-l_i64 * np.int64(m_erf) + h_i64) >> np.int64(shift_erf)
    return int(w_pos_i64.min()), int(w_pos_i64.max()), int(w_neg_i64.min()), int(w_neg_i64.max())


@functools.lru_cache(maxsize=256)
def _fast_plan(in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, out_bits):
    """Arguments of :func:`_gelu_blocks` (after ``x1``, before ``out1``) when its 32-bit bounds
    hold for these (checked) constants and int32 inputs, else None.

    Checked exactly: ``rsh ≤ 31``; ``|L|·|m_erf| + 2^(se-1) + w0·2^se < 2^63`` for every
    ``|L| ≤ max(-c_int, |b_int² + c_int|)``; :func:`_w_range` inside ``[0, 2·w0]`` (the clip
    never acts); then either ``out_bits = 8`` with ``out_shift ≥ 33`` (int8 steps) or
    ``out_bits > 16`` with ``out_shift ≤ 31`` (int32 steps; ``yclamp`` only where
    ``R(x·w, s)`` can leave ``±Q`` for some int32 ``x``).
    """
    q = qmax_for_bits(out_bits)
    if in_shift > 31:
        return None
    pmax = max(-c_int, abs(b_int * b_int + c_int))  # |L| over every a (L is monotone in d^2)
    h_w = (1 << (shift_erf - 1)) + (w0 << shift_erf)
    if pmax * -m_erf + h_w >= (1 << 63):
        return None
    w_pos_lo, w_pos_hi, w_neg_lo, w_neg_hi = _w_range(b_int, c_int, m_erf, shift_erf, w0)
    if min(w_pos_lo, w_neg_lo) < 0 or max(w_pos_hi, w_neg_hi) > 2 * w0:
        return None
    h_out = 1 << (out_shift - 1)
    vlo = vhi = h_q = s_q = 0
    if out_bits == 8 and out_shift >= 33:
        i8_out, yclamp = True, False
        h_q, s_q = 1 << (out_shift - 33), out_shift - 32
    elif out_bits > 16 and out_shift <= 31:
        i8_out = False
        vlo, vhi = -q * (1 << out_shift) - h_out, q * (1 << out_shift) - h_out
        # R(x·w, s) within ±Q for every int32 x (R is non-decreasing, w ≥ 0): no clamp
        yclamp = not ((I32_MAX * w_pos_hi + h_out) >> out_shift <= q
                      and (-(1 << 31) * w_neg_hi + h_out) >> out_shift >= -q)
    else:
        return None
    lsh, rsh = max(-in_shift, 0), max(in_shift, 0)
    left = lsh > 0
    sh, rnd = (lsh, ((-b_int) >> lsh) + 1) if left else (rsh, (1 << rsh) >> 1)
    ints = (4 * left + 2 * i8_out + yclamp, sh, rnd, -b_int, b_int, c_int, m_erf, h_w, shift_erf, vlo, vhi, h_out,
            out_shift, h_q, s_q)
    return (*(np.int64(v) for v in ints), _lane_consts(in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, q))


INT8_BY_BYTE = np.arange(256, dtype=np.uint8).view(np.int8)  # byte b holds the int8 value with that bit pattern
LUT_MIN_SIZE = 1024  # int8 inputs from this size on go through a 256-entry table


@functools.lru_cache(maxsize=256)
def _int8_table(ints: tuple) -> np.ndarray:
    """``gelu_ref`` of every int8 value, indexed by the input byte (cached per constant set)."""
    table = gelu_ref(INT8_BY_BYTE, *ints)
    table.flags.writeable = False
    return table


@register("gelu", "cpu")
def gelu_cpu(x: np.ndarray, in_shift: int, b_int: int, c_int: int, m_erf: int, shift_erf: int, w0: int,
             out_shift: int, out_bits: int = 32, *, out=None) -> np.ndarray:
    """numba version of :func:`gelu_ref` (bit-exact, parallel, 512-bit SIMD).

    int8 inputs (from ``LUT_MIN_SIZE`` elements on) go through a 256-entry table of
    :func:`gelu_ref` (cached per constant set; ``vpermi2b`` for int8 outputs).  int32
    inputs run 16 int32 lanes per vector (:func:`_gelu_codegen`, 64 elements per step)
    when :func:`_fast_plan` proves its 32-bit bounds for the constants and the output is
    int8 (``out_shift ≥ 33``) or int32; everything else runs 8 int64 lanes
    (:func:`gelu_lane`).

    ``out``: optional C-contiguous numpy array with the output's exact shape and
    container dtype; written and returned.
    """
    out_dtype, q, ints = _check_gelu_args(x, in_shift, b_int, c_int, m_erf, shift_erf, w0, out_shift, out_bits)
    x = np.ascontiguousarray(x).reshape(x.shape)  # (keeps 0-d inputs 0-d)
    out = output_array(out, x.shape, out_dtype)
    if x.size == 0:
        return out
    if x.dtype == np.int8 and x.size >= LUT_MIN_SIZE:
        lut_u8(x.reshape(-1), _int8_table(ints), out.reshape(-1))
        return out
    plan = _fast_plan(*ints) if x.dtype == np.int32 else None
    if plan is not None:
        _gelu_blocks(x.reshape(-1), *plan, out.reshape(-1))
    else:
        _gelu_lanes(x.reshape(-1), *_lane_consts(*ints[:7], q), out.reshape(-1))
    return out

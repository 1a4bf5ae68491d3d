"""i-exp and i-softmax: I-BERT's second-order polynomial exponential, integer only.

Shared design (``exp``, ``softmax`` and ``tanh`` all use :func:`_exp_core_ref`)
-------------------------------------------------------------------------------
For ``u ≥ 0`` (an integer at input scale ``S``) the kernels compute
``e ≈ exp(-u·S)`` as an integer at the fixed output scale ``2^-30``:

1. **Range reduction in fixed point.**  ``t = floor(u · m / 2^shift)`` with
   ``m · 2^-shift ≈ S / ln2 · 2^20`` (``m_i32, shift`` from :func:`exp_params`,
   via ``quantize_multiplier``), i.e. ``t ≈ u·S/ln2`` with 20 fractional bits.
   ``z = t >> 20 = ⌊u·S/ln2⌋`` and ``f = t & (2^20 - 1)`` (``f/2^20 ∈ [0, 1)``),
   so ``-u·S = -z·ln2 + r`` with ``r = -f·ln2/2^20 ∈ (-ln2, 0]``.
2. **Polynomial.**  I-BERT's ``L(r) = 0.35815147·r² + 0.96963238·r + 1``
   (= ``a(r + b)² + c`` with a = 0.35815147, b = 1.35365, c = 0.34373), written
   in ``f`` as ``1 - β·f + α·f²``, ``α = 0.35815147·ln2²``, ``β = 0.96963238·ln2``,
   evaluated by Horner with the 31-bit constants ``ALPHA_I64, BETA_I64``::

       h = (ALPHA·f) >> 20;  g = h - BETA;  L = max(2^30 + ((g·f) >> 21), 2^29)     (L ∈ [2^29, 2^30])

   The polynomial ends at ``1 - β + α = 0.499977 < 0.5``; the ``max`` with
   ``2^29`` (active only for ``f/2^20 > 0.99993``) makes ``e`` non-increasing
   in ``u`` across octave boundaries (and moves it towards the exact 0.5).

3. **Power of two.**  ``e = L >> min(z, 31)`` (floor).  ``z ≥ 31`` gives 0, which
   is the clip of I-BERT (there at -30·ln2) without a separate step.

Why not I-BERT's ``x0_int = ⌊-ln2/S⌋`` form: it replaces ln2 by ``⌊ln2/S⌋·S``
(relative error up to ``S/ln2`` per halving: up to 1.4 % at S = 0.01, 14 %
at S = 0.1, and a collapse to ``2^-x`` for S ≥ ln2), and its ``L(r)`` lives at the scale
``a·S²`` whose integer grows like ``1/S²`` (2^55 at S = 3e-4, overflowing
int32 in the reference port).  Rescaling once by a dyadic multiplier keeps
the polynomial at a fixed 20-bit precision for every scale.

Overflow bound (whole supported range ``S ∈ [SCALE_MIN, SCALE_MAX]`` =
``[2^-24, 2^8]``): ``m < 2^31`` and ``u < 2^32`` so ``u·m < 2^63``;
``ALPHA·f < 2^29·2^20``; ``|g·f| < 2^31·2^20``; everything else is smaller.
All intermediates are int64; no int32 product is formed.  These bounds hold
for *any* valid pair (``0 < m < 2^31``, ``1 ≤ shift ≤ 62``) and any input, so
the kernels cannot overflow even with hand-made constants.

Accuracy of the exponential (vs float64 ``exp(-u·S)``, relative to 1.0):
the polynomial's own error is 1.913e-3 max on ``(-ln2, 0]`` (relative error
in [-3.31e-3, +2.22e-3]); fixed-point flooring adds < 7e-7.  Claimed bound:
``|e·2^-30 - exp(-u·S)| ≤ 1.92e-3 · 2^-z + 2^-29`` (≤ 1.92e-3 everywhere).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numba
import numpy as np

from ._util import MAX_CHUNKS, check_int, is_int_scalar, output_array
from .errors import KernelInputError
from .registry import register
from .requant import MAX_SHIFT, MIN_SHIFT, MULT_BITS, as_rows, quantize_multiplier, wide_vectors

# ----------------------------------------------------------------------------- constants

T_FRAC_BITS = 20  # fractional bits of t = u·S/ln2
EXP_FRAC_BITS = 30  # exp output scale 2^-30 (1.0 -> 2^30)
EXP_ONE = 1 << EXP_FRAC_BITS
EXP_HALF = EXP_ONE >> 1  # floor of L: keeps e non-increasing across octaves
EXP_SCALE = 2.0**-EXP_FRAC_BITS
Z_ZERO = 31  # z >= 31 -> e = 0 (L <= 2^30)
# round(0.35815147 · ln2² · 2^31) and round(0.96963238 · ln2 · 2^31) (tests re-derive them)
ALPHA_I64 = 369528148
BETA_I64 = 1443319358
POLY_SHIFT = 31 + T_FRAC_BITS - EXP_FRAC_BITS  # g (2^-31 units) · f (2^-20 units) -> 2^-30 units
T_FRAC_MASK = (1 << T_FRAC_BITS) - 1
POLY_A, POLY_B, POLY_C = 0.35815147, 0.96963238, 1.0  # I-BERT's a·r² + b·r + c

SCALE_MIN = 2.0**-24  # supported input scales (documented overflow/precision range)
SCALE_MAX = 2.0**8

SOFTMAX_OUT_LEVELS = 255  # uint8 probability q means q/255; 1.0 -> 255 exactly
SOFTMAX_OUT_SCALE = 1.0 / SOFTMAX_OUT_LEVELS
SOFTMAX_NORM_BITS = 54  # factor = floor(255·2^54 / sum)
SOFTMAX_MAX_KEYS = (1 << 31) - 1
SOFTMAX_NORM_NUM = SOFTMAX_OUT_LEVELS << SOFTMAX_NORM_BITS
SOFTMAX_NORM_HALF = 1 << (SOFTMAX_NORM_BITS - 1)
I64_MIN = -(1 << 63)
_NO_IDX = np.zeros(1, np.int64)

INPUT_DTYPES = (np.int8, np.int16, np.int32)
MASK_DTYPES = (np.bool_, np.uint8)


# ----------------------------------------------------------------------------- params (lowering time)


def check_scale(name: str, scale: float, factor: float = 1.0) -> float:
    s = float(scale)
    if not math.isfinite(s) or not (SCALE_MIN <= s <= SCALE_MAX):
        raise KernelInputError(f"{name} must be a finite scale in [{SCALE_MIN:g}, {SCALE_MAX:g}], got {scale!r}")
    return s * factor


@dataclass(frozen=True)
class ExpParams:
    """Integers for :func:`exp_ref`: ``m_i32 · 2^-shift ≈ S/ln2 · 2^20``; output scale ``2^-30``."""

    m_i32: int
    shift: int
    out_scale: float = EXP_SCALE

    @property
    def kernel_args(self) -> dict:
        """Keyword arguments of the kernel (integers only)."""
        return {k: v for k, v in asdict(self).items() if k != "out_scale"}


@dataclass(frozen=True)
class SoftmaxParams:
    """Integers for :func:`softmax_ref` (same range reduction as i-exp); output scale 1/255."""

    m_i32: int
    shift: int
    out_scale: float = SOFTMAX_OUT_SCALE

    @property
    def kernel_args(self) -> dict:
        """Keyword arguments of the kernel (integers only)."""
        return {k: v for k, v in asdict(self).items() if k != "out_scale"}


def range_reduction_multiplier(scale_in: float, factor: float = 1.0) -> tuple[int, int]:
    """``(m_i32, shift)`` with ``m·2^-shift ≈ factor·S/ln2·2^20`` (float math: lowering time only)."""
    s = check_scale("scale_in", scale_in, factor)
    m, sh = quantize_multiplier(s / math.log(2.0) * float(1 << T_FRAC_BITS))
    return int(m), int(sh)


def exp_params(scale_in: float) -> ExpParams:
    """Lowering-time constants of i-exp for inputs at scale ``scale_in`` ∈ [2^-24, 2^8]."""
    return ExpParams(*range_reduction_multiplier(scale_in))


def softmax_params(scale_in: float) -> SoftmaxParams:
    """Lowering-time constants of i-softmax for scores at scale ``scale_in`` ∈ [2^-24, 2^8]."""
    return SoftmaxParams(*range_reduction_multiplier(scale_in))


# ----------------------------------------------------------------------------- argument checks


def check_multiplier(m_i32, shift) -> tuple[int, int]:
    """Validate the range-reduction pair (positive 31-bit mantissa, shift in [1, 62])."""
    if not is_int_scalar(m_i32):
        raise KernelInputError(f"m_i32 must be an integer scalar, got {type(m_i32).__name__}")
    if not is_int_scalar(shift):
        raise KernelInputError(f"shift must be an integer scalar, got {type(shift).__name__}")
    m, s = int(m_i32), int(shift)
    if not 0 < m < (1 << MULT_BITS):
        raise KernelInputError(f"m_i32 must lie in [1, 2^31 - 1], got {m}")
    if not MIN_SHIFT <= s <= MAX_SHIFT:
        raise KernelInputError(f"shift must lie in [{MIN_SHIFT}, {MAX_SHIFT}], got {s}")
    return m, s


def check_mask(mask, x_shape) -> np.ndarray | None:
    """Validate a key mask (bool/uint8, broadcastable to ``x_shape``); returns it as a host array."""
    if mask is None:
        return None
    if hasattr(mask, "copy_to_host"):  # a numba device array: masks are small, prepare on the host
        mask = mask.copy_to_host()
    check_int("mask", mask, MASK_DTYPES)
    mask = np.asarray(mask)
    x_shape = tuple(x_shape)
    if mask.ndim > len(x_shape):
        raise KernelInputError(f"mask of shape {mask.shape} has more dimensions than the input {tuple(x_shape)}")
    try:
        b = np.broadcast_shapes(mask.shape, tuple(x_shape))
    except ValueError:
        b = None
    if b != tuple(x_shape):
        raise KernelInputError(f"mask of shape {mask.shape} does not broadcast to the input shape {tuple(x_shape)}")
    return mask


def check_softmax_input(x) -> None:
    check_int("x", x, INPUT_DTYPES)
    shape = tuple(x.shape)  # (a plain tuple: simulated device arrays have a custom shape type)
    if len(shape) < 1:
        raise KernelInputError("x must have at least one dimension (softmax runs over the last axis)")
    if shape[-1] > SOFTMAX_MAX_KEYS:
        raise KernelInputError(f"x: rows longer than 2^31 - 1 keys are not supported, got {shape[-1]}")


# ----------------------------------------------------------------------------- numpy reference


def _exp_core_ref(u_i64: np.ndarray, m: int, shift: int) -> np.ndarray:
    """``e ≈ exp(-u·S)·2^30`` for int64 ``u ∈ [0, 2^32)`` (see the module docstring)."""
    t_i64 = (u_i64 * np.int64(m)) >> np.int64(shift)
    z_i64 = t_i64 >> T_FRAC_BITS
    f_i64 = t_i64 & T_FRAC_MASK
    g_i64 = ((ALPHA_I64 * f_i64) >> T_FRAC_BITS) - BETA_I64
    l_i64 = np.maximum(EXP_ONE + ((g_i64 * f_i64) >> POLY_SHIFT), EXP_HALF)
    return l_i64 >> np.minimum(z_i64, Z_ZERO)


@register("exp", "ref")
def exp_ref(x: np.ndarray, m_i32: int, shift: int) -> np.ndarray:
    """i-exp: ``y ≈ exp(x·S) · 2^30`` for integer scores ``x ≤ 0`` at scale ``S``.

    Formula (``u = -min(x, 0)``; ``m_i32, shift`` from :func:`exp_params`)::

        t = ⌊u·m / 2^shift⌋ ;  z = t >> 20 ;  f = t mod 2^20
        L = max(2^30 + ⌊(⌊ALPHA·f / 2^20⌋ - BETA) · f / 2^21⌋, 2^29)   (≈ 2^30·(1 - β f' + α f'²), f' = f/2^20)
        y = ⌊L / 2^min(z, 31)⌋

    * ``x``: int8/int16/int32, any shape.  Positive entries are treated as 0
      (exp saturates at 1.0 = 2^30); the op is meant for ``x - max`` scores.
    * Output: int32, same shape, scale ``2^-30`` (``EXP_SCALE``), values in [0, 2^30].
    * Rounding: floor at every shift (arithmetic right shifts).
    * Overflow: int64 throughout; ``u·m < 2^31·2^31``, ``ALPHA·f < 2^49``,
      ``|g·f| < 2^51``.  Supported ``S`` ∈ [2^-24, 2^8].
    * Accuracy: ``|y·2^-30 - exp(x·S)| ≤ 1.92e-3`` (1.913e-3 is the I-BERT
      polynomial's own error on (-ln2, 0]); the bound halves with every ln2.
    """
    check_int("x", x, INPUT_DTYPES)
    m, s = check_multiplier(m_i32, shift)
    x_i64 = np.asarray(x).astype(np.int64)
    u_i64 = -np.minimum(x_i64, 0)
    return _exp_core_ref(u_i64, m, s).astype(np.int32)


@register("softmax", "ref")
def softmax_ref(x: np.ndarray, mask, m_i32: int, shift: int) -> np.ndarray:
    """i-softmax over the last axis with a key mask; uint8 probabilities at scale 1/255.

    Formula, per row (``keep_j`` = mask broadcast to ``x``, nonzero = keep)::

        M   = max_{j kept} x_j                                  (int64)
        e_j = keep_j ? iexp(M - x_j) : 0                        (i-exp core, e_j ∈ [0, 2^30], scale 2^-30)
        Σ   = Σ_j e_j                                           (int64, Σ ≥ 2^30 when a key is kept)
        F   = ⌊255·2^54 / Σ⌋                                    (one integer division per row)
        y_j = ⌊(e_j·F + 2^53) / 2^54⌋                           (round half up of 255·e_j/Σ)

    * ``x``: int8/int16/int32 scores at scale ``S`` ∈ [2^-24, 2^8], ndim ≥ 1,
      rows of up to 2^31 - 1 keys.  ``mask``: None (keep all) or bool/uint8
      broadcastable to ``x`` (nonzero = keep; e.g. ``[B, 1, 1, T]``).
    * ``m_i32, shift``: from :func:`softmax_params` (``S/ln2·2^20``).
    * Output: **uint8, scale 1/255** (``SOFTMAX_OUT_SCALE``): q = 255 means 1.0
      exactly, so a one-hot row is represented without error.  Masked keys are
      exactly 0; a fully masked row is all zeros (no division happens).
    * Rounding: half up of ``255·e_j/Σ``; ``F``'s floor perturbs ``y_j`` by
      < ``e_j/2^54 ≤ 2^-24`` output step.  ``y_j ≤ 255`` always (``e_j ≤ Σ``).
    * Overflow: ``M - x_j < 2^32`` (int64) → i-exp bound ``u·m < 2^63``;
      ``Σ ≤ n·2^30 < 2^61``; ``e_j·F ≤ 2^30 · 255·2^24 < 2^62``.
    * Accuracy vs float softmax of ``x·S``: per probability
      ``|y/255 - p| ≤ 0.5/255 + 0.25·5.53e-3/(1-3.31e-3) + 2^-24/255 ≤ 3.35e-3``
      (rounding + the spread of i-exp's relative error), i.e. < 1 output step.
      Row sums: ``|Σ_j y_j/255 - 1| ≤ 0.5·k/255`` for k kept keys with
      nonzero probability (each rounding ≤ half a step).
    """
    check_softmax_input(x)
    mask = check_mask(mask, x.shape)
    m, s = check_multiplier(m_i32, shift)
    x_i64 = np.asarray(x).astype(np.int64)
    if x_i64.size == 0:
        return np.zeros(x.shape, np.uint8)
    keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask != 0, x.shape)
    any_keep = keep.any(axis=-1, keepdims=True)
    row_max = np.max(np.where(keep, x_i64, np.iinfo(np.int64).min), axis=-1, keepdims=True)
    row_max = np.where(any_keep, row_max, 0)
    u_i64 = np.where(keep, row_max - x_i64, 0)
    e_i64 = np.where(keep, _exp_core_ref(u_i64, m, s), 0)
    sum_i64 = e_i64.sum(axis=-1, keepdims=True, dtype=np.int64)
    factor_i64 = np.where(sum_i64 > 0, (SOFTMAX_OUT_LEVELS << SOFTMAX_NORM_BITS) // np.maximum(sum_i64, 1), 0)
    y_i64 = (e_i64 * factor_i64 + (1 << (SOFTMAX_NORM_BITS - 1))) >> SOFTMAX_NORM_BITS
    return y_i64.astype(np.uint8)


# ----------------------------------------------------------------------------- numba CPU


@numba.njit(inline="always")
def exp_core(u_i64, m_i64, s_i64):
    """Scalar i-exp core (numba): ``exp(-u·S)·2^30`` for int64 ``u ∈ [0, 2^32)``; shared with tanh."""
    t_i64 = (u_i64 * m_i64) >> s_i64
    z_i64 = t_i64 >> T_FRAC_BITS
    f_i64 = t_i64 & T_FRAC_MASK
    g_i64 = ((ALPHA_I64 * f_i64) >> T_FRAC_BITS) - BETA_I64
    l_i64 = EXP_ONE + ((g_i64 * f_i64) >> POLY_SHIFT)
    if l_i64 < EXP_HALF:
        l_i64 = EXP_HALF
    if z_i64 > Z_ZERO:
        z_i64 = Z_ZERO
    return l_i64 >> z_i64


@numba.njit(inline="always")
def exp_core_u32(u_u32, m_i64, s_i64):
    """:func:`exp_core` for ``u < 2^32`` given as ``uint32``, shaped for SIMD (bit-identical).

    Every product is 32×32→64 bits (``vpmuludq``): ``u·m`` (``m < 2^31``),
    ``ALPHA·f`` and ``g'·f`` with ``g' = BETA - (ALPHA·f >> 20) ∈ (0, 2^31)``
    (``(-g'·f) >> 21 = -((g'·f + 2^21 - 1) >> 21)``); the octave shift is
    clamped at 31 (``L ≤ 2^30`` so ``L >> 31 = 0``).
    """
    t_i64 = (np.int64(u_u32) * np.int64(np.uint32(m_i64))) >> s_i64  # 0 < m < 2^31
    z_i64 = min(t_i64 >> T_FRAC_BITS, np.int64(Z_ZERO))
    f_i64 = t_i64 & T_FRAC_MASK
    gn_i64 = np.int64(np.uint32(BETA_I64 - ((ALPHA_I64 * f_i64) >> T_FRAC_BITS)))
    l_i64 = EXP_ONE - ((gn_i64 * f_i64 + ((1 << POLY_SHIFT) - 1)) >> POLY_SHIFT)
    return max(l_i64, np.int64(EXP_HALF)) >> z_i64


@numba.njit(parallel=True, cache=True)
def _exp_flat(x1, m_i64, s_i64, out1):
    for i in numba.prange(x1.size):
        v = np.int64(x1[i])
        u = -v if v < 0 else np.int64(0)
        out1[i] = np.int32(exp_core(u, m_i64, s_i64))


@register("exp", "cpu")
def exp_cpu(x: np.ndarray, m_i32: int, shift: int) -> np.ndarray:
    """numba version of :func:`exp_ref` (bit-exact)."""
    check_int("x", x, INPUT_DTYPES)
    m, s = check_multiplier(m_i32, shift)
    x1 = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(x1.size, np.int32)
    if x1.size:
        _exp_flat(x1, np.int64(m), np.int64(s), out)
    return out.reshape(x.shape)


def mask_layout(mask: np.ndarray | None, x_shape) -> tuple[np.ndarray, int, np.ndarray | None]:
    """Compact key mask for the cpu row kernels: ``(mask2_u8[mrows, n], inner, row_idx_i64 | None)``.

    Row ``r`` of the input (rows = all axes but the last, C order) uses mask row
    ``r // inner`` (no mask: one all-ones row and ``inner = rows``; a mask whose leading axes
    match the input's up to trailing 1s, e.g. ``[B, 1, 1, T]``), else ``row_idx[r]``.
    Only the mask's own leading axes are materialised, never the input's shape (a bool mask is
    viewed as uint8, copied only when not contiguous or broadcast along keys).
    """
    x_shape = tuple(x_shape)
    n = x_shape[-1]
    lead_x = x_shape[:-1]
    rows = 1
    for d in lead_x:
        rows *= d
    if mask is None:
        return np.ones((1, max(n, 1)), np.uint8), max(rows, 1), None
    m = mask.view(np.uint8) if mask.dtype == np.bool_ else mask
    shape = (1,) * (len(x_shape) - m.ndim) + m.shape
    if shape[-1] != n:
        m = np.broadcast_to(m.reshape(shape), shape[:-1] + (n,))
    m2 = np.ascontiguousarray(m).reshape(-1, n)
    lead_m = shape[:-1]
    j = len(lead_m)
    while j > 0 and lead_m[j - 1] == 1:
        j -= 1
    if lead_m[:j] == lead_x[:j]:
        inner = 1
        for d in lead_x[j:]:
            inner *= d
        return m2, max(inner, 1), None
    idx = np.arange(m2.shape[0], dtype=np.int64).reshape(lead_m)
    return m2, 1, np.broadcast_to(idx, lead_x).reshape(-1)


@numba.njit(cache=True)
def mask_spans(mask2, nkeep, dense):
    """Per mask row: ``nkeep`` = 1 + the last kept key (0 when none is kept) and ``dense`` = every
    key below ``nkeep`` is kept.  Keys from ``nkeep`` on are masked, so the row kernels stop
    there (zeros beyond) and skip the mask test on dense rows."""
    for k in range(mask2.shape[0]):
        mr_u8 = mask2[k]
        nk_i64 = 0
        for c in range(mr_u8.shape[0] - 1, -1, -1):
            if mr_u8[c] != 0:
                nk_i64 = c + 1
                break
        dense_u8 = 1
        for c in range(nk_i64):
            if mr_u8[c] == 0:
                dense_u8 = 0
        nkeep[k] = nk_i64
        dense[k] = dense_u8


@numba.njit(inline="always")
def _softmax_row(x_row, dense, mr_u8, nk, m_i64, s_i64, e_i64, y_u8):
    """One row of i-softmax (numba): keys ``[0, nk)`` (the rest are masked: zeros), three branch-free
    passes that LLVM vectorizes.

    1. max over kept keys in 32 bits;
    2. ``e = keep ? iexp(M - x) : 0`` with :func:`exp_core_u32` (``M - x`` of kept
       keys lies in ``[0, 2^32)``: a wrapping uint32 difference is exact), int64
       buffer ``e_i64`` (no narrowing store / widening load), int64 sum;
    3. ``y = (e·F + 2^53) >> 54`` (``e ≤ 2^30``, ``F < 2^32``: one 32×32→64 product).

    ``dense``: every key below ``nk`` is kept (no mask test).  ``nk = 0``: an all-zero row.
    """
    n = x_row.shape[0]
    for c in range(nk, n):
        y_u8[c] = 0
    if nk == 0:
        return
    mx_i32 = np.int32(-(1 << 31))
    sum_i64 = np.int64(0)
    if dense:
        for c in range(nk):
            mx_i32 = max(mx_i32, np.int32(x_row[c]))
        for c in range(nk):
            ec_i64 = exp_core_u32(np.uint32(np.int64(mx_i32) - np.int64(x_row[c])), m_i64, s_i64)
            e_i64[c] = ec_i64
            sum_i64 += ec_i64
    else:
        for c in range(nk):
            mx_i32 = max(mx_i32, np.int32(x_row[c]) if mr_u8[c] != 0 else np.int32(-(1 << 31)))
        for c in range(nk):
            ec_i64 = exp_core_u32(np.uint32(np.int64(mx_i32) - np.int64(x_row[c])), m_i64, s_i64)
            ec_i64 = ec_i64 if mr_u8[c] != 0 else np.int64(0)
            e_i64[c] = ec_i64
            sum_i64 += ec_i64
    f_i64 = np.int64(np.uint32(SOFTMAX_NORM_NUM // sum_i64))  # Σ ≥ 2^30 (the max key has e = 2^30)
    for c in range(nk):
        y_u8[c] = np.uint8((e_i64[c] * f_i64 + SOFTMAX_NORM_HALF) >> SOFTMAX_NORM_BITS)


@numba.njit(inline="always")
def _softmax_row_pair(xa_row, xb_row, dense, mr_u8, nk, m_i64, s_i64, ea_i64, eb_i64, ya_u8, yb_u8):
    """:func:`_softmax_row` on two rows with the same mask row: the max pass interleaves the two
    rows (two independent reduction chains); the i-exp and normalisation passes run one row after
    the other (their loops have enough independent work; two rows in one loop spill registers)."""
    n = xa_row.shape[0]
    for c in range(nk, n):
        ya_u8[c] = 0
        yb_u8[c] = 0
    if nk == 0:
        return
    mxa_i32 = np.int32(-(1 << 31))
    mxb_i32 = np.int32(-(1 << 31))
    suma_i64 = np.int64(0)
    sumb_i64 = np.int64(0)
    if dense:
        for c in range(nk):
            mxa_i32 = max(mxa_i32, np.int32(xa_row[c]))
            mxb_i32 = max(mxb_i32, np.int32(xb_row[c]))
        for c in range(nk):
            ca_i64 = exp_core_u32(np.uint32(np.int64(mxa_i32) - np.int64(xa_row[c])), m_i64, s_i64)
            ea_i64[c] = ca_i64
            suma_i64 += ca_i64
        for c in range(nk):
            cb_i64 = exp_core_u32(np.uint32(np.int64(mxb_i32) - np.int64(xb_row[c])), m_i64, s_i64)
            eb_i64[c] = cb_i64
            sumb_i64 += cb_i64
    else:
        for c in range(nk):
            keep = mr_u8[c] != 0
            mxa_i32 = max(mxa_i32, np.int32(xa_row[c]) if keep else np.int32(-(1 << 31)))
            mxb_i32 = max(mxb_i32, np.int32(xb_row[c]) if keep else np.int32(-(1 << 31)))
        for c in range(nk):
            ca_i64 = exp_core_u32(np.uint32(np.int64(mxa_i32) - np.int64(xa_row[c])), m_i64, s_i64)
            ca_i64 = ca_i64 if mr_u8[c] != 0 else np.int64(0)
            ea_i64[c] = ca_i64
            suma_i64 += ca_i64
        for c in range(nk):
            cb_i64 = exp_core_u32(np.uint32(np.int64(mxb_i32) - np.int64(xb_row[c])), m_i64, s_i64)
            cb_i64 = cb_i64 if mr_u8[c] != 0 else np.int64(0)
            eb_i64[c] = cb_i64
            sumb_i64 += cb_i64
    fa_i64 = np.int64(np.uint32(SOFTMAX_NORM_NUM // suma_i64))
    fb_i64 = np.int64(np.uint32(SOFTMAX_NORM_NUM // sumb_i64))
    for c in range(nk):
        ya_u8[c] = np.uint8((ea_i64[c] * fa_i64 + SOFTMAX_NORM_HALF) >> SOFTMAX_NORM_BITS)
    for c in range(nk):
        yb_u8[c] = np.uint8((eb_i64[c] * fb_i64 + SOFTMAX_NORM_HALF) >> SOFTMAX_NORM_BITS)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _softmax_rows(x2, mask2, inner, row_idx, use_idx, nkeep, dense, m_i64, s_i64, nchunks, out2):
    """Rows ``[r0, r1)`` per chunk; row ``r`` uses mask row ``row_idx[r]`` (``use_idx``) or ``r // inner``;
    two consecutive rows with the same mask row go through :func:`_softmax_row_pair`."""
    rows, n = x2.shape
    for ch in numba.prange(nchunks):
        wide_vectors()
        r0 = ch * rows // nchunks
        r1 = (ch + 1) * rows // nchunks
        ea_i64 = np.empty(n, np.int64)  # e <= 2^30
        eb_i64 = np.empty(n, np.int64)
        r = r0
        while r < r1:
            k = row_idx[r] if use_idx else r // inner
            k1 = (row_idx[r + 1] if use_idx else (r + 1) // inner) if r + 1 < r1 else -1
            if k1 == k:
                _softmax_row_pair(x2[r], x2[r + 1], dense[k], mask2[k], nkeep[k], m_i64, s_i64, ea_i64, eb_i64,
                                  out2[r], out2[r + 1])
                r += 2
            else:
                _softmax_row(x2[r], dense[k], mask2[k], nkeep[k], m_i64, s_i64, ea_i64, out2[r])
                r += 1


@register("softmax", "cpu")
def softmax_cpu(x: np.ndarray, mask, m_i32: int, shift: int, *, out=None) -> np.ndarray:
    """numba version of :func:`softmax_ref` (bit-exact); parallel over rows (two rows per pass).

    Same formula, dtypes (int8/16/32 scores → uint8 at 1/255), rounding and overflow
    bound as :func:`softmax_ref`; rows stop after their last kept key (zeros beyond).
    ``out``: optional C-contiguous uint8 numpy array of ``x``'s shape; written and returned.
    """
    check_softmax_input(x)
    mask = check_mask(mask, x.shape)
    m, s = check_multiplier(m_i32, shift)
    out = output_array(out, x.shape, np.uint8)
    if x.size == 0:
        return out
    mask2, inner, row_idx = mask_layout(mask, x.shape)
    nkeep = np.empty(mask2.shape[0], np.int64)
    dense = np.empty(mask2.shape[0], np.uint8)
    mask_spans(mask2, nkeep, dense)
    x2 = as_rows(x)
    nchunks = min(x2.shape[0], MAX_CHUNKS)
    use_idx = row_idx is not None
    _softmax_rows(x2, mask2, np.int64(inner), row_idx if use_idx else _NO_IDX, use_idx, nkeep, dense, np.int64(m),
                  np.int64(s), nchunks, as_rows(out))
    return out

"""i-sqrt and i-LayerNorm (integer-only LayerNorm over the last axis).

Differences from I-BERT's ``IntLayerNorm`` (all deliberate):

* exact integer ``⌊√n⌋`` by Newton's iteration (the port uses float sqrt);
* the row is centred exactly, ``y = C·x - Σx`` (no rounded mean, whose
  0.5-step error is unbounded relative to a tiny variance);
* a per-row shift (left for small rows, right for large ones) puts ``Σy²``
  just under ``2^62``: no overflow for any int32 input, and full precision for
  rows of tiny variance;
* ``eps`` is folded into the variance as an integer (a dyadic constant from
  ``eps / S_in^2``), and a constant row returns ``β`` (no division by zero);
* ``γ/S_out`` (sign allowed) and ``β/S_out`` are folded into per-channel
  integer multipliers and biases, so the output is a plain int8 (or wider)
  tensor at the scalar scale ``S_out``.

:func:`layernorm_params` (float, lowering time) produces the integers;
``*_ref`` (numpy) are the specification, ``*_cpu`` (numba) bit-exact with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._util import check_int, container_for_bits, cpu_has, is_int_scalar, memo_frozen, output_array, qmax_for_bits
from .errors import KernelInputError
from .registry import register
from .requant import (MAX_SHIFT, MIN_SHIFT, MULT_BITS, _requant_vectors_checked, quantize_multipliers, requant_vectors,
                      rescale_add_cpu, rescale_add_ref, wide_vectors)

ISQRT_UPDATES = 6  # Newton updates that suffice for every n < 2^63 (see isqrt_ref)
MAX_C = 1 << 20  # longest supported normalized axis
NORM_BITS = 30  # |y_norm| ≤ 2^30; y_norm · 2^-30 · √C = (x - μ) / σ
FACTOR_BITS = 62  # factor = ⌊2^62 / std⌋
BIAS_FRAC = 16  # biases carry 16 fractional bits of the output step
EPS_NONE = -(1 << 10)  # row-shift floor when eps == 0 (no constraint)


# ----------------------------------------------------------------------------- i-sqrt


def _bit_length_np(v_i64: np.ndarray) -> np.ndarray:
    """Number of significant bits of non-negative int64 values (0 for 0), integer only."""
    v = v_i64.copy()
    n = np.zeros(v.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        big = v >= (np.int64(1) << np.int64(step))
        v = np.where(big, v >> np.int64(step), v)
        n += np.where(big, step, 0)
    return n + (v > 0)


@register("isqrt", "ref")
def isqrt_ref(n: np.ndarray) -> np.ndarray:
    """Exact integer square root ``⌊√n⌋`` (Newton's iteration, integers only).

    Formula: ``L = bit_length(n)``, ``x_0 = 2^⌈L/2⌉ > √n``, then
    ``x_{k+1} = min(x_k, ⌊(x_k + ⌊n / x_k⌋) / 2⌋)`` for 6 updates.

    * ``n``: int32 or int64, ``0 ≤ n ≤ 2^63 - 1`` (negative values raise
      :class:`KernelInputError`); output int64 of the same shape.
    * Exact: the integer Newton sequence from above decreases strictly while
      ``x_k > ⌊√n⌋`` and is fixed at ``⌊√n⌋``.  ``x_0/√n ≤ 2`` so the real
      relative error goes 1 → 0.25 → 2.5e-2 → 3.1e-4 → 4.7e-8 → 1.1e-15: after
      5 updates ``x_5 < √n + 1`` (``√n < 2^31.5``), so ``x_5 ≤ ⌊√n⌋ + 1`` and
      the 6th update lands on ``⌊√n⌋``.  An early-exit loop therefore takes at
      most 7 passes (6 updates + the stop test); ``n ≤ 1`` returns ``n``.
    * Overflow: ``x_k ≤ 2^32`` and ``⌊n/x_k⌋ < 2^32``, so the sum is below
      2^33.  No float is used anywhere.
    """
    check_int("n", n, (np.int32, np.int64))
    n_i64 = n.astype(np.int64)
    if np.any(n_i64 < 0):
        raise KernelInputError("n must be non-negative for isqrt")
    x_i64 = np.int64(1) << ((_bit_length_np(n_i64) + 1) >> 1)
    for _ in range(ISQRT_UPDATES):
        y_i64 = (x_i64 + n_i64 // np.maximum(x_i64, 1)) >> 1
        x_i64 = np.minimum(x_i64, y_i64)
    return np.where(n_i64 <= 1, n_i64, x_i64)


@numba.njit(inline="always")
def bit_length(v_i64):
    """Significant bits of a non-negative int64 (numba)."""
    n = 0
    if v_i64 >= (np.int64(1) << 32):
        v_i64 >>= 32
        n += 32
    if v_i64 >= (np.int64(1) << 16):
        v_i64 >>= 16
        n += 16
    if v_i64 >= (np.int64(1) << 8):
        v_i64 >>= 8
        n += 8
    if v_i64 >= (np.int64(1) << 4):
        v_i64 >>= 4
        n += 4
    if v_i64 >= (np.int64(1) << 2):
        v_i64 >>= 2
        n += 2
    if v_i64 >= (np.int64(1) << 1):
        v_i64 >>= 1
        n += 1
    return n + (1 if v_i64 > 0 else 0)


@numba.njit(inline="always")
def isqrt_scalar(n_i64):
    """``⌊√n⌋`` for ``0 ≤ n < 2^63`` (numba); at most 7 loop passes."""
    if n_i64 <= 1:
        return n_i64
    x_i64 = np.int64(1) << ((bit_length(n_i64) + 1) >> 1)
    for _ in range(ISQRT_UPDATES + 1):
        y_i64 = (x_i64 + n_i64 // x_i64) >> 1
        if y_i64 >= x_i64:
            break
        x_i64 = y_i64
    return x_i64


@numba.njit(parallel=True, cache=True)
def _isqrt_flat(n1, out1):
    for i in numba.prange(n1.size):
        out1[i] = isqrt_scalar(np.int64(n1[i]))


@register("isqrt", "cpu")
def isqrt_cpu(n: np.ndarray) -> np.ndarray:
    """numba version of :func:`isqrt_ref` (bit-exact)."""
    check_int("n", n, (np.int32, np.int64))
    n = np.ascontiguousarray(n).reshape(n.shape)  # (keeps 0-d inputs 0-d)
    if n.size and n.min() < 0:
        raise KernelInputError("n must be non-negative for isqrt")
    out = np.empty(n.shape, dtype=np.int64)
    if n.size:
        _isqrt_flat(n.reshape(-1), out.reshape(-1))
    return out


# ----------------------------------------------------------------------------- i-LayerNorm


@dataclass(frozen=True, eq=False)
class LayerNormParams:
    """Integers of one i-LayerNorm instance (from :func:`layernorm_params`)."""

    m_i32: np.ndarray  # [C] int32, m·2^-shift ≈ γ_c·√C·2^(16-30) / S_out (sign allowed)
    shift: np.ndarray  # [C] int32 in [1, 62]
    bias_i64: np.ndarray  # [C] int64, round(β_c / S_out · 2^16)
    eps_m: int  # eps folded: C^3·eps/S_in^2 ≈ eps_m · 2^-eps_e  (0 when eps == 0)
    eps_e: int
    out_bits: int
    out_scale: float

    @property
    def kernel_args(self) -> dict:
        """Keyword arguments of the ``layernorm`` kernels (integers only)."""
        return dict(m_i32=self.m_i32, shift=self.shift, bias_i64=self.bias_i64, eps_m=self.eps_m,
                    eps_e=self.eps_e, out_bits=self.out_bits)


def layernorm_params(gamma, beta, eps: float, out_scale: float, out_bits: int = 8,
                     in_scale: float | None = None) -> LayerNormParams:
    """Integer constants of i-LayerNorm (lowering time).

    * ``gamma``, ``beta``: float vectors of length ``C`` (``1 ≤ C ≤ 2^20``);
      ``γ`` may be negative or zero.
    * ``eps``: LayerNorm's epsilon (≥ 0), in the units of the real input.
    * ``out_scale``: the output step ``S_out`` (> 0); ``out_bits``: 2..32
      (int8 container for 8).
    * ``in_scale``: the input step ``S_in``.  The normalized values do not
      depend on it (``(x-μ)/σ`` is scale-invariant); it only converts eps to
      integer units, ``eps_q = eps / S_in^2``.  Required when ``eps > 0``.

    Folding (``ŷ = y_norm·√C·2^-30`` is the normalized value):

    * ``m_c·2^-shift_c = γ_c·√C·2^(16-30) / S_out`` (``quantize_multiplier``;
      needs ``|γ_c|·√C / S_out < 2^44``), ``bias_c = round(β_c/S_out·2^16)``
      (needs ``|β_c/S_out| < 2^46``);
    * ``eps_m·2^-eps_e = C^3·eps/S_in^2`` with ``eps_m ∈ [2^30, 2^31)`` (the
      eps of ``Σ(Cx - Σx)^2``, which is ``C^3·`` the per-element variance).
    """
    g = np.asarray(gamma, dtype=np.float64).ravel()
    b = np.asarray(beta, dtype=np.float64).ravel()
    c = g.size
    if not 1 <= c <= MAX_C:
        raise KernelInputError(f"layernorm_params: gamma must have 1..{MAX_C} entries, got {c}")
    if b.size != c:
        raise KernelInputError(f"layernorm_params: beta must have the length of gamma ({c}), got {b.size}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(b))):
        raise KernelInputError("layernorm_params: gamma and beta must be finite")
    s_out = float(out_scale)
    if not (math.isfinite(s_out) and s_out > 0):
        raise KernelInputError(f"layernorm_params: out_scale must be finite and > 0, got {out_scale!r}")
    container_for_bits(out_bits)
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise KernelInputError(f"layernorm_params: eps must be finite and >= 0, got {eps!r}")
    mult = g * math.sqrt(c) * 2.0 ** (BIAS_FRAC - NORM_BITS) / s_out
    if np.any(np.abs(mult) >= 2.0**30):
        raise KernelInputError("layernorm_params: |gamma|·sqrt(C)/out_scale must be < 2^44")
    m_i32, shift_i32 = quantize_multipliers(mult)
    bias = b / s_out * 2.0**BIAS_FRAC
    if np.any(np.abs(bias) >= 2.0**62):
        raise KernelInputError("layernorm_params: |beta|/out_scale must be < 2^46")
    bias_i64 = np.floor(bias + 0.5).astype(np.int64)
    if eps > 0:
        if in_scale is None:
            raise KernelInputError("layernorm_params: in_scale is required to fold eps > 0 into integer units")
        s_in = float(in_scale)
        if not (math.isfinite(s_in) and s_in > 0):
            raise KernelInputError(f"layernorm_params: in_scale must be finite and > 0, got {in_scale!r}")
        eps_sum = float(c) ** 3 * eps / (s_in * s_in)
        if not math.isfinite(eps_sum) or eps_sum == 0.0:
            raise KernelInputError(f"layernorm_params: eps / in_scale^2 is out of range ({eps_sum!r})")
        mant, ex = math.frexp(eps_sum)
        eps_m = math.floor(mant * (1 << MULT_BITS) + 0.5)
        eps_e = MULT_BITS - ex
        if eps_m == 1 << MULT_BITS:
            eps_m >>= 1
            eps_e -= 1
        if not -900 < eps_e < 900:
            raise KernelInputError("layernorm_params: eps / in_scale^2 is out of range")
    else:
        eps_m, eps_e = 0, 0
    for a in (m_i32, shift_i32, bias_i64):
        a.flags.writeable = False
    return LayerNormParams(m_i32=m_i32, shift=shift_i32, bias_i64=bias_i64, eps_m=eps_m, eps_e=eps_e,
                           out_bits=int(out_bits), out_scale=s_out)


def _eps_min_shift(eps_m: int, eps_e: int) -> int:
    """Smallest row shift ``sh`` with ``eps_m·2^(-eps_e-2sh) < 2^62`` (EPS_NONE without eps)."""
    if eps_m == 0:
        return EPS_NONE
    return max(EPS_NONE, -((31 + eps_e) // 2))


def _check_x_scalars(x, eps_m, eps_e, out_bits, name="x", dtypes=(np.int32,)):
    """Checks of ``x`` (called ``name``), ``eps_m``, ``eps_e``, ``out_bits``; returns the output dtype."""
    check_int(name, x, dtypes)
    shape = tuple(x.shape)  # (device arrays of the CUDA simulator do not index shapes from the end)
    if len(shape) < 1:
        raise KernelInputError(f"{name} must have at least one axis (the normalized axis is the last)")
    c = shape[-1]
    if not 1 <= c <= MAX_C:
        raise KernelInputError(f"{name}: the normalized (last) axis must have 1..{MAX_C} entries, got {c}")
    out_dtype = container_for_bits(out_bits)
    for name, v in (("eps_m", eps_m), ("eps_e", eps_e)):
        if not is_int_scalar(v):
            raise KernelInputError(f"{name} must be an integer, got {type(v).__name__}")
    if not (eps_m == 0 or (1 << 30) <= eps_m < (1 << 31)):
        raise KernelInputError(f"eps_m must be 0 or lie in [2^30, 2^31), got {eps_m}")
    if not -900 < eps_e < 900:
        raise KernelInputError(f"eps_e must lie in (-900, 900), got {eps_e}")
    return out_dtype


def _check_vectors(c, m_i32, shift, bias_i64):
    """Checks of the per-channel vectors (length ``c``); returns them as contiguous int64."""
    vecs = []
    for name, v in (("m_i32", m_i32), ("shift", shift), ("bias_i64", bias_i64)):
        a = np.asarray(v)
        if a.dtype.kind not in "iu":
            raise KernelInputError(f"{name} must be an integer vector, got dtype {a.dtype}")
        if a.shape != (c,):
            raise KernelInputError(f"{name} must be a vector of length C={c} (last axis of x), got shape {a.shape}")
        vecs.append(np.ascontiguousarray(a, dtype=np.int64))
    m_vec, s_vec, b_vec = vecs
    if np.any(np.abs(m_vec) >= (1 << MULT_BITS)):
        raise KernelInputError("m_i32 must satisfy |m_i32| < 2^31")
    if np.any((s_vec < MIN_SHIFT) | (s_vec > MAX_SHIFT)):
        raise KernelInputError(f"shift must lie in [{MIN_SHIFT}, {MAX_SHIFT}]")
    if np.any(np.abs(b_vec) >= (1 << 62)):
        raise KernelInputError("bias_i64 must satisfy |bias| < 2^62")
    return m_vec, s_vec, b_vec


def _check_layernorm_args(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits):
    out_dtype = _check_x_scalars(x, eps_m, eps_e, out_bits)
    return (out_dtype, *_check_vectors(tuple(x.shape)[-1], m_i32, shift, bias_i64))


@register("layernorm", "ref")
def layernorm_ref(x: np.ndarray, m_i32, shift, bias_i64, eps_m: int, eps_e: int, out_bits: int = 8) -> np.ndarray:
    """Integer LayerNorm over the last axis with a folded per-channel affine.

    Formula, per row of length ``C`` (``R(v, m, s) = floor((v·m + 2^(s-1)) / 2^s)``;
    integers from :func:`layernorm_params`)::

        y_i    = C·x_i - Σ_j x_j                                  # exact C·(x_i - μ), int64
        M      = max_i |y_i|;  if M == 0: y_norm = 0              # constant row → out = β
        sh     = max(bit_length(M) - ⌊(62 - ⌈log2 C⌉)/2⌋, sh_eps)   # per-row shift
        ys_i   = y_i >> sh  if sh ≥ 0  else  y_i << -sh            # (shift capped at 62)
        V      = Σ ys_i^2 + eps_s,   eps_s = ⌊eps_m · 2^(-eps_e - 2·sh)⌋   # eps folded
        std    = isqrt(V);  factor = ⌊2^62 / std⌋
        y_norm = R(ys_i · factor, 1, 32)                  # (x-μ)/√(σ²+eps) ≈ y_norm·√C·2^-30
        v_c    = R(y_norm · m[c], shift[c]) + bias[c]      # output step · 2^-16
        out    = clip(R(v_c, 1, 16), -Q, Q),  Q = 2^(out_bits-1) - 1

    with ``sh_eps = -⌊(31 + eps_e)/2⌋`` when ``eps_m > 0`` (keeps ``eps_s <
    2^62``) and no constraint otherwise.

    * ``x``: int32 ``[..., C]``, **any** int32 value (``-2^31 ≤ x < 2^31``; the
      22-bit residual sums of I-BERT are well inside), ``1 ≤ C ≤ 2^20``.
    * ``m_i32``, ``shift``, ``bias_i64``: length-``C`` integer vectors;
      ``eps_m``, ``eps_e``: Python ints.  Output: ``out_bits`` container
      (int8 by default), at scale ``S_out``, symmetric saturation.
    * Rounding: every ``R`` rounds half up; ``std`` and ``factor`` are floors.
    * Overflow bound (int64): ``|Σx| < 2^51``, ``|y| < 2^52``; after the shift
      ``|ys| ≤ 2^⌊(62-⌈log2 C⌉)/2⌋`` so ``Σys² ≤ 2^62`` and ``eps_s < 2^62``,
      ``V < 2^63``; ``|ys| ≤ std`` so ``|ys·factor| ≤ 2^62``;
      ``|y_norm| ≤ 2^30`` so ``|y_norm·m| < 2^61``; ``|v| < 2^62``.
    * A constant row (``M == 0``) never divides: ``out = R(bias, 1, 16)``,
      i.e. β requantized (float LayerNorm gives β too when eps > 0, NaN when
      eps = 0).  Otherwise ``std ≥ max|ys| ≥ 2^(keep-1)`` with ``keep =
      ⌊(62-⌈log2 C⌉)/2⌋`` (≥ 2^25 for C ≤ 1024; ``≥ 2^30`` when eps sets the
      shift), so ``std`` never vanishes.
    * Error bound vs exact LayerNorm (float64; ``x̂ = (x-μ)/√(σ²+eps)``,
      before saturation): the normalized value is within ``ε_C = 2^(3 +
      ⌈log2 C⌉/2 - keep)`` of ``x̂`` (ε_C ≤ 2^-18 for C ≤ 1024, 2^-16 for
      C ≤ 4096: the right shift of ``y``, the floors of isqrt and of the
      factor, the 2^-30 rounding of ``y_norm``), hence
      ``|out - LN(x)/S_out| ≤ 0.5 + 2^-15 + ε_C·|γ_c|/S_out`` output steps
      (0.5 for the final rounding, 2·2^-17 for the two 2^-16 roundings).
      Against torch's float32 ``layer_norm`` rounded to the same grid:
      at most 1 step apart (tests/test_layernorm.py).
    """
    out_dtype, m_vec, s_vec, b_vec = _check_layernorm_args(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits)
    q = qmax_for_bits(out_bits)
    c = x.shape[-1]
    x2 = x.reshape(-1, c).astype(np.int64)
    y2 = np.int64(c) * x2 - x2.sum(axis=1, keepdims=True)
    mx = np.abs(y2).max(axis=1, keepdims=True)
    keep = (62 - _bit_length_np(np.array([c - 1], dtype=np.int64))[0]) // 2
    sh = np.maximum(_bit_length_np(mx) - keep, _eps_min_shift(eps_m, eps_e))
    ys = np.where(sh >= 0, y2 >> np.minimum(np.maximum(sh, 0), 62), y2 << np.maximum(-sh, 0))
    var = (ys * ys).sum(axis=1, keepdims=True)
    if eps_m:
        e_tot = eps_e + 2 * sh
        eps_s = np.where(e_tot >= 0, np.int64(eps_m) >> np.minimum(np.maximum(e_tot, 0), 62),
                         np.int64(eps_m) << np.minimum(np.maximum(-e_tot, 0), 62))
        var = var + eps_s
    std = isqrt_ref(var)
    factor = np.where(std > 0, (np.int64(1) << np.int64(FACTOR_BITS)) // np.maximum(std, 1), 0)
    factor = np.where(mx > 0, factor, 0)
    y_norm = ((ys * factor >> np.int64(FACTOR_BITS - NORM_BITS - 1)) + 1) >> 1
    v = ((((y_norm * m_vec) >> (s_vec - 1)) + 1) >> 1) + b_vec
    out = ((v >> np.int64(BIAS_FRAC - 1)) + 1) >> 1
    return np.clip(out, -q, q).astype(out_dtype).reshape(x.shape)


# ----------------------------------------------------------------------------- numba CPU


def _detect_avx512() -> bool:
    """True when numba compiles for a CPU with AVX-512F/BW (the 16-lane output pass).

    Honours numba's ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` overrides, else asks
    LLVM about the host; ``INTENGINE_DISABLE_AVX512=1`` forces the portable loop.
    """
    return cpu_has(("avx512f", "avx512bw"), "INTENGINE_DISABLE_AVX512")


HAVE_AVX512: bool = _detect_avx512()
BLOCK = 16  # channels per vector block of the AVX-512 output pass
_BLOCK_I64 = 5 * BLOCK // 2  # int64 words of one block's constants (see _output_blocks)


def _make_out_block16(out_width: int):
    """Intrinsic ``blk(ys_addr, cst_addr, fl_i64, fh_i64, q_i64, out_addr)``: 16 channels of the fused output pass.

    Computes, for 16 consecutive channels ``j`` (``ys`` int32 at ``ys_addr``, the
    block's constants at ``cst_addr``, see :func:`_output_blocks`)::

        y_norm = ys·fh + ((ys·fl + 2^31) >> 32)      # = (ys·factor + 2^31) >> 32, factor = fh·2^32 + fl
        V      = y_norm·m_j + K_j                      # |V| < 2^63 (fused constants)
        out    = clip((V >> 32) >> (S_j - 32), -q, q)  # = V >> S_j, 32 ≤ S_j ≤ 63

    and stores it as ``out_width``-bit integers at ``out_addr``.  ``fl``, ``fh``
    are int32 values (``fl ∈ [-2^31, 2^31)``), ``|ys| ≤ 2^30``: every product is
    a 32×32→64 ``vpmuldq`` (even and odd lanes separately; ``factor`` itself is
    up to 2^42 and would need the 3-uop ``vpmullq``).  ``|ys·fl| < 2^61`` and
    ``|y_norm| ≤ 2^30``, so the split is exact.  ``V >> 32`` is the high dword
    of each lane, re-interleaved into 16 int32 lanes by one ``vpermt2d``; the
    remaining shift and the clamp run on 16 lanes.  The ``ys·fh`` product
    passes an empty inline-asm barrier: without it LLVM folds the two products
    back into one ``vpmullq``.
    """

    @intrinsic
    def blk(typingctx, ys_addr, cst_addr, fl_i64, fh_i64, q_i64, out_addr):
        args = (ys_addr, cst_addr, fl_i64, fh_i64, q_i64, out_addr)
        if not all(isinstance(t, types.Integer) for t in args):
            return None
        sig = types.void(*args)

        def codegen(context, builder, signature, llargs):
            ys_i, cst_i, fl_v, fh_v, q_v, o_i = [
                context.cast(builder, v, t, types.int64) for v, t in zip(llargs, signature.args)
            ]
            i32, i64 = ir.IntType(32), ir.IntType(64)
            v16x32, v8x64 = ir.VectorType(i32, 16), ir.VectorType(i64, 8)
            oty = ir.VectorType(ir.IntType(out_width), 16)
            und = ir.Constant(v8x64, ir.Undefined)
            zero8 = ir.Constant(ir.VectorType(i32, 8), [0] * 8)

            def load(addr, ty, align):
                ld = builder.load(builder.inttoptr(addr, ty.as_pointer()))
                ld.align = align
                return ld

            def splat64(v):
                return builder.shuffle_vector(builder.insert_element(und, v, ir.Constant(i32, 0)), und, zero8)

            def splat32(v):
                u16 = ir.Constant(v16x32, ir.Undefined)
                return builder.shuffle_vector(builder.insert_element(u16, v, ir.Constant(i32, 0)), u16,
                                              ir.Constant(v16x32, [0] * 16))

            c32 = ir.Constant(v8x64, [32] * 8)

            def sext32(v):  # sign-extend the low dword of each lane (pmuldq operand)
                return builder.ashr(builder.shl(v, c32), c32)

            ys16 = load(ys_i, v16x32, 4)
            idx = ir.Constant(v16x32, [v for j in range(8) for v in (2 * j + 1, 16 + 2 * j + 1)])

            def high_dwords(even, odd):  # lane >> 32 of <8 x i64> even/odd channels → 16 int32 in channel order
                return builder.shuffle_vector(builder.bitcast(even, v16x32), builder.bitcast(odd, v16x32), idx)

            def halves(v16):  # sign-extended even and odd int32 lanes as <8 x i64>
                v64 = builder.bitcast(v16, v8x64)
                return sext32(v64), builder.ashr(v64, c32)

            fl8 = sext32(splat64(fl_v))
            rnd = ir.Constant(v8x64, [1 << 31] * 8)
            a_e, a_o = [builder.add(builder.mul(h, fl8), rnd) for h in halves(ys16)]
            fh16 = splat32(builder.trunc(fh_v, i32))
            y16 = builder.add(high_dwords(a_e, a_o), builder.mul(ys16, fh16))  # y_norm, |y_norm| ≤ 2^30
            vv = []
            for k, h in enumerate(halves(y16)):
                m = sext32(load(builder.add(cst_i, ir.Constant(i64, 64 * k)), v8x64, 8))
                kk = load(builder.add(cst_i, ir.Constant(i64, 128 + 64 * k)), v8x64, 8)
                vv.append(builder.add(builder.mul(h, m), kk))
            hi = builder.ashr(high_dwords(*vv), load(builder.add(cst_i, ir.Constant(i64, 256)), v16x32, 8))
            qv = splat32(builder.trunc(q_v, i32))
            nqv = builder.neg(qv)
            hi = builder.select(builder.icmp_signed(">", hi, qv), qv, hi)
            hi = builder.select(builder.icmp_signed("<", hi, nqv), nqv, hi)
            if out_width < 32:
                hi = builder.trunc(hi, oty)
            st = builder.store(hi, builder.inttoptr(o_i, oty.as_pointer()))
            st.align = 1
            return context.get_dummy_value()

        return sig, codegen

    return blk


_out_block16_i8 = _make_out_block16(8)
_out_block16_i16 = _make_out_block16(16)
_out_block16_i32 = _make_out_block16(32)


@numba.njit(inline="always")
def _sx32(v_i64):
    """Identity on int32-range values; tells LLVM the operand is 32-bit (``vpmuldq``, not ``vpmullq``)."""
    return np.int64(np.int32(v_i64))


@numba.njit(inline="always")
def eps_scaled(eps_m, eps_e, sh):
    if eps_m == 0:
        return np.int64(0)
    e_tot = eps_e + 2 * sh
    if e_tot >= 0:
        return np.int64(eps_m) >> (e_tot if e_tot < 62 else 62)
    return np.int64(eps_m) << (-e_tot)


@numba.njit(inline="always")
def _centered_var(xr, c_i64, total, lsh, rsh, ys_buf):
    """``ys = ((C·x - Σx) << lsh) >> rsh`` into ``ys_buf`` (int32: ``|ys| ≤ 2^keep ≤ 2^30``), returns ``Σ ys²``.

    One pass: each ``ys`` is stored and squared from the register (32×32→64
    products, LLVM sees the int32 range through :func:`_sx32`); one shift
    direction per row.  ``Σys² ≤ 2^62`` (see :func:`layernorm_ref`).
    """
    n = xr.shape[0]
    var_i64 = np.int64(0)
    if lsh > 0:
        for i in range(n):
            ys_i64 = _sx32((np.int64(xr[i]) * c_i64 - total) << lsh)
            ys_buf[i] = np.int32(ys_i64)
            var_i64 += ys_i64 * ys_i64
    else:
        for i in range(n):
            ys_i64 = _sx32((np.int64(xr[i]) * c_i64 - total) >> rsh)
            ys_buf[i] = np.int32(ys_i64)
            var_i64 += ys_i64 * ys_i64
    return var_i64


@numba.njit(inline="always")
def _row_factor(xr, eps_m, eps_e, keep, sh_eps, ys_buf):
    """Passes 1-2 of a row: ``Σx``, min, max → shift; ``ys`` into ``ys_buf``.

    Returns ``factor = ⌊2^62/std⌋`` (int64, ``< 2^(63-keep)``; 0 for a constant row).
    """
    c = xr.shape[0]
    c_i64 = np.int64(np.int32(c))  # C ≤ 2^20: 32×32→64 products (LLVM sees the sext)
    total_i64 = np.int64(0)
    lo_i32 = np.int32(xr[0])
    hi_i32 = lo_i32
    for i in range(c):
        v_i32 = np.int32(xr[i])
        total_i64 += np.int64(v_i32)
        lo_i32 = min(lo_i32, v_i32)
        hi_i32 = max(hi_i32, v_i32)
    mx_i64 = max(c_i64 * np.int64(hi_i32) - total_i64, total_i64 - c_i64 * np.int64(lo_i32))  # max |C·x - Σx|
    factor_i64 = np.int64(0)
    if mx_i64 > 0:
        sh = max(bit_length(mx_i64) - keep, sh_eps)
        lsh = max(-sh, 0)
        rsh = min(max(sh, 0), 62)
        var_i64 = _centered_var(xr, c_i64, total_i64, lsh, rsh, ys_buf) + eps_scaled(eps_m, eps_e, sh)
        std_i64 = isqrt_scalar(var_i64)
        if std_i64 > 0:
            factor_i64 = (np.int64(1) << FACTOR_BITS) // std_i64
    return factor_i64


@numba.njit(inline="always")
def _out_tail(ys_buf, factor_i64, m_i32, h_i64, s_i64, k_i64, fused, q, orow, start):
    """Output pass over channels ``start..C-1`` (scalar formula, see :func:`_layernorm_rows`)."""
    c = ys_buf.shape[0]
    if fused:
        for i in range(start, c):
            y_norm = (np.int64(ys_buf[i]) * factor_i64 + (np.int64(1) << 31)) >> 32
            orow[i] = min(max((y_norm * np.int64(m_i32[i]) + k_i64[i]) >> s_i64[i], -q), q)
    else:
        for i in range(start, c):
            y_norm = (np.int64(ys_buf[i]) * factor_i64 + (np.int64(1) << 31)) >> 32
            v = ((y_norm * np.int64(m_i32[i]) + h_i64[i]) >> s_i64[i]) + k_i64[i]
            orow[i] = min(max(v >> BIAS_FRAC, -q), q)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _layernorm_rows(x2, m_i32, h_i64, s_i64, k_i64, fused, eps_m, eps_e, keep, sh_eps, q, nchunks, out2):
    """Rows in parallel: sum/min/max, centred+shifted ``ys`` (int32 buffer) with ``Σys²``, isqrt, output.

    Output pass, with ``y_norm = (ys·factor + 2^31) >> 32`` (``|ys·factor| ≤ 2^62``,
    ``|y_norm| ≤ 2^30``, ``P = y_norm·m``, ``|P| < 2^61``):

    * ``fused``: ``out = clip((P + K_c) >> (s_c + 16))`` with ``K_c = 2^(s_c-1) + (bias_c + 2^15)·2^s_c``
      (``|K_c| < 2^62``), which is ``R(R(P, s_c) + bias_c, 16)`` since
      ``⌊(⌊a/2^s⌋ + b)/2^16⌋ = ⌊(a + b·2^s)/2^(s+16)⌋``;
    * otherwise ``out = clip((((P + 2^(s_c-1)) >> s_c) + K_c) >> 16)`` with ``K_c = bias_c + 2^15``.
    """
    rows, c = x2.shape
    for ch in numba.prange(nchunks):
        wide_vectors()
        ys_buf = np.empty(c, np.int32)
        for r in range(ch * rows // nchunks, (ch + 1) * rows // nchunks):
            factor_i64 = _row_factor(x2[r], eps_m, eps_e, keep, sh_eps, ys_buf)
            _out_tail(ys_buf, factor_i64, m_i32, h_i64, s_i64, k_i64, fused, q, out2[r], 0)


@numba.njit(inline="always")
def _out_row_avx512(ys_buf, cst_addr, factor_i64, m_i32, h_i64, s_i64, k_i64, q, orow):
    """Output pass of one row: 16-channel AVX-512 blocks (:func:`_make_out_block16`), scalar tail.

    ``factor = fh·2^32 + fl`` with ``fh = (factor + 2^31) >> 32`` (``factor < 2^43``:
    ``|fh| < 2^11``) and ``fl ∈ [-2^31, 2^31)``.
    """
    c = ys_buf.shape[0]
    nblk = c // BLOCK
    isz = orow.itemsize
    ys_addr = ys_buf.ctypes.data
    fh_i64 = (factor_i64 + (np.int64(1) << 31)) >> 32
    fl_i64 = factor_i64 - (fh_i64 << 32)
    o_addr = orow.ctypes.data
    if isz == 1:
        for b in range(nblk):
            _out_block16_i8(ys_addr + 4 * BLOCK * b, cst_addr + 8 * _BLOCK_I64 * b, fl_i64, fh_i64, q,
                            o_addr + BLOCK * b)
    elif isz == 2:
        for b in range(nblk):
            _out_block16_i16(ys_addr + 4 * BLOCK * b, cst_addr + 8 * _BLOCK_I64 * b, fl_i64, fh_i64, q,
                             o_addr + 2 * BLOCK * b)
    else:
        for b in range(nblk):
            _out_block16_i32(ys_addr + 4 * BLOCK * b, cst_addr + 8 * _BLOCK_I64 * b, fl_i64, fh_i64, q,
                             o_addr + 4 * BLOCK * b)
    _out_tail(ys_buf, factor_i64, m_i32, h_i64, s_i64, k_i64, True, q, orow, nblk * BLOCK)


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _layernorm_rows_avx512(x2, cst_i64, m_i32, h_i64, s_i64, k_i64, eps_m, eps_e, keep, sh_eps, q, nchunks, out2):
    """:func:`_layernorm_rows` (fused constants) with the output pass in 16-channel AVX-512 blocks.

    ``cst_i64``: the blocks' constants (:func:`_output_blocks`); the last
    ``C mod 16`` channels take the scalar loop.  Only compiled and called on AVX-512 hosts.
    """
    rows, c = x2.shape
    cst_addr = cst_i64.ctypes.data
    for ch in numba.prange(nchunks):
        wide_vectors()
        ys_buf = np.empty(c, np.int32)
        for r in range(ch * rows // nchunks, (ch + 1) * rows // nchunks):
            factor_i64 = _row_factor(x2[r], eps_m, eps_e, keep, sh_eps, ys_buf)
            _out_row_avx512(ys_buf, cst_addr, factor_i64, m_i32, h_i64, s_i64, k_i64, q, out2[r])


def _output_constants(m_vec, s_vec, b_vec):
    """``(m_i32, h_i64, shift_i64, K_i64, fused)`` of the output pass (see :func:`_layernorm_rows`)."""
    m_i32, h_i64, s_i64 = requant_vectors(m_vec, s_vec)
    bq = b_vec + np.int64(1 << (BIAS_FRAC - 1))  # |bias| < 2^62: no overflow
    # (bias + 2^15)·2^s + 2^(s-1) stays below 2^62 when |bq| < 2^(61-s) (s ≤ 61; s = 62 needs bq = 0)
    lim = np.left_shift(np.int64(1), np.maximum(61 - s_i64, 0))
    if bool(np.all(np.where(s_i64 <= 61, np.abs(bq) < lim, bq == 0))):
        return m_i32, h_i64, s_i64 + BIAS_FRAC, h_i64 + np.left_shift(bq, s_i64), True
    return m_i32, h_i64, s_i64, bq, False


def _output_blocks(m_i32, s_i64, k_i64):
    """Constants of the AVX-512 output pass, ``None`` unless every fused shift ``S_c`` lies in [32, 63].

    int64 ``[C // 16, 40]``: per block of 16 channels ``m`` of the even
    channels, ``m`` of the odd ones (sign-extended int32), ``K`` even, ``K``
    odd, then the 16 int32 ``S_c - 32`` in channel order (8 int64 words).
    """
    nblk = m_i32.shape[0] // BLOCK
    if not (bool(np.all(s_i64 >= 32)) and bool(np.all(s_i64 <= 63))):
        return None
    cst = np.zeros((nblk, _BLOCK_I64), np.int64)
    n = nblk * BLOCK
    m = m_i32[:n].astype(np.int64).reshape(nblk, BLOCK)
    k = k_i64[:n].reshape(nblk, BLOCK)
    cst[:, 0:8], cst[:, 8:16] = m[:, 0::2], m[:, 1::2]
    cst[:, 16:24], cst[:, 24:32] = k[:, 0::2], k[:, 1::2]
    cst[:, 32:40] = (s_i64[:n] - 32).astype(np.int32).reshape(nblk, BLOCK).view(np.int64)
    return cst


@memo_frozen(maxsize=256)
def _plan(c, m_i32, shift, bias_i64, avx512):
    """Validated output-pass constants for ``C = c`` (``avx512``: 1 to also build the 16-channel
    blocks); cached per read-only parameter arrays (:func:`memo_frozen`), so the runtime checks
    each LayerNorm once.  Returns ``(m_i32, h_i64, s_i64, K_i64, fused, blocks)``."""
    m_vec, s_vec, b_vec = _check_vectors(c, m_i32, shift, bias_i64)
    consts = _output_constants(m_vec, s_vec, b_vec)
    blocks = _output_blocks(consts[0], consts[2], consts[3]) if avx512 and consts[4] and c >= BLOCK else None
    return (*consts, blocks)


@register("layernorm", "cpu")
def layernorm_cpu(x: np.ndarray, m_i32, shift, bias_i64, eps_m: int, eps_e: int, out_bits: int = 8,
                  out=None) -> np.ndarray:
    """numba version of :func:`layernorm_ref` (bit-exact, parallel over rows).

    Same formula, dtypes, rounding and overflow bound as :func:`layernorm_ref`.
    ``out``: optional C-contiguous numpy array of ``x.shape`` and the output
    dtype (int8 for ``out_bits ≤ 8``), written and returned.  On AVX-512 hosts
    the output pass runs on 16-channel blocks (:func:`_make_out_block16`) when
    every fused shift lies in [32, 63] (always for ``|γ|·√C/S_out`` within
    ``[2^-17, 2^14)``); the derived constants are cached per parameter arrays.
    """
    out_dtype = _check_x_scalars(x, eps_m, eps_e, out_bits)
    c = x.shape[-1]
    m_i32, h_i64, s_i64, k_i64, fused, blocks = _plan(c, m_i32, shift, bias_i64, int(HAVE_AVX512))
    result = output_array(out, x.shape, out_dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, c)
    if x2.size:
        keep = np.int64((62 - int(c - 1).bit_length()) // 2)
        nchunks = min(x2.shape[0], 8 * numba.get_num_threads())
        em, ee = np.int64(eps_m), np.int64(eps_e)
        sh_eps, q = np.int64(_eps_min_shift(eps_m, eps_e)), np.int64(qmax_for_bits(out_bits))
        out2 = result.reshape(-1, c)
        if blocks is not None:
            _layernorm_rows_avx512(x2, blocks, m_i32, h_i64, s_i64, k_i64, em, ee, keep, sh_eps, q, nchunks, out2)
        else:
            _layernorm_rows(x2, m_i32, h_i64, s_i64, k_i64, fused, em, ee, keep, sh_eps, q, nchunks, out2)
    return result


# ----------------------------------------------------------------------------- residual add + i-LayerNorm

ADD_BITS_MIN = 17  # the sum feeds i-LayerNorm as an int32 tensor


def _check_add_bits(add_bits) -> None:
    if not (is_int_scalar(add_bits) and ADD_BITS_MIN <= add_bits <= 32):
        raise KernelInputError(f"add_bits must be an integer in [{ADD_BITS_MIN}, 32] (the sum is an int32 tensor), "
                               f"got {add_bits!r}")


@register("add_layernorm", "ref")
def add_layernorm_ref(a: np.ndarray, m_a, shift_a, b: np.ndarray, m_b, shift_b, add_bits: int, m_i32, shift, bias_i64,
                      eps_m: int, eps_e: int, out_bits: int = 8) -> np.ndarray:
    """Residual add followed by i-LayerNorm (the pair that closes every encoder sub-layer).

    Formula: exactly the composition of the two specifications::

        x   = rescale_add_ref(a, m_a, shift_a, b, m_b, shift_b, add_bits)   # clip(R(a·m_a) + R(b·m_b), ±(2^(add_bits-1)-1))
        out = layernorm_ref(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits)

    * ``a``, ``b``: int8/int16/int32/int64 of the same shape ``[..., C]``
      (``|v| < 2^32``); ``m_a``/``shift_a``, ``m_b``/``shift_b``: scalars or
      length-``C`` vectors (:func:`~intengine.kernels.requant.rescale_add_ref`).
    * ``add_bits``: 17..32, so the sum ``x`` is an int32 tensor, as i-LayerNorm takes.
    * Output, rounding, overflow bound and error bound: those of
      :func:`~intengine.kernels.requant.rescale_add_ref` (each branch rounds
      half up, int64 sums cannot overflow) and of :func:`layernorm_ref`.

    Backends fuse the two (the sum never goes through memory); the runtime
    rewrites a ``rescale_add`` read only by a ``layernorm`` into this op.
    """
    _check_add_bits(add_bits)
    x = rescale_add_ref(a, m_a, shift_a, b, m_b, shift_b, add_bits)
    return layernorm_ref(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits)


@numba.njit(inline="always")
def _residual_row(ar, ma_i32, ha_i64, sa_i64, br, mb_i32, hb_i64, sb_i64, qa, x_buf):
    """``x_buf = clip(R(a·m_a) + R(b·m_b), ±qa)`` for one row (int32 buffer).

    ``a``, ``b`` are at most 32-bit and ``|m| < 2^31``, so ``|v·m| < 2^62`` and each
    branch is the one-add form ``(v·m + 2^(s-1)) >> s`` (:func:`~intengine.kernels.requant.rshift_round`).
    """
    for i in range(x_buf.shape[0]):
        v_i64 = (((np.int64(ar[i]) * np.int64(ma_i32[i]) + ha_i64[i]) >> sa_i64[i])
                 + ((np.int64(br[i]) * np.int64(mb_i32[i]) + hb_i64[i]) >> sb_i64[i]))
        x_buf[i] = np.int32(min(max(v_i64, -qa), qa))


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _add_layernorm_rows(a2, ma, ha, sa, b2, mb, hb, sb, qa, cst_i64, m_i32, h_i64, s_i64, k_i64, fused, avx512, eps_m,
                        eps_e, keep, sh_eps, q, nchunks, out2):
    """Rows in parallel: the residual sum into a row buffer (:func:`_residual_row`), then the
    passes of :func:`_layernorm_rows` on it; ``avx512``: the output pass of
    :func:`_layernorm_rows_avx512` (``cst_i64`` its block constants; only set on AVX-512 hosts)."""
    rows, c = a2.shape
    cst_addr = cst_i64.ctypes.data
    for ch in numba.prange(nchunks):
        wide_vectors()
        x_buf = np.empty(c, np.int32)
        ys_buf = np.empty(c, np.int32)
        for r in range(ch * rows // nchunks, (ch + 1) * rows // nchunks):
            _residual_row(a2[r], ma, ha, sa, b2[r], mb, hb, sb, qa, x_buf)
            factor_i64 = _row_factor(x_buf, eps_m, eps_e, keep, sh_eps, ys_buf)
            if avx512:
                _out_row_avx512(ys_buf, cst_addr, factor_i64, m_i32, h_i64, s_i64, k_i64, q, out2[r])
            else:
                _out_tail(ys_buf, factor_i64, m_i32, h_i64, s_i64, k_i64, fused, q, out2[r], 0)


@memo_frozen()
def _residual_consts(m_a, shift_a, m_b, shift_b, add_bits, c):
    """Checked per-channel ``(m int32, 2^(s-1) int64, s int64)`` of both branches (cached per constant set)."""
    out = []
    for m, s in ((m_a, shift_a), (m_b, shift_b)):
        _, m_vec, s_vec = _requant_vectors_checked(m, s, add_bits, c)
        out.extend(requant_vectors(m_vec, s_vec))
    return tuple(out)


_NO_BLOCKS = np.zeros((1, _BLOCK_I64), np.int64)
# operand dtypes of the fused kernel: the encoders' residual adds (int32 linear output or int8, plus an
# int8 LayerNorm output); each pair is one numba compilation, other pairs run the two kernels in turn
_FUSED_DTYPES = ((np.dtype(np.int32), np.dtype(np.int8)), (np.dtype(np.int8), np.dtype(np.int8)))


@register("add_layernorm", "cpu")
def add_layernorm_cpu(a: np.ndarray, m_a, shift_a, b: np.ndarray, m_b, shift_b, add_bits: int, m_i32, shift, bias_i64,
                      eps_m: int, eps_e: int, out_bits: int = 8, out=None) -> np.ndarray:
    """numba version of :func:`add_layernorm_ref` (bit-exact): one parallel pass per row computes
    the sum into an L1-resident row buffer and normalizes it (no int32 tensor in memory), for
    ``a`` int32 or int8 and ``b`` int8; other operand dtypes run :func:`~intengine.kernels.requant.rescale_add_cpu`
    and :func:`layernorm_cpu` in turn.  ``out``: as in :func:`layernorm_cpu`."""
    _check_add_bits(add_bits)
    if a.shape != b.shape:
        raise KernelInputError(f"add_layernorm operands must have the same shape, got {a.shape} and {b.shape}")
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and (a.dtype, b.dtype) in _FUSED_DTYPES):
        x = rescale_add_cpu(a, m_a, shift_a, b, m_b, shift_b, add_bits)
        return layernorm_cpu(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits, out=out)
    out_dtype = _check_x_scalars(a, eps_m, eps_e, out_bits, "a", (np.int8, np.int32))
    c = a.shape[-1]
    res = _residual_consts(m_a, shift_a, m_b, shift_b, add_bits, c)
    lm_i32, h_i64, s_i64, k_i64, fused, blocks = _plan(c, m_i32, shift, bias_i64, int(HAVE_AVX512))
    result = output_array(out, a.shape, out_dtype)
    a2, b2 = np.ascontiguousarray(a).reshape(-1, c), np.ascontiguousarray(b).reshape(-1, c)
    if a2.size:
        keep = np.int64((62 - int(c - 1).bit_length()) // 2)
        nchunks = min(a2.shape[0], 8 * numba.get_num_threads())
        _add_layernorm_rows(a2, *res[:3], b2, *res[3:], np.int64(qmax_for_bits(add_bits)),
                            _NO_BLOCKS if blocks is None else blocks, lm_i32, h_i64, s_i64, k_i64, fused,
                            blocks is not None, np.int64(eps_m), np.int64(eps_e), keep,
                            np.int64(_eps_min_shift(eps_m, eps_e)), np.int64(qmax_for_bits(out_bits)), nchunks,
                            result.reshape(-1, c))
    return result

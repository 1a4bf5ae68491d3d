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
from numba.core import cgutils
from numba.extending import intrinsic

from ._llvm import (all_ints, args_i64, counted_loop, join_dwords, lane_ops, pack_i8x64, pmaddwd, prefetch,
                    vec_helpers, vector_reduce)
from ._util import (MAX_CHUNKS, check_int, container_for_bits, cpu_has, is_int_scalar, memo_frozen, output_array,
                    qmax_for_bits)
from .errors import KernelInputError
from .registry import register
from .requant import MULT_BITS, _requant_vectors_checked, requant_vectors, rescale_add_cpu, rescale_add_ref

ISQRT_UPDATES = 6  # Newton updates that suffice for every n < 2^63 (see isqrt_ref)
MAX_C = 1 << 20  # longest supported normalized axis
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


@intrinsic
def _ctlz64(typingctx, v):
    """``llvm.ctlz.i64`` (one ``lzcnt``): leading zero bits of an int64, 64 for 0."""
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.ctlz.i64")
        return builder.call(fn, [context.cast(builder, args[0], signature.args[0], types.int64),
                                 ir.Constant(ir.IntType(1), 0)])

    return types.int64(v), codegen


@numba.njit(inline="always")
def bit_length(v_i64):
    """Significant bits of a non-negative int64 (numba CPU)."""
    return 64 - _ctlz64(v_i64)


# ⌈16·√(m + 1)⌉ = ⌊√(256(m+1) - 1)⌋ + 1 for the top 8 bits m ∈ [64, 256) of n: a seed ≤ 2^-7 above √n
_ISQRT_SEED = np.array([math.isqrt(256 * (m + 1) - 1) + 1 for m in range(256)], np.int64)


@numba.njit(inline="always")
def isqrt_scalar(n_i64):
    """``⌊√n⌋`` for ``0 ≤ n < 2^63`` (numba CPU), the integer Newton iteration of
    :func:`isqrt_ref` from a closer start: with ``n = m·2^(2e-6) + r`` (``m`` the top 8 bits,
    ``e ≥ 3``), ``x_0 = ⌈(T[m]·2^(e-3)) / 16⌉ ≥ √((m+1)·2^(2e-6)) > √n`` within ~2^-7 of it
    (``T[m] = ⌈16·√(m+1)⌉``), so 3 updates reach ``⌊√n⌋`` and the loop (which stops when an
    update no longer decreases, at ``⌊√n⌋`` for any start above it) runs 4 passes."""
    if n_i64 <= 1:
        return n_i64
    e = (bit_length(n_i64) - 1) >> 1  # n ∈ [2^(2e), 2^(2e+2))
    if e >= 3:
        x_i64 = ((_ISQRT_SEED[n_i64 >> (2 * e - 6)] << (e - 3)) + 15) >> 4
    else:
        x_i64 = np.int64(1) << (e + 1)
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

NARROW_BITS = 14  # int8 outputs: |y| ≤ 2^14 and F ∈ [2^14 - 1, 2^15) before their product (int32)
NARROW_Z_BITS = 15  # int8 outputs: |z| ≤ 2^15 - 1 (clamped), |m| < 2^15: z·m + bias in int32
WIDE_BITS = 30  # wider outputs: |z| ≤ 2^30, F ∈ [2^30 - 1, 2^31), |m| < 2^31: int64 products
NARROW_M_MAX, NARROW_K_MAX = (1 << 15) - 1, 1 << 30
WIDE_M_MAX, WIDE_K_MAX = (1 << 31) - 1, (1 << 62) - 1


def y_bits(c: int) -> int:
    """``YB``: the centred row is scaled to ``|y| ≤ 2^YB`` with ``C·2^(2·YB) ≤ 2^62`` (≤ 30: int32 lanes)."""
    return min(30, (62 - (int(c) - 1).bit_length()) // 2)


def profile_limits(out_bits: int) -> tuple[int, int, int]:
    """``(max |m|, max |bias|, max shift)`` of the output profile (narrow: int32 output stage)."""
    return (NARROW_M_MAX, NARROW_K_MAX, 31) if out_bits <= 8 else (WIDE_M_MAX, WIDE_K_MAX, 62)


def z_bits(out_bits: int) -> int:
    """``ZB`` of the output profile: narrow (int32 arithmetic) for int8 outputs, wide (int64) above."""
    return NARROW_Z_BITS if out_bits <= 8 else WIDE_BITS


@dataclass(frozen=True, eq=False)
class LayerNormParams:
    """Integers of one i-LayerNorm instance (from :func:`layernorm_params`)."""

    m_i32: np.ndarray  # [C] int32, m·2^-shift ≈ γ_c·√C·2^-ZB / S_out (sign allowed; |m| < 2^15 for int8 out)
    shift: np.ndarray  # [C] int32 in [0, 62]
    bias_i64: np.ndarray  # [C] int64, round(β_c/S_out · 2^shift) + ⌊2^(shift-1)⌋ (the rounding folded in)
    eps_m: int  # eps folded: C·eps/S_in^2 ≈ eps_m · 2^-eps_e  (0 when eps == 0)
    eps_e: int
    out_bits: int
    out_scale: float

    @property
    def kernel_args(self) -> dict:
        """Keyword arguments of the ``layernorm`` kernels (integers only)."""
        return dict(m_i32=self.m_i32, shift=self.shift, bias_i64=self.bias_i64, eps_m=self.eps_m,
                    eps_e=self.eps_e, out_bits=self.out_bits)


def _affine_ints(a: np.ndarray, bb: np.ndarray, out_bits: int):
    """Per-channel ``(m, shift, K)`` with ``(z·m + K) >> shift ≈ a·z + bb + 1/2`` (see :func:`layernorm_params`)."""
    zb = z_bits(out_bits)
    m_max, k_max, s_max = profile_limits(out_bits)
    q = qmax_for_bits(out_bits)
    sat = np.abs(bb) >= q + 1 + np.abs(a) * ((1 << zb) + 2)  # saturated whatever z is
    s = np.full(a.shape, s_max, dtype=np.int64)
    for _ in range(s_max + 2):  # lower each channel's shift until m and K fit (exact in float64: 2^s scaling)
        mf = np.floor(np.abs(a) * np.exp2(s) + 0.5)
        kr = np.floor(bb * np.exp2(s) + 0.5)
        bad = ((mf > m_max) | (np.abs(kr) + np.floor(np.exp2(s - 1)) > k_max)) & ~sat
        if not bad.any():
            break
        s = np.where(bad, s - 1, s)
    if np.any(s[~sat] < 0):
        raise KernelInputError("layernorm_params: |gamma|·sqrt(C)/out_scale or |beta|/out_scale is too large")
    s = np.where(sat, 0, s)
    mf, kr = np.where(sat, 0.0, mf), np.where(sat, 0.0, kr)
    m = np.where(a < 0, -mf, mf).astype(np.int64)
    k = kr.astype(np.int64) + np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    k = np.where(sat, np.where(bb < 0, -(q + 1), q + 1), k)
    return m.astype(np.int32), s.astype(np.int32), k.astype(np.int64)


def layernorm_params(gamma, beta, eps: float, out_scale: float, out_bits: int = 8,
                     in_scale: float | None = None) -> LayerNormParams:
    """Integer constants of i-LayerNorm (lowering time).

    * ``gamma``, ``beta``: float vectors of length ``C`` (``1 ≤ C ≤ 2^20``);
      ``γ`` may be negative or zero.
    * ``eps``: LayerNorm's epsilon (≥ 0), in the units of the real input.
    * ``out_scale``: the output step ``S_out`` (> 0); ``out_bits``: 2..32
      (int8 container up to 8: the narrow profile, ``ZB = 14``; wider: ``ZB = 30``).
    * ``in_scale``: the input step ``S_in``.  The normalized values do not
      depend on it (``(x-μ)/σ`` is scale-invariant); it only converts eps to
      integer units, ``eps_q = eps / S_in^2``.  Required when ``eps > 0``.

    Folding (``z·√C·2^-ZB`` is the normalized value, ``a_c = γ_c·√C·2^-ZB / S_out``,
    ``b_c = β_c / S_out``): per channel the largest ``shift ≤ 31`` (narrow) / ``62`` (wide)
    with ``m = round(a_c·2^shift)``, ``|m| ≤ 2^15 - 1`` / ``2^31 - 1`` and ``K =
    round(b_c·2^shift) + ⌊2^(shift-1)⌋``, ``|K| ≤ 2^30`` / ``2^62 - 1``; a channel saturated
    for every ``z`` (``|b_c| ≥ Q + 1 + |a_c|·(2^ZB + 2)``) gets ``m = 0, shift = 0, K =
    ±(Q+1)``.  Needs ``|a_c| < 2^15 - 1`` / ``2^31 - 1``, i.e. ``|γ|·√C/S_out < 2^29``
    (int8 out) or ``< 2^61``.  ``eps_m·2^-eps_e = C·eps/S_in^2`` with ``eps_m ∈ [2^30, 2^31)``.
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
    a = g * math.sqrt(c) * 2.0 ** -z_bits(out_bits) / s_out
    m_max = profile_limits(out_bits)[0]
    if np.any(np.abs(a) >= m_max) or not np.all(np.isfinite(b / s_out)):
        raise KernelInputError(f"layernorm_params: |gamma|·sqrt(C)/out_scale must be < "
                               f"2^{29 if out_bits <= 8 else 61} for {out_bits}-bit outputs")
    m_i32, shift_i32, bias_i64 = _affine_ints(a, b / s_out, int(out_bits))
    if eps > 0:
        if in_scale is None:
            raise KernelInputError("layernorm_params: in_scale is required to fold eps > 0 into integer units")
        s_in = float(in_scale)
        if not (math.isfinite(s_in) and s_in > 0):
            raise KernelInputError(f"layernorm_params: in_scale must be finite and > 0, got {in_scale!r}")
        eps_sum = float(c) * eps / (s_in * s_in)
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
    for arr in (m_i32, shift_i32, bias_i64):
        arr.flags.writeable = False
    return LayerNormParams(m_i32=m_i32, shift=shift_i32, bias_i64=bias_i64, eps_m=eps_m, eps_e=eps_e,
                           out_bits=int(out_bits), out_scale=s_out)


def _eps_min_shift(eps_m: int, eps_e: int) -> int:
    """Smallest row shift ``sh`` with ``eps_m·2^(-eps_e-2sh) < 2^62`` (EPS_NONE without eps)."""
    if eps_m == 0:
        return EPS_NONE
    return max(EPS_NONE, -((31 + eps_e) // 2))


def _check_x(x, name="x", dtypes=(np.int32,)) -> int:
    """Checks of the input ``x`` (called ``name``); returns ``C``, the length of its last axis."""
    check_int(name, x, dtypes)
    shape = tuple(x.shape)  # (device arrays of the CUDA simulator do not index shapes from the end)
    if len(shape) < 1:
        raise KernelInputError(f"{name} must have at least one axis (the normalized axis is the last)")
    c = shape[-1]
    if not 1 <= c <= MAX_C:
        raise KernelInputError(f"{name}: the normalized (last) axis must have 1..{MAX_C} entries, got {c}")
    return c


def _check_scalars(eps_m, eps_e, out_bits):
    """Checks of ``eps_m``, ``eps_e``, ``out_bits``; returns the output dtype."""
    out_dtype = container_for_bits(out_bits)
    for name, v in (("eps_m", eps_m), ("eps_e", eps_e)):
        if not is_int_scalar(v):
            raise KernelInputError(f"{name} must be an integer, got {type(v).__name__}")
    if not (eps_m == 0 or (1 << 30) <= eps_m < (1 << 31)):
        raise KernelInputError(f"eps_m must be 0 or lie in [2^30, 2^31), got {eps_m}")
    if not -900 < eps_e < 900:
        raise KernelInputError(f"eps_e must lie in (-900, 900), got {eps_e}")
    return out_dtype


def _check_vectors(c, m_i32, shift, bias_i64, out_bits):
    """Checks of the per-channel vectors (length ``c``, the bounds of the ``out_bits`` profile);
    returns them as contiguous int64."""
    vecs = []
    for name, v in (("m_i32", m_i32), ("shift", shift), ("bias_i64", bias_i64)):
        a = np.asarray(v)
        if a.dtype.kind not in "iu":
            raise KernelInputError(f"{name} must be an integer vector, got dtype {a.dtype}")
        if a.shape != (c,):
            raise KernelInputError(f"{name} must be a vector of length C={c} (last axis of x), got shape {a.shape}")
        vecs.append(np.ascontiguousarray(a, dtype=np.int64))
    m_vec, s_vec, b_vec = vecs
    m_max, k_max, s_max = profile_limits(out_bits)
    if np.any(np.abs(m_vec) > m_max):
        raise KernelInputError(f"m_i32 must satisfy |m_i32| <= {m_max} for {out_bits}-bit outputs")
    if np.any((s_vec < 0) | (s_vec > s_max)):
        raise KernelInputError(f"shift must lie in [0, {s_max}] for {out_bits}-bit outputs")
    if np.any(np.abs(b_vec) > k_max):
        raise KernelInputError(f"bias_i64 must satisfy |bias| <= {k_max} for {out_bits}-bit outputs")
    return m_vec, s_vec, b_vec


def _check_layernorm_args(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits):
    c = _check_x(x)
    return (_check_scalars(eps_m, eps_e, out_bits), *_check_vectors(c, m_i32, shift, bias_i64, out_bits))


def _half(v):
    """``⌊2^(v-1)⌋`` for non-negative shift amounts (0 for 0), numpy int64."""
    return np.left_shift(np.int64(1), v) >> np.int64(1)


def _normalized_ref(x2: np.ndarray, eps_m: int, eps_e: int, out_bits: int) -> np.ndarray:
    """``z`` of :func:`layernorm_ref` for int64 rows ``x2 [R, C]`` (the normalized rows, int64)."""
    c = x2.shape[1]
    yb = y_bits(c)
    total = x2.sum(axis=1, keepdims=True)
    q_row = total // np.int64(c)
    r_row = total - q_row * np.int64(c)
    dev = np.maximum(x2.max(axis=1, keepdims=True) - q_row, q_row - x2.min(axis=1, keepdims=True))
    sh = np.maximum(_bit_length_np(dev) - yb, _eps_min_shift(eps_m, eps_e))
    lsh, rsh = np.maximum(-sh, 0), np.minimum(np.maximum(sh, 0), 62)
    rho = (np.left_shift(r_row, lsh + 1) + np.int64(c)) // np.int64(2 * c)
    y = (np.left_shift(x2 - q_row, lsh) - rho + _half(rsh)) >> rsh
    var = (y * y).sum(axis=1, keepdims=True)
    if eps_m:
        e_tot = eps_e + 2 * sh
        var = var + np.where(e_tot >= 0, np.int64(eps_m) >> np.minimum(np.maximum(e_tot, 0), 62),
                             np.int64(eps_m) << np.minimum(np.maximum(-e_tot, 0), 62))
    std = isqrt_ref(var)
    bl = _bit_length_np(std)
    fb = NARROW_BITS if out_bits <= 8 else WIDE_BITS
    f = np.where(std > 0, (np.left_shift(np.int64(1), bl + fb) - 1) // np.maximum(std, 1), 0)
    if out_bits <= 8:
        k = yb - NARROW_BITS
        y = (y + np.int64(1 << (k - 1))) >> np.int64(k)
        zs = np.maximum(bl - k - 1, 0)
        zq = np.int64((1 << NARROW_Z_BITS) - 1)
        return np.clip((y * f + _half(zs)) >> zs, -zq, zq)
    return (y * f + _half(bl)) >> bl


@register("layernorm", "ref")
def layernorm_ref(x: np.ndarray, m_i32, shift, bias_i64, eps_m: int, eps_e: int, out_bits: int = 8) -> np.ndarray:
    """Integer LayerNorm over the last axis with a folded per-channel affine.

    Formula, per row of length ``C`` (integers from :func:`layernorm_params`;
    ``h(s) = ⌊2^(s-1)⌋``, every ``>>`` an arithmetic shift, i.e. a floor)::

        q  = ⌊Σx / C⌋,  r = Σx - q·C                      # exact mean μ = q + r/C
        D  = max(max x - q, q - min x)                       # ≥ max|x - q|
        sh = max(bit_length(D) - YB, sh_eps),  L = max(-sh, 0),  R = min(max(sh, 0), 62)
        ρ  = ⌊(r·2^(L+1) + C) / 2C⌋                          # r·2^L/C rounded half up
        y_i = ((x_i - q)·2^L - ρ + h(R)) >> R                # ≈ (x_i - μ)·2^-sh,  |y| ≤ 2^YB
        V  = Σ y_i² + ⌊eps_m·2^(-eps_e - 2·sh)⌋              # eps folded (C·eps/S_in² units)
        std = isqrt(V);  b = bit_length(std);  F = ⌊(2^(b+FB) - 1) / std⌋  (0 when std = 0)
        narrow: k = YB - 14,  y_i ← (y_i + h(k)) >> k,  zs = max(b - k - 1, 0);   wide: zs = b
        z_i = (y_i·F + h(zs)) >> zs  (narrow: clipped to ±(2^15-1))   # (x-μ)/√(σ²+eps) ≈ z·√C·2^-ZB
        out_c = clip((z_c·m[c] + bias[c]) >> shift[c], -Q, Q),  Q = 2^(out_bits-1) - 1

    with ``YB = min(30, ⌊(62 - ⌈log2 C⌉)/2⌋)``, ``sh_eps = -⌊(31 + eps_e)/2⌋`` when
    ``eps_m > 0`` (keeps the eps term below 2^62), no constraint otherwise, and the
    profile from ``out_bits``: **narrow** (``out_bits ≤ 8``, ``FB = 14``, ``ZB = 15``:
    every per-element product fits int32, the AVX-512 kernel's 16-bit multiplies) or
    **wide** (``FB = ZB = 30``, int64).

    * ``x``: int32 ``[..., C]``, **any** int32 value, ``1 ≤ C ≤ 2^20``.
    * ``m_i32``, ``shift``, ``bias_i64``: length-``C`` integer vectors within the
      profile's bounds (narrow: ``|m| < 2^15``, ``shift ≤ 31``, ``|bias| ≤ 2^30``;
      wide: ``|m| < 2^31``, ``shift ≤ 62``, ``|bias| < 2^62``); ``eps_m``, ``eps_e``:
      Python ints.  Output: ``out_bits`` container, scale ``S_out``, symmetric saturation.
    * Rounding: ``ρ``, the ``R``/``k``/``zs`` shifts and the output round half up
      (``bias`` carries ``h(shift)``); ``q``, ``std`` and ``F`` are floors.
    * Overflow bound (int64 here; what the narrow profile keeps in int32 is marked):
      ``|Σx| < 2^51``, ``|x - q| ≤ D < 2^33``; ``|y| ≤ 2^YB`` (int32) so ``Σy² ≤ 2^62``
      and the eps term ``< 2^62``: ``V < 2^63``; ``|y| ≤ std``; narrow: ``|y| ≤ 2^14``,
      ``F < 2^15``, ``|y·F| < 2^29``, ``|z| < 2^15``, ``|z·m + bias| < 2^31`` (int32);
      wide: ``F < 2^31``, ``|y·F| < 2^61``, ``|z| ≤ 2^30``, ``|z·m + bias| < 2^63``.
    * A constant row gives ``y = 0``, ``z = 0`` and ``out = clip(bias >> shift)``: β
      requantized, never a division by zero (float LayerNorm gives β too when eps > 0).
    * Error bound vs exact LayerNorm (float64, before saturation), in output steps::

          |out - (γ·(x-μ)/√(σ²+eps) + β)/S_out| ≤ 1/2 + (2^ZB + 3)·2^-(shift+1) + |a_c|·Δz
          Δz = 5 + 2^(ZB+2)·(√C + 3)·2^-YB  (narrow),  2 + 2^(ZB+2)·(√C + 3)·2^-YB  (wide)

      with ``a_c = |γ_c|·√C·2^-ZB/S_out`` (the multiplier of ``z``): the rounding of
      ``m`` and ``bias``, and ``z`` within ``Δz`` of ``2^ZB·(x-μ)/√(C(σ²+eps))``
      (``|y - y*| ≤ 1``, ``std`` within ``√C + 2`` of the exact norm, ``F`` within
      ``2^-FB`` relative, the roundings of ``y`` (narrow) and ``z``, the narrow clamp).  For
      C = 768 and int8 outputs ``Δz < 5.06``: a normalized-value error ``≤ 2^-15·√C·5.06``.
      Against torch's float32 ``layer_norm`` rounded to the same grid: at most 1 step
      apart (tests/test_layernorm.py).
    """
    out_dtype, m_vec, s_vec, b_vec = _check_layernorm_args(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits)
    q = qmax_for_bits(out_bits)
    c = x.shape[-1]
    z = _normalized_ref(x.reshape(-1, c).astype(np.int64), int(eps_m), int(eps_e), int(out_bits))
    out = (z * m_vec + b_vec) >> s_vec
    return np.clip(out, -q, q).astype(out_dtype).reshape(x.shape)


# ----------------------------------------------------------------------------- numba CPU


def _detect_avx512() -> bool:
    """True when numba compiles for a CPU with AVX-512F/BW (the 16-lane row passes).

    Honours numba's ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` overrides, else asks
    LLVM about the host; ``INTENGINE_DISABLE_AVX512=1`` forces the portable loops.
    """
    return cpu_has(("avx512f", "avx512bw"), "INTENGINE_DISABLE_AVX512")


HAVE_AVX512: bool = _detect_avx512()
BLOCK = 16  # int32 lanes per step of the AVX-512 row passes
STATS_MAX_NVEC = 4096  # blocks per _ln_stats16 call: Σ(x & 0xFFFF) < 2^32 pins the exact sum


@intrinsic
def _ln_stats16(typingctx, x_addr, nvec, res_addr, pf_addr):
    """Row statistics over ``nvec ≤ 4096`` blocks of 16 int32 at ``x_addr``: writes int64
    ``[Σx, min, max, Σx² mod 2^64]`` to ``res_addr``.

    The exact sum from two int32-lane sums: ``Σx mod 2^32`` (wrapping ``vpaddd``) and
    ``H = Σ(x >> 16)`` (``vpmaddwd`` with the words ``(0, 1)``, ``|·| ≤ 2^27`` per lane);
    ``Σx = 2^16·H + Σ(x & 0xFFFF)`` with the last term in ``[0, 2^32)`` for ``16·nvec ≤ 2^16``
    values, so it is ``(Σx - 2^16·H) mod 2^32``.  ``Σx²``: ``vpmuldq`` on the even and odd
    lanes, summed in wrapping int64 lanes.  Each block also prefetches the 64 bytes at
    ``pf_addr + 64·i`` (a later row, so that its statistics pass finds it in L1)."""
    if not all_ints((x_addr, nvec, res_addr, pf_addr)):
        return None

    def codegen(context, builder, signature, llargs):
        xa, n, ra, pa = args_i64(context, builder, signature, llargs)
        i32, i64, v16, v8, load, splat, at = vec_helpers(builder)
        smin, smax, even, odd = lane_ops(builder)
        big, small = ir.Constant(v16, [(1 << 31) - 1] * 16), ir.Constant(v16, [-(1 << 31)] * 16)
        zero, zero8 = ir.Constant(v16, [0] * 16), ir.Constant(v8, [0] * 8)
        hi_word = ir.Constant(v16, [1 << 16] * 16)  # words (0, 1): vpmaddwd gives the signed high word, x >> 16

        def body(i, vals):
            mn, mx, s32, hi, sq = vals
            prefetch(builder, at(pa, i, 64))
            x = load(at(xa, i, 64))
            sq = builder.add(sq, builder.add(builder.mul(even(x), even(x)), builder.mul(odd(x), odd(x))))
            return [smin(x, mn), smax(x, mx), builder.add(s32, x), builder.add(hi, pmaddwd(builder, x, hi_word)), sq]

        mn, mx, s32, hi, sq = counted_loop(builder, n, [big, small, zero, zero, zero8], body)
        h16 = builder.shl(vector_reduce(builder, "add", builder.sext(hi, ir.VectorType(i64, 16))), ir.Constant(i64, 16))
        low = builder.zext(builder.sub(vector_reduce(builder, "add", s32), builder.trunc(h16, i32)), i64)
        res = [builder.add(h16, low), builder.sext(vector_reduce(builder, "smin", mn), i64),
               builder.sext(vector_reduce(builder, "smax", mx), i64), vector_reduce(builder, "add", sq)]
        for j, v in enumerate(res):
            builder.store(v, builder.inttoptr(builder.add(ra, ir.Constant(i64, 8 * j)), i64.as_pointer()))
        return context.get_dummy_value()

    return types.void(x_addr, nvec, res_addr, pf_addr), codegen


def _make_center16(left: bool):
    """Intrinsic ``center(x_addr, nvec, sh, c0, y_addr, pf_addr) -> Σy²`` on ``nvec`` blocks of
    16 int32: ``y = (x << sh) + c0`` (``left``) or ``y = (x + c0) >> sh``, stored at
    ``y_addr`` (two's complement wrap: exact whenever the true value fits int32; the caller
    passes ``c0`` as int64 and the low 32 bits are used).  ``Σy²`` is int64, 32×32→64
    ``vpmuldq`` on the even and odd lanes (the odd ones moved down by ``vpshufd``, port 5).
    Each block also prefetches the 64 bytes at ``pf_addr + 64·i`` (the next row: its first
    pass is otherwise bound by memory latency)."""

    @intrinsic
    def center(typingctx, x_addr, nvec, sh, c0, y_addr, pf_addr):
        args = (x_addr, nvec, sh, c0, y_addr, pf_addr)
        if not all_ints(args):
            return None

        def codegen(context, builder, signature, llargs):
            xa, n, shv, cc, ya, pa = args_i64(context, builder, signature, llargs)
            i32, i64, v16, v8, load, splat, at = vec_helpers(builder)
            sv, cv = splat(shv), splat(cc)
            zero8 = ir.Constant(v8, [0] * 8)
            _, _, even, odd = lane_ops(builder)

            def body(i, vals):
                ev, od = vals
                prefetch(builder, at(pa, i, 64))
                x = load(at(xa, i, 64))
                y = builder.add(builder.shl(x, sv), cv) if left else builder.ashr(builder.add(x, cv), sv)
                st = builder.store(y, builder.inttoptr(at(ya, i, 64), v16.as_pointer()))
                st.align = 4
                return [builder.add(ev, builder.mul(even(y), even(y))), builder.add(od, builder.mul(odd(y), odd(y)))]

            ev, od = counted_loop(builder, n, [zero8, zero8], body)
            return vector_reduce(builder, "add", builder.add(ev, od))

        return types.int64(*args), codegen

    return center


_ln_center16_left, _ln_center16_right = _make_center16(True), _make_center16(False)


def _make_out16(group: int, zclip: bool):
    """Narrow output pass ``out(v_addr, nvec, c0, k, f, zs, cst_addr, q, out_addr)`` on ``nvec``
    steps of ``group`` blocks of 16 channels (int32 lanes throughout)::

        y14 = (v + c0) >> k;  z = clip((y14·F + h(zs)) >> zs, ±(2^15-1));  out = clip((z·m + K) >> s, ±q)

    where ``v + c0`` (low 32 bits of ``c0``, wrapping) is the caller's ``y + h(k)`` in int32:
    ``v`` the centred row with ``c0 = h(k)``, or the input row itself (see :func:`_ln_row`).

    ``y14·F`` and ``z·m`` are ``vpmaddwd`` (16×16→32: ``|y14|, |z| < 2^15`` sit in the low
    half of each lane, ``F`` and ``m`` are stored with a zero high half).  ``cst_addr``: per
    block ``m & 0xFFFF``, ``K``, ``s`` as 16 int32 each (:func:`_out_blocks`).  ``group=1``
    clamps to ``±q`` and stores 16 bytes; ``group=4`` (``q = 127`` only) clips and packs 64
    results (:func:`~intengine.kernels._llvm.pack_i8x64`).  ``zclip=False`` leaves out the
    clamp of ``z``: for rows whose ``z`` the caller proved to lie within ``±(2^15-1)``."""

    @intrinsic
    def out(typingctx, v_addr, nvec, c0, k, f, zs, cst_addr, q, out_addr):
        args = (v_addr, nvec, c0, k, f, zs, cst_addr, q, out_addr)
        if not all_ints(args):
            return None

        def codegen(context, builder, signature, llargs):
            va, n, c0_, kk, ff, zz, ca, qq, oa = args_i64(context, builder, signature, llargs)
            i32, i64, v16, v8, load, splat, at = vec_helpers(builder)
            smin, smax, _, _ = lane_ops(builder)

            one = ir.Constant(i64, 1)
            kv, fv, zv, cv = splat(kk), splat(ff), splat(zz), splat(c0_)
            hz = splat(builder.ashr(builder.shl(one, zz), one))
            zmax = ir.Constant(v16, [(1 << NARROW_Z_BITS) - 1] * 16)
            zmin = ir.Constant(v16, [1 - (1 << NARROW_Z_BITS)] * 16)

            def block(j):  # (z·m + K) >> s of block j, unclamped
                y14 = builder.ashr(builder.add(load(at(va, j, 64)), cv), kv)
                z = builder.ashr(builder.add(pmaddwd(builder, y14, fv), hz), zv)
                if zclip:
                    z = smax(smin(z, zmax), zmin)
                cb = at(ca, j, 192)
                m, kb, sb = (load(builder.add(cb, ir.Constant(i64, 64 * t))) for t in range(3))
                return builder.ashr(builder.add(pmaddwd(builder, z, m), kb), sb)

            if group == 1:
                qv = splat(qq)
                nq = builder.neg(qv)
                v16i8 = ir.VectorType(ir.IntType(8), 16)

                def body(i, vals):
                    o = smax(smin(block(i), qv), nq)
                    st = builder.store(builder.trunc(o, v16i8), builder.inttoptr(at(oa, i, 16), v16i8.as_pointer()))
                    st.align = 1
                    return []
            else:
                def body(i, vals):
                    j = builder.mul(i, ir.Constant(i64, 4))
                    o = [block(builder.add(j, ir.Constant(i64, t))) for t in range(4)]
                    st = builder.store(pack_i8x64(builder, o), builder.inttoptr(at(oa, i, 64), v16.as_pointer()))
                    st.align = 1
                    return []

            counted_loop(builder, n, [], body)
            return context.get_dummy_value()

        return types.void(*args), codegen

    return out


_ln_out16, _ln_out64 = _make_out16(1, zclip=True), _make_out16(4, zclip=False)


def _out_blocks(m_vec, s_vec, b_vec):
    """Constants of :func:`_ln_out16`: int32 ``[C // 16, 48]``, per block of 16 channels
    ``m & 0xFFFF`` (zero high half for ``vpmaddwd``), ``K``, ``shift``."""
    nblk = m_vec.shape[0] // BLOCK
    n = nblk * BLOCK
    cst = np.empty((max(nblk, 1), 3 * BLOCK), np.int32)
    cst[:nblk, 0:16] = (m_vec[:n] & 0xFFFF).astype(np.int32).reshape(nblk, BLOCK)
    cst[:nblk, 16:32] = b_vec[:n].astype(np.int32).reshape(nblk, BLOCK)
    cst[:nblk, 32:48] = s_vec[:n].astype(np.int32).reshape(nblk, BLOCK)
    return cst


@numba.njit(inline="always")
def eps_scaled(eps_m, eps_e, sh):
    if eps_m == 0:
        return np.int64(0)
    e_tot = eps_e + 2 * sh
    if e_tot >= 0:
        return np.int64(eps_m) >> (e_tot if e_tot < 62 else 62)
    return np.int64(eps_m) << (-e_tot)


@numba.njit(inline="always")
def _row_stats(xr, fast, res, pf_addr):
    """``(Σx, min x, max x, Σx² mod 2^64)`` of one int32 row: :func:`_ln_stats16` on the 16-lane
    blocks (``fast``; at most ``STATS_MAX_NVEC`` per call), the scalar loop on the rest (``res``:
    int64 scratch of 4).  The blocks prefetch a row of the same length at ``pf_addr``."""
    c = xr.shape[0]
    nvec = c // BLOCK if fast else 0
    total = np.int64(0)
    sq = np.int64(0)
    lo = np.int64(xr[0])
    hi = lo
    for b0 in range(0, nvec, STATS_MAX_NVEC):
        _ln_stats16(xr.ctypes.data + 64 * b0, min(nvec - b0, STATS_MAX_NVEC), res.ctypes.data, pf_addr + 64 * b0)
        total += res[0]
        lo = min(lo, res[1])
        hi = max(hi, res[2])
        sq += res[3]
    for i in range(nvec * BLOCK, c):
        v = np.int64(xr[i])
        total += v
        sq += v * v
        lo = min(lo, v)
        hi = max(hi, v)
    return total, lo, hi, sq


@numba.njit(inline="always")
def _z_unclipped(x, q_row, lsh, rho, h_r, rsh, hk, k, f, hz, zs):
    """``z`` of :func:`layernorm_ref` for one int64 ``x`` of the row, before the narrow clamp
    (``k = 0``, ``hk = 0`` in the wide profile)."""
    y = ((((x - q_row) << lsh) - rho + h_r) >> rsh)
    return (((y + hk) >> k) * f + hz) >> zs


@numba.njit(inline="always")
def _ln_row(xr, total, lo, hi, sq, nxt, pf_addr, ybuf, cst_addr, res, m_i64, s_i64, k_i64, narrow, fast, eps_m, eps_e,
            yb, sh_eps, q, orow):
    """One row of :func:`layernorm_ref` from its statistics (``xr`` int32 ``[C]``, ``(total, lo,
    hi, sq)`` from :func:`_row_stats`; ``ybuf`` int32 scratch of ``C``); returns the statistics of
    ``nxt`` (the next row), computed between this row's scalar chain (divisions, ``isqrt``) and
    its output pass, which do not depend on them: the out-of-order core overlaps the two.  That
    pass prefetches the row at ``pf_addr`` (the one after ``nxt``: rows of L3-resident inputs
    then arrive in L1 a row ahead; 1.05-1.13× on 1024×768 timed after torch evicted the input).

    ``fast`` (AVX-512 and the narrow profile) runs the 16-lane blocks in intrinsics and the
    last ``C mod 16`` channels on the scalar formula, in one of two ways:

    * **direct** (``R = 0`` and ``L ≤ k``: rows of range below ``2^YB``, the usual case): no
      centred row is stored.  ``y = (x - q)·2^L - ρ`` is not rounded, so ``Σy² = 2^(2L)·S -
      2^(L+1)·ρ·r + C·ρ²`` with ``S = Σ(x - q)² = Σx² - C·q² - 2·q·r``, evaluated mod 2^64
      (exact: ``Σy² < 2^62``), and the output pass reads ``x`` with ``(y + h(k)) >> k =
      (x + ⌊(h(k) - ρ)/2^L⌋ - q) >> (k - L)`` (the exact value fits int32: ``|x - q| < 2^YB``);
    * **centred**: :func:`_make_center16` stores ``y`` in ``ybuf`` with ``Σy²`` when ``D + 1 +
      h(R) < 2^31`` (every int32 intermediate fits), else the scalar int64 loop; the output
      pass reads ``ybuf``.

    Everything else is the scalar formula.
    """
    c = xr.shape[0]
    nvec = c // BLOCK if fast else 0
    tail = nvec * BLOCK
    c64 = np.int64(c)
    q_row = total // c64
    r_row = total - q_row * c64
    dev = max(hi - q_row, q_row - lo)
    sh = max(np.int64(bit_length(dev)) - yb, sh_eps)
    lsh = max(-sh, 0)
    rsh = min(max(sh, 0), 62)
    rho = ((r_row << (lsh + 1)) + c64) // (2 * c64)
    h_r = (np.int64(1) << rsh) >> 1
    k = yb - NARROW_BITS if narrow else np.int64(0)
    direct = nvec > 0 and rsh == 0 and lsh <= k
    centred = nvec > 0 and not direct and dev + 1 + h_r < (np.int64(1) << 31)
    var = np.int64(0)
    if direct:  # int64 arithmetic wraps: exact, as the true Σy² < 2^62
        s2 = sq - c64 * q_row * q_row - 2 * q_row * r_row
        var = (s2 << (2 * lsh)) - ((rho * r_row) << (lsh + 1)) + c64 * rho * rho
    else:
        start = 0
        if centred:
            # (the intrinsic keeps the low 32 bits of c0: the sum wraps to the exact int32 value)
            if lsh > 0 or rsh == 0:
                var = _ln_center16_left(xr.ctypes.data, nvec, lsh, -rho - (q_row << lsh), ybuf.ctypes.data,
                                        nxt.ctypes.data)
            else:
                var = _ln_center16_right(xr.ctypes.data, nvec, rsh, h_r - rho - q_row, ybuf.ctypes.data,
                                         nxt.ctypes.data)
            start = tail
        for i in range(start, c):
            y = (((np.int64(xr[i]) - q_row) << lsh) - rho + h_r) >> rsh
            var += y * y
    std = isqrt_scalar(var + eps_scaled(eps_m, eps_e, sh))
    bl = np.int64(bit_length(std))
    fb = np.int64(NARROW_BITS) if narrow else np.int64(WIDE_BITS)
    f = ((np.int64(1) << (bl + fb)) - 1) // std if std > 0 else np.int64(0)
    zs = max(bl - k - 1, 0) if narrow else bl
    zq = np.int64((1 << NARROW_Z_BITS) - 1) if narrow else np.int64(1) << 62
    hk = (np.int64(1) << k) >> 1
    hz = (np.int64(1) << zs) >> 1
    nstats = _row_stats(nxt, fast, res, pf_addr)
    start = 0
    if direct or centred:
        v_addr, c0, kv = (xr.ctypes.data, ((hk - rho) >> lsh) - q_row, k - lsh) if direct else (ybuf.ctypes.data, hk, k)
        # groups of 4 blocks for the saturating packs, which skip the clamp of z: y, y14 and z are
        # nondecreasing in x, so the row's z range is that of its extremes.  (It stays inside: max|y|
        # ≤ √((C-1)/C)·√Σy², so |z| ≲ 2^15·√(1 - 1/C) plus rounding; 32,513 was the largest found for
        # C = 16 by a search over one-outlier rows.  A row outside would take the clamping 16-lane pass.)
        n64 = 0
        if q == 127 and -zq <= _z_unclipped(lo, q_row, lsh, rho, h_r, rsh, hk, k, f, hz, zs) and \
                _z_unclipped(hi, q_row, lsh, rho, h_r, rsh, hk, k, f, hz, zs) <= zq:
            n64 = nvec // 4
        if n64 > 0:
            _ln_out64(v_addr, n64, c0, kv, f, zs, cst_addr, q, orow.ctypes.data)
        _ln_out16(v_addr + 256 * n64, nvec - 4 * n64, c0, kv, f, zs, cst_addr + 768 * n64, q,
                  orow.ctypes.data + 64 * n64)
        start = tail
    for i in range(start, c):
        z = min(max(_z_unclipped(np.int64(xr[i]), q_row, lsh, rho, h_r, rsh, hk, k, f, hz, zs), -zq), zq)
        orow[i] = min(max((z * m_i64[i] + k_i64[i]) >> s_i64[i], -q), q)
    return nstats


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _layernorm_rows(x2, cst, m_i64, s_i64, k_i64, narrow, fast, eps_m, eps_e, yb, sh_eps, q, out2, nchunks):
    """Rows in parallel (``nchunks`` chunks of rows), :func:`_ln_row` each."""
    rows, c = x2.shape
    cst_addr = cst.ctypes.data
    for ch in numba.prange(nchunks):
        ybuf = np.empty(c, np.int32)
        res = np.empty(4, np.int64)
        r0, r1 = ch * rows // nchunks, (ch + 1) * rows // nchunks
        total, lo, hi, sq = _row_stats(x2[r0], fast, res, x2[min(r0 + 1, r1 - 1)].ctypes.data)
        for r in range(r0, r1):
            total, lo, hi, sq = _ln_row(x2[r], total, lo, hi, sq, x2[min(r + 1, r1 - 1)],
                                        x2[min(r + 2, r1 - 1)].ctypes.data, ybuf, cst_addr, res, m_i64, s_i64,
                                        k_i64, narrow, fast, eps_m, eps_e, yb, sh_eps, q, out2[r])


@memo_frozen(maxsize=256)
def _plan(c, m_i32, shift, bias_i64, eps_m, eps_e, out_bits, avx512):
    """Validated constants for ``C = c``: the output dtype and the arguments of
    :func:`_layernorm_rows` between ``x2`` and ``out2`` (the AVX-512 blocks, ``(m, s, K)``
    int64, the row scalars); cached per read-only parameter arrays and scalars
    (:func:`memo_frozen`): the runtime checks each LayerNorm once."""
    out_dtype = _check_scalars(eps_m, eps_e, out_bits)
    m_vec, s_vec, b_vec = _check_vectors(c, m_i32, shift, bias_i64, out_bits)
    narrow = out_bits <= 8
    return out_dtype, (_out_blocks(m_vec, s_vec, b_vec), m_vec, s_vec, b_vec, narrow, bool(narrow and avx512),
                       np.int64(eps_m), np.int64(eps_e), np.int64(y_bits(c)), np.int64(_eps_min_shift(eps_m, eps_e)),
                       np.int64(qmax_for_bits(out_bits)))


@register("layernorm", "cpu")
def layernorm_cpu(x: np.ndarray, m_i32, shift, bias_i64, eps_m: int, eps_e: int, out_bits: int = 8,
                  out=None) -> np.ndarray:
    """numba version of :func:`layernorm_ref` (bit-exact, parallel over rows).

    Same formula, dtypes, rounding and overflow bound as :func:`layernorm_ref`.
    ``out``: optional C-contiguous numpy array of ``x.shape`` and the output
    dtype (int8 for ``out_bits ≤ 8``), written and returned.  On AVX-512 hosts the
    narrow profile (int8 outputs) runs its row passes on 16 int32 lanes (two for a row of
    range below ``2^YB``, three for a wider one: :func:`_ln_row`); the derived constants are
    cached per parameter arrays.
    """
    c = _check_x(x)
    out_dtype, consts = _plan(c, m_i32, shift, bias_i64, eps_m, eps_e, out_bits, int(HAVE_AVX512))
    result = output_array(out, x.shape, out_dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, c)
    if x2.size:
        _layernorm_rows(x2, *consts, result.reshape(-1, c), min(x2.shape[0], MAX_CHUNKS))
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


@intrinsic
def _residual16(typingctx, a_addr, b_addr, nvec, cst_addr, mb, hb, sb, qa, x_addr):
    """``x = clip(R(a·m_a) + R(b·m_b), ±qa)`` on ``nvec`` blocks of 16 channels: ``a`` int32,
    ``b`` int8, per-channel ``(m_a, s_a)`` from ``cst_addr`` (:func:`_residual_blocks`: per
    block ``m_a`` as 16 int32, then ``s_a`` and ``2^(s_a-1)`` as int64 for the even and the odd
    channels), one ``(m_b, 2^(s_b-1), s_b)`` for every channel.  Each product is 32×32→64
    (``vpmuldq``) on the even and odd lanes, rounded in int64 (``|a·m| < 2^62``, ``|b·m| <
    2^38``), the sum clamped in int64 and its low dwords joined into 16 int32 lanes."""
    args = (a_addr, b_addr, nvec, cst_addr, mb, hb, sb, qa, x_addr)
    if not all_ints(args):
        return None

    def codegen(context, builder, signature, llargs):
        aa, ba, n, ca, mb_, hb_, sb_, qa_, xa = args_i64(context, builder, signature, llargs)
        i32, i64, v16, v8, load, splat, at = vec_helpers(builder)
        smin, smax, even, odd = lane_ops(builder)
        mbv = splat(builder.sext(builder.trunc(mb_, i32), i64), v8)
        hbv, sbv, qv = splat(hb_, v8), splat(sb_, v8), splat(qa_, v8)
        nqv = builder.neg(qv)
        v16i8 = ir.VectorType(ir.IntType(8), 16)

        def body(i, vals):
            a = load(at(aa, i, 64))
            bq = builder.load(builder.inttoptr(at(ba, i, 16), v16i8.as_pointer()))
            bq.align = 1
            b = builder.sext(bq, v16)
            cb = at(ca, i, 320)
            m = load(cb)
            se, so, he, ho = (load(builder.add(cb, ir.Constant(i64, 64 + 64 * t)), v8) for t in range(4))
            lo = builder.add(builder.ashr(builder.add(builder.mul(even(a), even(m)), he), se),
                             builder.ashr(builder.add(builder.mul(even(b), mbv), hbv), sbv))
            hi = builder.add(builder.ashr(builder.add(builder.mul(odd(a), odd(m)), ho), so),
                             builder.ashr(builder.add(builder.mul(odd(b), mbv), hbv), sbv))
            lo, hi = smax(smin(lo, qv), nqv), smax(smin(hi, qv), nqv)
            x = join_dwords(builder, lo, hi)
            st = builder.store(x, builder.inttoptr(at(xa, i, 64), v16.as_pointer()))
            st.align = 4
            return []

        counted_loop(builder, n, [], body)
        return context.get_dummy_value()

    return types.void(*args), codegen


def _residual_blocks(ma_i32, sa_i64):
    """Constants of :func:`_residual16`: int64 ``[C // 16, 40]``, per block of 16 channels
    ``m_a`` (16 int32 in the first 8 slots), ``s_a`` of the even then of the odd channels,
    ``2^(s_a-1)`` likewise."""
    nblk = ma_i32.shape[0] // BLOCK
    n = nblk * BLOCK
    cst = np.zeros((max(nblk, 1), 40), np.int64)
    cst[:nblk, :8] = np.ascontiguousarray(ma_i32[:n], dtype=np.int32).view(np.int64).reshape(nblk, 8)
    s2 = sa_i64[:n].reshape(nblk, 8, 2)
    cst[:nblk, 8:16], cst[:nblk, 16:24] = s2[:, :, 0], s2[:, :, 1]
    cst[:nblk, 24:32], cst[:nblk, 32:40] = np.left_shift(1, s2[:, :, 0] - 1), np.left_shift(1, s2[:, :, 1] - 1)
    return cst


@numba.njit(inline="always")
def _residual_row(ar, ma_i32, ha_i64, sa_i64, br, mb_i32, hb_i64, sb_i64, qa, x_buf, rcst, fast):
    """``x_buf = clip(R(a·m_a) + R(b·m_b), ±qa)`` for one row (int32 buffer).

    ``a``, ``b`` are at most 32-bit and ``|m| < 2^31``, so ``|v·m| < 2^62`` and each
    branch is the one-add form ``(v·m + 2^(s-1)) >> s`` (:func:`~intengine.kernels.requant.rshift_round`).
    ``fast`` (``a`` int32, one ``(m_b, s_b)``): :func:`_residual16` on the 16-lane blocks, this
    loop on the rest.
    """
    start = 0
    if fast:
        nvec = x_buf.shape[0] // BLOCK
        _residual16(ar.ctypes.data, br.ctypes.data, nvec, rcst.ctypes.data, mb_i32[0], hb_i64[0], sb_i64[0], qa,
                    x_buf.ctypes.data)
        start = nvec * BLOCK
    for i in range(start, x_buf.shape[0]):
        v_i64 = (((np.int64(ar[i]) * np.int64(ma_i32[i]) + ha_i64[i]) >> sa_i64[i])
                 + ((np.int64(br[i]) * np.int64(mb_i32[i]) + hb_i64[i]) >> sb_i64[i]))
        x_buf[i] = np.int32(min(max(v_i64, -qa), qa))


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _add_layernorm_rows(a2, ma, ha, sa, b2, mb, hb, sb, qa, rcst, rfast, cst, m_i64, s_i64, k_i64, narrow, fast, eps_m,
                        eps_e, yb, sh_eps, q, out2, nchunks):
    """Rows in parallel: the residual sum into a row buffer (:func:`_residual_row`), then
    :func:`_ln_row` on it (the arguments after ``cst`` are those of :func:`_layernorm_rows`)."""
    rows, c = a2.shape
    cst_addr = cst.ctypes.data
    for ch in numba.prange(nchunks):
        x_bufs = np.empty((2, c), np.int32)  # this row's sum and the next one's
        ybuf = np.empty(c, np.int32)
        res = np.empty(4, np.int64)
        r0, r1 = ch * rows // nchunks, (ch + 1) * rows // nchunks
        _residual_row(a2[r0], ma, ha, sa, b2[r0], mb, hb, sb, qa, x_bufs[0], rcst, rfast)
        total, lo, hi, sq = _row_stats(x_bufs[0], fast, res, a2[min(r0 + 1, r1 - 1)].ctypes.data)
        for r in range(r0, r1):
            nxt = x_bufs[(r - r0 + 1) & 1]
            if r + 1 < r1:
                _residual_row(a2[r + 1], ma, ha, sa, b2[r + 1], mb, hb, sb, qa, nxt, rcst, rfast)
            pf_addr = a2[min(r + 2, r1 - 1)].ctypes.data
            total, lo, hi, sq = _ln_row(x_bufs[(r - r0) & 1], total, lo, hi, sq, nxt, pf_addr, ybuf, cst_addr, res,
                                        m_i64, s_i64, k_i64, narrow, fast, eps_m, eps_e, yb, sh_eps, q, out2[r])


@memo_frozen()
def _residual_consts(m_a, shift_a, m_b, shift_b, add_bits, c, avx512):
    """Checked per-channel ``(m int32, 2^(s-1) int64, s int64)`` of both branches, the sum's
    bound ``2^(add_bits-1) - 1``, then the blocks of :func:`_residual16` and whether it applies
    (AVX-512, one ``(m_b, s_b)``); cached per constant set."""
    out = []
    for m, s in ((m_a, shift_a), (m_b, shift_b)):
        _, m_vec, s_vec = _requant_vectors_checked(m, s, add_bits, c)
        out.extend(requant_vectors(m_vec, s_vec))
    one_b = bool(np.all(out[3] == out[3][0]) and np.all(out[5] == out[5][0]))
    return (*out, np.int64(qmax_for_bits(add_bits)), _residual_blocks(out[0], out[2]),
            bool(avx512 and one_b and c >= BLOCK))


# operand dtypes of the fused kernel: the encoders' residual adds (int32 linear output or int8, plus an
# int8 LayerNorm output); each pair is one numba compilation, other pairs run the two kernels in turn
_FUSED_DTYPES = ((np.dtype(np.int32), np.dtype(np.int8)), (np.dtype(np.int8), np.dtype(np.int8)))


@register("add_layernorm", "cpu")
def add_layernorm_cpu(a: np.ndarray, m_a, shift_a, b: np.ndarray, m_b, shift_b, add_bits: int, m_i32, shift, bias_i64,
                      eps_m: int, eps_e: int, out_bits: int = 8, out=None) -> np.ndarray:
    """numba version of :func:`add_layernorm_ref` (bit-exact): one parallel pass per row computes
    the sum into an L1-resident row buffer and normalizes it (no int32 tensor in memory), for
    ``a`` int32 or int8 and ``b`` int8; other operand dtypes run :func:`~intengine.kernels.requant.rescale_add_cpu`
    and :func:`layernorm_cpu` in turn.  The sum of int32 ``a`` and int8 ``b`` with one ``(m_b,
    s_b)`` runs 16 lanes per step (:func:`_residual16`), the next row's sum computed before this
    row is normalized.  ``out``: as in :func:`layernorm_cpu`."""
    _check_add_bits(add_bits)
    if a.shape != b.shape:
        raise KernelInputError(f"add_layernorm operands must have the same shape, got {a.shape} and {b.shape}")
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and (a.dtype, b.dtype) in _FUSED_DTYPES):
        x = rescale_add_cpu(a, m_a, shift_a, b, m_b, shift_b, add_bits)
        return layernorm_cpu(x, m_i32, shift, bias_i64, eps_m, eps_e, out_bits, out=out)
    c = _check_x(a, "a", (np.int8, np.int32))
    res = _residual_consts(m_a, shift_a, m_b, shift_b, add_bits, c, int(HAVE_AVX512))
    out_dtype, consts = _plan(c, m_i32, shift, bias_i64, eps_m, eps_e, out_bits, int(HAVE_AVX512))
    result = output_array(out, a.shape, out_dtype)
    a2, b2 = np.ascontiguousarray(a).reshape(-1, c), np.ascontiguousarray(b).reshape(-1, c)
    if a2.size:
        _add_layernorm_rows(a2, *res[:3], b2, *res[3:7], res[7], res[8] and a2.dtype == np.int32, *consts,
                            result.reshape(-1, c), min(a2.shape[0], MAX_CHUNKS))
    return result

"""i-tanh: tanh from i-exp and one integer division, odd-symmetric bit for bit.

    tanh(x) = sign(x) · (1 - e) / (1 + e),   e = exp(-2|x|·S)

``e`` comes from the i-exp core of :mod:`.softmax` (fixed point ``2^-30``) with
the range-reduction multiplier ``2S/ln2 · 2^20``; the quotient is rounded half
up to ``Q = 2^(out_bits-1) - 1`` levels, so the output scale is ``1/Q``
(int8: 1/127).  Only ``|x|`` enters the computation and the sign is applied
last, hence ``tanh(-x) == -tanh(x)`` exactly and ``tanh(0) == 0``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numba
import numpy as np

from ._util import check_int, container_for_bits, output_array, qmax_for_bits
from .registry import register
from .requant import lut_u8, wide_vectors
from .softmax import (
    EXP_ONE,
    INPUT_DTYPES,
    _exp_core_ref,
    check_multiplier,
    exp_core,
    exp_core_u32,
    range_reduction_multiplier,
)


@dataclass(frozen=True)
class TanhParams:
    """Integers for :func:`tanh_ref`: ``m_i32 · 2^-shift ≈ 2S/ln2 · 2^20``, ``out_bits``; output scale 1/Q."""

    m_i32: int
    shift: int
    out_bits: int
    out_scale: float

    @property
    def kernel_args(self) -> dict:
        """Keyword arguments of the kernel (integers only)."""
        return {k: v for k, v in asdict(self).items() if k != "out_scale"}


def tanh_params(scale_in: float, out_bits: int = 8) -> TanhParams:
    """Lowering-time constants of i-tanh for inputs at scale ``scale_in`` ∈ [2^-24, 2^8].

    ``out_bits`` ∈ [2, 32] selects the output: int8 (≤ 8 bits), int16 (≤ 16)
    or int32, at scale ``1/(2^(out_bits-1) - 1)``.
    """
    q = qmax_for_bits(out_bits)
    m, sh = range_reduction_multiplier(scale_in, factor=2.0)
    return TanhParams(m, sh, int(out_bits), 1.0 / q)


def _check_tanh_args(x, m_i32, shift, out_bits):
    check_int("x", x, INPUT_DTYPES)
    m, s = check_multiplier(m_i32, shift)
    out_dtype = container_for_bits(out_bits)
    return m, s, out_dtype, qmax_for_bits(out_bits)


@register("tanh", "ref")
def tanh_ref(x: np.ndarray, m_i32: int, shift: int, out_bits: int = 8) -> np.ndarray:
    """i-tanh: ``y ≈ Q · tanh(x·S)``, ``Q = 2^(out_bits-1) - 1``.

    Formula (``m_i32, shift`` from :func:`tanh_params`, i.e. ``2S/ln2·2^20``)::

        e = iexp(|x|)                        (i-exp core of softmax.py: exp(-2|x|S)·2^30, e ∈ [0, 2^30])
        y = sign(x) · ⌊(2·Q·(2^30 - e) + (2^30 + e)) / (2·(2^30 + e))⌋     (round half up of Q·(1-e)/(1+e))

    * ``x``: int8/int16/int32 at scale ``S`` ∈ [2^-24, 2^8], any shape.
    * Output: int8 (out_bits ≤ 8), int16 (≤ 16) or int32 (≤ 32), in
      ``[-Q, Q]``, scale ``1/Q`` (int8: 1/127).  Large ``|x|`` gives ``e = 0``
      hence exactly ``±Q`` (saturation); ``x = 0`` gives 0.
    * Odd symmetry: computed on ``|x|``, sign applied last: ``y(-x) = -y(x)``.
    * Rounding: half up (away from zero after the sign) of the exact quotient
      of the integer ``e``; i-exp floors internally.
    * Overflow: int64; ``|x| ≤ 2^31`` so the i-exp product ``|x|·m < 2^62``;
      numerator ``2·Q·2^30 + 2^31 < 2^63`` for ``Q < 2^31``.
    * Accuracy vs float tanh of ``x·S``: ``|y/Q - tanh(x·S)| ≤ 0.5/Q + 1.71e-3``
      (i-exp's error ``1.92e-3·2^-z`` times ``|d tanh/d e| = 2/(1+e)²``,
      largest at z = 0: 1.92e-3·0.889).  At 8 bits that is ≤ 0.72 output step
      (measured 0.694 step over dense grids at S = 2^-24 … 2^8).  Wider outputs
      are limited by i-exp (measured 1.55e-3 absolute), not by their step.
    """
    m, s, out_dtype, q = _check_tanh_args(x, m_i32, shift, out_bits)
    x_i64 = np.asarray(x).astype(np.int64)
    e_i64 = _exp_core_ref(np.abs(x_i64), m, s)
    den_i64 = EXP_ONE + e_i64
    y_i64 = (2 * q * (EXP_ONE - e_i64) + den_i64) // (2 * den_i64)
    return np.where(x_i64 < 0, -y_i64, y_i64).astype(out_dtype)


@numba.njit(inline="always")
def tanh_core(x_i64, m_i64, s_i64, q_i64):
    """Scalar i-tanh (numba): ``Q·tanh(x·S)`` rounded half up away from 0."""
    a_i64 = -x_i64 if x_i64 < 0 else x_i64
    e_i64 = exp_core(a_i64, m_i64, s_i64)
    den_i64 = EXP_ONE + e_i64
    y_i64 = (2 * q_i64 * (EXP_ONE - e_i64) + den_i64) // (2 * den_i64)
    return -y_i64 if x_i64 < 0 else y_i64


@numba.njit(parallel=True, cache=True)
def _tanh_flat(x1, m_i64, s_i64, q_i64, out1):
    """Any ``Q`` (one int64 division per element)."""
    for i in numba.prange(x1.size):
        out1[i] = tanh_core(np.int64(x1[i]), m_i64, s_i64, q_i64)


FLOAT_DIV_MAX_Q = (1 << 15) - 1  # out_bits ≤ 16: the quotient is exact in float64 (see _tanh_flat_f64)
CHUNK = 1 << 14


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _tanh_flat_f64(x1, m_i64, s_i64, q_i64, out1):
    """Vectorized i-tanh for ``Q ≤ 2^15 - 1``: the division in float64, bit-identical.

    ``num = 2Q(2^30 - e) + 2^30 + e < 2^47`` and ``den = 2(2^30 + e) ≤ 2^32``
    are exact doubles; if ``num/den`` is not an integer it lies at least
    ``1/den ≥ 2^-32`` below the next integer ``k ≤ Q + 1 ≤ 2^15``, where
    doubles are ``2^-37`` apart, so the rounded quotient truncates to the
    exact ``⌊num/den⌋`` (and an integer quotient is exact).
    """
    n = x1.size
    for k in numba.prange((n + CHUNK - 1) // CHUNK):
        wide_vectors()
        for i in range(k * CHUNK, min(n, (k + 1) * CHUNK)):
            x_i64 = np.int64(x1[i])
            a_u32 = np.uint32(-x_i64 if x_i64 < 0 else x_i64)  # |x| ≤ 2^31
            e_i64 = exp_core_u32(a_u32, m_i64, s_i64)
            den_i64 = EXP_ONE + e_i64
            num_i64 = 2 * q_i64 * (EXP_ONE - e_i64) + den_i64
            y_i64 = np.int64(np.float64(num_i64) / np.float64(2 * den_i64))
            out1[i] = -y_i64 if x_i64 < 0 else y_i64


@functools.lru_cache(maxsize=256)
def _int8_table(m: int, s: int, out_bits: int) -> np.ndarray:
    """i-tanh of every int8 value, indexed by the input byte (``table[v & 255] = tanh_ref(v)``)."""
    table = tanh_ref(INT8_BY_BYTE, m, s, out_bits)
    table.flags.writeable = False
    return table


INT8_BY_BYTE = np.arange(256, dtype=np.uint8).view(np.int8)  # byte b holds the int8 value with that bit pattern


@register("tanh", "cpu")
def tanh_cpu(x: np.ndarray, m_i32: int, shift: int, out_bits: int = 8, out=None) -> np.ndarray:
    """numba version of :func:`tanh_ref` (bit-exact); ``out``: optional preallocated result.

    int8 inputs: a 256-entry table of :func:`tanh_ref` (cached per
    ``(m_i32, shift, out_bits)``), applied with ``vpermi2b`` where available.
    Wider inputs: the formula, vectorized with the division in float64
    (exact for ``out_bits ≤ 16``), else one int64 division per element.
    """
    m, s, out_dtype, q = _check_tanh_args(x, m_i32, shift, out_bits)
    x1 = np.ascontiguousarray(x).reshape(-1)
    result = output_array(out, x.shape, out_dtype)
    out1 = result.reshape(-1)
    if x1.size == 0:
        pass
    elif x1.dtype == np.int8:
        lut_u8(x1, _int8_table(m, s, int(out_bits)), out1)
    elif q <= FLOAT_DIV_MAX_Q:
        _tanh_flat_f64(x1, np.int64(m), np.int64(s), np.int64(q), out1)
    else:
        _tanh_flat(x1, np.int64(m), np.int64(s), np.int64(q), out1)
    return result

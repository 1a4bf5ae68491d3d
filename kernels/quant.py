"""Symmetric quantize / dequantize, per tensor or per channel.

These are the only kernels that touch floats: ``quantize`` runs at lowering
time (weights) or at a model's float boundary, ``dequantize`` produces the
final float32 output.  Everything between is integer.
"""

from __future__ import annotations

import numba
import numpy as np

from ._util import channel_vector, container_for_bits, qmax_for_bits
from .errors import KernelInputError
from .registry import register


def symmetric_scale(absmax, bits: int = 8) -> np.ndarray:
    """Scale ``S = max(absmax, 1e-8) / (2^(bits-1) - 1)`` (float32), per tensor or channel."""
    absmax = np.maximum(np.asarray(absmax, dtype=np.float64), 1e-8)
    return (absmax / qmax_for_bits(bits)).astype(np.float32)


def _scale_vector(x_shape, scale, axis):
    if axis is None:
        arr = np.asarray(scale, dtype=np.float32)
        if arr.size != 1:
            raise KernelInputError(f"per-tensor scale must be a scalar, got shape {arr.shape}")
        return arr.reshape(1), 1, 1
    ax = axis % len(x_shape)
    n = x_shape[ax]
    vec = channel_vector("scale", scale, n, np.float32)
    inner = int(np.prod(x_shape[ax + 1:], dtype=np.int64))
    return vec, n, inner


def _check_scale(vec):
    if not np.all(np.isfinite(vec)) or np.any(vec <= 0):
        raise KernelInputError("scale must be finite and > 0")


@register("quantize", "ref")
def quantize_ref(x: np.ndarray, scale, axis: int | None = None, bits: int = 8) -> np.ndarray:
    """Symmetric quantization ``q = clip(round_half_even(x / S), -Q, Q)``, ``Q = 2^(bits-1) - 1``.

    * ``x``: float32 (finite); ``scale``: float32 scalar (``axis=None``) or a
      vector along ``axis`` (per-channel).
    * The division is done in float64 (``float64(x) / float64(S)``, correctly
      rounded), then rounded half to even, then clipped.  int8: [-127, 127].
    * Output: int8 for ``bits ≤ 8``, int16 for ≤ 16, int32 for ≤ 32.
    """
    if x.dtype != np.float32:
        raise KernelInputError(f"quantize expects float32 input, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise KernelInputError("quantize input contains NaN or inf")
    out_dtype = container_for_bits(bits)
    vec, n, inner = _scale_vector(x.shape, scale, axis)
    _check_scale(vec)
    s = vec.astype(np.float64)
    if axis is not None:
        s = s.reshape((n,) + (1,) * (x.ndim - 1 - (axis % x.ndim)))
    q = qmax_for_bits(bits)
    return np.clip(np.rint(x.astype(np.float64) / s), -q, q).astype(out_dtype)


@register("dequantize", "ref")
def dequantize_ref(q: np.ndarray, scale, axis: int | None = None) -> np.ndarray:
    """``x = float32(q) · S`` in float32 (one correctly rounded multiply).

    ``q``: any integer dtype with ``|q| < 2^24`` (exact in float32);
    ``scale``: float32 scalar or per-channel vector along ``axis``.
    """
    if q.dtype.kind not in "iu":
        raise KernelInputError(f"dequantize expects an integer array, got {q.dtype}")
    vec, n, _ = _scale_vector(q.shape, scale, axis)
    s = vec
    if axis is not None:
        s = vec.reshape((n,) + (1,) * (q.ndim - 1 - (axis % q.ndim)))
    return (q.astype(np.float32) * s).astype(np.float32)


# ----------------------------------------------------------------------------- numba CPU


@numba.njit(parallel=True, cache=True)
def _quantize_3d(x3, s_f64, q, out3):
    # x3 viewed as [outer, channels, inner]; channel c has scale s_f64[c]
    outer, chans, inner = x3.shape
    for o in numba.prange(outer):
        for c in range(chans):
            s = s_f64[c]
            for i in range(inner):
                v = np.float64(x3[o, c, i]) / s
                v = min(max(v, -q - 1.0), q + 1.0)  # pre-clip keeps rounding exact
                r = round(v)  # half to even
                out3[o, c, i] = min(max(r, -q), q)


@numba.njit(parallel=True, cache=True)
def _dequantize_3d(q3, s_f32, out3):
    outer, chans, inner = q3.shape
    for o in numba.prange(outer):
        for c in range(chans):
            s = s_f32[c]
            for i in range(inner):
                out3[o, c, i] = np.float32(q3[o, c, i]) * s


def as_channel_3d(x: np.ndarray, axis: int | None) -> np.ndarray:
    """View ``x`` as ``[outer, channels, inner]`` around ``axis`` (channels=1 if None)."""
    x = np.ascontiguousarray(x)
    if axis is None:
        return x.reshape(1, 1, -1)
    ax = axis % x.ndim
    outer = int(np.prod(x.shape[:ax], dtype=np.int64))
    return x.reshape(outer, x.shape[ax], -1)


@register("quantize", "cpu")
def quantize_cpu(x: np.ndarray, scale, axis: int | None = None, bits: int = 8) -> np.ndarray:
    """numba version of :func:`quantize_ref` (bit-exact)."""
    if x.dtype != np.float32:
        raise KernelInputError(f"quantize expects float32 input, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise KernelInputError("quantize input contains NaN or inf")
    out_dtype = container_for_bits(bits)
    vec, _, _ = _scale_vector(x.shape, scale, axis)
    _check_scale(vec)
    out = np.empty(x.shape, dtype=out_dtype)
    if x.size:
        _quantize_3d(as_channel_3d(x, axis), vec.astype(np.float64), qmax_for_bits(bits), as_channel_3d(out, axis))
    return out


@register("dequantize", "cpu")
def dequantize_cpu(q: np.ndarray, scale, axis: int | None = None) -> np.ndarray:
    """numba version of :func:`dequantize_ref` (bit-exact)."""
    if q.dtype.kind not in "iu":
        raise KernelInputError(f"dequantize expects an integer array, got {q.dtype}")
    vec, _, _ = _scale_vector(q.shape, scale, axis)
    out = np.empty(q.shape, dtype=np.float32)
    if q.size:
        _dequantize_3d(as_channel_3d(q, axis), vec, as_channel_3d(out, axis))
    return out

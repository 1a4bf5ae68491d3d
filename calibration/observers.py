"""Observers: stream activations, then propose a symmetric quantization range.

Every observer has ``observe(x)`` (any float array, called once per
calibration batch) and ``compute_qparams(bits) -> QParams``.  Memory is bounded
whatever the number of batches: min-max observers keep two numbers (or two per
channel), histogram observers keep a fixed number of bins.

Symmetric quantization only looks at magnitudes, so the histogram observers
histogram ``|x|`` over ``[0, hi]``.  When a batch exceeds ``hi`` the range is
doubled as many times as needed and adjacent bins are merged pairwise, which is
exact (no re-binning error).

Ranges → scale: ``S = T / (2^(bits-1) - 1)`` for a clipping threshold ``T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..kernels.errors import CalibrationError

METHODS = ("minmax", "ema", "percentile", "mse", "entropy")


@dataclass(frozen=True)
class QParams:
    """A symmetric quantization range: ``threshold`` (T) and ``scale = T / (2^(bits-1)-1)``.

    ``threshold`` and ``scale`` are float64 scalars, or 1-D arrays for per-channel ranges.
    """

    threshold: np.ndarray
    bits: int
    scale: np.ndarray = field(init=False)

    def __post_init__(self):
        t = np.asarray(self.threshold, dtype=np.float64)
        if not 2 <= self.bits <= 32:
            raise CalibrationError(f"bits must be in [2, 32], got {self.bits}")
        if not np.all(np.isfinite(t)) or np.any(t < 0):
            raise CalibrationError(f"threshold must be finite and >= 0, got {t}")
        t = np.maximum(t, 1e-8)  # an all-zero tensor still gets a usable scale
        object.__setattr__(self, "threshold", t)
        object.__setattr__(self, "scale", t / (2 ** (self.bits - 1) - 1))


def _as_float(x, name="x") -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise CalibrationError(f"{name}: observers take float tensors, got {x.dtype}")
    if x.size and not np.all(np.isfinite(x)):
        raise CalibrationError(f"{name}: calibration batch contains NaN or inf")
    return x


class _Observer:
    name = "observer"

    def __init__(self):
        self.batches = 0

    def _require_data(self):
        if self.batches == 0:
            raise CalibrationError(f"{self.name} observer saw no calibration batches")


class MinMaxObserver(_Observer):
    """``T = max |x|`` over every batch (per channel along ``axis`` if given).

    Per-channel mode is used for weights: ``axis`` is the output-channel axis.
    """

    name = "minmax"

    def __init__(self, axis: int | None = None):
        super().__init__()
        self.axis = axis
        self.min = None
        self.max = None

    def _batch_minmax(self, x):
        if self.axis is None:
            return np.float64(x.min()), np.float64(x.max())
        red = tuple(i for i in range(x.ndim) if i != self.axis % x.ndim)
        return x.min(axis=red).astype(np.float64), x.max(axis=red).astype(np.float64)

    def observe(self, x) -> None:
        x = _as_float(x)
        if x.size == 0:
            return
        lo, hi = self._batch_minmax(x)
        self.min = lo if self.min is None else np.minimum(self.min, lo)
        self.max = hi if self.max is None else np.maximum(self.max, hi)
        self.batches += 1

    def compute_qparams(self, bits: int = 8) -> QParams:
        self._require_data()
        return QParams(np.maximum(np.abs(self.min), np.abs(self.max)), bits)


class EmaMinMaxObserver(MinMaxObserver):
    """I-BERT's running range: the first batch sets min/max, later batches
    update ``v ← momentum·v + (1-momentum)·batch`` (momentum 0.95)."""

    name = "ema"

    def __init__(self, momentum: float = 0.95, axis: int | None = None):
        super().__init__(axis)
        if not 0.0 <= momentum < 1.0:
            raise CalibrationError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def observe(self, x) -> None:
        x = _as_float(x)
        if x.size == 0:
            return
        lo, hi = self._batch_minmax(x)
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            k = self.momentum
            self.min = k * self.min + (1 - k) * lo
            self.max = k * self.max + (1 - k) * hi
        self.batches += 1


class HistogramObserver(_Observer):
    """Streaming histogram of ``|x|`` with ``bins`` equal bins over ``[0, hi]``."""

    name = "histogram"

    def __init__(self, bins: int = 2048):
        super().__init__()
        if bins < 16 or bins & (bins - 1):
            raise CalibrationError(f"bins must be a power of two >= 16, got {bins}")
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.float64)
        self.hi = 0.0

    def observe(self, x) -> None:
        a = np.abs(_as_float(x)).ravel()
        if a.size == 0:
            return
        amax = float(a.max())
        if self.hi == 0.0:
            self.hi = amax if amax > 0 else 1e-8
        while amax > self.hi:  # double the range, merging bins pairwise (exact)
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(self.bins // 2)])
            self.hi *= 2.0
        counts, _ = np.histogram(a, bins=self.bins, range=(0.0, self.hi))
        self.hist += counts
        self.batches += 1

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.hi, self.bins + 1)

    def compute_qparams(self, bits: int = 8) -> QParams:
        self._require_data()
        return QParams(np.float64(self.threshold(bits)), bits)

    def threshold(self, bits: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class PercentileObserver(HistogramObserver):
    """``T`` = the ``percentile``-th percentile of ``|x|`` (upper bin edge where the
    cumulative count first reaches it)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.999, bins: int = 2048):
        super().__init__(bins)
        if not 0.0 < percentile <= 100.0:
            raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
        self.percentile = percentile

    def threshold(self, bits: int) -> float:
        cdf = np.cumsum(self.hist)
        idx = int(np.searchsorted(cdf, cdf[-1] * self.percentile / 100.0))
        return float(self.edges[min(idx + 1, self.bins)])


class MseObserver(HistogramObserver):
    """``T`` minimising the expected squared quantization error of the histogram.

    For a candidate ``T`` with step ``Δ = T/Q``, a bin centred at ``c`` with
    count ``n`` costs ``n·Δ²/12`` if ``c ≤ T`` (rounding noise) and
    ``n·(c - T)²`` otherwise (clipping).  Candidates: ``candidates`` evenly
    spaced upper bin edges.
    """

    name = "mse"

    def __init__(self, bins: int = 2048, candidates: int = 256):
        super().__init__(bins)
        self.candidates = candidates

    def threshold(self, bits: int) -> float:
        q = 2 ** (bits - 1) - 1
        edges = self.edges
        centers = 0.5 * (edges[:-1] + edges[1:])
        idx = np.unique(np.linspace(1, self.bins, self.candidates).astype(int))
        t = edges[idx][:, None]  # [candidates, 1]
        inside = centers[None, :] <= t
        cost = np.where(inside, (t / q) ** 2 / 12.0, (centers[None, :] - t) ** 2) @ self.hist
        return float(edges[idx[int(np.argmin(cost))]])


class EntropyObserver(HistogramObserver):
    """``T`` minimising KL(P‖Q) between the clipped histogram and its quantized copy.

    ::

        |x| histogram, bins 0 … i-1 kept, i … end folded into bin i-1  →  P
        P merged into Q+1 levels (Q = 2^(bits-1)-1), spread back over
        the non-empty bins of each level                               →  Q
        T = upper edge of bin i with the smallest KL(P ‖ Q)

    (The calibration of TensorRT/ONNX Runtime's entropy method, written for a
    symmetric |x| histogram.)  Candidate ``i`` values are taken every
    ``stride`` bins from ``Q+1`` up.
    """

    name = "entropy"

    def __init__(self, bins: int = 2048, stride: int = 16):
        super().__init__(bins)
        self.stride = stride

    @staticmethod
    def _kl(p: np.ndarray, levels: int) -> float:
        sizes = np.full(levels, p.size // levels)
        sizes[: p.size % levels] += 1
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        nz = p > 0
        totals = np.add.reduceat(p, starts)
        counts = np.add.reduceat(nz.astype(np.int64), starts)
        per_bin = np.repeat(totals / np.maximum(counts, 1), sizes)
        qd = np.where(nz, per_bin, 0.0)
        ps, qs = p / p.sum(), qd / qd.sum()
        return float(np.sum(ps[nz] * np.log(ps[nz] / np.maximum(qs[nz], 1e-300))))

    def threshold(self, bits: int) -> float:
        levels = 2 ** (bits - 1)  # |x| in [0, T] maps onto levels 0 … Q
        if self.hist.sum() == 0 or self.bins <= levels:
            return float(self.hi)
        best_i, best_kl = self.bins, math.inf
        for i in range(levels, self.bins + 1, self.stride):
            p = self.hist[:i].copy()
            p[-1] += self.hist[i:].sum()
            if p.sum() == 0:
                continue
            kl = self._kl(p, levels)
            if kl < best_kl:
                best_i, best_kl = i, kl
        return float(self.edges[best_i])


def make_observer(method: str, **options) -> _Observer:
    """Observer for a calibration ``method`` (one of :data:`METHODS`)."""
    table = {
        "minmax": MinMaxObserver,
        "ema": EmaMinMaxObserver,
        "percentile": PercentileObserver,
        "mse": MseObserver,
        "entropy": EntropyObserver,
    }
    if method not in table:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    return table[method](**options)


def weight_qparams(w, axis: int | None = 0, bits: int = 8) -> QParams:
    """Per-channel (along ``axis``, the output channels) or per-tensor weight range: ``T = max |w|``."""
    obs = MinMaxObserver(axis=axis)
    obs.observe(w)
    return obs.compute_qparams(bits)

"""Calibration observers: ranges, streaming in bounded memory, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from intengine.calibration import (
    METHODS,
    EmaMinMaxObserver,
    EntropyObserver,
    HistogramObserver,
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    QParams,
    make_observer,
    weight_qparams,
)
from intengine.errors import CalibrationError


def test_minmax_and_scale():
    obs = MinMaxObserver()
    obs.observe(np.array([-3.0, 1.0], np.float32))
    obs.observe(np.array([2.0, 5.0], np.float32))
    qp = obs.compute_qparams(8)
    assert qp.threshold == 5.0 and np.isclose(qp.scale, 5.0 / 127)


def test_ema_follows_ibert_rule():
    obs = EmaMinMaxObserver(momentum=0.95)
    obs.observe(np.array([-1.0, 4.0], np.float32))  # first batch initialises
    obs.observe(np.array([-2.0, 8.0], np.float32))
    assert np.isclose(obs.max, 0.95 * 4 + 0.05 * 8) and np.isclose(obs.min, 0.95 * -1 + 0.05 * -2)
    assert np.isclose(obs.compute_qparams().threshold, 4.2)


def test_per_channel_weight_ranges():
    w = np.array([[1.0, -4.0], [0.5, 0.25], [0.0, 0.0]], np.float32)
    qp = weight_qparams(w, axis=0)
    np.testing.assert_allclose(qp.threshold, [4.0, 0.5, 1e-8])
    assert qp.scale.shape == (3,)


@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_histogram_growth_is_exact(seed, nbatches):
    """Streaming with range doubling equals one histogram of all data on the final range."""
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal(300).astype(np.float32) * 2.0**k for k in range(nbatches)]
    obs = HistogramObserver(bins=64)
    for b in batches:
        obs.observe(b)
    allabs = np.abs(np.concatenate(batches)).astype(np.float64)
    want, _ = np.histogram(allabs, bins=64, range=(0, obs.hi))
    # bin edges agree up to float rounding at merged boundaries: compare counts allowing boundary moves
    assert obs.hist.sum() == allabs.size
    assert np.abs(np.cumsum(obs.hist) - np.cumsum(want)).max() <= 2 * nbatches
    assert obs.hist.shape == (64,)  # bounded memory


def test_percentile_clips_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:5] = 1000.0
    obs = PercentileObserver(percentile=99.9)
    obs.observe(x)
    t = float(obs.compute_qparams().threshold)
    assert 3.0 < t < 3.8  # |N(0,1)| 99.9th percentile ≈ 3.29, bin width ≈ 0.5


# MSE weighs the lone outlier's clipping error against 100k samples' rounding
# noise, so it clips less than KL, which only looks at the distribution's shape.
@pytest.mark.parametrize("cls,upper", [(MseObserver, 50.0), (EntropyObserver, 20.0)])
def test_mse_and_entropy_choose_a_clip_below_the_outlier(cls, upper):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(100_000).astype(np.float32)
    x[0] = 60.0
    obs = cls()
    obs.observe(x)
    t = float(obs.compute_qparams(8).threshold)
    assert 2.0 < t < upper, t


def test_mse_threshold_reduces_error_vs_minmax():
    rng = np.random.default_rng(2)
    x = rng.laplace(size=50_000).astype(np.float32)

    def err(t):
        s = t / 127
        return float(np.mean((np.clip(np.round(x / s), -127, 127) * s - x) ** 2))

    mse, mm = MseObserver(), MinMaxObserver()
    mse.observe(x)
    mm.observe(x)
    assert err(float(mse.compute_qparams().threshold)) < err(float(mm.compute_qparams().threshold))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_needs_data_and_rejects_nan(method):
    obs = make_observer(method)
    with pytest.raises(CalibrationError, match="no calibration batches"):
        obs.compute_qparams()
    with pytest.raises(CalibrationError, match="NaN"):
        obs.observe(np.array([np.nan], np.float32))
    obs.observe(np.zeros(10, np.float32))  # all-zero data still gives a usable scale
    assert float(np.min(obs.compute_qparams().scale)) > 0


def test_bad_arguments():
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        make_observer("kmeans")
    with pytest.raises(CalibrationError, match="float"):
        MinMaxObserver().observe(np.zeros(3, np.int32))
    with pytest.raises(CalibrationError, match="bits"):
        QParams(np.float64(1.0), 1)
    with pytest.raises(CalibrationError, match="momentum"):
        EmaMinMaxObserver(momentum=1.5)

"""Calibration observers (installed as ``intengine.calibration``)."""

from .observers import (  # noqa: F401
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

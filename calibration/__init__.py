"""Calibration observers (installed as ``intengine.calibration``)."""

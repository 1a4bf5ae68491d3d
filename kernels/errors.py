"""Exceptions raised by the kernel library.

The root ``IntengineError`` is defined here, in the leaf-most package, so that
``kernels/`` stays independent of intengine's core; ``intengine.errors`` is the
public home of every exception and re-exports these.
"""

from __future__ import annotations


class IntengineError(Exception):
    """Base class of every error intengine raises on purpose."""


class KernelError(IntengineError):
    """A kernel was called outside its documented contract."""


class UnsupportedKernelError(KernelError, LookupError):
    """No kernel is registered for the requested ``(op, backend)`` pair."""


class KernelInputError(KernelError, ValueError):
    """A kernel argument has the wrong dtype, shape or range."""


class CalibrationError(IntengineError, ValueError):
    """Calibration got no data, or data it cannot turn into a quantization range."""

"""256-entry table lookup over int8 tensors: the exact nonlinearity of an 8-bit input.

An elementwise function of an int8 tensor takes at most 256 input values, so it can be
evaluated once per value at lowering time (in float64, from the exact function and the
calibrated scales) and applied at run time as pure integer data movement.  The lowering
uses it for GELU with int8 input and int8 output (``intengine.lower``'s ``gelu="table"``),
where I-BERT's erf polynomial is off by up to 0.018 (and by ~10 % of ``x`` near 0).
"""

from __future__ import annotations

import numpy as np

from ._util import check_int, memo_frozen, output_array
from .errors import KernelInputError
from .registry import register
from .requant import lut_u8

__all__ = ["lut_ref", "lut_cpu"]

TABLE_DTYPES = (np.int8, np.uint8, np.int16, np.int32)


def _check_lut_args(x, table) -> None:
    check_int("x", x, (np.int8,))
    check_int("table", table, TABLE_DTYPES)
    if tuple(table.shape) != (256,):
        raise KernelInputError(f"table must have 256 entries (one per int8 value, -128..127), got shape "
                               f"{tuple(table.shape)}")


@register("lut", "ref")
def lut_ref(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``out = table[x + 128]`` (numpy specification).

    * ``x``: int8, any shape; ``table``: int8 / uint8 / int16 / int32 ``[256]``, entry ``k``
      the value for input ``k - 128``.
    * Output: ``table``'s dtype, ``x``'s shape.  Pure data movement: no arithmetic, no
      rounding, no overflow (the table's values were rounded and saturated when it was built).
    """
    _check_lut_args(x, table)
    return np.asarray(table)[np.asarray(x).astype(np.int16) + 128]


@memo_frozen()
def _by_byte(table):
    """The table re-indexed by the input byte (``u8(v)`` for int8 ``v``), as ``lut_u8`` takes it."""
    t = np.ascontiguousarray(np.concatenate([table[128:], table[:128]]))
    t.flags.writeable = False
    return t


@register("lut", "cpu")
def lut_cpu(x: np.ndarray, table: np.ndarray, out=None) -> np.ndarray:
    """numba version of :func:`lut_ref` (bit-exact): 64 lanes per ``vpermi2b`` step for one-byte
    tables on AVX-512 VBMI hosts, a parallel loop otherwise.  ``out``: optional C-contiguous
    array of ``x.shape`` and ``table``'s dtype, written and returned."""
    _check_lut_args(x, table)
    result = output_array(out, x.shape, table.dtype)
    if x.size:
        lut_u8(np.ascontiguousarray(x), _by_byte(table), result)
    return result

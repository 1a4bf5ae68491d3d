"""Kernel cases for lut.py (protocol: tests/strategies.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.registry import get_kernel
from strategies import Case, int_arrays


@st.composite
def _lut(draw, small):
    shape = tuple(draw(st.lists(st.integers(0 if small else 1, 5 if small else 70), min_size=0, max_size=3)))
    x = draw(int_arrays(np.int8, shape, lo=-128))  # every byte, -128 included
    dtype = draw(st.sampled_from([np.int8, np.uint8, np.int16, np.int32]))
    table = draw(int_arrays(dtype, (256,)))
    return Case("lut", lambda b: get_kernel("lut", b)(x, table), f"{x.shape} table {table.dtype}")


CASES = {"lut": _lut}

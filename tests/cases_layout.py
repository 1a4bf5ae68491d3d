"""Kernel cases for layout.py (protocol: tests/strategies.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.layout import PAR_MIN_SIZE, SWAP_LAST, SWAP_MIDDLE
from intengine.kernels.registry import get_kernel
from strategies import Case, int_arrays


@st.composite
def _transpose(draw, small):
    dtype = draw(st.sampled_from([np.int8, np.uint8, np.int32]))
    if not small and draw(st.booleans()):
        # the parallel kernels' path: 4-D, at least PAR_MIN_SIZE elements
        d = draw(st.sampled_from([1, 7, 64]))
        t = draw(st.sampled_from([5, 128]))
        h = draw(st.sampled_from([3, 12]))
        b = -(-PAR_MIN_SIZE // (t * h * d)) + draw(st.integers(0, 1))
        shape = (b, t, h, d)
        perm = draw(st.sampled_from([SWAP_MIDDLE, SWAP_LAST]))
    else:
        shape = tuple(draw(st.lists(st.integers(0 if small else 1, 4 if small else 9), min_size=0, max_size=4)))
        perm = tuple(draw(st.permutations(range(len(shape)))))
    x = draw(int_arrays(dtype, shape))
    return Case("transpose", lambda be: get_kernel("transpose", be)(x, perm), f"{shape} {np.dtype(dtype).name} {perm}")


CASES = {"transpose": _transpose}

"""Kernel cases for gather.py (protocol: tests/strategies.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.registry import get_kernel
from strategies import Case, int_arrays


@st.composite
def _rel_gather(draw, small):
    lead = tuple(draw(st.lists(st.integers(1, 3 if small else 5), min_size=0, max_size=2)))
    t = draw(st.integers(1, 6 if small else 40))
    n = draw(st.integers(1, 8 if small else 80))
    tp = draw(st.integers(1, 6 if small else 40))
    dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int32]))
    x = draw(int_arrays(dtype, lead + (t, n)))
    seed = draw(st.integers(0, 2**31 - 1))
    index = np.random.default_rng(seed).integers(0, n, (t, tp)).astype(draw(st.sampled_from([np.int32, np.int64])))
    return Case("rel_gather", lambda b: get_kernel("rel_gather", b)(x, index), f"{x.dtype}{x.shape} index{index.shape}")


@st.composite
def _rel_scatter_add(draw, small):
    lead = tuple(draw(st.lists(st.integers(1, 3 if small else 5), min_size=0, max_size=2)))
    t = draw(st.integers(1, 6 if small else 40))
    tp = draw(st.integers(1, 6 if small else 40))
    size = draw(st.integers(1, 8 if small else 80))
    p = draw(int_arrays(np.uint8, lead + (t, tp)))
    seed = draw(st.integers(0, 2**31 - 1))
    # few buckets per row (NEZHA's clamped distances) make the 255 saturation reachable
    hi = draw(st.sampled_from([1, 2, size]))
    index = np.random.default_rng(seed).integers(0, min(hi, size), (t, tp)).astype(
        draw(st.sampled_from([np.int32, np.int64])))
    return Case("rel_scatter_add", lambda b: get_kernel("rel_scatter_add", b)(p, index, size),
                f"{p.dtype}{p.shape} index{index.shape} size={size}")


CASES = {"rel_gather": _rel_gather, "rel_scatter_add": _rel_scatter_add}

"""Kernel cases for gather.py (protocol: tests/strategies.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.registry import get_kernel
from strategies import Case, int_arrays, multiplier_sets


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


@st.composite
def _rel_scores(draw, small):
    lead = tuple(draw(st.lists(st.integers(1, 2 if small else 4), min_size=0, max_size=2)))
    t = draw(st.integers(1, 5 if small else 40))
    n1, n2 = draw(st.integers(1, 8 if small else 80)), draw(st.integers(1, 8 if small else 80))
    dtype = draw(st.sampled_from([np.int32, np.int32, np.int32, np.int16]))  # int16: the composed path
    qk = draw(int_arrays(dtype, lead + (t, t)))
    c2p = draw(int_arrays(dtype, lead + (t, n1)))
    p2c = draw(int_arrays(dtype, lead + (t, n2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    ic, ip = rng.integers(0, n1, (t, t)), rng.integers(0, n2, (t, t))
    sets = [draw(multiplier_sets(t)) for _ in range(4)]
    if draw(st.booleans()):  # all per-tensor (DeBERTa's case, the fused cpu kernel)
        sets = [(int(np.ravel(m)[0]), int(np.ravel(sh)[0])) for m, sh in sets]
    (ma1, sa1), (mb1, sb1), (ma2, sa2), (mb2, sb2) = sets
    bits1, bits2 = draw(st.sampled_from([8, 16, 32])), draw(st.sampled_from([8, 16, 32]))
    return Case("rel_scores", lambda b: get_kernel("rel_scores", b)(qk, c2p, ic, p2c, ip, ma1, sa1, mb1, sb1, bits1,
                                                                     ma2, sa2, mb2, sb2, bits2),
                f"{qk.dtype}{qk.shape} c2p{c2p.shape} p2c{p2c.shape} bits {bits1}/{bits2} "
                f"{'scalar' if isinstance(ma1, int) else 'vector'}")


CASES = {"rel_gather": _rel_gather, "rel_scatter_add": _rel_scatter_add, "rel_scores": _rel_scores}

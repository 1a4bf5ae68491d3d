"""Shared hypothesis strategies and profiles.

Profiles: ``ci`` (derandomized, no deadline; chosen when ``CI`` is set) and
``dev`` (random, more examples).  Pick one with ``HYPOTHESIS_PROFILE``.

Kernel cases: each op family's ``tests/cases_<family>.py`` exports
``CASES: dict[str, Callable[[bool], SearchStrategy[Case]]]``.  ``CASES[op](small)``
is a strategy of *cases*; a case is a callable ``case(backend) -> output`` that
builds its inputs deterministically, fetches the kernel with
``get_kernel(op, backend)`` (packing weights per backend where needed) and
returns the output (numpy arrays, or a tuple of them).  ``small=True`` asks for
tiny shapes (the CUDA simulator runs every thread in Python).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def load_profile() -> None:
    name = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    settings.load_profile(name)


# ----------------------------------------------------------------------------- integers

INT_RANGES = {
    np.int8: (-127, 127),  # symmetric int8: -128 never appears in intengine tensors
    np.uint8: (0, 255),
    np.int16: (-(2**15 - 1), 2**15 - 1),
    np.int32: (-(2**31 - 1), 2**31 - 1),
}


def dims(max_size: int = 64, min_size: int = 1) -> st.SearchStrategy[int]:
    """A dimension biased towards edge sizes (1, odd, powers of two)."""
    edge = [s for s in (1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 63, 64, 127, 128) if min_size <= s <= max_size]
    return st.one_of(st.sampled_from(edge), st.integers(min_size, max_size))


def shapes(max_dims: int = 3, max_side: int = 16, min_dims: int = 1) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(dims(max_side), min_size=min_dims, max_size=max_dims).map(tuple)


@st.composite
def int_arrays(draw, dtype, shape, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """An integer array built from a drawn seed (fast for large shapes), mixing extremes.

    Values are uniform in ``[lo, hi]`` (dtype range by default), with a drawn
    fraction replaced by the two extremes so saturation paths are exercised.
    """
    d_lo, d_hi = INT_RANGES[dtype]
    lo = d_lo if lo is None else lo
    hi = d_hi if hi is None else hi
    seed = draw(st.integers(0, 2**32 - 1))
    extreme_frac = draw(st.sampled_from([0.0, 0.0, 0.05, 0.5]))
    rng = np.random.default_rng(seed)
    a = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    if extreme_frac:
        pick = rng.random(shape) < extreme_frac
        a[pick] = np.where(rng.random(int(pick.sum())) < 0.5, lo, hi)
    return a.astype(dtype)


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Positive reals spread evenly in log space (scales, multipliers)."""
    return st.floats(np.log2(lo), np.log2(hi), allow_nan=False, allow_infinity=False).map(lambda e: float(2.0**e))


def scales() -> st.SearchStrategy[float]:
    """Quantization scales seen in practice (activation and weight steps)."""
    return log_uniform(1e-5, 1.0)


def multipliers(lo: float = 2**-30, hi: float = 2**29) -> st.SearchStrategy[float]:
    """Real requantization multipliers, either sign excluded (positive)."""
    return log_uniform(lo, hi)


@st.composite
def multiplier_sets(draw, n):
    """Per-tensor or per-channel (m_i32, shift), from reals spanning the useful range."""
    per_channel = draw(st.booleans())
    k = n if per_channel else 1
    from intengine.kernels.requant import quantize_multipliers

    reals = np.array(draw(st.lists(multipliers(2**-40, 2**12), min_size=k, max_size=k)))
    if draw(st.booleans()):
        reals = reals * np.where(np.arange(k) % 3 == 1, -1.0, 1.0)  # some negative channels
    m, s = quantize_multipliers(reals)
    return (m, s) if per_channel else (int(m[0]), int(s[0]))


@dataclass(frozen=True)
class Case:
    """A kernel invocation: ``case(backend)`` runs it on that backend."""

    op: str
    run: Callable[[str], Any]
    label: str = ""

    def __call__(self, backend: str) -> Any:
        return self.run(backend)

    def __repr__(self) -> str:  # shown by hypothesis on failure
        return f"Case({self.op}: {self.label})"


# ----------------------------------------------------------------------------- attention key masks


@st.composite
def key_masks(draw, x_shape: tuple[int, ...]) -> np.ndarray | None:
    """None or a bool/uint8 key mask that broadcasts to ``x_shape`` (nonzero = keep).

    Leading axes are either kept or collapsed to 1 (and the mask may drop leading
    axes), so the row kernels meet ``[B, 1, 1, T]``-style, per-row and irregular
    layouts; key patterns: padded prefixes (``T`` cut at a drawn length, zero
    included: fully masked rows), random keep sets, all kept, a keys-axis of 1.
    """
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    lead = [d if draw(st.booleans()) else 1 for d in x_shape[:-1]]
    drop = draw(st.integers(0, len(lead)))
    lead = lead[drop:]
    n = x_shape[-1]
    kind = draw(st.sampled_from(["prefix", "random", "ones", "row"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "row":
        m = rng.random(tuple(lead) + (1,)) < 0.7
    elif kind == "ones":
        m = np.ones(tuple(lead) + (n,), bool)
    elif kind == "random":
        m = rng.random(tuple(lead) + (n,)) < draw(st.sampled_from([0.1, 0.5, 0.9]))
    else:
        keep = rng.integers(0, n + 1, size=tuple(lead) + (1,))
        m = np.arange(n) < keep
    if draw(st.booleans()):
        m = m.astype(np.uint8) * np.uint8(draw(st.sampled_from([1, 3, 255])))
    return m

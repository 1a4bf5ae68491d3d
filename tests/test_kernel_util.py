"""kernels/_util.py: the constant-argument cache the kernels use to validate a layer once."""

from __future__ import annotations

import numpy as np
import pytest

from intengine.kernels._util import frozen, memo_frozen
from intengine.kernels.errors import KernelInputError


def _counting():
    calls = []

    @memo_frozen(maxsize=3, immutable=(tuple,))
    def derive(v, k):
        calls.append(1)
        if k is not None and k < 0:
            raise KernelInputError("k must be >= 0")
        return None if v is None else np.asarray(v).sum() + (k or 0)

    return derive, calls


def test_frozen_needs_a_read_only_base_chain():
    a = np.arange(4)
    assert not frozen(a)
    view = a[:]
    view.setflags(write=False)
    assert not frozen(view)  # the base can still change
    a.setflags(write=False)
    assert frozen(a) and frozen(a[1:])
    assert frozen(np.frombuffer(b"abcd", np.uint8))
    assert not frozen([1, 2])


def test_memo_caches_read_only_arrays_and_ints_only():
    derive, calls = _counting()
    ro = np.arange(5)
    ro.setflags(write=False)
    assert derive(ro, 2) == 12 and derive(ro, 2) == 12 and len(calls) == 1
    assert derive(ro, 3) == 13 and len(calls) == 2  # ints are keyed by value
    rw = np.arange(5)
    assert derive(rw, 2) == 12
    rw[0] = 100  # a writeable array is recomputed every call: a change is seen at once
    assert derive(rw, 2) == 112 and len(calls) == 4
    t = (1, 2)
    assert derive(t, None) == 3 and derive(t, None) == 3 and len(calls) == 5  # an immutable type, by identity
    assert derive([1, 2], None) == 3 and derive([1, 2], None) == 3 and len(calls) == 7  # a list: never cached


def test_memo_never_caches_a_failure_and_stays_bounded():
    derive, calls = _counting()
    ro = np.arange(3)
    ro.setflags(write=False)
    for _ in range(2):
        with pytest.raises(KernelInputError, match="k must be"):
            derive(ro, -1)
    assert len(calls) == 2
    for k in range(5):  # maxsize 3: the cache is emptied and refilled, results stay right
        assert derive(ro, k) == 3 + k
    assert derive(ro, 4) == 7 and len(calls) == 7
    derive.cache_clear()
    assert derive(ro, 4) == 7 and len(calls) == 8

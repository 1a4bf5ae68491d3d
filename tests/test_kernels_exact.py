"""Every registered (op, backend) is bit-exact with the ``ref`` backend.

Parametrized from the registry itself; cases come from ``tests/cases_*.py``.
"""

from __future__ import annotations

import importlib
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intengine.kernels import registry

registry.load_cuda()

CASES: dict = {}
for _path in sorted(pathlib.Path(__file__).parent.glob("cases_*.py")):
    CASES.update(importlib.import_module(_path.stem).CASES)

PAIRS = sorted(k for k in registry.KERNELS if k[1] != "ref")


def _assert_same(got, want, where=""):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
        return
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != ref {want.dtype}"
    assert got.shape == want.shape, f"{where}: shape {got.shape} != ref {want.shape}"
    np.testing.assert_array_equal(got, want, err_msg=where)


def test_every_op_has_a_reference_and_cases():
    ops = {op for op, _ in registry.KERNELS}
    missing_ref = sorted(op for op in ops if (op, "ref") not in registry.KERNELS)
    missing_cases = sorted(op for op in ops if op not in CASES)
    assert not missing_ref, f"ops without a ref kernel: {missing_ref}"
    assert not missing_cases, f"registered ops without test cases: {missing_cases}"


@pytest.mark.parametrize("op,backend", PAIRS, ids=[f"{o}-{b}" for o, b in PAIRS])
def test_backend_matches_ref(op, backend):
    small = backend == "cuda"

    @given(st.data())
    def run(data):
        case = data.draw(CASES[op](small))
        _assert_same(case(backend), case("ref"), repr(case))

    if small:  # the CUDA simulator runs every thread in Python
        run = settings(max_examples=6)(run)
    run()


def test_missing_pair_names_available_backends(monkeypatch):
    monkeypatch.delitem(registry.KERNELS, ("quantize", "cpu"))
    with pytest.raises(registry.UnsupportedKernelError, match="available backends for it: ref"):
        registry.get_kernel("quantize", "cpu")


def test_unknown_op_and_backend_are_rejected():
    with pytest.raises(registry.UnsupportedKernelError, match="unknown op"):
        registry.get_kernel("conv3d", "cpu")
    with pytest.raises(registry.UnsupportedKernelError, match="unknown backend"):
        registry.get_kernel("quantize", "tpu")

"""Kernel cases for gemm.py (ops "pack_weight", "linear", "matmul", "pack_matmul_b").

Protocol: tests/strategies.py.  Shapes include size 1, odd sizes and, when
``small=False``, reduction lengths up to 4096; inputs mix uniform values with
the extremes (int8 ±127 and -128, uint8 255); requantization is absent,
per-tensor or per-channel with ``out_bits`` 8/16/32.  ``matmul`` cases pass
``b`` raw or through ``pack_matmul_b`` (uint8 ``a``, broadcast batch dims).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.registry import get_kernel
from intengine.kernels.requant import quantize_multiplier, quantize_multipliers
from strategies import Case, dims, int_arrays, log_uniform

BIG_K = [255, 768, 1023, 3072, 4096]


def k_dims(small: bool) -> st.SearchStrategy[int]:
    if small:
        return dims(9)
    return st.one_of(dims(70), dims(70), st.sampled_from(BIG_K))


@st.composite
def int8_operand(draw, shape):
    """int8 values: usually the symmetric range, sometimes all extremes including -128."""
    mode = draw(st.sampled_from(["sym", "sym", "sym", "extreme", "full"]))
    if mode == "extreme":
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        return rng.choice(np.array([-128, -127, 127], dtype=np.int8), size=shape)
    return draw(int_arrays(np.int8, shape, lo=-128 if mode == "full" else None))


@st.composite
def requant_args(draw, n):
    """``{}`` (int32 output) or m_i32/shift/out_bits, per tensor or per output channel."""
    kind = draw(st.sampled_from(["none", "tensor", "channel"]))
    if kind == "none":
        return {}, "int32"
    out_bits = draw(st.sampled_from([8, 8, 16, 32]))
    if kind == "tensor":
        real = draw(log_uniform(2**-30, 2**4))
        if draw(st.booleans()) and out_bits == 8:
            real = -real  # a negative multiplier carries its sign in m
        m, s = quantize_multiplier(real)
        return {"m_i32": m, "shift": s, "out_bits": out_bits}, f"r={real:.3g} {out_bits}b"
    seed = draw(st.integers(0, 2**32 - 1))
    lo_exp = draw(st.sampled_from([-30, -20, -12]))
    reals = 2.0 ** np.random.default_rng(seed).uniform(lo_exp, lo_exp + 12, size=n)
    m, s = quantize_multipliers(reals)
    return {"m_i32": m, "shift": s, "out_bits": out_bits}, f"per-channel 2^[{lo_exp},{lo_exp + 12}] {out_bits}b"


@st.composite
def _linear_inputs(draw, small):
    lead = tuple(draw(st.lists(dims(5 if small else 40), min_size=0, max_size=2)))
    k = draw(k_dims(small))
    n = draw(dims(9 if small else 130))
    x = draw(int8_operand(lead + (k,)))
    w = draw(int8_operand((n, k)))
    bias = None
    if draw(st.booleans()):
        hi = draw(st.sampled_from([2**10, 2**20, 2**30 - 1]))
        bias = draw(int_arrays(np.int32, (n,), lo=-hi, hi=hi))
    return x, w, bias


@st.composite
def _linear(draw, small):
    x, w, bias = draw(_linear_inputs(small))
    kw, rq = draw(requant_args(w.shape[0]))

    def run(backend):
        packed = get_kernel("pack_weight", backend)(w)
        return get_kernel("linear", backend)(x, packed, bias, **kw)

    label = f"x{x.shape} w{w.shape} bias={'no' if bias is None else 'yes'} {rq}"
    return Case("linear", run, label)


@st.composite
def _pack_weight(draw, small):
    x, w, bias = draw(_linear_inputs(small))

    def run(backend):
        return get_kernel("linear", backend)(x, get_kernel("pack_weight", backend)(w), bias)

    return Case("pack_weight", run, f"pack w{w.shape} then linear x{x.shape}")


@st.composite
def _matmul_inputs(draw, small):
    batch = tuple(draw(st.lists(dims(3 if small else 6), min_size=0, max_size=2)))

    def operand_batch():
        keep = [draw(st.booleans()) for _ in batch]
        b = tuple(d if k else 1 for d, k in zip(batch, keep))
        return b[draw(st.integers(0, len(b))):] if b and draw(st.booleans()) else b

    mm = draw(dims(6 if small else 70))
    nn = draw(dims(6 if small else 70))
    kk = draw(k_dims(small))
    a_unsigned = draw(st.booleans())
    a_shape = operand_batch() + (mm, kk)
    if a_unsigned:  # softmax probabilities, 255 included
        a = draw(int_arrays(np.uint8, a_shape))
    else:
        a = draw(int8_operand(a_shape))
    b = draw(int8_operand(operand_batch() + (nn, kk)))
    kw, rq = draw(requant_args(nn))
    return a, b, kw, rq


@st.composite
def _matmul(draw, small):
    a, b, kw, rq = draw(_matmul_inputs(small))
    packed = draw(st.booleans())  # b as a constant packed once (bit-identical by contract)

    def run(backend):
        bb = get_kernel("pack_matmul_b", backend)(b) if packed else b
        return get_kernel("matmul", backend)(a, bb, **kw)

    return Case("matmul", run, f"a {a.dtype}{a.shape} b{b.shape}{' packed' if packed else ''} {rq}")


@st.composite
def _pack_matmul_b(draw, small):
    a, b, kw, rq = draw(_matmul_inputs(small))

    def run(backend):
        packed = get_kernel("pack_matmul_b", backend)(b)
        first = get_kernel("matmul", backend)(a, packed, **kw)
        again = get_kernel("matmul", backend)(a, packed, **kw)  # the packed operand is reusable
        return first, again

    return Case("pack_matmul_b", run, f"pack b{b.shape} then matmul a {a.dtype}{a.shape} {rq} (twice)")


CASES = {"pack_weight": _pack_weight, "linear": _linear, "matmul": _matmul, "pack_matmul_b": _pack_matmul_b}

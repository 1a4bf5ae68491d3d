"""Kernel cases for gelu.py (op "gelu") and layernorm.py (ops "isqrt", "layernorm", "add_layernorm").

Protocol: tests/strategies.py.  Shapes include size 1 and odd sizes, and
``C`` up to 1024 when not small.  Values mix realistic spans with the whole
dtype range (extremes, including int32's -2^31); scales cover the supported
range of i-GELU ([1e-12, 256]); LayerNorm rows include constant rows, rows
with one outlier and rows of tiny variance, with and without eps, and affine
parameters of either sign.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from intengine.kernels.gelu import SCALE_MAX, SCALE_MIN, gelu_params
from intengine.kernels.layernorm import layernorm_params
from intengine.kernels.registry import get_kernel
from strategies import INT_RANGES, Case, dims, int_arrays, log_uniform, multiplier_sets, scales, shapes

# ----------------------------------------------------------------------------- gelu


def gelu_scales() -> st.SearchStrategy[float]:
    """8-bit activation scales, int32 accumulator scales, and the documented ends."""
    return st.one_of(
        log_uniform(1e-3, 0.1), scales(), log_uniform(1e-10, 1e-5), log_uniform(SCALE_MIN, SCALE_MAX),
        st.sampled_from([SCALE_MIN, SCALE_MAX, 4 / 127, 10 / 127, 1.0]),
    )


@st.composite
def gelu_values(draw, dtype, shape, scale):
    """Integers within a realistic real span (|x·S| ≤ span) or over the whole dtype range."""
    d_lo, d_hi = INT_RANGES[dtype]
    if draw(st.booleans()):
        span = draw(st.sampled_from([1.0, 4.0, 10.0, 100.0]))
        hi = int(min(d_hi, max(1, span / scale)))
    else:
        hi = d_hi
    arr = draw(int_arrays(dtype, shape, lo=-hi, hi=hi))
    if draw(st.booleans()):  # the negative corner the symmetric strategies never draw
        flat = arr.reshape(-1)
        if flat.size:
            flat[0] = np.iinfo(dtype).min
    return arr


@st.composite
def gelu_output(draw, scale, in_bits):
    """The wide int32 output, or a requantized one (8, 16 or 32 bits) at a drawn output scale
    (from a much finer one to a much coarser one than a realistic activation step)."""
    if draw(st.sampled_from([False, True, True])):
        out_bits = draw(st.sampled_from([8, 8, 16, 32]))
        s_out = scale * 2.0 ** (in_bits - 1) / 127 * draw(log_uniform(1e-4, 1e2))
        s_out = min(max(s_out, scale * 2.0**-28), scale * 2.0**60)  # inside gelu_params' ratio range
        return gelu_params(scale, in_bits, out_scale=s_out, out_bits=out_bits), f"S_out={s_out:.3g} {out_bits}b"
    return gelu_params(scale, in_bits), "wide int32"


@st.composite
def _gelu(draw, small):
    shape = draw(shapes(max_dims=3, max_side=6 if small else 40))
    dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int32]))
    s = draw(gelu_scales())
    in_bits = draw(st.sampled_from([8, 16, 22, 32])) if dtype != np.int8 else 8
    x = draw(gelu_values(dtype, shape, s))
    p, label = draw(gelu_output(s, in_bits))
    return Case("gelu", lambda b: get_kernel("gelu", b)(x, **p.kernel_args),
                f"{x.dtype}{shape} S={s:.3g} in_bits={in_bits} {label}")


# ----------------------------------------------------------------------------- isqrt


@st.composite
def _isqrt(draw, small):
    """Perfect squares and their neighbours (k^2 - 1, k^2, k^2 + 1), extremes, random."""
    shape = draw(shapes(max_dims=2, max_side=8 if small else 64))
    dtype = draw(st.sampled_from([np.int64, np.int64, np.int32]))
    hi_k = 46340 if dtype == np.int32 else 3037000499  # floor(sqrt(max))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = int(np.prod(shape, dtype=np.int64))
    k = rng.integers(0, hi_k, size=size, endpoint=True)
    n = k * k + rng.integers(-1, 1, size=size, endpoint=True)
    mode = draw(st.sampled_from(["squares", "random", "extremes"]))
    if mode == "random":
        n = rng.integers(0, np.iinfo(dtype).max, size=size, endpoint=True)
    elif mode == "extremes":
        ext = np.array([0, 1, 2, 3, 4, np.iinfo(dtype).max, np.iinfo(dtype).max - 1, hi_k * hi_k,
                        hi_k * hi_k - 1], dtype=np.int64)
        n = rng.choice(ext, size=size)
    n = np.clip(n, 0, np.iinfo(dtype).max).astype(dtype).reshape(shape)
    return Case("isqrt", lambda b: get_kernel("isqrt", b)(n), f"{n.dtype}{shape} {mode}")


# ----------------------------------------------------------------------------- layernorm


@st.composite
def ln_rows(draw, rows, c):
    """int32 rows: uniform at a drawn magnitude, with constant rows, outliers and tiny variance mixed in."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mag = draw(st.sampled_from([1, 3, 100, 2**15, 2**21, 2**31 - 1]))
    x = rng.integers(-mag, mag, size=(rows, c), endpoint=True)
    kinds = draw(st.lists(st.sampled_from(["plain", "const", "outlier", "tiny", "extreme"]), min_size=1, max_size=4))
    for r in range(rows):
        kind = kinds[r % len(kinds)]
        if kind == "const":
            x[r] = rng.integers(-(2**31), 2**31 - 1)
        elif kind == "outlier":
            x[r, rng.integers(0, c)] = rng.choice([-(2**31), 2**31 - 1, 2**21, -(2**21)])
        elif kind == "tiny":
            x[r] = rng.integers(-(2**31) + 2, 2**31 - 3) + rng.integers(-1, 1, size=c, endpoint=True)
        elif kind == "extreme":
            x[r] = rng.choice(np.array([-(2**31), 2**31 - 1]), size=c)
    return x.astype(np.int32), "/".join(kinds)


@st.composite
def ln_params(draw, c):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gamma = rng.normal(1.0, 0.5, size=c) * draw(st.sampled_from([1.0, 1.0, -1.0, 1e-3, 30.0]))
    if draw(st.booleans()) and c > 1:
        gamma[rng.integers(0, c)] = 0.0
    beta = rng.normal(0.0, draw(st.sampled_from([0.0, 0.1, 1.0, 10.0])), size=c)
    eps = draw(st.sampled_from([0.0, 1e-5, 1e-12, 1e-3]))
    in_scale = draw(log_uniform(1e-8, 1.0))
    out_scale = draw(log_uniform(1e-3, 1.0))
    out_bits = draw(st.sampled_from([8, 8, 16, 32]))
    p = layernorm_params(gamma, beta, eps, out_scale, out_bits, in_scale=in_scale)
    return p, f"eps={eps:g} S_in={in_scale:.2g} S_out={out_scale:.2g} {out_bits}b"


@st.composite
def _layernorm(draw, small):
    if small:
        c = draw(dims(20))
        lead = tuple(draw(st.lists(dims(3), min_size=0, max_size=2)))
    else:
        c = draw(st.one_of(dims(130), st.sampled_from([255, 768, 1024])))
        lead = tuple(draw(st.lists(dims(6), min_size=0, max_size=2)))
    rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    x2, kinds = draw(ln_rows(rows, c))
    x = x2.reshape(lead + (c,))
    p, label = draw(ln_params(c))
    return Case("layernorm", lambda b: get_kernel("layernorm", b)(x, **p.kernel_args),
                f"{lead}x{c} {kinds} {label}")


@st.composite
def _add_layernorm(draw, small):
    """Residual add + LayerNorm: int8/16/32 (and int64 below 2^32) operands, mostly the fused pairs
    (int32 or int8 + int8), per-tensor or
    per-channel multipliers (either sign) into a 17..32-bit sum, which may saturate."""
    c = draw(dims(20)) if small else draw(st.one_of(dims(130), st.sampled_from([768, 1024])))
    lead = tuple(draw(st.lists(dims(3 if small else 6), min_size=0, max_size=2)))
    shape = lead + (c,)
    a, b = [draw(int_arrays(np.int32 if dt == "int64" else dt, shape)).astype(dt)
            for dt in (draw(st.sampled_from(choice)) for choice in ([np.int32, np.int32, np.int8, np.int16, "int64"],
                                                                    [np.int8, np.int8, np.int32, np.int16, "int64"]))]
    ma, sa = draw(multiplier_sets(c))
    mb, sb = draw(multiplier_sets(c))
    add_bits = draw(st.sampled_from([22, 22, 17, 32]))
    p, label = draw(ln_params(c))
    return Case("add_layernorm",
                lambda be: get_kernel("add_layernorm", be)(a, ma, sa, b, mb, sb, add_bits, **p.kernel_args),
                f"{a.dtype}+{b.dtype}{shape} add_bits={add_bits} {label}")


CASES = {"gelu": _gelu, "isqrt": _isqrt, "layernorm": _layernorm, "add_layernorm": _add_layernorm}

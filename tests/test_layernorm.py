"""i-sqrt exactness and i-LayerNorm accuracy against float LayerNorm
(float64 exact and torch float32), constant/zero-variance rows, eps folding,
overflow at the documented extremes (against unbounded Python ints), argument
errors, and cpu == ref on a realistic shape.  Bit-exactness of every backend on
drawn cases is in test_kernels_exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from intengine.kernels.errors import KernelInputError
from intengine.kernels.layernorm import (ISQRT_UPDATES, NARROW_BITS, isqrt_cpu, isqrt_ref, layernorm_cpu,
                                         layernorm_params, layernorm_ref, y_bits, z_bits)

# ----------------------------------------------------------------------------- isqrt


def boundary_set() -> np.ndarray:
    """k^2 - 1, k^2, k^2 + 1 for many k up to 2^31.5, powers of two and the int64 extremes."""
    rng = np.random.default_rng(0)
    k = np.concatenate([
        np.arange(0, 30_000),
        rng.integers(0, 3037000499, size=60_000, endpoint=True),
        (1 << np.arange(32)) - 1, 1 << np.arange(32), (1 << np.arange(32)) + 1,
        np.arange(3037000499 - 2000, 3037000500),
    ]).astype(np.int64)
    sq = k * k  # k ≤ 3037000499: k^2 < 2^63
    n = np.concatenate([sq, sq - 1, sq + 1, rng.integers(0, 2**63 - 1, size=40_000, dtype=np.int64, endpoint=True),
                        (np.int64(1) << np.arange(63)), (np.int64(1) << np.arange(63)) - 1,
                        np.array([2**63 - 1, 2**63 - 2, 2**62], dtype=np.int64)])
    return n[n >= 0]


def _newton_passes(n: int) -> tuple[int, int]:
    """(⌊√n⌋, loop passes) of the early-exit loop, in Python ints."""
    if n <= 1:
        return n, 0
    x, passes = 1 << ((n.bit_length() + 1) >> 1), 0
    while True:
        passes += 1
        y = (x + n // x) >> 1
        if y >= x:
            return x, passes
        x = y


def test_isqrt_exact_on_boundary_set():
    n = boundary_set()
    want = np.array([math.isqrt(int(v)) for v in n], dtype=np.int64)
    got_ref, got_cpu = isqrt_ref(n), isqrt_cpu(n)
    assert got_ref.dtype == got_cpu.dtype == np.int64
    np.testing.assert_array_equal(got_ref, want)
    np.testing.assert_array_equal(got_cpu, want)
    n32 = n[n < 2**31].astype(np.int32)
    np.testing.assert_array_equal(isqrt_cpu(n32), want[n < 2**31])


def test_isqrt_iteration_bound():
    """The documented bound: at most ISQRT_UPDATES (6) updates + 1 stop test, for every n < 2^63."""
    n = boundary_set()[::7]
    worst = max(_newton_passes(int(v))[1] for v in n)
    assert worst <= ISQRT_UPDATES + 1
    # 31-bit inputs (the paper's INT32 claim of 4) need up to 5 updates + stop test here
    worst31 = max(_newton_passes(int(v))[1] for v in n[n < 2**31])
    assert worst31 <= 6


def test_isqrt_rejects_negative_and_floats():
    for fn in (isqrt_ref, isqrt_cpu):
        with pytest.raises(KernelInputError, match="n must be non-negative"):
            fn(np.array([4, -1], dtype=np.int64))
        with pytest.raises(KernelInputError, match="n must have dtype"):
            fn(np.array([4.0]))


# ----------------------------------------------------------------------------- layernorm


def ln_exact(x: np.ndarray, gamma, beta, eps: float, s_in: float) -> np.ndarray:
    """float64 LayerNorm of the real input x·S_in (two-pass, exact enough)."""
    xf = x.astype(np.float64)
    mu = xf.mean(axis=-1, keepdims=True)
    var = ((xf - mu) ** 2).mean(axis=-1, keepdims=True)
    den = np.sqrt(var + eps / (s_in * s_in))
    return np.divide(xf - mu, den, out=np.zeros_like(xf), where=den > 0) * gamma + beta  # 0/0 row: β


def documented_bound(p, gamma, c: int) -> np.ndarray:
    """layernorm_ref's error bound per channel, in output steps:
    1/2 + (2^ZB + 3)·2^-(shift+1) + |a_c|·Δz, a_c = |γ_c|·√C·2^-ZB/S_out."""
    zb, yb = z_bits(p.out_bits), y_bits(c)
    dz = (5 if p.out_bits <= 8 else 2) + 2.0 ** (zb + 2) * (math.sqrt(c) + 3) * 2.0**-yb
    a = np.abs(gamma) * math.sqrt(c) * 2.0**-zb / p.out_scale
    return 0.5 + (2.0**zb + 3) * 2.0 ** -(p.shift.astype(np.float64) + 1) + a * dz


def check_bound(x, gamma, beta, eps, s_in, s_out, out_bits=8):
    """Run ref and cpu (bit-exact), and return the error in output steps beyond the documented bound."""
    p = layernorm_params(gamma, beta, eps, s_out, out_bits, in_scale=s_in)
    out = layernorm_ref(x, **p.kernel_args)
    np.testing.assert_array_equal(layernorm_cpu(x, **p.kernel_args), out)
    q = 2 ** (out_bits - 1) - 1
    want = np.clip(ln_exact(x, gamma, beta, eps, s_in) / s_out, -q, q)
    bound = documented_bound(p, gamma, x.shape[-1])
    return float((np.abs(out - want) - bound).max()), out, p


C_SIZES = [1, 2, 7, 64, 768, 1024]


@pytest.mark.parametrize("c", C_SIZES)
def test_error_bound_random_rows(c):
    rng = np.random.default_rng(c)
    gamma = rng.normal(1.0, 0.4, size=c) * np.where(rng.random(c) < 0.2, -1, 1)
    beta = rng.normal(0.0, 0.5, size=c)
    for mag in (1, 7, 2**10, 2**21, 2**31 - 1):  # 22-bit residual sums and the full int32 range
        x = rng.integers(-mag, mag, size=(40, c), endpoint=True).astype(np.int32)
        for eps, s_in in ((1e-5, 0.01), (0.0, 1.0), (1e-12, 1e-6), (1e-3, 0.5)):
            excess, _, _ = check_bound(x, gamma, beta, eps, s_in, 0.05)
            assert excess <= 0, (mag, eps, s_in, excess)
    # wider outputs and a fine output step (the bound is in output steps)
    x = rng.integers(-(2**21), 2**21, size=(20, c), endpoint=True).astype(np.int32)
    excess, _, _ = check_bound(x, gamma, beta, 1e-5, 1e-3, 1e-4, out_bits=16)
    assert excess <= 0


def test_error_bound_outliers_and_tiny_variance():
    rng = np.random.default_rng(7)
    for c in (2, 7, 64, 768, 1024):
        gamma = rng.normal(1.0, 0.3, size=c)
        beta = rng.normal(0.0, 0.3, size=c)
        x = rng.integers(-100, 100, size=(12, c), endpoint=True)
        x[0, 0] = 2**31 - 1  # one outlier dominates the variance
        x[1, c // 2] = -(2**31)
        x[2, :] = 2**31 - 1  # extreme constant-ish row with one step
        x[2, -1] -= 1
        x[3] = 123456 + rng.integers(0, 1, size=c, endpoint=True)  # values in {v, v+1}
        x[4] = -(2**31) + rng.integers(0, 1, size=c, endpoint=True)
        x[5] = np.where(rng.random(c) < 0.5, -(2**31), 2**31 - 1)  # full-range ±
        x = x.astype(np.int32)
        for eps, s_in in ((0.0, 1.0), (1e-5, 0.01), (1e-5, 1.0), (1e-5, 1e-4)):
            excess, out, _ = check_bound(x, gamma, beta, eps, s_in, 0.03)
            assert excess <= 0, (c, eps, s_in, excess)


def test_matches_torch_layer_norm_within_one_step():
    rng = np.random.default_rng(3)
    for c in (7, 768, 1024):
        s_in, s_out = 2.0**-10, 0.04
        x = np.round(rng.normal(0, 3, size=(64, c)) / s_in).astype(np.int32)  # ~13-bit values
        gamma = rng.normal(1.0, 0.3, size=c).astype(np.float32)
        beta = rng.normal(0.0, 0.3, size=c).astype(np.float32)
        p = layernorm_params(gamma, beta, 1e-5, s_out, in_scale=s_in)
        out = layernorm_cpu(x, **p.kernel_args).astype(np.int64)
        t = torch.nn.functional.layer_norm(torch.from_numpy(x.astype(np.float32) * s_in), (c,),
                                           torch.from_numpy(gamma), torch.from_numpy(beta), 1e-5)
        want = np.clip(np.round(t.numpy().astype(np.float64) / s_out), -127, 127)
        diff = np.abs(out - want)
        assert diff.max() <= 1 and diff.mean() < 0.01, (c, diff.max(), diff.mean())


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_constant_rows_return_beta(eps):
    c = 768
    rng = np.random.default_rng(1)
    gamma = rng.normal(1.0, 0.5, size=c)
    beta = rng.normal(0.0, 1.0, size=c)
    x = np.zeros((5, c), dtype=np.int32)
    x[1] = 5
    x[2] = 2**31 - 1
    x[3] = -(2**31)
    x[4] = -3
    p = layernorm_params(gamma, beta, eps, 0.02, in_scale=0.1)
    want = np.clip(np.floor(beta / 0.02 + 0.5), -127, 127)
    with np.errstate(all="raise"):
        out = layernorm_ref(x, **p.kernel_args)
    np.testing.assert_array_equal(layernorm_cpu(x, **p.kernel_args), out)
    for r in range(5):
        np.testing.assert_array_equal(out[r], want)
    # C = 1 is always a constant row
    p1 = layernorm_params([2.0], [0.3], eps, 0.1, in_scale=1.0)
    for fn in (layernorm_ref, layernorm_cpu):
        np.testing.assert_array_equal(fn(np.array([[7], [-(2**31)]], np.int32), **p1.kernel_args), [[3], [3]])


def test_eps_is_folded_and_dominates_tiny_variance():
    """var ≪ eps: the output follows (x-μ)/√eps, not a blown-up (x-μ)/σ."""
    c = 64
    gamma, beta = np.ones(c), np.zeros(c)
    x = (1000 + (np.arange(c) % 2)).astype(np.int32).reshape(1, c)  # σ = 0.5 steps
    s_in = 1e-4  # σ_real = 5e-5, var = 2.5e-9 ≪ eps
    for eps in (1e-5, 1e-3, 1.0):
        excess, out, p = check_bound(x, gamma, beta, eps, s_in, 0.001, out_bits=16)
        assert excess <= 0
        expect = 0.5 * s_in / math.sqrt(0.25 * s_in**2 + eps) / 0.001
        assert abs(int(out[0, 1]) - expect) <= 0.5 + 1e-3, (eps, out[0, :2], expect)
    # without eps the same row normalizes to ±1
    _, out, _ = check_bound(x, gamma, beta, 0.0, s_in, 0.01)
    np.testing.assert_array_equal(out[0, :2], [-100, 100])


def test_input_scale_only_enters_through_eps():
    rng = np.random.default_rng(5)
    c = 96
    gamma, beta = rng.normal(1, 0.2, c), rng.normal(0, 0.2, c)
    x = rng.integers(-5000, 5000, size=(8, c)).astype(np.int32)
    outs = [layernorm_ref(x, **layernorm_params(gamma, beta, 0.0, 0.05, in_scale=s).kernel_args)
            for s in (1e-6, 1e-2, 3.0)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    p_a = layernorm_params(gamma, beta, 1e-5, 0.05, in_scale=1e-2)
    p_b = layernorm_params(gamma, beta, 1e-5 * 4, 0.05, in_scale=2e-2)  # same eps / S_in^2
    assert (p_a.eps_m, p_a.eps_e) == (p_b.eps_m, p_b.eps_e)


def _layernorm_python(row, p) -> list[int]:
    """layernorm_ref's formula in unbounded Python ints, asserting the documented bounds."""
    c = len(row)
    narrow = p.out_bits <= 8
    yb, zb = y_bits(c), z_bits(p.out_bits)
    total = sum(row)
    q_row, r_row = total // c, total % c
    dev = max(max(row) - q_row, q_row - min(row))
    assert abs(total) < 2**51 and dev < 2**33
    sh_eps = -((31 + p.eps_e) // 2) if p.eps_m else -(1 << 10)
    sh = max(dev.bit_length() - yb, sh_eps)
    lsh, rsh = max(-sh, 0), min(max(sh, 0), 62)
    rho = ((r_row << (lsh + 1)) + c) // (2 * c)
    y = [(((v - q_row) << lsh) - rho + ((1 << rsh) >> 1)) >> rsh for v in row]
    assert all(abs(v) <= 2**yb for v in y)
    var = sum(v * v for v in y)
    assert var <= 2**62
    if p.eps_m:
        e_tot = p.eps_e + 2 * sh
        eps_s = p.eps_m >> min(e_tot, 62) if e_tot >= 0 else p.eps_m << -e_tot
        assert eps_s < 2**62
        var += eps_s
    std = math.isqrt(var)
    assert all(abs(v) <= std for v in y)
    bl = std.bit_length()
    fb = NARROW_BITS if narrow else zb
    f = ((1 << (bl + fb)) - 1) // std if std else 0
    assert f < 2 ** (fb + 1)
    if narrow:
        k = yb - NARROW_BITS
        y = [(v + (1 << (k - 1))) >> k for v in y]
        zs = max(bl - k - 1, 0)
        assert all(abs(v) <= 2**14 for v in y) and all(abs(v * f) < 2**29 for v in y)
    else:
        zs = bl
        assert all(abs(v * f) < 2**61 for v in y)
    out = []
    q = 2 ** (p.out_bits - 1) - 1
    for i, v in enumerate(y):
        z = (v * f + ((1 << zs) >> 1)) >> zs
        if narrow:
            assert abs(z) <= 2**15 + 3
            z = max(-(2**15 - 1), min(2**15 - 1, z))
        m, s, b = int(p.m_i32[i]), int(p.shift[i]), int(p.bias_i64[i])
        acc = z * m + b
        if narrow:
            assert abs(acc) < 2**31
        else:
            assert abs(z) <= 2**30 and abs(acc) < 2**63
        out.append(max(-q, min(q, acc >> s)))
    return out


def test_no_overflow_at_documented_extremes():
    """int64 kernels == unbounded Python ints on the worst rows (full int32 range, C up to 2^12)."""
    rng = np.random.default_rng(11)
    for c in (2, 3, 768, 1024, 4096):
        rows = np.array([
            np.where(np.arange(c) % 2 == 0, -(2**31), 2**31 - 1),  # maximal variance
            np.full(c, 2**31 - 1) - (np.arange(c) == 0),  # maximal mean, one step
            np.full(c, -(2**31)) + (np.arange(c) == c - 1),
            rng.integers(-(2**31), 2**31 - 1, size=c),
            np.where(np.arange(c) == 0, 2**31 - 1, -(2**31)),  # one outlier
        ], dtype=np.int64).astype(np.int32)
        gamma = rng.normal(0, 30, size=c)
        beta = rng.normal(0, 30, size=c)
        for eps, s_in, out_bits in ((0.0, 1.0, 8), (1e-5, 1e-8, 32), (1e3, 1e-3, 16), (1e-12, 10.0, 32)):
            p = layernorm_params(gamma, beta, eps, 1e-3, out_bits, in_scale=s_in)
            want = np.array([_layernorm_python([int(v) for v in r], p) for r in rows])
            np.testing.assert_array_equal(layernorm_ref(rows, **p.kernel_args), want)
            np.testing.assert_array_equal(layernorm_cpu(rows, **p.kernel_args), want)


def test_realistic_shape_cpu_matches_ref():
    """BERT-base LayerNorm input: 1024 x 768 22-bit residual sums."""
    rng = np.random.default_rng(2)
    c = 768
    x = np.clip(np.round(rng.standard_t(4, size=(1024, c)) * 2**17), -(2**21), 2**21).astype(np.int32)
    x[0] = 17  # a constant row
    gamma, beta = rng.normal(1, 0.3, c), rng.normal(0, 0.3, c)
    p = layernorm_params(gamma, beta, 1e-5, 0.05, in_scale=2.0**-18)
    np.testing.assert_array_equal(layernorm_cpu(x, **p.kernel_args), layernorm_ref(x, **p.kernel_args))
    p16 = layernorm_params(gamma, beta, 1e-12, 1e-4, 16, in_scale=2.0**-18)
    np.testing.assert_array_equal(layernorm_cpu(x, **p16.kernel_args), layernorm_ref(x, **p16.kernel_args))


def test_bad_arguments_name_the_argument():
    c = 8
    p = layernorm_params(np.ones(c), np.zeros(c), 1e-5, 0.05, in_scale=0.1)
    x = np.zeros((2, c), np.int32)
    for fn in (layernorm_ref, layernorm_cpu):
        with pytest.raises(KernelInputError, match="x must have dtype"):
            fn(x.astype(np.int8), **p.kernel_args)
        with pytest.raises(KernelInputError, match="x must have dtype"):
            fn(x.astype(np.float32), **p.kernel_args)
        with pytest.raises(KernelInputError, match="m_i32 must be a vector of length C=9"):
            fn(np.zeros((2, 9), np.int32), **p.kernel_args)
        with pytest.raises(KernelInputError, match="x must have at least one axis"):
            fn(np.array(3, np.int32), **p.kernel_args)
        for name, val in (("shift", np.full(c, 32, np.int32)), ("shift", np.full(c, -1, np.int32)),
                          ("m_i32", np.full(c, 2**15)), ("bias_i64", np.full(c, 2**30 + 1)),
                          ("bias_i64", np.full(c, 2.0)), ("eps_m", 5), ("eps_e", 10**4), ("eps_m", 1.5)):
            with pytest.raises(KernelInputError, match=name):
                fn(x, **{**p.kernel_args, name: val})
        with pytest.raises(KernelInputError, match="out_bits"):
            fn(x, **{**p.kernel_args, "out_bits": 64})
    with pytest.raises(KernelInputError, match="in_scale is required"):
        layernorm_params(np.ones(c), np.zeros(c), 1e-5, 0.05)
    with pytest.raises(KernelInputError, match="beta must have the length"):
        layernorm_params(np.ones(c), np.zeros(c + 1), 0.0, 0.05)
    with pytest.raises(KernelInputError, match="out_scale"):
        layernorm_params(np.ones(c), np.zeros(c), 0.0, 0.0)
    with pytest.raises(KernelInputError, match="eps"):
        layernorm_params(np.ones(c), np.zeros(c), -1.0, 0.05, in_scale=1.0)
    with pytest.raises(KernelInputError, match="gamma"):
        layernorm_params(np.full(c, np.nan), np.zeros(c), 0.0, 0.05)
    # eps = 0 needs no input scale
    layernorm_params(np.ones(c), np.zeros(c), 0.0, 0.05)


# ----------------------------------------------------------------------------- cpu kernel paths

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from strategies import dims, int_arrays  # noqa: E402

from intengine.kernels import layernorm as ln_mod  # noqa: E402


@pytest.fixture(params=["avx512", "portable"])
def cpu_path(request, monkeypatch):
    """Run layernorm_cpu through the AVX-512 row passes (where the host has it) and through the portable loop."""
    if request.param == "avx512" and not ln_mod.HAVE_AVX512:
        pytest.skip("host without AVX-512F/BW")
    monkeypatch.setattr(ln_mod, "HAVE_AVX512", request.param == "avx512")
    return request.param


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_cpu_matches_ref_property(data):
    """Random C (block multiples, tails, C < 16), int32 rows with extremes, γ spread over many binades
    (mixed and uniform fused shifts, some outside [32, 63] → scalar loop), β, eps, out_bits: cpu == ref,
    on both cpu paths."""
    c = data.draw(st.one_of(dims(200), st.sampled_from([16, 32, 48, 768, 769, 1024])), label="C")
    rows = data.draw(st.integers(1, 9), label="rows")
    mag = data.draw(st.sampled_from([1, 100, 2**21, 2**31 - 1]), label="mag")
    x = data.draw(int_arrays(np.int32, (rows, c), -mag, mag), label="x")
    if data.draw(st.booleans(), label="int32 min"):
        x.flat[data.draw(st.integers(0, x.size - 1))] = -(2**31)
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    uniform = data.draw(st.booleans(), label="one γ binade")
    g_exp = data.draw(st.integers(-20, 12), label="γ exponent")
    gamma = 2.0**g_exp * (rng.uniform(1.0, 1.9, c) if uniform else 2.0 ** rng.uniform(-6, 6, c))
    gamma *= np.where(rng.random(c) < 0.3, -1, 1)
    beta = rng.normal(0, data.draw(st.sampled_from([0.0, 0.1, 100.0])), c)
    eps = data.draw(st.sampled_from([0.0, 1e-12, 1e-5, 1.0]), label="eps")
    out_bits = data.draw(st.sampled_from([8, 8, 4, 16, 32]), label="out_bits")
    s_out = data.draw(st.sampled_from([2.0**-10, 0.05, 1.0]), label="S_out")
    try:
        p = layernorm_params(gamma, beta, eps, s_out, out_bits, in_scale=1e-3)
    except KernelInputError:  # |γ|·√C/S_out beyond the supported range
        return
    want = layernorm_ref(x, **p.kernel_args)
    for avx in ((True, False) if ln_mod.HAVE_AVX512 else (False,)):
        saved, ln_mod.HAVE_AVX512 = ln_mod.HAVE_AVX512, avx
        try:
            got = layernorm_cpu(x, **p.kernel_args)
        finally:
            ln_mod.HAVE_AVX512 = saved
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=f"avx512={avx}")


def test_both_profiles_and_saturated_channels(cpu_path):
    """BERT-like γ, β and scales, tiny and huge |γ|·√C/S_out, β far beyond the output range (saturated
    channels), int8 (narrow: 16-lane path on AVX-512 hosts) and wider outputs: cpu == ref, and the
    documented error bound holds."""
    rng = np.random.default_rng(9)
    c = 768 + 5  # 48 blocks and a 5-channel tail
    x = rng.integers(-(2**21), 2**21, size=(33, c), endpoint=True).astype(np.int32)
    x[0] = 2**31 - 1
    x[1, ::2], x[1, 1::2] = 2**31 - 1, -(2**31)  # a range of 2^32: the int32 lanes do not apply
    x[2] = 7
    x[2, -1] = 8
    cases = [(np.ones(c), 8 / 127), (rng.uniform(0.5, 1.5, c), 8 / 127), (-rng.uniform(0.1, 3, c), 0.01),
             (np.full(c, 1e-6), 1.0), (np.full(c, 3e4), 1e-2)]
    for gamma, s_out in cases:
        for out_bits in (8, 16, 32):
            beta = rng.normal(0, 0.2, c)
            beta[:3] = [1e3, -1e3, 50.0]
            excess, _, p = check_bound(x, gamma, beta, 1e-5, 1e-4, s_out, out_bits)
            assert excess <= 0, (s_out, out_bits, excess)
            q = 2 ** (out_bits - 1) - 1
            if 1e3 / s_out > q + 2 + abs(gamma[0]) * math.sqrt(c) * 1.01 / s_out:  # saturated whatever x̂ is
                assert p.shift[0] == 0 and p.m_i32[0] == 0 and p.bias_i64[0] == q + 1


def test_offset_rows_every_range(cpu_path):
    """Rows far from zero (means near ±2^31, where Σx² wraps int64) with ranges of 2^0 to 2^31:
    both ways the AVX-512 path gets Σy² (from Σx and Σx², or from the stored centred row) and
    the scalar formula, cpu == ref."""
    rng = np.random.default_rng(12)
    for c in (16, 64 + 7, 768):
        rows = []
        for bits in range(0, 32):
            for base in (2**31 - 2**bits, -(2**31), int(rng.integers(-(2**30), 2**30))):
                rows.append(np.clip(base + rng.integers(0, 2**bits, size=c, endpoint=True), -(2**31), 2**31 - 1))
        x = np.array(rows).astype(np.int32)
        gamma, beta = rng.uniform(-2, 2, c), rng.normal(0, 0.3, c)
        for eps, s_in in ((1e-5, 1e-4), (0.0, 1.0)):
            p = layernorm_params(gamma, beta, eps, 0.05, 8, in_scale=s_in)
            np.testing.assert_array_equal(layernorm_cpu(x, **p.kernel_args), layernorm_ref(x, **p.kernel_args))


@pytest.mark.parametrize("c", [4096 + 3, 1 << 20])
def test_large_c_matches_ref(c, cpu_path):
    """Large normalized axes (C up to 2^20: YB = 21) with full-range int32 values."""
    rng = np.random.default_rng(c)
    x = rng.integers(-(2**31), 2**31 - 1, size=(3, c), endpoint=True).astype(np.int32)
    x[1, : c // 2] = 5
    x[1, c // 2 :] = 6  # tiny variance: left shift, eps-dominated
    x[2] = 2**31 - 2**17 + rng.integers(0, 2**16, size=c)  # 16-bit range at the top: Σx² wraps int64
    gamma = rng.uniform(0.5, 2.0, c) * np.where(rng.random(c) < 0.5, -1, 1)
    beta = rng.normal(0, 0.5, c)
    for eps, out_bits in ((0.0, 8), (1e-5, 16)):
        p = layernorm_params(gamma, beta, eps, 0.05, out_bits, in_scale=1e-2)
        np.testing.assert_array_equal(layernorm_cpu(x, **p.kernel_args), layernorm_ref(x, **p.kernel_args))


def test_out_argument():
    rng = np.random.default_rng(4)
    c = 40
    x = rng.integers(-(2**20), 2**20, size=(2, 3, c)).astype(np.int32)
    p = layernorm_params(rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), 1e-5, 0.05, in_scale=1e-3)
    want = layernorm_ref(x, **p.kernel_args)
    buf = np.full(x.shape, 99, np.int8)
    got = layernorm_cpu(x, **p.kernel_args, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, want)
    p16 = layernorm_params(np.ones(c), np.zeros(c), 0.0, 0.01, 16)
    buf16 = np.empty(x.shape, np.int16)
    assert layernorm_cpu(x, **p16.kernel_args, out=buf16) is buf16
    np.testing.assert_array_equal(buf16, layernorm_ref(x, **p16.kernel_args))
    bad = [np.empty((2, 3, c), np.int16), np.empty((6, c), np.int8), np.empty((2, 3, c + 1), np.int8),
           np.empty((2, 3, 2 * c), np.int8)[..., ::2], np.empty((2, 3, c), np.int8).tolist()]
    ro = np.empty((2, 3, c), np.int8)
    ro.flags.writeable = False
    for b in bad + [ro]:
        with pytest.raises(KernelInputError, match=r"out must be .*int8 and shape \(2, 3, 40\)"):
            layernorm_cpu(x, **p.kernel_args, out=b)


def test_cached_constants_follow_parameter_changes(cpu_path):
    """The output constants are cached per parameter arrays, but an in-place change of their contents
    (or a new array, or a list) is seen at the next call."""
    rng = np.random.default_rng(8)
    c = 64
    x = rng.integers(-5000, 5000, size=(4, c)).astype(np.int32)
    p = layernorm_params(rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), 1e-5, 0.05, in_scale=1e-3)
    m, s, b = p.m_i32.copy(), p.shift.copy(), p.bias_i64.copy()
    args = dict(eps_m=p.eps_m, eps_e=p.eps_e, out_bits=8)
    np.testing.assert_array_equal(layernorm_cpu(x, m, s, b, **args), layernorm_ref(x, m, s, b, **args))
    m[::3] = -m[::3]
    b[5] += 1 << 18
    s[7] -= 1
    want = layernorm_ref(x, m, s, b, **args)
    np.testing.assert_array_equal(layernorm_cpu(x, m, s, b, **args), want)
    np.testing.assert_array_equal(layernorm_cpu(x, list(m), list(s), list(b), **args), want)
    s[0] = -1  # now invalid: re-validated, not served from the cache
    with pytest.raises(KernelInputError, match="shift"):
        layernorm_cpu(x, m, s, b, **args)

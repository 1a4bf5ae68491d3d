"""int8 GEMM family: reference vs plain int64 numpy, edges, errors, VNNI codegen, portable path.

Cross-backend bit-exactness on drawn cases lives in test_kernels_exact.py
(cases in cases_gemm.py); here the forced portable path and the VNNI path are
checked directly against ``ref`` as well.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cases_gemm import _linear_inputs, int8_operand, requant_args
from intengine.kernels import _vnni, gemm
from intengine.kernels.errors import KernelInputError
from intengine.kernels.registry import get_kernel, load_cuda
from intengine.kernels.requant import quantize_multiplier
from strategies import dims, int_arrays

CPU_PATHS = {
    "cpu": (gemm.pack_weight_cpu, gemm.linear_cpu),
    "portable": (gemm.pack_weight_portable, gemm.linear_portable),
    "portable-on-vnni-layout": (gemm.pack_weight_vnni, gemm.linear_portable),
    "portable-numba-loops": (gemm.pack_weight_portable, functools.partial(gemm.linear_portable, use_torch=False)),
}
MATMUL_PATHS = {
    "cpu": gemm.matmul_cpu,
    "portable": gemm.matmul_portable,
    "portable-numba-loops": functools.partial(gemm.matmul_portable, use_torch=False),
}
if _vnni.HAVE_VNNI:  # force each micro-kernel, whatever the size-based default picks
    CPU_PATHS["vnni"] = (gemm.pack_weight_vnni, functools.partial(gemm.linear_vnni, use_amx=False))
    MATMUL_PATHS["vnni"] = functools.partial(gemm.matmul_vnni, use_amx=False)
if _vnni.HAVE_AMX:
    CPU_PATHS["amx"] = (gemm.pack_weight_vnni, functools.partial(gemm.linear_vnni, use_amx=True))
    MATMUL_PATHS["amx"] = functools.partial(gemm.matmul_vnni, use_amx=True)


def int64_linear(x, w, bias=None):
    acc = np.einsum("...k,nk->...n", x.astype(np.int64), w.astype(np.int64))
    return acc if bias is None else acc + bias.astype(np.int64)


def int64_requant(acc, m, s, bits):
    q = (1 << (bits - 1)) - 1
    m = np.asarray(m, np.int64)
    s = np.asarray(s, np.int64)
    y = (acc * m + (np.int64(1) << (s - 1))) >> s  # exact here: |acc·m| < 2^62
    return np.clip(y, -q, q)


def linear_all(x, w, bias, kw):
    """Output of every CPU path and ref; asserts they agree bit for bit; returns ref."""
    want = get_kernel("linear", "ref")(x, get_kernel("pack_weight", "ref")(w), bias, **kw)
    for name, (pack, lin) in CPU_PATHS.items():
        got = lin(x, pack(w), bias, **kw)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    return want


# ----------------------------------------------------------------------------- reference semantics


@settings(max_examples=30)
@given(st.data())
def test_linear_matches_int64_numpy_on_every_cpu_path(data):
    x, w, bias = data.draw(_linear_inputs(False))
    kw, _ = data.draw(requant_args(w.shape[0]))
    got = linear_all(x, w, bias, kw)
    acc = int64_linear(x, w, bias)
    if not kw:
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, acc)
    else:
        want = int64_requant(acc, kw["m_i32"], kw["shift"], kw["out_bits"])
        np.testing.assert_array_equal(got.astype(np.int64), want)
        assert got.dtype == {8: np.int8, 16: np.int16, 32: np.int32}[kw["out_bits"]]


@settings(max_examples=30)
@given(st.data())
def test_matmul_matches_int64_numpy_with_broadcast(data):
    b_batch = tuple(data.draw(st.lists(dims(4), max_size=2)))
    a_batch = tuple(data.draw(st.lists(dims(3), max_size=1))) + b_batch
    mm, nn, kk = data.draw(dims(40)), data.draw(dims(40)), data.draw(st.one_of(dims(80), st.just(1000)))
    if data.draw(st.booleans()):
        a = data.draw(int_arrays(np.uint8, a_batch + (mm, kk)))
    else:
        a = data.draw(int8_operand(a_batch + (mm, kk)))
    b = data.draw(int8_operand(b_batch + (nn, kk)))
    kw, _ = data.draw(requant_args(nn))
    acc = np.matmul(a.astype(np.int64), np.swapaxes(b.astype(np.int64), -1, -2))
    want = acc if not kw else int64_requant(acc, kw["m_i32"], kw["shift"], kw["out_bits"])
    ref = gemm.matmul_ref(a, b, **kw)
    np.testing.assert_array_equal(ref.astype(np.int64), want)
    for name, fn in MATMUL_PATHS.items():
        got = fn(a, b, **kw)
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        np.testing.assert_array_equal(got, ref, err_msg=name)


def test_deberta_position_table_broadcast():
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (2, 3, 5, 8)).astype(np.int8)  # [B, H, M, K]
    pos = rng.integers(-127, 128, (3, 7, 8)).astype(np.int8)  # [H, 2·span, K]
    out = get_kernel("matmul", "cpu")(q, pos)
    assert out.shape == (2, 3, 5, 7)
    np.testing.assert_array_equal(out, np.einsum("bhmk,hnk->bhmn", q.astype(np.int64), pos.astype(np.int64)))


def test_requantized_linear_is_within_half_a_step_of_the_real_value():
    rng = np.random.default_rng(1)
    x = rng.integers(-127, 128, (33, 768)).astype(np.int8)
    w = rng.integers(-127, 128, (70, 768)).astype(np.int8)
    bias = rng.integers(-(2**16), 2**16, 70).astype(np.int32)
    real = 3.1e-4
    m, s = quantize_multiplier(real)
    y = get_kernel("linear", "cpu")(x, get_kernel("pack_weight", "cpu")(w), bias, m, s)
    exact = int64_linear(x, w, bias) * real
    err = np.abs(y - np.clip(exact, -127, 127))
    assert err.max() <= 0.5 + 1e-6


# ----------------------------------------------------------------------------- edges and overflow bound


@pytest.mark.parametrize("lead,n,k", [((0,), 5, 7), ((3,), 0, 7), ((2,), 5, 0), ((), 4, 3), ((1, 1), 1, 1), ((2, 0, 3), 3, 4)])
def test_empty_and_degenerate_shapes(lead, n, k):
    rng = np.random.default_rng(2)
    x = rng.integers(-127, 128, lead + (k,)).astype(np.int8)
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-100, 100, n).astype(np.int32)
    for kw in ({}, {"m_i32": 1 << 30, "shift": 3, "out_bits": 8}):
        y = linear_all(x, w, bias, kw)
        assert y.shape == lead + (n,)
        if k == 0 and not kw:
            np.testing.assert_array_equal(y, np.broadcast_to(bias, y.shape))


def test_accumulator_reaches_int32_max_at_the_documented_limits():
    k = gemm.MAX_K
    x = np.full((5, k), -128, np.int8)
    w = np.full((17, k), -128, np.int8)
    bias = np.full(17, (1 << 30) - 1, np.int32)
    y = linear_all(x, w, bias, {})
    assert int(y.min()) == int(y.max()) == 2**31 - 1
    y8 = linear_all(x, w, bias, {"m_i32": 1 << 30, "shift": 31, "out_bits": 8})  # r = 0.5
    assert int(y8.min()) == 127


def test_uint8_probabilities_at_the_k_limit():
    k = gemm.MAX_K
    p = np.full((1, 5, k), 255, np.uint8)
    v = np.full((1, 3, k), -128, np.int8)
    want = np.full((1, 5, 3), -255 * 128 * k, np.int64)
    for name, fn in MATMUL_PATHS.items():
        np.testing.assert_array_equal(fn(p, v), want, err_msg=name)


# ----------------------------------------------------------------------------- errors


def _packed():
    return gemm.pack_weight_cpu(np.zeros((4, 8), np.int8))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: gemm.pack_weight_cpu(np.zeros((4, 8), np.int16)), r"w_i8 must have dtype in \(int8\)"),
        (lambda: gemm.pack_weight_ref(np.zeros(8, np.int8)), r"w_i8 must be 2-D \[N, K\]"),
        (lambda: gemm.pack_weight_ref(np.zeros((1, gemm.MAX_K + 1), np.int8)), "exceeds MAX_K"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.float32), _packed()), r"x_i8 must have dtype in \(int8\), got float32"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.uint8), _packed()), r"x_i8 must have dtype in \(int8\)"),
        (lambda: gemm.linear_cpu(np.zeros((2, 9), np.int8), _packed()), r"x_i8 must have shape \[\.\.\., K=8\]"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), np.zeros(4, np.int64)), r"bias_i32 must have dtype in \(int32\)"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), np.zeros(5, np.int32)), r"bias_i32 must have shape \(4,\)"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), np.full(4, 1 << 30, np.int32)), r"\|bias\| < 2\^30"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), None, 1 << 30), "m_i32 and shift must be given together"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), None, 1 << 30, 0), "shift must lie in"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), None, np.ones(3, np.int32), 4), "m_i32 must be a scalar or a vector of length 4"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), None, 1 << 30, 4, 33), "out_bits must be an integer"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), None, np.full(4, 1 << 31, np.int64), np.full(4, 4, np.int32)), r"\|m_i32\| < 2\^31"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), None, np.full(4, 1 << 30, np.int32), np.arange(4, dtype=np.int32)), "shift must lie in"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), _packed(), None, 1 << 31, 4), r"\|m_i32\| < 2\^31"),
        (lambda: gemm.linear_cpu(np.zeros((2, 8), np.int8), gemm.pack_weight_ref(np.zeros((4, 8), np.int8))), r"get_kernel\('pack_weight', 'cpu'\)"),
        (lambda: gemm.linear_ref(np.zeros((2, 8), np.int8), np.zeros((4, 8), np.int8)), r"get_kernel\('pack_weight', 'ref'\)"),
        (lambda: gemm.matmul_cpu(np.zeros((2, 8), np.int16), np.zeros((3, 8), np.int8)), r"a must have dtype in \(int8, uint8\), got int16"),
        (lambda: gemm.matmul_cpu(np.zeros((2, 8), np.uint8), np.zeros((3, 8), np.uint8)), r"b must have dtype in \(int8\), got uint8"),
        (lambda: gemm.matmul_cpu(np.zeros(8, np.int8), np.zeros((3, 8), np.int8)), "at least 2-D"),
        (lambda: gemm.matmul_ref(np.zeros((2, 8), np.int8), np.zeros((3, 7), np.int8)), r"share the last \(K\) axis"),
        (lambda: gemm.matmul_cpu(np.zeros((2, 2, 8), np.int8), np.zeros((3, 3, 8), np.int8)), "do not broadcast"),
    ],
)
def test_bad_arguments_raise_kernel_input_error(call, match):
    with pytest.raises(KernelInputError, match=match):
        call()


# ----------------------------------------------------------------------------- VNNI code generation


@pytest.mark.skipif(not _vnni.HAVE_VNNI, reason="AVX-512 VNNI unavailable (host CPU as numba/LLVM sees it, or INTENGINE_DISABLE_VNNI=1); the portable path runs instead")
def test_vnni_micro_kernel_emits_vpdpbusd_and_is_exact():
    @numba.njit  # not cached: inspect_asm needs freshly compiled code
    def tile(xu, wp, init, c):
        _vnni.ukernel_raw_3(xu.ctypes.data, xu.shape[1], wp.ctypes.data, wp.shape[1] * 64, wp.shape[1],
                            init.ctypes.data, 0, 0, 0, c.ctypes.data, c.shape[1], xu.shape[0])

    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (8, 40)).astype(np.int8)
    w = rng.integers(-128, 128, (48, 40)).astype(np.int8)
    wp, corr = gemm.pack_vnni(w[None])
    c = np.zeros((8, 48), np.int32)
    tile(x.view(np.uint8) ^ np.uint8(0x80), wp[0], -corr[0], c)
    np.testing.assert_array_equal(c, int64_linear(x, w))
    asm = tile.inspect_asm(tile.signatures[0])
    assert "vpdpbusd" in asm and "zmm" in asm

    # the GEMM driver (compiled uncached, serial, from the same source) uses it too, with the fused epilogue
    drv = numba.njit(gemm._gemm_vnni.py_func)
    xu = gemm.aligned_zeros((1, 8, 40), np.uint8)
    xu[0] = x.view(np.uint8) ^ np.uint8(0x80)
    out = np.empty((1, 8, 48), np.int8)
    zero = np.zeros(1, np.int64)
    drv(xu, wp, -corr, zero, zero, 8, 48, 1, _vnni.RQ8, np.full(48, 1 << 30, np.int32), np.full(48, 40, np.int64), 127,
        out.view(np.uint8), 1)
    asm = drv.inspect_asm(drv.signatures[0])
    assert "vpdpbusd" in asm and "vpmuldq" in asm  # requantized from the registers: 32×32→64 multiplies
    want = gemm.requantize_ref(int64_linear(x, w).astype(np.int32), 1 << 30, 40)
    np.testing.assert_array_equal(out[0], want)


@pytest.mark.skipif(not _vnni.HAVE_AMX, reason="AMX-INT8 unavailable (CPU, Linux tile-state permission, or INTENGINE_DISABLE_AMX/VNNI=1); VNNI/portable run instead")
def test_amx_kernel_emits_tdpbssd_and_is_exact():
    @numba.njit
    def tile(cfg, a, wp, c):
        _vnni.amx_32x32_ss(cfg.ctypes.data, a.ctypes.data, a.shape[1], wp[0].ctypes.data, wp[1].ctypes.data,
                           a.shape[1] // 64, c.ctypes.data, 0)

    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (32, 128)).astype(np.int8)
    w = rng.integers(-128, 128, (32, 128)).astype(np.int8)
    wp, _ = gemm.pack_vnni(w[None])
    c = np.zeros((32, 32), np.int32)
    tile(gemm._AMX_CFG, x, wp[0], c)
    np.testing.assert_array_equal(c, int64_linear(x, w))
    asm = tile.inspect_asm(tile.signatures[0])
    assert "tdpbssd" in asm and "ldtilecfg" in asm


@pytest.mark.parametrize("m", [31, 32, 33, 64, 95, 300])
def test_amx_and_vnni_tiles_around_the_32_row_boundary(m):
    """Partial row tiles, two K blocks; m = 300 also splits the AMX linear into row chunks."""
    if m == 300:
        assert gemm._amx_m_chunks(m, 4224) > 1
    rng = np.random.default_rng(m)
    x = rng.integers(-128, 128, (m, 4200)).astype(np.int8)  # 2 AMX K blocks, the last one partial
    w = rng.integers(-128, 128, (70, 4200)).astype(np.int8)
    bias = rng.integers(-1000, 1000, 70).astype(np.int32)
    m_i32, shift = np.full(70, 1 << 30, np.int32), np.arange(70, dtype=np.int32) % 20 + 5
    linear_all(x, w, bias, {"m_i32": m_i32, "shift": shift, "out_bits": 16})
    linear_all(x[:, :4160].copy(), w[:, :4160].copy(), None, {})  # K % 64 == 0: AMX reads x in place


def test_cpu_dispatch_matches_host_features():
    packed = gemm.pack_weight_cpu(np.zeros((3, 5), np.int8))
    assert packed.layout == ("vnni" if _vnni.HAVE_VNNI else "nk")


# ----------------------------------------------------------------------------- CUDA convention


def test_cuda_device_in_device_out():
    if not load_cuda():
        pytest.skip("cuda backend unavailable")
    from numba import cuda

    from intengine.kernels.cuda._util import is_device

    rng = np.random.default_rng(4)
    x = rng.integers(-127, 128, (3, 5)).astype(np.int8)
    w = rng.integers(-127, 128, (4, 5)).astype(np.int8)
    packed = get_kernel("pack_weight", "cuda")(w)
    y_d = get_kernel("linear", "cuda")(cuda.to_device(x), packed, None, 1 << 30, 8)
    assert is_device(y_d)
    want = get_kernel("linear", "ref")(x, get_kernel("pack_weight", "ref")(w), None, 1 << 30, 8)
    np.testing.assert_array_equal(y_d.copy_to_host(), want)


# ----------------------------------------------------------------------------- batched matmul paths, packed b, out=


ATTENTION = [  # (a batch, b batch, M, N, K): Q·Kᵀ, P·V (V transposed), DeBERTa tables, edges
    ((1, 12), (1, 12), 128, 128, 64),
    ((2, 12), (2, 12), 128, 64, 128),
    ((2, 3), (3,), 37, 2 * 37, 64),  # b [H, 2S, d] broadcast over the batch
    ((1,), (), 1, 1, 1),
    ((3,), (3,), 33, 17, 5),
    ((2,), (2,), 65, 97, 4096),
    ((1,), (1,), 300, 40, 70),  # few tasks: rows split over a B packed up front
    ((), (), 31, 2, 4095),
]


@pytest.mark.parametrize("a_batch,b_batch,mm,nn,kk", ATTENTION)
@pytest.mark.parametrize("a_dtype", [np.int8, np.uint8])
def test_matmul_paths_raw_and_packed_b_are_exact(a_batch, b_batch, mm, nn, kk, a_dtype):
    rng = np.random.default_rng(mm * 1000 + nn + kk)
    lo, hi = (-128, 128) if a_dtype == np.int8 else (0, 256)
    a = rng.integers(lo, hi, a_batch + (mm, kk)).astype(a_dtype)
    b = rng.integers(-128, 128, b_batch + (nn, kk)).astype(np.int8)
    packed_cpu = gemm.pack_matmul_b_cpu(b)
    for kw in ({}, {"m_i32": 1 << 30, "shift": 20, "out_bits": 8},
               {"m_i32": np.full(nn, -(1 << 30), np.int32), "shift": np.arange(nn, dtype=np.int32) % 9 + 10, "out_bits": 16}):
        want = gemm.matmul_ref(a, b, **kw)
        np.testing.assert_array_equal(gemm.matmul_ref(a, gemm.pack_matmul_b_ref(b), **kw), want)
        for name, fn in MATMUL_PATHS.items():
            for bb in (b, packed_cpu):
                got = fn(a, bb, **kw)
                assert got.dtype == want.dtype and got.shape == want.shape, name
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {type(bb).__name__}")


def test_packed_b_is_a_read_only_copy():
    b = np.ones((2, 5, 8), np.int8)
    a = np.ones((2, 3, 8), np.int8)
    for pack in (gemm.pack_matmul_b_cpu, gemm.pack_matmul_b_ref):
        packed = pack(b)
        b[...] = 2  # later changes to the caller's array do not leak into the packed constant
        assert not packed.b_i8.flags.writeable
        got = get_kernel("matmul", "cpu" if pack is gemm.pack_matmul_b_cpu else "ref")(a, packed)
        np.testing.assert_array_equal(got, np.full((2, 3, 5), 8, np.int32))
        b[...] = 1


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: gemm.pack_matmul_b_cpu(np.zeros((3, 8), np.uint8)), r"b must have dtype in \(int8\)"),
        (lambda: gemm.pack_matmul_b_ref(np.zeros(8, np.int8)), "at least 2-D"),
        (lambda: gemm.pack_matmul_b_cpu(np.zeros((1, gemm.MAX_K + 1), np.int8)), "exceeds MAX_K"),
        (lambda: gemm.matmul_cpu(np.zeros((2, 8), np.int8), gemm.pack_matmul_b_ref(np.zeros((3, 8), np.int8))),
         r"get_kernel\('pack_matmul_b', 'cpu'\)"),
        (lambda: gemm.matmul_ref(np.zeros((2, 8), np.int8), gemm.pack_matmul_b_cpu(np.zeros((3, 8), np.int8))),
         r"get_kernel\('pack_matmul_b', 'ref'\)"),
        (lambda: gemm.matmul_cpu(np.zeros((2, 7), np.int8), gemm.pack_matmul_b_cpu(np.zeros((3, 8), np.int8))),
         r"share the last \(K\) axis"),
    ],
)
def test_pack_matmul_b_errors(call, match):
    with pytest.raises(KernelInputError, match=match):
        call()


LINEAR_OUT_PATHS = {"cpu": (gemm.pack_weight_cpu, gemm.linear_cpu),
                    "portable": (gemm.pack_weight_portable, gemm.linear_portable)}
MATMUL_OUT_PATHS = {"cpu": gemm.matmul_cpu, "portable": gemm.matmul_portable}
if _vnni.HAVE_VNNI:
    LINEAR_OUT_PATHS["vnni"] = (gemm.pack_weight_vnni, functools.partial(gemm.linear_vnni, use_amx=False))
    MATMUL_OUT_PATHS["vnni"] = functools.partial(gemm.matmul_vnni, use_amx=False)
if _vnni.HAVE_AMX:
    LINEAR_OUT_PATHS["amx"] = (gemm.pack_weight_vnni, functools.partial(gemm.linear_vnni, use_amx=True))
    MATMUL_OUT_PATHS["amx"] = functools.partial(gemm.matmul_vnni, use_amx=True)


@pytest.mark.parametrize("kw", [{}, {"m_i32": 1 << 30, "shift": 12, "out_bits": 8}, {"m_i32": 1 << 30, "shift": 4, "out_bits": 16}])
@pytest.mark.parametrize("lead", [(), (1,), (2, 33)])
def test_linear_out_is_written_and_returned(lead, kw):
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, lead + (200,)).astype(np.int8)
    w = rng.integers(-128, 128, (70, 200)).astype(np.int8)
    bias = rng.integers(-1000, 1000, 70).astype(np.int32)
    want = gemm.linear_ref(x, gemm.pack_weight_ref(w), bias, **kw)
    for name, (pack, lin) in LINEAR_OUT_PATHS.items():
        out = np.full(want.shape, 99, want.dtype)
        got = lin(x, pack(w), bias, **kw, out=out)
        assert got is out, name
        np.testing.assert_array_equal(out, want, err_msg=name)


@pytest.mark.parametrize("kw", [{}, {"m_i32": 1 << 30, "shift": 20, "out_bits": 8}])
@pytest.mark.parametrize("a_batch,b_batch,mm,nn,kk", [((2, 3), (3,), 40, 33, 64), ((1,), (1,), 1, 1, 1), ((0,), (), 3, 4, 5)])
def test_matmul_out_is_written_and_returned(a_batch, b_batch, mm, nn, kk, kw):
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, a_batch + (mm, kk)).astype(np.uint8)
    b = rng.integers(-128, 128, b_batch + (nn, kk)).astype(np.int8)
    want = gemm.matmul_ref(a, b, **kw)
    for name, fn in MATMUL_OUT_PATHS.items():
        for bb in (b, gemm.pack_matmul_b_cpu(b)):
            out = np.full(want.shape, 99, want.dtype)
            got = fn(a, bb, **kw, out=out)
            assert got is out, name
            np.testing.assert_array_equal(out, want, err_msg=name)


def _bad_outs(shape, dtype):
    yield np.empty(shape[:-1] + (shape[-1] + 1,), dtype), "shape"
    yield np.empty(shape, np.int16 if dtype != np.int16 else np.int8), "dtype"
    yield np.empty(shape[:-1] + (shape[-1] * 2,), dtype)[..., ::2], "not C-contiguous"
    ro = np.empty(shape, dtype)
    ro.setflags(write=False)
    yield ro, "read-only"
    yield [[0] * shape[-1]] * shape[-2], "list"


@pytest.mark.parametrize("path", sorted(set(LINEAR_OUT_PATHS) | {"matmul-" + k for k in MATMUL_OUT_PATHS}))
def test_bad_out_raises_naming_out(path):
    x = np.ones((4, 8), np.int8)
    w = np.ones((3, 8), np.int8)
    if path.startswith("matmul-"):
        fn = MATMUL_OUT_PATHS[path[7:]]
        call = functools.partial(fn, x, w, 1 << 30, 20, 8)
        shape, dtype = (4, 3), np.int8
    else:
        pack, lin = LINEAR_OUT_PATHS[path]
        call = functools.partial(lin, x, pack(w), None, 1 << 30, 20, 8)
        shape, dtype = (4, 3), np.int8
    for bad, what in _bad_outs(shape, dtype):
        with pytest.raises(KernelInputError, match=r"out must be a writeable C-contiguous numpy array of dtype int8 and shape \(4, 3\)"):
            call(out=bad)


def test_disabled_fast_paths_still_exact():
    """INTENGINE_DISABLE_AMX / INTENGINE_DISABLE_VNNI switch the dispatch (checked in fresh processes)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, sys\n"
        "from intengine.kernels import gemm, _vnni\n"
        "want_vnni, want_amx = sys.argv[1] == '1', sys.argv[2] == '1'\n"
        "assert _vnni.HAVE_VNNI == (want_vnni and _vnni.HAVE_VNNI) and not (_vnni.HAVE_AMX and not want_amx)\n"
        "rng = np.random.default_rng(0)\n"
        "for a_dt in (np.int8, np.uint8):\n"
        "    a = rng.integers(0, 128, (2, 3, 40, 70)).astype(a_dt)\n"
        "    b = rng.integers(-128, 128, (3, 33, 70)).astype(np.int8)\n"
        "    for bb in (b, gemm.pack_matmul_b_cpu(b)):\n"
        "        np.testing.assert_array_equal(gemm.matmul_cpu(a, bb, 1 << 30, 20), gemm.matmul_ref(a, b, 1 << 30, 20))\n"
        "x = rng.integers(-128, 128, (40, 200)).astype(np.int8)\n"
        "w = rng.integers(-128, 128, (33, 200)).astype(np.int8)\n"
        "np.testing.assert_array_equal(gemm.linear_cpu(x, gemm.pack_weight_cpu(w)), gemm.linear_ref(x, gemm.pack_weight_ref(w)))\n"
        "print(_vnni.HAVE_VNNI, _vnni.HAVE_AMX)\n"
    )
    for env, flags in (({"INTENGINE_DISABLE_AMX": "1"}, ("1", "0")), ({"INTENGINE_DISABLE_VNNI": "1"}, ("0", "0"))):
        res = subprocess.run([sys.executable, "-c", code, *flags], env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        have_vnni, have_amx = res.stdout.split()
        assert have_amx == "False"
        if env.get("INTENGINE_DISABLE_VNNI"):
            assert have_vnni == "False"


# ----------------------------------------------------------------------------- linear: per-layer argument cache


@pytest.mark.skipif(not _vnni.HAVE_VNNI, reason="the bind cache belongs to the VNNI/AMX linear")
@pytest.mark.parametrize("rows", [1, 40])
def test_linear_bind_cache_never_serves_stale_arguments(rows):
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (rows, 200)).astype(np.int8)
    w = rng.integers(-128, 128, (70, 200)).astype(np.int8)
    packed, packed_ref = gemm.pack_weight_cpu(w), gemm.pack_weight_ref(w)
    m_i32 = np.full(70, 1 << 30, np.int32)
    shift = np.full(70, 12, np.int32)
    bias = rng.integers(-1000, 1000, 70).astype(np.int32)

    def check():
        want = gemm.linear_ref(x, packed_ref, bias, m_i32, shift, 16)
        np.testing.assert_array_equal(gemm.linear_cpu(x, packed, bias, m_i32, shift, 16), want)

    check()
    shift[:] = 9  # writeable arrays: never cached, a change is seen at once
    bias[:5] = 7
    check()
    base = m_i32.copy()
    view = base[:]
    view.setflags(write=False)  # read-only view of a writeable base: not frozen, not cached
    m_i32 = view
    check()
    base[:] = -(1 << 30)
    check()
    for arr in (bias, shift):
        arr.setflags(write=False)
    m_i32 = np.full(70, (1 << 30) + 12345, np.int32)
    m_i32.setflags(write=False)  # the runtime's constants: cached by identity
    check()
    assert gemm._bind_linear(packed, bias, m_i32, shift, 16) is gemm._bind_linear(packed, bias, m_i32, shift, 16)
    check()
    writeable = m_i32.copy()
    assert gemm._bind_linear(packed, bias, writeable, shift, 16) is not gemm._bind_linear(packed, bias, writeable,
                                                                                            shift, 16)


@pytest.mark.skipif(not _vnni.HAVE_VNNI, reason="the bind cache belongs to the VNNI/AMX linear")
def test_linear_bind_cache_still_rejects_bad_arguments():
    packed = gemm.pack_weight_cpu(np.zeros((4, 8), np.int8))
    bias = np.full(4, 1 << 30, np.int32)
    bias.setflags(write=False)
    for _ in range(2):  # a failed validation is never cached
        with pytest.raises(KernelInputError, match=r"\|bias\| < 2\^30"):
            gemm.linear_cpu(np.zeros((2, 8), np.int8), packed, bias)
    shift = np.zeros(4, np.int32)
    shift.setflags(write=False)
    for _ in range(2):
        with pytest.raises(KernelInputError, match="shift must lie in"):
            gemm.linear_cpu(np.zeros((2, 8), np.int8), packed, None, 1 << 30, shift)

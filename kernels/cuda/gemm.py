"""numba.cuda int8 GEMM family (bit-exact with ``kernels/gemm.py``).

numba.cuda exposes no int8 tensor-core (``mma``/``dp4a`` wrapper) path, so the
product is a classic shared-memory tiled GEMM: a block of ``TILE × TILE``
threads owns a ``TILE × TILE`` output tile, stages ``TILE × TILE`` slices of
A and B in shared memory, accumulates exactly (int64 in registers; the true
value fits int32 by the limits of :mod:`~intengine.kernels.gemm`) and applies
the requantize epilogue (``round_shift_dev``/``saturate_dev``) before the one
store of the result.  Batched ``matmul`` uses the grid's z axis with
broadcast index maps.

On a real GPU with a CUDA build of torch, ``linear`` on int8 inputs with
``M > 16`` and ``K, N`` multiples of 8 routes the int32 product through
``torch._int_mm`` (cuBLASLt int8 tensor cores) and runs the bias+requantize
epilogue as a numba.cuda kernel on that result.  The route is verified bit for
bit against the tiled kernel on first use and disabled if it disagrees or fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import cuda

from .._util import check_int
from ..errors import KernelInputError
from ..gemm import (
    Epilogue,
    PackedMatmulB,
    batch_maps,
    check_bias,
    check_linear_x,
    check_weight,
    epilogue_params,
    matmul_shapes,
)
from ..registry import register
from ._util import any_device, blocks_for, finish, is_device, to_device
from .requant import round_shift_dev, saturate_dev

TILE = 16


@cuda.jit
def _gemm_tiled_kernel(a3, b3, ia, ib, init2, requant, m_i32, s_i64, q, out3):
    """out3[z, m, n] = epilogue(Σ_k a3[ia[z], m, k]·b3[ib[z], n, k] + init2[ib[z], n])."""
    sa = cuda.shared.array((TILE, TILE + 1), dtype=np.int32)
    sb = cuda.shared.array((TILE, TILE + 1), dtype=np.int32)
    tx = cuda.threadIdx.x  # column (n) within the tile / k when loading
    ty = cuda.threadIdx.y  # row (m) within the tile
    z = cuda.blockIdx.z
    mm = a3.shape[1]
    kk = a3.shape[2]
    nn = b3.shape[1]
    n0 = cuda.blockIdx.x * TILE
    m = cuda.blockIdx.y * TILE + ty
    n = n0 + tx
    pa = ia[z]
    pb = ib[z]
    acc = 0
    for k0 in range(0, kk, TILE):
        k = k0 + tx
        if m < mm and k < kk:
            sa[ty, tx] = a3[pa, m, k]
        else:
            sa[ty, tx] = 0
        nb = n0 + ty
        if nb < nn and k < kk:
            sb[ty, tx] = b3[pb, nb, k]
        else:
            sb[ty, tx] = 0
        cuda.syncthreads()
        for t in range(TILE):
            acc += sa[ty, t] * sb[tx, t]
        cuda.syncthreads()
    if m < mm and n < nn:
        v = acc + init2[pb, n]
        if requant:
            out3[z, m, n] = saturate_dev(round_shift_dev(np.int64(v), np.int64(m_i32[n]), s_i64[n]), q)
        else:
            out3[z, m, n] = v


@cuda.jit
def _epilogue_kernel(acc2, init1, requant, m_i32, s_i64, q, out2):
    """out2[i, n] = epilogue(acc2[i, n] + init1[n]) (used after torch._int_mm)."""
    rows, cols = acc2.shape
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for idx in range(start, rows * cols, stride):
        i = idx // cols
        n = idx - i * cols
        v = np.int64(acc2[i, n]) + init1[n]
        if requant:
            out2[i, n] = saturate_dev(round_shift_dev(v, np.int64(m_i32[n]), s_i64[n]), q)
        else:
            out2[i, n] = v


def _launch(a3_d, b3_d, ia, ib, init2, ep: Epilogue, mm: int, nn: int):
    nt = ia.shape[0]
    out_d = cuda.device_array((nt, mm, nn), dtype=ep.out_dtype)
    if nt and mm and nn:
        grid = ((nn + TILE - 1) // TILE, (mm + TILE - 1) // TILE, nt)
        _gemm_tiled_kernel[grid, (TILE, TILE)](
            a3_d, b3_d, to_device(ia), to_device(ib), to_device(init2), ep.requant,
            to_device(ep.m_i32), to_device(ep.s_i64), ep.q, out_d,
        )
    return out_d


def _reshape_dev(arr, shape):
    """Reshape a contiguous numpy or device array (device arrays are made contiguous first)."""
    if is_device(arr):
        if not arr.is_c_contiguous():
            raise KernelInputError("device arrays passed to the cuda GEMM must be C-contiguous")
        return arr.reshape(*shape) if shape else arr
    return to_device(np.ascontiguousarray(arr).reshape(shape))


# ----------------------------------------------------------------------------- torch._int_mm route

_TORCH = {"checked": False, "ok": False}


def _torch_route_available() -> bool:
    if not _TORCH["checked"]:
        _TORCH["checked"] = True
        try:
            from numba import config

            if getattr(config, "ENABLE_CUDASIM", 0):
                return False
            import torch

            _TORCH["ok"] = bool(torch.cuda.is_available())
            if _TORCH["ok"]:
                _TORCH["ok"] = _self_check()
        except Exception:
            _TORCH["ok"] = False
    return _TORCH["ok"]


def _int_mm_device(x2_d, w_d):
    """int32 ``x2 · wᵀ`` on the GPU with torch._int_mm (cuBLASLt); returns a numba device array."""
    import torch

    xt = torch.as_tensor(x2_d, device="cuda")
    wt = torch.as_tensor(w_d, device="cuda")
    acc = torch._int_mm(xt, wt.t())
    return cuda.as_cuda_array(acc.contiguous()), acc  # keep the tensor alive with the view


def _linear_torch(x2_d, w_d, init1, ep: Epilogue):
    acc_d, _keep = _int_mm_device(x2_d, w_d)
    rows, cols = acc_d.shape
    out_d = cuda.device_array((rows, cols), dtype=ep.out_dtype)
    _epilogue_kernel[blocks_for(rows * cols), 256](
        acc_d, to_device(init1), ep.requant, to_device(ep.m_i32), to_device(ep.s_i64), ep.q, out_d
    )
    cuda.synchronize()
    return out_d


def _self_check() -> bool:
    rng = np.random.default_rng(1234)
    x = rng.integers(-128, 128, (32, 64), dtype=np.int64).astype(np.int8)
    w = rng.integers(-128, 128, (24, 64), dtype=np.int64).astype(np.int8)
    bias = rng.integers(-(2**20), 2**20, 24, dtype=np.int64).astype(np.int32)
    ep = epilogue_params(24, 1 << 30, 12, 8)
    x_d, w_d = to_device(x), to_device(w)
    got = _linear_torch(x_d, w_d, bias.astype(np.int64), ep).copy_to_host()
    want = _launch(x_d.reshape(1, 32, 64), w_d.reshape(1, 24, 64), np.zeros(1, np.int64), np.zeros(1, np.int64),
                   bias.reshape(1, 24), ep, 32, 24).copy_to_host()[0]
    return bool(np.array_equal(got, want))


# ----------------------------------------------------------------------------- registered ops


@dataclass(frozen=True)
class CudaPackedWeight:
    """``cuda`` backend packed weight: the int8 ``[N, K]`` matrix on the device."""

    w_dev: object
    n: int
    k: int


@register("pack_weight", "cuda")
def pack_weight_cuda(w_i8) -> CudaPackedWeight:
    """Copy ``w_i8 [N, K]`` to the device once (see :func:`~intengine.kernels.gemm.pack_weight_ref`)."""
    check_weight(w_i8)
    w_d = to_device(w_i8) if is_device(w_i8) else cuda.to_device(np.ascontiguousarray(w_i8))
    return CudaPackedWeight(w_d, int(w_i8.shape[0]), int(w_i8.shape[1]))


@register("linear", "cuda")
def linear_cuda(x_i8, packed: CudaPackedWeight, bias_i32=None, m_i32=None, shift=None, out_bits: int = 8):
    """CUDA :func:`~intengine.kernels.gemm.linear_ref` (bit-exact)."""
    if not isinstance(packed, CudaPackedWeight):
        raise KernelInputError(
            f"packed must be the result of get_kernel('pack_weight', 'cuda') (CudaPackedWeight), got {type(packed).__name__}"
        )
    check_linear_x(x_i8, packed.k)
    bias = check_bias(bias_i32, packed.n)
    ep = epilogue_params(packed.n, m_i32, shift, out_bits)
    n, k = packed.n, packed.k
    lead = tuple(x_i8.shape)[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    init1 = np.zeros(n, np.int32) if bias is None else bias
    if rows and n and k and rows > 16 and k % 8 == 0 and n % 8 == 0 and _torch_route_available():
        out_d = _linear_torch(_reshape_dev(x_i8, (rows, k)), packed.w_dev, init1.astype(np.int64), ep)
        return finish(out_d.reshape(*lead, n) if lead else out_d.reshape(n), any_device(x_i8))
    x3 = _reshape_dev(x_i8, (1, rows, k))
    zero = np.zeros(1, np.int64)
    out_d = _launch(x3, packed.w_dev.reshape(1, n, k), zero, zero, init1.reshape(1, n), ep, rows, n)
    return finish(out_d.reshape(*lead, n) if lead else out_d.reshape(n), any_device(x_i8))


@dataclass(frozen=True)
class CudaPackedMatmulB(PackedMatmulB):
    """``cuda`` form of a constant ``matmul`` right operand: the int8 ``[..., N, K]`` array on the device.

    ``on_device``: whether the caller passed a device array (results then stay
    on the device, as with the raw operand).
    """

    b_dev: object
    shape: tuple
    on_device: bool

    @property
    def dtype(self):
        return np.dtype(np.int8)


@register("pack_matmul_b", "cuda")
def pack_matmul_b_cuda(b) -> CudaPackedMatmulB:
    """Copy a constant ``b`` int8 ``[..., N, K]`` to the device once (see :func:`~intengine.kernels.gemm.pack_matmul_b_ref`)."""
    check_int("b", b, (np.int8,))
    shape = tuple(int(d) for d in b.shape)
    if len(shape) < 2:
        raise KernelInputError(f"b [..., N, K] must be at least 2-D, got {shape}")
    on_device = is_device(b)
    b_d = _reshape_dev(b, (int(np.prod(shape[:-2], dtype=np.int64)),) + shape[-2:])
    return CudaPackedMatmulB(b_d, shape, on_device)


@register("matmul", "cuda")
def matmul_cuda(a, b, m_i32=None, shift=None, out_bits: int = 8):
    """CUDA :func:`~intengine.kernels.gemm.matmul_ref` (bit-exact); ``b`` may be a :class:`CudaPackedMatmulB`."""
    packed = b if isinstance(b, CudaPackedMatmulB) else None
    if packed is None and isinstance(b, PackedMatmulB):
        raise KernelInputError(
            f"b must be an int8 array or the result of get_kernel('pack_matmul_b', 'cuda') (CudaPackedMatmulB), "
            f"got {type(b).__name__}")
    batch, mm, nn, kk = matmul_shapes(a, b)
    ep = epilogue_params(nn, m_i32, shift, out_bits)
    ia, ib = batch_maps(batch, tuple(a.shape)[:-2], tuple(b.shape)[:-2])
    na = int(np.prod(tuple(a.shape)[:-2], dtype=np.int64))
    nb = int(np.prod(tuple(b.shape)[:-2], dtype=np.int64))
    a3 = _reshape_dev(a, (na, mm, kk))
    b3 = packed.b_dev if packed is not None else _reshape_dev(b, (nb, nn, kk))
    out_d = _launch(a3, b3, ia, ib, np.zeros((nb, nn), np.int32), ep, mm, nn)
    on_device = any_device(a) or (packed.on_device if packed is not None else any_device(b))
    return finish(out_d.reshape(*batch, mm, nn), on_device)

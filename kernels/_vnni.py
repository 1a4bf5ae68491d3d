"""AVX-512 VNNI micro-kernels for the int8 GEMM (numba ``@intrinsic`` emitting LLVM IR).

LLVM does not generate ``vpdpbusd`` from plain numba loops, so the inner
product is written as LLVM IR calling ``llvm.x86.avx512.vpdpbusd.512``
directly.  ``vpdpbusd acc, a, b`` adds, in each of the 16 int32 lanes, the
four products ``u8(a) · s8(b)`` of that lane's bytes (wrapping int32 add, no
saturation).

Micro-kernel ``ukernel(nblk)`` (``nblk`` ∈ 1..4): a register block of
``MR = 4`` rows of A × ``16·nblk`` columns (up to 16 zmm int32 accumulators).

* A: uint8 rows, ``lda`` bytes apart, ``4·kgroups`` bytes each; every 4-byte
  group is broadcast to all 16 lanes.
* B: int8 packed as ``[N/16, K/4, 16, 4]``: the 64 bytes at
  ``[nb, kb]`` are one zmm whose lane ``j`` holds ``w[16·nb + j, 4·kb : 4·kb + 4]``;
  consecutive column blocks of the tile are ``b_stride`` bytes apart.
* The accumulators start from ``init`` (``16·nblk`` int32: bias minus the
  ``128·Σw`` offset correction) and are stored as ``MR`` rows of ``16·nblk``
  int32 to ``c`` (``ldc`` elements apart).

All pointers are passed as integer addresses (``arr.ctypes.data``); the
callers keep the arrays alive and in bounds.  The functions are module-level
so that ``cache=True`` jitted callers can be cached.  They must only be
compiled on a host with AVX-512 VNNI: check :data:`HAVE_VNNI` first.
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

MR = 4  # rows of A per micro-kernel
NR_BLOCK = 16  # int32 lanes per zmm = columns per packed block
KR = 4  # bytes of K per lane per vpdpbusd
NBLK_MAX = 4  # column blocks per micro-kernel (4 × 16 = 64 columns)

_VNNI_NAME = "llvm.x86.avx512.vpdpbusd.512"
# LLVM 21 changed the multiplicand operands of the VNNI intrinsics from
# <16 x i32> to <64 x i8> (older IR is auto-upgraded, but declare the native form).
_OPERANDS_AS_BYTES = llvm.llvm_version_info[0] >= 21


def _detect_vnni() -> bool:
    """True when numba will compile for a CPU with AVX-512F/BW/VNNI.

    Honours numba's ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` overrides (a
    portable ``generic`` build must not contain VNNI), else asks LLVM about
    the host.  ``INTENGINE_DISABLE_VNNI=1`` turns the fast path off.
    """
    if os.environ.get("INTENGINE_DISABLE_VNNI", "") not in ("", "0"):
        return False
    need = ("avx512f", "avx512bw", "avx512vnni")
    try:
        if config.CPU_NAME not in (None, "host"):
            feats = str(config.CPU_FEATURES or "")
            return all(f"+{f}" in feats.split(",") for f in need)
        host = llvm.get_host_cpu_features()
        return all(bool(host.get(f, False)) for f in need)
    except Exception:  # pragma: no cover - exotic hosts
        return False


HAVE_VNNI: bool = _detect_vnni()


def _make_ukernel(nblk: int):
    """Build the ``MR × 16·nblk`` micro-kernel intrinsic."""

    @intrinsic
    def ukernel(typingctx, a_addr, lda, b_addr, b_stride, kgroups, init_addr, c_addr, ldc):
        args = (a_addr, lda, b_addr, b_stride, kgroups, init_addr, c_addr, ldc)
        if not all(isinstance(t, types.Integer) for t in args):
            return None
        sig = types.void(*args)

        def codegen(context, builder, signature, llargs):
            intp_t = context.get_value_type(types.intp)
            vals = [context.cast(builder, v, t, types.intp) for v, t in zip(llargs, signature.args)]
            a_i, lda_v, b_i, bstr_v, kg_v, init_i, c_i, ldc_v = vals
            i8 = ir.IntType(8)
            i32 = ir.IntType(32)
            v16 = ir.VectorType(i32, 16)
            opty = ir.VectorType(i8, 64) if _OPERANDS_AS_BYTES else v16
            fnty = ir.FunctionType(v16, [v16, opty, opty])
            vnni = cgutils.get_or_insert_function(builder.module, fnty, _VNNI_NAME)
            i8p = i8.as_pointer()
            a_p = builder.inttoptr(a_i, i8p)
            b_p = builder.inttoptr(b_i, i8p)
            init_p = builder.inttoptr(init_i, i8p)
            c_p = builder.inttoptr(c_i, i8p)

            def const(v):
                return ir.Constant(intp_t, v)

            def load_vec(base, byte_off, ty):
                ptr = builder.bitcast(builder.gep(base, [byte_off]), ty.as_pointer())
                ld = builder.load(ptr)
                ld.align = 1
                return ld

            init_vecs = [load_vec(init_p, const(64 * j), v16) for j in range(nblk)]
            pre = builder.block
            loop_bb = builder.append_basic_block("vnni.loop")
            exit_bb = builder.append_basic_block("vnni.exit")
            builder.branch(loop_bb)  # kgroups >= 1 is a precondition (callers pad K)

            builder.position_at_end(loop_bb)
            k = builder.phi(intp_t, name="kg")
            k.add_incoming(const(0), pre)
            accs = [[builder.phi(v16) for _ in range(nblk)] for _ in range(MR)]
            for i in range(MR):
                for j in range(nblk):
                    accs[i][j].add_incoming(init_vecs[j], pre)
            boff = builder.mul(k, const(64))
            bvecs = [
                load_vec(b_p, builder.add(builder.mul(const(j), bstr_v), boff), opty) for j in range(nblk)
            ]
            aoff = builder.mul(k, const(KR))
            zero_mask = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
            new = [[None] * nblk for _ in range(MR)]
            for i in range(MR):
                row_off = builder.add(builder.mul(const(i), lda_v), aoff)
                aptr = builder.bitcast(builder.gep(a_p, [row_off]), i32.as_pointer())
                a32 = builder.load(aptr)
                a32.align = 1
                splat = builder.shuffle_vector(
                    builder.insert_element(ir.Constant(v16, ir.Undefined), a32, ir.Constant(i32, 0)),
                    ir.Constant(v16, ir.Undefined),
                    zero_mask,
                )
                aop = builder.bitcast(splat, opty) if _OPERANDS_AS_BYTES else splat
                for j in range(nblk):
                    new[i][j] = builder.call(vnni, [accs[i][j], aop, bvecs[j]])
            k_next = builder.add(k, const(1))
            k.add_incoming(k_next, loop_bb)
            for i in range(MR):
                for j in range(nblk):
                    accs[i][j].add_incoming(new[i][j], loop_bb)
            builder.cbranch(builder.icmp_signed("<", k_next, kg_v), loop_bb, exit_bb)

            builder.position_at_end(exit_bb)
            for i in range(MR):
                for j in range(nblk):
                    off = builder.mul(builder.add(builder.mul(const(i), ldc_v), const(16 * j)), const(4))
                    ptr = builder.bitcast(builder.gep(c_p, [off]), v16.as_pointer())
                    st = builder.store(new[i][j], ptr)
                    st.align = 1
            return context.get_dummy_value()

        return sig, codegen

    return ukernel


ukernel_1 = _make_ukernel(1)
ukernel_2 = _make_ukernel(2)
ukernel_3 = _make_ukernel(3)
ukernel_4 = _make_ukernel(4)

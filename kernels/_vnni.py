"""AVX-512 VNNI micro-kernels for the int8 GEMM (numba ``@intrinsic`` emitting LLVM IR).

LLVM does not generate ``vpdpbusd`` from plain numba loops, so the inner
product is written as LLVM IR calling ``llvm.x86.avx512.vpdpbusd.512``
directly.  ``vpdpbusd acc, a, b`` adds, in each of the 16 int32 lanes, the
four products ``u8(a) · s8(b)`` of that lane's bytes (wrapping int32 add, no
saturation).

Micro-kernel ``ukernel_<nblk>`` (``nblk`` ∈ 1..3): a register block of
``MR = 8`` rows of A × ``16·nblk`` columns (up to 24 zmm int32 accumulators,
3 B vectors and a broadcast: 28 of the 32 zmm registers).  Per step of 4 K
bytes it loads ``nblk`` 64-byte B vectors and ``MR`` 4-byte A broadcasts and
issues ``MR·nblk`` ``vpdpbusd``; with 8 rows the B stream is 8 bytes per
``vpdpbusd``, which L2 sustains (4 rows × 64 columns needed 16 and was
L2-bound for K ≥ 768; measured ~700 vs ~480-670 GOPS on one core).

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

MR = 8  # rows of A per micro-kernel
NR_BLOCK = 16  # int32 lanes per zmm = columns per packed block
KR = 4  # bytes of K per lane per vpdpbusd
NBLK_MAX = 3  # column blocks per micro-kernel (3 × 16 = 48 columns, 24 accumulators)

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


# Output modes of a micro-kernel (compile-time variants).
RAW32 = 0  # store the int32 accumulators
RQ8 = 1  # requantize, store int8
RQ16 = 2  # requantize, store int16
RQ32 = 3  # requantize, store int32
_OUT_BITS = {RAW32: 32, RQ8: 8, RQ16: 16, RQ32: 32}


def make_ukernel(nblk: int, mode: int = RAW32, mr: int = MR):
    """Build the ``mr × 16·nblk`` micro-kernel intrinsic for output ``mode``.

    Signature (all integers; addresses from ``.ctypes.data``)::

        ukernel(a_addr, lda, b_addr, b_stride, kgroups, init_addr,
                m_addr, s_addr, q, out_addr, ldo, rows)

    After the K loop, rows ``i < rows`` of the register tile are written to
    ``out_addr + i·ldo`` (elements).  ``RAW32`` stores the int32 accumulators
    (``m_addr``/``s_addr``/``q`` unused).  ``RQ*`` modes apply, per lane, the
    requantization of ``requant.round_shift``/``saturate`` on 64-bit lanes::

        y = clip(((acc · m >> (s - 1)) + 1) >> 1, -q, q)

    with ``m`` int32 (``m_addr``, sign-extended, so LLVM uses ``vpmuldq``) and
    ``s`` int64 (``s_addr``) per column, then truncate to int8/16/32 and store.
    All ``16·nblk`` columns are stored: callers use a RAW32 kernel into a
    scratch tile for a partial last panel.
    """

    @intrinsic
    def ukernel(typingctx, a_addr, lda, b_addr, b_stride, kgroups, init_addr, m_addr, s_addr, q, out_addr, ldo, rows):
        args = (a_addr, lda, b_addr, b_stride, kgroups, init_addr, m_addr, s_addr, q, out_addr, ldo, rows)
        if not all(isinstance(t, types.Integer) for t in args):
            return None
        sig = types.void(*args)

        def codegen(context, builder, signature, llargs):
            intp_t = context.get_value_type(types.intp)
            vals = [context.cast(builder, v, t, types.intp) for v, t in zip(llargs, signature.args)]
            a_i, lda_v, b_i, bstr_v, kg_v, init_i, m_i, s_i, q_v, o_i, ldo_v, rows_v = vals
            i8 = ir.IntType(8)
            i32 = ir.IntType(32)
            i64 = ir.IntType(64)
            v16 = ir.VectorType(i32, 16)
            v16x64 = ir.VectorType(i64, 16)
            opty = ir.VectorType(i8, 64) if _OPERANDS_AS_BYTES else v16
            fnty = ir.FunctionType(v16, [v16, opty, opty])
            vnni = cgutils.get_or_insert_function(builder.module, fnty, _VNNI_NAME)
            i8p = i8.as_pointer()
            a_p = builder.inttoptr(a_i, i8p)
            b_p = builder.inttoptr(b_i, i8p)
            init_p = builder.inttoptr(init_i, i8p)
            o_p = builder.inttoptr(o_i, i8p)

            def const(v):
                return ir.Constant(intp_t, v)

            def load_vec(base, byte_off, ty):
                ptr = builder.bitcast(builder.gep(base, [byte_off]), ty.as_pointer())
                ld = builder.load(ptr)
                ld.align = 1
                return ld

            def splat(val, vty):
                und = ir.Constant(vty, ir.Undefined)
                one = builder.insert_element(und, val, ir.Constant(i32, 0))
                return builder.shuffle_vector(one, und, ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count))

            init_vecs = [load_vec(init_p, const(64 * j), v16) for j in range(nblk)]
            pre = builder.block
            loop_bb = builder.append_basic_block("vnni.loop")
            exit_bb = builder.append_basic_block("vnni.exit")
            builder.branch(loop_bb)  # kgroups >= 1 is a precondition (callers pad K)

            builder.position_at_end(loop_bb)
            k = builder.phi(intp_t, name="kg")
            k.add_incoming(const(0), pre)
            accs = [[builder.phi(v16) for _ in range(nblk)] for _ in range(mr)]
            for i in range(mr):
                for j in range(nblk):
                    accs[i][j].add_incoming(init_vecs[j], pre)
            boff = builder.mul(k, const(64))
            bvecs = [
                load_vec(b_p, builder.add(builder.mul(const(j), bstr_v), boff), opty) for j in range(nblk)
            ]
            aoff = builder.mul(k, const(KR))
            new = [[None] * nblk for _ in range(mr)]
            for i in range(mr):
                row_off = builder.add(builder.mul(const(i), lda_v), aoff)
                aptr = builder.bitcast(builder.gep(a_p, [row_off]), i32.as_pointer())
                a32 = builder.load(aptr)
                a32.align = 1
                aspl = splat(a32, v16)
                aop = builder.bitcast(aspl, opty) if _OPERANDS_AS_BYTES else aspl
                for j in range(nblk):
                    new[i][j] = builder.call(vnni, [accs[i][j], aop, bvecs[j]])
            k_next = builder.add(k, const(1))
            k.add_incoming(k_next, loop_bb)
            for i in range(mr):
                for j in range(nblk):
                    accs[i][j].add_incoming(new[i][j], loop_bb)
            builder.cbranch(builder.icmp_signed("<", k_next, kg_v), loop_bb, exit_bb)

            builder.position_at_end(exit_bb)
            out_bits = _OUT_BITS[mode]
            oty = ir.VectorType(ir.IntType(out_bits), 16)
            esize = out_bits // 8
            if mode != RAW32:
                m_p = builder.inttoptr(m_i, i8p)
                s_p = builder.inttoptr(s_i, i8p)
                one64 = ir.Constant(v16x64, [1] * 16)
                q64 = splat(q_v, v16x64)
                nq64 = builder.neg(q64)
                m64 = [builder.sext(load_vec(m_p, const(64 * j), v16), v16x64) for j in range(nblk)]
                sm1 = [builder.sub(load_vec(s_p, const(128 * j), v16x64), one64) for j in range(nblk)]
            for i in range(mr):
                store_bb = builder.append_basic_block(f"vnni.row{i}")
                next_bb = builder.append_basic_block(f"vnni.row{i}.done")
                builder.cbranch(builder.icmp_signed("<", const(i), rows_v), store_bb, next_bb)
                builder.position_at_end(store_bb)
                for j in range(nblk):
                    acc = new[i][j]
                    if mode == RAW32:
                        y = acc
                    else:
                        prod = builder.mul(builder.sext(acc, v16x64), m64[j])  # |acc·m| < 2^62
                        t = builder.ashr(prod, sm1[j])
                        t = builder.ashr(builder.add(t, one64), one64)
                        t = builder.select(builder.icmp_signed(">", t, q64), q64, t)
                        t = builder.select(builder.icmp_signed("<", t, nq64), nq64, t)
                        y = builder.trunc(t, oty) if out_bits < 64 else t
                    off = builder.mul(builder.add(builder.mul(const(i), ldo_v), const(16 * j)), const(esize))
                    ptr = builder.bitcast(builder.gep(o_p, [off]), oty.as_pointer())
                    st = builder.store(y, ptr)
                    st.align = 1
                builder.branch(next_bb)
                builder.position_at_end(next_bb)
            return context.get_dummy_value()

        return sig, codegen

    return ukernel


# UKERNELS[mode][nblk - 1]
ukernel_raw_1, ukernel_raw_2, ukernel_raw_3 = (make_ukernel(n, RAW32) for n in (1, 2, 3))
ukernel_rq8_1, ukernel_rq8_2, ukernel_rq8_3 = (make_ukernel(n, RQ8) for n in (1, 2, 3))
ukernel_rq16_1, ukernel_rq16_2, ukernel_rq16_3 = (make_ukernel(n, RQ16) for n in (1, 2, 3))
ukernel_rq32_1, ukernel_rq32_2, ukernel_rq32_3 = (make_ukernel(n, RQ32) for n in (1, 2, 3))

# numba's cache of a jitted caller is keyed on the caller's own source file
# only: after editing this file, clear kernels/__pycache__/gemm.*.nbi/nbc.

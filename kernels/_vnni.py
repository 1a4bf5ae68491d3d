"""AVX-512 VNNI and AMX micro-kernels for the int8 GEMM (numba ``@intrinsic`` emitting LLVM IR).

Host dispatch happens at import: :data:`HAVE_VNNI` (AVX-512F/BW/VNNI as numba
compiles for the host) and :data:`HAVE_AMX` (AMX-TILE/INT8 and Linux granted
the tile state via ``arch_prctl(ARCH_REQ_XCOMP_PERM)``).  The AMX part is at
the end of this file.

LLVM does not generate ``vpdpbusd`` from plain numba loops, so the inner
product is written as LLVM IR calling ``llvm.x86.avx512.vpdpbusd.512``
directly.  ``vpdpbusd acc, a, b`` adds, in each of the 16 int32 lanes, the
four products ``u8(a) · s8(b)`` of that lane's bytes (wrapping int32 add, no
saturation).

Micro-kernels ``ukernel_<mode>_<nblk>`` (``nblk`` ∈ 1..3, output mode raw
int32 or requantized int8/16/32, see :func:`make_ukernel`): a register block of
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
  ``128·Σw`` offset correction); after the K loop they are requantized in
  registers (or kept as int32) and the valid rows stored ``ldo`` elements apart.

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
from numba.core import cgutils
from numba.extending import intrinsic

from ._llvm import all_ints
from ._util import cpu_has

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
    return cpu_has(("avx512f", "avx512bw", "avx512vnni"), "INTENGINE_DISABLE_VNNI")


HAVE_VNNI: bool = _detect_vnni()


# Output modes of a micro-kernel (compile-time variants).
RAW32 = 0  # store the int32 accumulators
RQ8 = 1  # requantize, store int8
RQ16 = 2  # requantize, store int16
RQ32 = 3  # requantize, store int32
_OUT_BITS = {RAW32: 32, RQ8: 8, RQ16: 16, RQ32: 32}


def _requant_consts(builder, m16, s16, q_v):
    """Per-column constants of :func:`_emit_requant` for 16 lanes, split into even and odd lanes.

    ``m16`` <16 x i32> multipliers, ``s16`` <16 x i64> shifts, ``q_v`` the
    saturation bound (integer).  Returns ``(m_even, m_odd, rnd_even, rnd_odd,
    s_even, s_odd, q, -q)``, all <8 x i64> (``rnd = 2^(s-1)``).  Computed once
    per column block, outside the row/K loops.
    """
    i32 = ir.IntType(32)
    i64 = ir.IntType(64)
    v8x64 = ir.VectorType(i64, 8)
    even = ir.Constant(ir.VectorType(i32, 8), list(range(0, 16, 2)))
    odd = ir.Constant(ir.VectorType(i32, 8), list(range(1, 16, 2)))
    m_e = builder.sext(builder.shuffle_vector(m16, m16, even), v8x64)
    m_o = builder.sext(builder.shuffle_vector(m16, m16, odd), v8x64)
    s_e = builder.shuffle_vector(s16, s16, even)
    s_o = builder.shuffle_vector(s16, s16, odd)
    one = ir.Constant(v8x64, [1] * 8)
    rnd_e = builder.shl(one, builder.sub(s_e, one))
    rnd_o = builder.shl(one, builder.sub(s_o, one))
    und = ir.Constant(v8x64, ir.Undefined)
    q64 = builder.shuffle_vector(builder.insert_element(und, builder.sext(q_v, i64) if q_v.type != i64 else q_v,
                                                        ir.Constant(i32, 0)), und, ir.Constant(ir.VectorType(i32, 8), [0] * 8))
    return m_e, m_o, rnd_e, rnd_o, s_e, s_o, q64, builder.neg(q64)


def _emit_requant(builder, acc, consts, oty):
    """IR twin of ``requant.saturate(requant.round_shift(acc, m, s), q)`` on 16 int32 lanes.

    ``round_shift`` is ``((acc·m >> (s-1)) + 1) >> 1`` (= ``floor((acc·m + 2^(s-1)) / 2^s)``);
    here it is computed as ``(acc·m + 2^(s-1)) >> s`` on 64-bit lanes, the
    same integer: with ``acc·m = a·2^(s-1) + r``, ``0 ≤ r < 2^(s-1)``, both
    are ``⌊(a+1)/2⌋``; no overflow since ``|acc·m| < 2^62`` and ``s ≤ 62``.
    Even and odd lanes are multiplied separately (``vpmuldq`` reads the low
    dword of each qword: no sign-extension shuffles), clamped to ``[-q, q]``
    in 64 bits, re-interleaved into 16 dwords and truncated to ``oty``.
    """
    m_e, m_o, rnd_e, rnd_o, s_e, s_o, q64, nq64 = consts
    i64 = ir.IntType(64)
    v8x64 = ir.VectorType(i64, 8)
    a64 = builder.bitcast(acc, v8x64)
    c32 = ir.Constant(v8x64, [32] * 8)
    ev = builder.ashr(builder.shl(a64, c32), c32)  # sign-extended even lanes
    od = builder.ashr(a64, c32)  # sign-extended odd lanes
    out = []
    for x, m, rnd, sh in ((ev, m_e, rnd_e, s_e), (od, m_o, rnd_o, s_o)):
        t = builder.ashr(builder.add(builder.mul(x, m), rnd), sh)
        t = builder.select(builder.icmp_signed(">", t, q64), q64, t)
        t = builder.select(builder.icmp_signed("<", t, nq64), nq64, t)
        out.append(t)
    lo = builder.and_(out[0], ir.Constant(v8x64, [0xFFFFFFFF] * 8))
    both = builder.or_(lo, builder.shl(out[1], c32))
    y32 = builder.bitcast(both, acc.type)
    return y32 if oty.element.width == 32 else builder.trunc(y32, oty)


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
        if not all_ints(args):
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
                consts = [_requant_consts(builder, load_vec(m_p, const(64 * j), v16), load_vec(s_p, const(128 * j), v16x64), q_v)
                          for j in range(nblk)]
            for i in range(mr):
                store_bb = builder.append_basic_block(f"vnni.row{i}")
                next_bb = builder.append_basic_block(f"vnni.row{i}.done")
                builder.cbranch(builder.icmp_signed("<", const(i), rows_v), store_bb, next_bb)
                builder.position_at_end(store_bb)
                for j in range(nblk):
                    acc = new[i][j]
                    y = acc if mode == RAW32 else _emit_requant(builder, acc, consts[j], oty)
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


# ============================================================================= AMX (tdpbusd)
#
# Sapphire Rapids and later also have AMX: 8 tile registers of up to 16 rows
# × 64 bytes and ``tdpbusd`` (u8 × s8 → int32, the same arithmetic as
# ``vpdpbusd``) on whole tiles.  oneDNN (torch._int_mm) uses it, which is why
# it outruns any VNNI kernel on such hosts.  The AMX micro-kernel computes a
# 32×32 int32 block (2 A tiles × 2 B tiles → 4 accumulator tiles) over the
# whole K and stores it to an int32 scratch tile; the block epilogue
# (``make_epilogue_block``, at the end) then requantizes it with the same IR
# as the VNNI epilogue (``_emit_requant``), per-column constants loaded once.
#
# B tiles are the VNNI packing read 16 K-groups at a time: for column block
# ``nb`` and K-chunk ``kc`` the 16 rows × 64 bytes at ``wp[nb, 16·kc : 16·kc+16]``
# are contiguous (row stride 64), so K is padded to 64 and N to 32.

AMX_MR = 32
AMX_NR = 32
AMX_KC = 64  # bytes of K per tile step

ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86-64


def _detect_amx() -> bool:
    """AMX-INT8 usable: the CPU (as numba compiles for it) has it and Linux grants the tile state."""
    if os.environ.get("INTENGINE_DISABLE_AMX", "") not in ("", "0") or not HAVE_VNNI:
        return False
    if not cpu_has(("amx-tile", "amx-int8")):
        return False
    try:
        import ctypes
        import platform

        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except Exception:  # pragma: no cover - exotic hosts
        return False


HAVE_AMX: bool = _detect_amx()


def amx_tile_config():
    """The 64-byte ``ldtilecfg`` block: palette 1, tiles 0..7 all 16 rows × 64 bytes."""
    import numpy as np

    cfg = np.zeros(64, dtype=np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:8] = 64
    cfg[48:56] = 16
    return cfg


def make_amx_32x32(signed_a: bool):
    """Build ``amx(cfg, a, lda, b0, b1, kchunks, c)``: ``tdpbssd`` (int8 A) or ``tdpbusd`` (uint8 A)."""

    @intrinsic
    def amx_32x32(typingctx, cfg_addr, a_addr, lda, b0_addr, b1_addr, kchunks, c_addr, accumulate):
        """C[32×32] int32 (row stride 128 bytes at ``c_addr``) (+)= A[32 rows, lda] · (B0 | B1), ``kchunks`` ≥ 1.

        A: int8/uint8 rows ``lda`` bytes apart, read 64 bytes per step; B0/B1:
        the packed column blocks (1024 contiguous bytes per step).  With
        ``accumulate`` nonzero the tiles start from C (K-blocked callers),
        else from zero.  ``cfg_addr`` nonzero loads that tile configuration
        first (``ldtilecfg``); pass 0 when this thread already loaded it.
        """
        args = (cfg_addr, a_addr, lda, b0_addr, b1_addr, kchunks, c_addr, accumulate)
        if not all_ints(args):
            return None
        sig = types.void(*args)

        def codegen(context, builder, signature, llargs):
            intp_t = context.get_value_type(types.intp)
            cfg_i, a_i, lda_v, b0_i, b1_i, kc_v, c_i, acc_v = [
                context.cast(builder, v, t, types.intp) for v, t in zip(llargs, signature.args)
            ]
            i8 = ir.IntType(8)
            i8p = i8.as_pointer()
            void = ir.VoidType()
            mod = builder.module
            ldcfg = cgutils.get_or_insert_function(mod, ir.FunctionType(void, [i8p]), "llvm.x86.ldtilecfg")
            tzero = cgutils.get_or_insert_function(mod, ir.FunctionType(void, [i8]), "llvm.x86.tilezero")
            tload = cgutils.get_or_insert_function(mod, ir.FunctionType(void, [i8, i8p, intp_t]), "llvm.x86.tileloadd64")
            tstore = cgutils.get_or_insert_function(mod, ir.FunctionType(void, [i8, i8p, intp_t]), "llvm.x86.tilestored64")
            tdp = cgutils.get_or_insert_function(mod, ir.FunctionType(void, [i8, i8, i8]), "llvm.x86.tdpbssd" if signed_a else "llvm.x86.tdpbusd")

            def const(v):
                return ir.Constant(intp_t, v)

            def tile(n):
                return ir.Constant(i8, n)

            def ptr(addr):
                return builder.inttoptr(addr, i8p)

            with builder.if_then(builder.icmp_signed("!=", cfg_i, const(0))):
                builder.call(ldcfg, [ptr(cfg_i)])
            ldc = const(AMX_NR * 4)
            c_offs = (0, 64, 16 * AMX_NR * 4, 16 * AMX_NR * 4 + 64)  # tiles 4..7 inside the 32×32 block
            with builder.if_else(builder.icmp_signed("!=", acc_v, const(0))) as (then, otherwise):
                with then:
                    for t, off in zip((4, 5, 6, 7), c_offs):
                        builder.call(tload, [tile(t), ptr(builder.add(c_i, const(off))), ldc])
                with otherwise:
                    for t in (4, 5, 6, 7):
                        builder.call(tzero, [tile(t)])
            a_hi = builder.add(a_i, builder.mul(lda_v, const(16)))
            pre = builder.block
            loop_bb = builder.append_basic_block("amx.loop")
            exit_bb = builder.append_basic_block("amx.exit")
            builder.branch(loop_bb)
            builder.position_at_end(loop_bb)
            k = builder.phi(intp_t, name="kc")
            k.add_incoming(const(0), pre)
            aoff = builder.mul(k, const(AMX_KC))
            boff = builder.mul(k, const(1024))
            # each product issued as soon as its two tiles are loaded (tiles are not
            # renamed: this lets the next loads overlap the earlier products)
            builder.call(tload, [tile(2), ptr(builder.add(b0_i, boff)), const(64)])
            builder.call(tload, [tile(0), ptr(builder.add(a_i, aoff)), lda_v])
            builder.call(tdp, [tile(4), tile(0), tile(2)])
            builder.call(tload, [tile(3), ptr(builder.add(b1_i, boff)), const(64)])
            builder.call(tdp, [tile(5), tile(0), tile(3)])
            builder.call(tload, [tile(1), ptr(builder.add(a_hi, aoff)), lda_v])
            builder.call(tdp, [tile(6), tile(1), tile(2)])
            builder.call(tdp, [tile(7), tile(1), tile(3)])
            k_next = builder.add(k, const(1))
            k.add_incoming(k_next, loop_bb)
            builder.cbranch(builder.icmp_signed("<", k_next, kc_v), loop_bb, exit_bb)
            builder.position_at_end(exit_bb)
            for t, off in zip((4, 5, 6, 7), c_offs):
                builder.call(tstore, [tile(t), ptr(builder.add(c_i, const(off))), ldc])
            return context.get_dummy_value()

        return sig, codegen

    return amx_32x32


amx_32x32_ss = make_amx_32x32(True)  # int8 activations: no +128 offset needed
amx_32x32_us = make_amx_32x32(False)  # uint8 activations (softmax probabilities)


@intrinsic
def amx_release(typingctx):
    """``tilerelease``: return the thread's tile state to INIT (smaller context switches)."""
    sig = types.void()

    def codegen(context, builder, signature, llargs):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.tilerelease")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


def make_epilogue_block(mode: int):
    """``epi(c_addr, ldc, rows, init_addr, m_addr, s_addr, q, out_addr, ldo)``: a ``rows × 32`` int32 block → output.

    Row ``r < rows`` of the int32 block at ``c_addr + r·ldc`` (bytes) plus the
    32 int32 ``init`` values is requantized (``mode`` RQ8/16/32, the IR of
    :func:`_emit_requant`, i.e. ``requant.round_shift``/``saturate``) or kept
    (RAW32) and its 32 elements stored at ``out_addr + r·ldo`` (bytes).  The
    per-column ``init``/``m``/``s`` vectors are loaded once for the whole block
    (a 16-lane-per-call epilogue reloaded them every time: ~2× slower).
    """

    @intrinsic
    def epi(typingctx, c_addr, ldc, rows, init_addr, m_addr, s_addr, q, out_addr, ldo):
        args = (c_addr, ldc, rows, init_addr, m_addr, s_addr, q, out_addr, ldo)
        if not all_ints(args):
            return None
        sig = types.void(*args)

        def codegen(context, builder, signature, llargs):
            intp_t = context.get_value_type(types.intp)
            c_i, ldc_v, rows_v, init_i, m_i, s_i, q_v, o_i, ldo_v = [
                context.cast(builder, v, t, types.intp) for v, t in zip(llargs, signature.args)
            ]
            i32 = ir.IntType(32)
            i64 = ir.IntType(64)
            v16 = ir.VectorType(i32, 16)
            v16x64 = ir.VectorType(i64, 16)
            oty = ir.VectorType(ir.IntType(_OUT_BITS[mode]), 16)
            esize = _OUT_BITS[mode] // 8

            def const(v):
                return ir.Constant(intp_t, v)

            def load(addr, ty):
                ld = builder.load(builder.inttoptr(addr, ty.as_pointer()))
                ld.align = 1
                return ld

            inits = [load(builder.add(init_i, const(64 * j)), v16) for j in range(2)]
            if mode != RAW32:
                consts = [_requant_consts(builder, load(builder.add(m_i, const(64 * j)), v16),
                                          load(builder.add(s_i, const(128 * j)), v16x64), q_v) for j in range(2)]
            pre = builder.block
            loop_bb = builder.append_basic_block("epib.loop")
            exit_bb = builder.append_basic_block("epib.exit")
            builder.cbranch(builder.icmp_signed(">", rows_v, const(0)), loop_bb, exit_bb)
            builder.position_at_end(loop_bb)
            r = builder.phi(intp_t, name="row")
            r.add_incoming(const(0), pre)
            c_row = builder.add(c_i, builder.mul(r, ldc_v))
            o_row = builder.add(o_i, builder.mul(r, ldo_v))
            for j in range(2):
                acc = builder.add(load(builder.add(c_row, const(64 * j)), v16), inits[j])
                y = acc if mode == RAW32 else _emit_requant(builder, acc, consts[j], oty)
                st = builder.store(y, builder.inttoptr(builder.add(o_row, const(16 * esize * j)), oty.as_pointer()))
                st.align = 1
            r_next = builder.add(r, const(1))
            r.add_incoming(r_next, loop_bb)
            builder.cbranch(builder.icmp_signed("<", r_next, rows_v), loop_bb, exit_bb)
            builder.position_at_end(exit_bb)
            return context.get_dummy_value()

        return sig, codegen

    return epi


epib_raw, epib_rq8, epib_rq16, epib_rq32 = (make_epilogue_block(m) for m in (RAW32, RQ8, RQ16, RQ32))


@intrinsic
def transpose16x16_i32(typingctx, src_addr, src_stride, dst_addr):
    """``dst[k, j] = src[j, k]`` for a 16×16 block of 32-bit words (the VNNI packing of 16 B rows).

    ``src``: 16 rows of 16 words, ``src_stride`` bytes apart; ``dst``: 16
    contiguous rows of 64 bytes.  Four rounds of two-source shuffles (row
    pairs ``i``, ``i + s`` for ``s`` = 8, 4, 2, 1 exchange their ``s``-blocks),
    64 ``vpermt2d`` in all, instead of 256 scalar word moves.
    """
    args = (src_addr, src_stride, dst_addr)
    if not all_ints(args):
        return None
    sig = types.void(*args)

    def codegen(context, builder, signature, llargs):
        intp_t = context.get_value_type(types.intp)
        src_i, stride_v, dst_i = [context.cast(builder, v, t, types.intp) for v, t in zip(llargs, signature.args)]
        i32 = ir.IntType(32)
        v16 = ir.VectorType(i32, 16)
        rows = []
        for i in range(16):
            addr = builder.add(src_i, builder.mul(stride_v, ir.Constant(intp_t, i)))
            ld = builder.load(builder.inttoptr(addr, v16.as_pointer()))
            ld.align = 1
            rows.append(ld)
        for s in (8, 4, 2, 1):
            lo_mask = ir.Constant(v16, [e if (e & s) == 0 else 16 + e - s for e in range(16)])
            hi_mask = ir.Constant(v16, [e + s if (e & s) == 0 else 16 + e for e in range(16)])
            new = [None] * 16
            for i in range(16):
                if i & s:
                    continue
                new[i] = builder.shuffle_vector(rows[i], rows[i + s], lo_mask)
                new[i + s] = builder.shuffle_vector(rows[i], rows[i + s], hi_mask)
            rows = new
        for k in range(16):
            addr = builder.add(dst_i, ir.Constant(intp_t, 64 * k))
            st = builder.store(rows[k], builder.inttoptr(addr, v16.as_pointer()))
            st.align = 1
        return context.get_dummy_value()

    return sig, codegen

"""Small llvmlite helpers shared by the hand-written vector kernels (``@intrinsic`` codegen):
16 int32 / 8 int64 lane types with load and splat, a counted loop built from phi nodes, and
``llvm.vector.reduce``."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils


def all_ints(tys) -> bool:
    """The typing check of an intrinsic on integer addresses and scalars: every argument type
    is an integer (otherwise numba tries other overloads)."""
    return all(isinstance(t, types.Integer) for t in tys)


def args_i64(context, builder, signature, llargs) -> list:
    """An intrinsic's integer arguments, each cast to int64."""
    return [context.cast(builder, v, t, types.int64) for v, t in zip(llargs, signature.args)]


def vec_helpers(builder):
    """``(i32, i64, v16, v8, load, splat, at)`` for ``builder``: lane types, an unaligned 16×int32
    load from an int64 address, a splat of a scalar, and ``base + i·step``."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    v16, v8 = ir.VectorType(i32, 16), ir.VectorType(i64, 8)

    def load(addr, ty=v16):
        ld = builder.load(builder.inttoptr(addr, ty.as_pointer()))
        ld.align = 4
        return ld

    def splat(val, ty=v16):
        val = builder.trunc(val, ty.element) if val.type != ty.element else val
        vec = builder.insert_element(ir.Constant(ty, ir.Undefined), val, ir.Constant(i32, 0))
        return builder.shuffle_vector(vec, ir.Constant(ty, ir.Undefined), ir.Constant(ir.VectorType(i32, ty.count),
                                                                                        [0] * ty.count))

    def at(base, i, step):
        return builder.add(base, builder.mul(i, ir.Constant(i64, step)))

    return i32, i64, v16, v8, load, splat, at


def counted_loop(builder, n, inits, body):
    """``for i in range(n): vals = body(i, vals)`` in LLVM IR (phi nodes); returns the final values."""
    i64 = ir.IntType(64)
    pre = builder.block
    loop = builder.append_basic_block("ln.loop")
    done = builder.append_basic_block("ln.done")
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), pre)
    phis = []
    for v in inits:
        p = builder.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    new = body(i, phis)
    i1 = builder.add(i, ir.Constant(i64, 1))
    end = builder.block
    i.add_incoming(i1, end)
    for p, v in zip(phis, new):
        p.add_incoming(v, end)
    builder.cbranch(builder.icmp_signed("<", i1, n), loop, done)
    builder.position_at_end(done)
    outs = []
    for v0, v in zip(inits, new):
        p = builder.phi(v0.type)
        p.add_incoming(v0, pre)
        p.add_incoming(v, end)
        outs.append(p)
    return outs


def vector_reduce(builder, kind, vec):
    """``llvm.vector.reduce.<kind>`` (add, smin, smax) of an integer vector: a log-step shuffle tree."""
    ty = vec.type
    name = f"llvm.vector.reduce.{kind}.v{ty.count}i{ty.element.width}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty.element, [ty]), name)
    return builder.call(fn, [vec])


def lane_ops(builder):
    """``(smin, smax, even, odd)`` on integer vectors: signed min/max (``select``), and for 16
    int32 lanes the 8 int64 lanes holding the sign-extended even (odd) ones, the form LLVM
    multiplies with ``vpmuldq`` (the odd lanes moved down by ``vpshufd``, port 5)."""
    v16, v8 = ir.VectorType(ir.IntType(32), 16), ir.VectorType(ir.IntType(64), 8)
    c32 = ir.Constant(v8, [32] * 8)

    def smin(a, b):
        return builder.select(builder.icmp_signed("<", a, b), a, b)

    def smax(a, b):
        return builder.select(builder.icmp_signed(">", a, b), a, b)

    def even(v):
        return builder.ashr(builder.shl(builder.bitcast(v, v8), c32), c32)

    def odd(v):
        return even(builder.shuffle_vector(v, v, ir.Constant(v16, [k | 1 for k in range(16)])))

    return smin, smax, even, odd


def join_dwords(builder, lo, hi, high: int = 0):
    """16 int32 lanes from the 8 int64 lanes of the even (``lo``) and the odd (``hi``) elements
    (the inverse of :func:`lane_ops`' ``even``/``odd``): their low dwords, or with ``high=1``
    their high dwords (one ``vpermt2d``)."""
    v16 = ir.VectorType(ir.IntType(32), 16)
    idx = [k + high if k % 2 == 0 else 15 + k + high for k in range(16)]
    return builder.shuffle_vector(builder.bitcast(lo, v16), builder.bitcast(hi, v16), ir.Constant(v16, idx))


def pack_i8x64(builder, vecs):
    """Four vectors of 16 int32 → 64 int8 in element order, each clipped to [-127, 127]:
    ``vpackssdw``/``vpacksswb`` saturate to [-128, 127] (interleaving per 128-bit lane, so
    dword ``4j + t`` holds vector ``t``'s dword ``j``), then ``max(·, -127)`` and one
    ``vpermd`` restore the order.  Returned as 16 int32 lanes, ready for one store."""
    v16 = ir.VectorType(ir.IntType(32), 16)
    v32x16, v64x8 = ir.VectorType(ir.IntType(16), 32), ir.VectorType(ir.IntType(8), 64)
    mod = builder.module

    def decl(name, ret, arg):
        return cgutils.get_or_insert_function(mod, ir.FunctionType(ret, [arg, arg]), name)

    packdw = decl("llvm.x86.avx512.packssdw.512", v32x16, v16)
    packwb = decl("llvm.x86.avx512.packsswb.512", v64x8, v32x16)
    b8 = builder.call(packwb, [builder.call(packdw, list(vecs[:2])), builder.call(packdw, list(vecs[2:]))])
    qlo = ir.Constant(v64x8, [-127] * 64)
    words = builder.bitcast(builder.select(builder.icmp_signed(">", b8, qlo), b8, qlo), v16)
    return builder.shuffle_vector(words, words, ir.Constant(v16, [4 * (t % 4) + t // 4 for t in range(16)]))


def pmaddwd(builder, a, b):
    """``vpmaddwd`` of two vectors of 16 int32 lanes, each read as two int16 words: ``lo(a)·lo(b) +
    hi(a)·hi(b)`` per lane (an add of its result into an accumulator becomes ``vpdpwssd`` on
    AVX512-VNNI hosts)."""
    v16, v32x16 = ir.VectorType(ir.IntType(32), 16), ir.VectorType(ir.IntType(16), 32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v32x16, v32x16]),
                                        "llvm.x86.avx512.pmaddw.d.512")
    return builder.call(fn, [builder.bitcast(a, v32x16), builder.bitcast(b, v32x16)])


def prefetch(builder, addr) -> None:
    """``prefetcht0`` (``llvm.prefetch``: a read, locality 3) of the line at the int64 address ``addr``."""
    i32 = ir.IntType(32)
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0")
    builder.call(fn, [builder.inttoptr(addr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])

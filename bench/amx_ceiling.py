"""What this host's AMX unit allows: tile products and tile loads timed alone and together.

    python bench/amx_ceiling.py [--reps N] [--steps N] [--linear M,K,N]

One thread.  Each candidate is a loop of "steps"; a step is what the 2×2
micro-kernel of ``intengine.kernels._vnni.amx_32x32_*`` does per 64 bytes of K
(four ``tileloadd`` of 1 KB: two A tiles, two B tiles; four ``tdpbssd``
16×16×64 products into four accumulator tiles), or only its products, or only
its loads.  The operands cycle through a 256 KB buffer (in L2, as the GEMM's
packed weight panels are while a thread sweeps them).  A last row times
intengine's ``linear`` (int8 out, one thread, the same operands every call)
in the same repetitions.  Every repetition runs each candidate once, round
robin; the table shows medians.

The 2×2 row is the ceiling of the GEMM's inner loop on this host (8 tile
registers: no blocking issues fewer loads per product), so the ``linear`` row
is read against it, not against the products-only row.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from intengine.kernels import _vnni, gemm
from intengine.kernels.requant import quantize_multipliers

FOOTPRINT = 256 << 10  # bytes the loads cycle through (a power of two)

# one step of each candidate: ("L", tile, 1 KB slot) loads, ("D", c, a, b) products
STEPS = {
    "2x2 step: 4 tileloadd + 4 tdpbssd": [("L", 2, 0), ("L", 0, 1), ("D", 4, 0, 2), ("L", 3, 2), ("D", 5, 0, 3),
                                           ("L", 1, 3), ("D", 6, 1, 2), ("D", 7, 1, 3)],
    "4 tdpbssd only": [("D", 4, 0, 2), ("D", 5, 0, 3), ("D", 6, 1, 2), ("D", 7, 1, 3)],
    "4 tileloadd only": [("L", 0, 0), ("L", 1, 1), ("L", 2, 2), ("L", 3, 3)],
}


def _make_loop(step):
    @intrinsic
    def loop(typingctx, cfg_addr, buf_addr, nsteps, c_addr):
        sig = types.void(cfg_addr, buf_addr, nsteps, c_addr)

        def codegen(context, builder, signature, llargs):
            i64, i8 = ir.IntType(64), ir.IntType(8)
            i8p, void = i8.as_pointer(), ir.VoidType()
            cfg, buf, n, c = [context.cast(builder, v, t, types.int64) for v, t in zip(llargs, signature.args)]
            mod = builder.module

            def fn(name, args):
                return cgutils.get_or_insert_function(mod, ir.FunctionType(void, args), name)

            ldcfg, tzero = fn("llvm.x86.ldtilecfg", [i8p]), fn("llvm.x86.tilezero", [i8])
            tload, tstore = fn("llvm.x86.tileloadd64", [i8, i8p, i64]), fn("llvm.x86.tilestored64", [i8, i8p, i64])
            tdp = fn("llvm.x86.tdpbssd", [i8, i8, i8])
            const, tile = (lambda v: ir.Constant(i64, v)), (lambda t: ir.Constant(i8, t))
            builder.call(ldcfg, [builder.inttoptr(cfg, i8p)])
            for t in range(8):
                builder.call(tzero, [tile(t)])
            pre = builder.block
            body, done = builder.append_basic_block("step"), builder.append_basic_block("done")
            builder.branch(body)
            builder.position_at_end(body)
            k = builder.phi(i64)
            k.add_incoming(const(0), pre)
            base = builder.add(buf, builder.and_(builder.mul(k, const(4096)), const(FOOTPRINT - 1)))
            for op in step:
                if op[0] == "L":
                    addr = builder.inttoptr(builder.add(base, const(1024 * op[2])), i8p)
                    builder.call(tload, [tile(op[1]), addr, const(64)])
                else:
                    builder.call(tdp, [tile(op[1]), tile(op[2]), tile(op[3])])
            k_next = builder.add(k, const(1))
            k.add_incoming(k_next, body)
            builder.cbranch(builder.icmp_signed("<", k_next, n), body, done)
            builder.position_at_end(done)
            for t in range(4, 8):  # keep the products observable
                builder.call(tstore, [tile(t), builder.inttoptr(builder.add(c, const(1024 * (t - 4))), i8p),
                                      const(64)])
            builder.call(fn("llvm.x86.tilerelease", []), [])
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit
    def run(cfg, buf, nsteps, c):
        loop(cfg.ctypes.data, buf.ctypes.data, nsteps, c.ctypes.data)

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--steps", type=int, default=20000, help="loop steps per timed call")
    ap.add_argument("--linear", default="128,3072,768", help="M,K,N of the linear row")
    args = ap.parse_args(argv)
    print("$ python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]))
    if not _vnni.HAVE_AMX:
        print("# this host has no usable AMX-INT8: nothing to measure")
        return 0
    cfg = _vnni.amx_tile_config()
    buf = np.random.default_rng(0).integers(-128, 128, FOOTPRINT + 4096, dtype=np.int64).astype(np.int8)
    c = np.zeros(1024, np.int32)
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    mm, kk, nn = (int(v) for v in args.linear.split(","))
    x = rng.integers(-127, 128, (mm, kk), dtype=np.int64).astype(np.int8)
    packed = gemm.pack_weight_cpu(rng.integers(-127, 128, (nn, kk), dtype=np.int64).astype(np.int8))
    m_i32, shift = quantize_multipliers(rng.uniform(1e-4, 3e-4, nn))
    out = np.empty((mm, nn), np.int8)
    # (name, call, products per call of 2·16·16·64 operations, steps per call)
    loops = {name: _make_loop(step) for name, step in STEPS.items()}
    cands = [(name, (lambda r=r: r(cfg, buf, args.steps, c)), sum(op[0] == "D" for op in STEPS[name]) * args.steps,
              args.steps) for name, r in loops.items()]
    cands.append((f"intengine linear M={mm} K={kk} N={nn} int8 out", lambda: gemm.linear_cpu(x, packed, None, m_i32,
                  shift, out=out), mm * kk * nn / (16 * 16 * 64), 0))
    for _, call, _, _ in cands:
        call()  # compile, and warm the tile state
    times: dict[str, list[float]] = {name: [] for name, *_ in cands}
    for _ in range(args.reps):
        for name, call, _, _ in cands:
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    print(f"# one thread, {args.reps} interleaved reps; loops of {args.steps} steps over {FOOTPRINT >> 10} KB; "
          f"TOPS = 2·16·16·64 operations per tdpbssd")
    hdr = ["candidate", "ns/step (median)", "TOPS/core (median)", "TOPS/core (best)"]
    rows = []
    for name, _, products, steps in cands:
        med, best = float(np.median(times[name])), min(times[name])
        tops = [f"{products * 2 * 16 * 16 * 64 / t / 1e12:.2f}" if products else "-" for t in (med, best)]
        rows.append([name, f"{med / steps * 1e9:.1f}" if steps else "-", *tops])
    widths = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
    print(" | ".join(h.ljust(w) for h, w in zip(hdr, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kernel benchmarks: intengine kernels against torch / onnxruntime, measured side by side.

    python bench/kernels.py [--quick] [--only SUBSTRING] [--reps N]

Prints the command line that made it, then one table.  Every group of rows
(one kernel, one shape) is measured *interleaved*: each repetition runs every
candidate once, round robin, so load from other processes hits all of them
alike; the table shows medians (and the best run), the rate (GOPS for
products, Melem/s for elementwise kernels) and, on intengine rows, the speedup
over every comparison of the group (``>1`` = intengine faster).

Cache state: the first row of a group and every comparison run right after a
candidate that worked on other data (a GEMM's weights come from L3, as in a
forward pass); the later intengine rows of a ``linear`` group (int32 out, the
forced VNNI kernel) reuse the first row's operands and start warm, so read
the first row against the comparisons.

Adding a kernel family is one function::

    @bench("gelu")
    def gelu_rows(cfg):
        x = ...
        yield Group("gelu", f"{x.shape}", work=x.size, unit="Melem/s",
                    ours={"cpu": lambda: gelu_cpu(x, ...)},
                    baselines={"torch GELU fp32": lambda: F.gelu(xt)})

Threads: torch, numba and onnxruntime are all limited to ``--threads`` (2).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np


@dataclass
class Group:
    """One kernel at one shape: our implementations and the comparisons, timed together."""

    kernel: str
    shape: str
    work: float  # operations (GOPS) or elements (Melem/s) per call
    unit: str  # "GOPS" or "Melem/s"
    ours: dict[str, Callable[[], object]]
    baselines: dict[str, Callable[[], object]] = field(default_factory=dict)


@dataclass
class Config:
    quick: bool
    reps: int
    warmup: int
    threads: int


BENCHES: dict[str, Callable[[Config], Iterable[Group]]] = {}


def bench(name: str):
    """Register a row generator ``fn(cfg) -> iterable of Group``."""

    def deco(fn):
        BENCHES[name] = fn
        return fn

    return deco


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, list[float]]:
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def _rate(work: float, unit: str, seconds: float) -> float:
    return work / seconds / (1e9 if unit == "GOPS" else 1e6)


def run_group(g: Group, cfg: Config) -> list[list[str]]:
    fns = {**{f"intengine {k}": v for k, v in g.ours.items()}, **g.baselines}
    times = time_interleaved(fns, cfg.reps, cfg.warmup)
    med = {k: float(np.median(v)) for k, v in times.items()}
    best = {k: float(np.min(v)) for k, v in times.items()}
    rows = []
    for k in fns:
        ours = k.startswith("intengine ")
        speedups = " ".join(f"{b}:{med[b] / med[k]:.2f}x" for b in g.baselines) if ours else ""
        rows.append([
            g.kernel, k, g.shape, f"{med[k] * 1e3:.3f}", f"{best[k] * 1e3:.3f}",
            f"{_rate(g.work, g.unit, med[k]):.0f} {g.unit}", speedups,
        ])
    return rows


HEADER = ["kernel", "impl", "shape", "median ms", "best ms", "rate (median)", "speedup vs (median/median)"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows + [HEADER]) for i in range(len(HEADER))]
    line = " | ".join(h.ljust(w) for h, w in zip(HEADER, widths))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)), flush=True)


# ============================================================================= GEMM family

BERT_LINEAR = [(768, 768), (768, 3072), (3072, 768)]  # (K, N)


def _ort_matmul_integer(k: int, w_kn_i8: np.ndarray, threads: int):
    """An in-memory ONNX MatMulInteger (uint8 activations with zero point 128 × int8 weights)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w_init = numpy_helper.from_array(w_kn_i8, "W")
    azp = numpy_helper.from_array(np.array(128, np.uint8), "a_zp")
    node = helper.make_node("MatMulInteger", ["A", "W", "a_zp"], ["Y"])
    graph = helper.make_graph(
        [node], "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", w_kn_i8.shape[1]])],
        initializer=[w_init, azp],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # a one-node session gains nothing from spinning; its spinning pool would steal the cores
    # from whichever candidate runs next in the interleaved loop
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda a_u8: sess.run(None, {"A": a_u8})[0]


def _cpu_path(m: int, k: int) -> str:
    from intengine.kernels import _vnni, gemm

    if gemm._want_amx(m, k):
        return "amx"
    return "vnni" if _vnni.HAVE_VNNI else "portable"


@bench("gemm")
def gemm_rows(cfg: Config) -> Iterable[Group]:
    import torch

    from intengine.kernels import _vnni, gemm
    from intengine.kernels.requant import quantize_multipliers

    rng = np.random.default_rng(0)
    ms = [128] if cfg.quick else [128, 1024]
    for m in ms:
        for k, n in BERT_LINEAR:
            path = _cpu_path(m, k)
            x = rng.integers(-127, 128, (m, k), dtype=np.int64).astype(np.int8)
            w = rng.integers(-127, 128, (n, k), dtype=np.int64).astype(np.int8)
            bias = rng.integers(-(2**16), 2**16, n, dtype=np.int64).astype(np.int32)
            m_i32, shift = quantize_multipliers(rng.uniform(1e-4, 3e-4, n))
            for const in (bias, m_i32, shift):  # read-only, like the runtime's constants (validated once per layer)
                const.setflags(write=False)
            packed = gemm.pack_weight_cpu(w)
            ours = {
                f"cpu[{path}] linear+requant int8": lambda: gemm.linear_cpu(x, packed, bias, m_i32, shift),
                f"cpu[{path}] linear int32": lambda: gemm.linear_cpu(x, packed, bias),
            }
            if _vnni.HAVE_AMX:
                ours["cpu[vnni, forced] linear+requant int8"] = lambda: gemm.linear_vnni(
                    x, packed, bias, m_i32, shift, use_amx=False)
            if not cfg.quick or m == 128 and k == n:
                ours["portable linear+requant"] = (
                    lambda p=gemm.pack_weight_portable(w): gemm.linear_portable(x, p, bias, m_i32, shift)
                )
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            xf, wf = xt.float(), wt.float().t().contiguous()
            wt_t = wt.t()  # [K, N] column-major view: what _int_mm wants
            ort_mm = _ort_matmul_integer(k, np.ascontiguousarray(w.T), cfg.threads)
            xu = (x.view(np.uint8) ^ np.uint8(0x80))
            baselines = {
                "torch fp32 matmul": lambda: torch.matmul(xf, wf),
                "torch._int_mm": lambda: torch._int_mm(xt, wt_t),
                "ORT MatMulInteger": lambda: ort_mm(xu),
            }
            yield Group("linear", f"M={m} K={k} N={n}", 2.0 * m * n * k, "GOPS", ours, baselines)

    # attention products (batched NT matmul): Q·Kᵀ (int8) and P·V (uint8 P, V passed transposed)
    heads, dh = 12, 64
    shapes = [(1, 128), (8, 128)] if cfg.quick else [(1, 128), (8, 128), (1, 512)]
    for bsz, seq in shapes:
        q = rng.integers(-127, 128, (bsz, heads, seq, dh), dtype=np.int64).astype(np.int8)
        kk = rng.integers(-127, 128, (bsz, heads, seq, dh), dtype=np.int64).astype(np.int8)
        p = rng.integers(0, 256, (bsz, heads, seq, seq), dtype=np.int64).astype(np.uint8)
        vt = rng.integers(-127, 128, (bsz, heads, dh, seq), dtype=np.int64).astype(np.int8)
        qf, kf = torch.from_numpy(q).float(), torch.from_numpy(kk).float()
        pf, vf = torch.from_numpy(p).float(), torch.from_numpy(vt).float().transpose(-1, -2).contiguous()
        ops_qk = 2.0 * bsz * heads * seq * seq * dh
        portable = bsz == 1 and seq == 128
        qk_ours = {f"cpu[{_cpu_mm_path(seq)}] int8 +requant": lambda: gemm.matmul_cpu(q, kk, 1 << 30, 20)}
        pv_ours = {f"cpu[{_cpu_mm_path(seq)}] uint8 P +requant": lambda: gemm.matmul_cpu(p, vt, 1 << 30, 20)}
        if portable:
            qk_ours["portable int8 +requant"] = lambda: gemm.matmul_portable(q, kk, 1 << 30, 20)
            pv_ours["portable uint8 P +requant"] = lambda: gemm.matmul_portable(p, vt, 1 << 30, 20)
        yield Group("matmul Q·Kᵀ", f"B={bsz} H={heads} S={seq} d={dh}", ops_qk, "GOPS", qk_ours,
                    {"torch fp32 matmul": lambda: torch.matmul(qf, kf.transpose(-1, -2))})
        yield Group("matmul P·V", f"B={bsz} H={heads} S={seq} d={dh}", ops_qk, "GOPS", pv_ours,
                    {"torch fp32 matmul": lambda: torch.matmul(pf, vf)})

    # DeBERTa relative-position term: activations × a constant int8 table [H, 2S, d], broadcast over the batch
    for bsz in (1, 8):
        seq = 128
        qa = rng.integers(-127, 128, (bsz, heads, seq, dh), dtype=np.int64).astype(np.int8)
        table = rng.integers(-127, 128, (heads, 2 * seq, dh), dtype=np.int64).astype(np.int8)
        packed_t = gemm.pack_matmul_b_cpu(table)
        qaf, tf = torch.from_numpy(qa).float(), torch.from_numpy(table).float()
        yield Group(
            "matmul c2p", f"B={bsz} H={heads} T={seq} 2S={2 * seq} d={dh}", 2.0 * bsz * heads * seq * 2 * seq * dh, "GOPS",
            {f"cpu[{_cpu_mm_path(seq)}] pack_matmul_b table": lambda: gemm.matmul_cpu(qa, packed_t, 1 << 30, 20),
             f"cpu[{_cpu_mm_path(seq)}] raw table": lambda: gemm.matmul_cpu(qa, table, 1 << 30, 20)},
            {"torch fp32 matmul": lambda: torch.matmul(qaf, tf.transpose(-1, -2))},
        )


def _cpu_mm_path(m: int) -> str:
    from intengine.kernels import _vnni, gemm

    if _vnni.HAVE_AMX and m >= gemm.AMX_MM_MIN_M:
        return "amx"
    return "vnni" if _vnni.HAVE_VNNI else "portable"


@bench("nonlinear")
def nonlinear_rows(cfg: Config) -> Iterable[Group]:
    """Integer GELU / softmax / LayerNorm / tanh / requantize against torch's float ops on the same tensor."""
    import torch
    import torch.nn.functional as F

    from intengine.kernels import gelu, layernorm, requant, softmax, tanh
    from intengine.kernels.requant import quantize_multiplier, quantize_multipliers

    rng = np.random.default_rng(1)
    m = 128 if cfg.quick else 1024

    # GELU on the FC1 output [M, 3072]: int32 accumulators (vector path) and int8 (table path), requantized to int8
    acc = rng.integers(-(2**20), 2**20, (m, 3072), dtype=np.int64).astype(np.int32)
    x8 = rng.integers(-127, 128, (m, 3072), dtype=np.int64).astype(np.int8)
    p32 = gelu.gelu_params(4.0 / 2**20, in_bits=21, out_scale=4.0 / 127)
    p8 = gelu.gelu_params(4.0 / 127, out_scale=4.0 / 127)
    xf = torch.from_numpy(acc.astype(np.float32) * (4.0 / 2**20))
    yield Group("gelu", f"{m}x3072 int32→int8", acc.size, "Melem/s",
                {"cpu int32 in, int8 out": lambda: gelu.gelu_cpu(acc, **p32.kernel_args)},
                {"torch GELU fp32": lambda: F.gelu(xf)})
    yield Group("gelu", f"{m}x3072 int8→int8", x8.size, "Melem/s",
                {"cpu int8 in, int8 out": lambda: gelu.gelu_cpu(x8, **p8.kernel_args)},
                {"torch GELU fp32": lambda: F.gelu(xf)})

    # softmax over attention scores [B, H, S, S] with a key mask
    b = 1 if cfg.quick else 8
    scores = rng.integers(-3000, 3000, (b, 12, 128, 128), dtype=np.int64).astype(np.int32)
    mask = np.ones((b, 1, 1, 128), np.bool_)
    mask[..., 100:] = False
    ps = softmax.softmax_params(0.004)
    sf = torch.from_numpy(scores.astype(np.float32) * 0.004)
    add_mask = torch.from_numpy(np.where(mask, 0.0, -1e4).astype(np.float32))
    yield Group("softmax", f"{b}x12x128x128 masked", scores.size, "Melem/s",
                {"cpu i-softmax u8": lambda: softmax.softmax_cpu(scores, mask, **ps.kernel_args)},
                {"torch softmax fp32 (+mask)": lambda: torch.softmax(sf + add_mask, dim=-1)})
    # the model's scores are int16 (lowering: 16-bit scores feeding softmax)
    s16 = rng.integers(-20000, 20000, (b, 12, 128, 128), dtype=np.int64).astype(np.int16)
    ps16 = softmax.softmax_params(6e-4)
    sf16 = torch.from_numpy(s16.astype(np.float32) * 6e-4)
    yield Group("softmax", f"{b}x12x128x128 int16 masked", s16.size, "Melem/s",
                {"cpu i-softmax int16→u8": lambda: softmax.softmax_cpu(s16, mask, **ps16.kernel_args)},
                {"torch softmax fp32 (+mask)": lambda: torch.softmax(sf16 + add_mask, dim=-1)})

    # LayerNorm over a 22-bit residual sum [M, 768] → int8
    r = rng.integers(-(2**21), 2**21, (m, 768), dtype=np.int64).astype(np.int32)
    gamma, beta = rng.uniform(0.5, 1.5, 768), rng.uniform(-0.1, 0.1, 768)
    pl = layernorm.layernorm_params(gamma, beta, 1e-5, out_scale=8.0 / 127, in_scale=1e-4)
    rf = torch.from_numpy(r.astype(np.float32) * 1e-4)
    g_t, b_t = torch.from_numpy(gamma.astype(np.float32)), torch.from_numpy(beta.astype(np.float32))
    yield Group("layernorm", f"{m}x768 int32→int8", r.size, "Melem/s",
                {"cpu i-LayerNorm": lambda: layernorm.layernorm_cpu(r, **pl.kernel_args)},
                {"torch layer_norm fp32": lambda: F.layer_norm(rf, (768,), g_t, b_t, 1e-5)})

    # the encoders' residual add + LayerNorm: int32 accumulators (per-channel scale) + the int8 residual
    acc_ln = rng.integers(-(2**24), 2**24, (m, 768), dtype=np.int64).astype(np.int32)
    res8 = rng.integers(-127, 128, (m, 768), dtype=np.int64).astype(np.int8)
    m_acc, s_acc = quantize_multipliers(rng.uniform(0.5, 2.0, 768) * 2.0**-4)
    m_res, s_res = quantize_multiplier(8.0)
    for const in (m_acc, s_acc):  # read-only, like the runtime's constants (validated once per layer)
        const.setflags(write=False)
    accf, resf = torch.from_numpy(acc_ln.astype(np.float32) * 1e-5), torch.from_numpy(res8.astype(np.float32) * 0.05)
    yield Group("add+layernorm", f"{m}x768 int32+int8→int8", r.size, "Melem/s",
                {"cpu add_layernorm (fused)": lambda: layernorm.add_layernorm_cpu(acc_ln, m_acc, s_acc, res8, m_res, s_res,
                                                                                    22, **pl.kernel_args)},
                {"torch add + layer_norm fp32": lambda: F.layer_norm(accf + resf, (768,), g_t, b_t, 1e-5)})

    # tanh (pooler) and requantize (every linear without a fused epilogue)
    pt = tanh.tanh_params(8.0 / 127)
    yield Group("tanh", f"{m}x768 int8→int8", m * 768, "Melem/s",
                {"cpu i-tanh": lambda: tanh.tanh_cpu(x8[:, :768], **pt.kernel_args)},
                {"torch tanh fp32": lambda: torch.tanh(xf[:, :768])})
    mv, sv = quantize_multipliers(rng.uniform(1e-5, 3e-5, 3072))
    for const in (mv, sv):
        const.setflags(write=False)
    yield Group("requantize", f"{m}x3072 int32→int8", acc.size, "Melem/s",
                {"cpu per-channel": lambda: requant.requantize_cpu(acc, mv, sv, 8)},
                {"torch fp32 mul+round+clamp": lambda: torch.clamp(torch.round(xf * 31.75), -127, 127)})


# ============================================================================= main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--only", default="", help="run only benches whose name contains this")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate (default 21, quick 11)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    # Interleaving torch (OpenMP) with numba (its own OpenMP pool) and ORT: spinning idle
    # workers of one pool would steal the cores from the next candidate.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    cfg = Config(quick=args.quick, reps=args.reps or (11 if args.quick else 21), warmup=3, threads=args.threads)
    print("$ python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]))
    from intengine.kernels import _vnni

    print(f"# threads={args.threads} reps={cfg.reps} (medians of interleaved runs), torch {torch.__version__}, "
          f"numba {numba.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"host VNNI={_vnni.HAVE_VNNI} AMX={_vnni.HAVE_AMX}")
    rows: list[list[str]] = []
    for name, fn in BENCHES.items():
        if args.only and args.only not in name:
            continue
        for g in fn(cfg):
            rows.extend(run_group(g, cfg))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

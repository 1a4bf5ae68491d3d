"""ONNX export benchmark: intengine's QDQ (and integer) export next to ONNX Runtime's own
quantizers on the same FP32 graph, measured side by side on ONNX Runtime.

    python bench/onnx_export.py [--preset roberta-base] [--batch 8] [--seq 128] [--quick] [--reps N]

Rows (all ONNX Runtime CPU sessions, ORT_ENABLE_ALL, ``--threads`` intra-op threads, spinning
off so that the interleaved sessions do not steal each other's cores):

* ``ORT FP32``: the fp32 graph translated without Q/DQ (:func:`intengine.onnx_qdq.build_float_model`).
* ``intengine QDQ``: :func:`intengine.onnx_export.export_onnx` ``format="qdq"``.
* ``intengine integer``: ``format="integer"`` (when :mod:`intengine.onnx_integer` is there).
* ``ORT quantize_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights, its
  defaults) of the same FP32 model.
* ``ORT quantize_static QDQ``: ``quantize_static`` U8S8 (QUInt8 activations, QInt8 weights),
  QDQ format, MinMax, per-channel weights, calibrated on the same random batches as intengine
  (a ``CalibrationDataReader`` over them).

Latency: every repetition runs every candidate once, round robin (load hits all alike); the
table shows medians and the best run.  Accuracy against ORT FP32 on one held-out random batch:
cosine over the valid tokens' entries and the max abs error.  Weights are the preset's
deterministic random init (``load_fp32(preset)``), inputs random ids with random padding.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

import numpy as np


def cosine_valid(ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> float:
    if ref.ndim == 3:
        m = mask.astype(bool)
        ref, got = ref[m], got[m]
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def maxabs_valid(ref, got, mask) -> float:
    if ref.ndim == 3:
        m = mask.astype(bool)
        ref, got = ref[m], got[m]
    return float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())


def time_interleaved(fns: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="roberta-base",
                    help="model preset (roberta-base, deberta-v3-base, nezha-cn-base, *-tiny, ...)")
    ap.add_argument("--task", default="base", help="model task (base = hidden states)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--calib", type=int, default=None, help="calibration batches (default 4, quick 2)")
    ap.add_argument("--method", default="minmax", help="intengine calibration method")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate (default 10, quick 3)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    ap.add_argument("--quick", action="store_true", help="fewer calibration batches and repetitions")
    ap.add_argument("--no-integer", action="store_true", help="skip the integer-only export")
    ap.add_argument("--no-ort-quant", action="store_true", help="skip ORT's quantize_dynamic/quantize_static")
    args = ap.parse_args(argv)

    import onnx
    import onnxruntime as ort

    import intengine
    from intengine.calibrate import random_batches
    from intengine.onnx_export import build_model, ort_run, ort_session, physical_cores
    from intengine.onnx_qdq import build_float_model

    threads = args.threads or physical_cores()
    reps = args.reps or (3 if args.quick else 10)
    n_cal = args.calib or (2 if args.quick else 4)
    print("$ python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]))
    print(f"# preset={args.preset} task={args.task} batch={args.batch} seq={args.seq} threads={threads} "
          f"reps={reps} (medians of interleaved runs) calib={n_cal}x{args.batch}x{args.seq} ({args.method}), "
          f"onnxruntime {ort.__version__}, onnx {onnx.__version__}", flush=True)

    t0 = time.perf_counter()
    m = intengine.load_fp32(args.preset, task=args.task)
    cal = random_batches(m, n_cal, args.batch, args.seq, seed=0)
    x = random_batches(m, 1, args.batch, args.seq, seed=1234)[0]
    qm = intengine.quantize(m, cal, method=args.method)
    print(f"# quantize: {time.perf_counter() - t0:.1f} s", flush=True)

    tmp = tempfile.mkdtemp(prefix="intengine-onnx-bench-")
    paths: dict[str, str] = {}
    notes: dict[str, str] = {}

    def save(name, model):
        p = os.path.join(tmp, name + ".onnx")
        big = sum(len(t.raw_data) for t in model.graph.initializer) > 2**31 - 2**24
        onnx.save_model(model, p, save_as_external_data=big, location=name + ".data" if big else None)
        return p

    t0 = time.perf_counter()
    paths["ORT FP32"] = save("fp32", build_float_model(qm.fp32_graph, qm.task))
    paths["intengine QDQ"] = save("qdq", build_model(qm, "qdq"))
    if not args.no_integer:
        try:
            paths["intengine integer"] = save("integer", build_model(qm, "integer"))
        except Exception as exc:  # noqa: BLE001 - report and go on
            notes["intengine integer"] = f"skipped: {type(exc).__name__}: {exc}"
    print(f"# export: {time.perf_counter() - t0:.1f} s", flush=True)

    if not args.no_ort_quant:
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" warnings
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_dynamic, quantize_static)

        fp32_inputs = [i.name for i in onnx.load(paths["ORT FP32"], load_external_data=False).graph.input]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter([{k: b[k].astype(np.int64) for k in fp32_inputs} for b in cal])

            def get_next(self):
                return next(self._it, None)

        t0 = time.perf_counter()
        p = os.path.join(tmp, "ort_dynamic.onnx")
        quantize_dynamic(paths["ORT FP32"], p, weight_type=QuantType.QInt8)
        paths["ORT quantize_dynamic"] = p
        for per_channel in (True, False):
            p = os.path.join(tmp, f"ort_static_qdq_pc{int(per_channel)}.onnx")
            quantize_static(paths["ORT FP32"], p, Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax)
            try:  # per-channel 3-D constants (DeBERTa's relative tables) break ORT's QLinearMatMul
                ort_run(ort_session(p, threads), **x)
            except Exception as exc:  # noqa: BLE001 - report and fall back to per-tensor
                notes["ORT quantize_static QDQ"] = (f"per_channel=True fails in ORT ({type(exc).__name__}); "
                                                    "per-tensor weights used")
                continue
            paths["ORT quantize_static QDQ"] = p
            break
        print(f"# ORT quantization: {time.perf_counter() - t0:.1f} s", flush=True)

    cfg = {"session.intra_op.allow_spinning": "0"}
    sessions, outs = {}, {}
    for k, p in list(paths.items()):
        try:
            sessions[k] = ort_session(p, threads, config=cfg)
            outs[k] = ort_run(sessions[k], **x)
        except Exception as exc:  # noqa: BLE001 - report the row as failed and go on
            notes[k] = f"failed in ONNX Runtime: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            sessions.pop(k, None)
            paths.pop(k)
    ref = outs["ORT FP32"]
    mask = x["attention_mask"]
    fns = {k: (lambda s=s: ort_run(s, **x)) for k, s in sessions.items()}
    times = time_interleaved(fns, reps, warmup=1)

    header = ["model", "median ms", "best ms", "vs ORT static", "cosine vs FP32", "max abs err", "MB"]
    med = {k: float(np.median(v)) for k, v in times.items()}
    base = med.get("ORT quantize_static QDQ")
    rows = []
    for k in paths:
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)
                   if f.startswith(os.path.basename(paths[k])[:-5] + "."))
        rows.append([k, f"{med[k] * 1e3:.1f}", f"{min(times[k]) * 1e3:.1f}",
                     f"{base / med[k]:.2f}x" if base else "-",
                     f"{cosine_valid(ref, outs[k], mask):.6f}", f"{maxabs_valid(ref, outs[k], mask):.4g}",
                     f"{size / 2**20:.0f}"])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)), flush=True)
    for k, v in notes.items():
        print(f"# {k}: {v}")
    print("# 'vs ORT static' = ORT static QDQ median / this median (>1: faster than ORT's static QDQ)")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``intengine`` command line (``python -m intengine`` works too).

::

    intengine bench [MODEL]                      quantize + benchmark (default: the roberta-base preset)
    intengine quantize MODEL -o QDIR             calibrate, lower and save a quantized-model folder
    intengine run QDIR --text "..."              integer inference (or --onnx FILE on ONNX Runtime)
    intengine export MODEL --format qdq|integer -o FILE
    intengine inspect MODEL                      per-node error report (or a saved folder's graph)

MODEL is a Hugging Face checkpoint folder or a preset name (``roberta-base``, ``deberta-v3-base``,
``nezha-cn-base``, ``...-tiny``); QDIR is a folder written by ``intengine quantize``.

Exit codes: 0 success, 1 an intengine error (one ``intengine: error: ...`` line on stderr that
names the file, field or option at fault), 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .errors import ConfigError, IntengineError, InputError

TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "vocab.txt", "spm.model", "added_tokens.json")


def _is_quantized_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "graph.json"))


# ============================================================================ shared helpers


def _add_calibration(p: argparse.ArgumentParser, *, with_task: bool = True) -> None:
    g = p.add_argument_group("calibration")
    if with_task:
        g.add_argument("--task", default="base",
                       choices=["base", "sequence-classification", "token-classification", "question-answering",
                                "masked-lm"], help="model head (default: base = hidden states)")
    g.add_argument("--calib", default="random", metavar="FILE|random",
                   help="calibration data: a text file (one example per line, tokenized with the checkpoint's "
                        "tokenizer) or 'random' token ids (default)")
    g.add_argument("--method", default="minmax", choices=["minmax", "ema", "percentile", "mse", "entropy"],
                   help="range observer (default: minmax)")
    g.add_argument("--calib-batches", type=int, default=8, metavar="N", help="calibration batches (default 8)")
    g.add_argument("--calib-batch-size", type=int, default=8, metavar="N", help="rows per batch (default 8)")
    g.add_argument("--calib-seq", type=int, default=None, metavar="T",
                   help="calibration sequence length (default: 128; bench: --seq)")


def _quantize(args) -> tuple[object, object]:
    """Load ``args.model`` (folder or preset) and quantize it with the calibration options."""
    from .api import load_fp32
    from .calibrate import random_batches, text_batches
    from .quantize import quantize

    model = load_fp32(args.model, task=args.task)
    if args.calib == "random":
        batches = random_batches(model, args.calib_batches, args.calib_batch_size, args.calib_seq or 128)
    else:
        if not os.path.isfile(args.calib):
            raise ConfigError(f"--calib {args.calib!r}: no such file (expected a text file or 'random')")
        if not os.path.isdir(args.model):
            raise ConfigError(f"--calib {args.calib}: text calibration needs a checkpoint folder with a tokenizer, "
                              f"{args.model!r} is a preset (use --calib random)")
        it = text_batches(args.calib, args.model, args.calib_batch_size, args.calib_seq or 128)
        batches = [b for _, b in zip(range(args.calib_batches), it)]
    return model, quantize(model, batches, method=args.method)


def _copy_tokenizer(src: str, dst: str) -> list[str]:
    copied = []
    if os.path.isdir(src):
        for name in TOKENIZER_FILES:
            f = os.path.join(src, name)
            if os.path.isfile(f):
                target = os.path.join(dst, "tokenizer", name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(f, target)
                copied.append(name)
    return copied


# ============================================================================ subcommands


def _cmd_quantize(args) -> int:
    _, qm = _quantize(args)
    out = qm.save(args.output, overwrite=args.overwrite)
    copied = _copy_tokenizer(args.model, str(out))
    print(f"saved {qm!r} to {out}" + (f" (+ tokenizer: {', '.join(copied)})" if copied else ""))
    return 0


def _token_inputs(args, tokenizer_dirs: list[str]) -> dict:
    import numpy as np

    if args.ids is not None:
        try:
            ids = np.array([[int(t) for t in row.replace(",", " ").split()] for row in args.ids], dtype=np.int64)
        except ValueError:
            raise InputError(f"--ids {args.ids!r}: expected integers separated by spaces or commas") from None
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InputError("--ids: every row must hold the same, non-zero number of token ids")
        return {"input_ids": ids, "attention_mask": np.ones_like(ids, dtype=bool), "token_type_ids": np.zeros_like(ids)}
    from .tokenizer import load_tokenizer

    for d in tokenizer_dirs:
        if d and os.path.isfile(os.path.join(d, "config.json")):
            tok = load_tokenizer(d)
            enc = tok(list(args.text), max_length=args.max_length)
            return {k: np.asarray(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    raise InputError(f"--text needs a tokenizer: none found in {', '.join(d for d in tokenizer_dirs if d) or '(nothing)'}; "
                     "pass --tokenizer DIR (a checkpoint folder) or token ids with --ids")


def _cmd_run(args) -> int:
    import numpy as np

    if (args.text is None) == (args.ids is None):
        raise ConfigError("run: give exactly one of --text and --ids")
    if args.onnx:
        from .onnx_export import ort_run, ort_session

        x = _token_inputs(args, [args.tokenizer, os.path.dirname(os.path.abspath(args.onnx)), args.model])
        sess = ort_session(args.onnx, threads=args.threads)
        y = ort_run(sess, x["input_ids"], x.get("attention_mask"), x.get("token_type_ids"))
    else:
        if not args.model:
            raise ConfigError("run: give a quantized-model folder (from `intengine quantize`) or --onnx FILE")
        from .serialize import load_quantized

        qm = load_quantized(args.model)
        x = _token_inputs(args, [args.tokenizer, os.path.join(args.model, "tokenizer")])
        y = qm.run(x["input_ids"], x.get("attention_mask"), x.get("token_type_ids"), backend=args.backend)
    y = np.asarray(y, dtype=np.float32)
    if args.save:
        np.save(args.save, y)
    doc = {"shape": list(y.shape)}
    if y.ndim == 2 or (y.ndim == 3 and y.shape[-1] <= 16):
        doc["output"] = np.round(y, 6).tolist()
        doc["argmax"] = np.argmax(y, -1).tolist()
    else:
        doc["mean_abs"] = float(np.abs(y).mean())
    print(json.dumps(doc))
    return 0


def _cmd_export(args) -> int:
    from .onnx_export import export_onnx

    if _is_quantized_folder(args.model):
        if args.format == "qdq":
            raise ConfigError(f"{args.model}: a saved quantized folder holds no FP32 weights, which the QDQ export "
                              "needs; export from the checkpoint folder or preset instead")
        from .serialize import load_quantized

        qm = load_quantized(args.model)
    else:
        _, qm = _quantize(args)
    path = export_onnx(qm, args.output, format=args.format)
    print(f"wrote {args.format} ONNX model to {path}")
    return 0


def _cmd_inspect(args) -> int:
    from . import ir

    if _is_quantized_folder(args.model):
        from collections import Counter

        from .serialize import load_quantized

        qm = load_quantized(args.model)
        print(repr(qm))
        ops = Counter(n.op for n in qm.graph.nodes)
        print("integer ops: " + ", ".join(f"{op} ×{n}" for op, n in ops.most_common()))
        if args.graph:
            print(ir.format_graph(qm.graph))
        print("(the per-node error report needs the FP32 model: run `intengine inspect` on the checkpoint folder)")
        return 0
    from .calibrate import random_batches
    from .report import error_report, format_report, summary

    model, qm = _quantize(args)
    batch = random_batches(model, 1, args.batch, args.seq, seed=1234)[0]
    rows = error_report(qm, batch)
    if args.graph:
        print(ir.format_graph(qm.graph))
    print(format_report(rows, top=args.top))
    print()
    print(summary(rows))
    return 0


def _cmd_bench(args) -> int:
    from .bench import ENGINES, BenchConfig, command_line, format_table, run_bench

    engines = tuple(e.strip() for e in args.backends.split(",")) if args.backends else ENGINES
    reps = 2 if args.quick else args.reps
    cfg = BenchConfig(model=args.model, task=args.task, batch=args.batch, seq=args.seq, calib=args.calib,
                      calib_batches=4 if args.quick else args.calib_batches, calib_batch_size=args.calib_batch_size,
                      calib_seq=args.calib_seq, method=args.method, engines=engines, threads=args.threads, reps=reps, warmup=1,
                      out=args.out, command=command_line())
    report = run_bench(cfg)
    print(format_table(report))
    if args.out:
        print(f"\nreports in {Path(args.out).resolve()}: report.json, report.md (+ PNG plots with matplotlib)")
    return 0


# ============================================================================ parser


def build_parser() -> argparse.ArgumentParser:
    from .bench import DEFAULT_MODEL, ENGINES

    parser = argparse.ArgumentParser(
        prog="intengine",
        description="Quantize transformer encoders (RoBERTa/I-BERT, DeBERTa, DeBERTa-v2/v3, NEZHA) to "
                    "integer-only programs; run, export and benchmark them.",
        epilog="Exit codes: 0 success, 1 intengine error (message on stderr), 2 bad usage.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("bench", help="quantize a model and benchmark it against torch and ONNX Runtime",
                       description="Load MODEL, calibrate, quantize, measure parity vs FP32 and time every engine "
                                   "side by side (interleaved repetitions, medians).")
    b.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"checkpoint folder or preset (default: {DEFAULT_MODEL}, built in: no download)")
    b.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    b.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    b.add_argument("--backends", default=None, metavar="LIST",
                   help=f"comma-separated engines (default: all of {', '.join(ENGINES)})")
    b.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    b.add_argument("--reps", type=int, default=5, help="timed repetitions per engine (default 5)")
    b.add_argument("--out", default=None, metavar="DIR", help="write report.json, report.md and PNG plots here")
    b.add_argument("--quick", action="store_true", help="2 repetitions and 4 calibration batches")
    _add_calibration(b)
    b.set_defaults(func=_cmd_bench)

    q = sub.add_parser("quantize", help="calibrate + lower a model and save the quantized-model folder",
                       description="Writes QDIR (graph.json + model.safetensors, versioned and checksummed) "
                                   "atomically, plus the checkpoint's tokenizer files under QDIR/tokenizer.")
    q.add_argument("model", help="checkpoint folder or preset")
    q.add_argument("-o", "--output", required=True, metavar="QDIR", help="output folder")
    q.add_argument("--overwrite", action="store_true", help="replace an existing non-intengine folder")
    _add_calibration(q)
    q.set_defaults(func=_cmd_quantize)

    r = sub.add_parser("run", help="run a quantized folder (integer-only) or an exported ONNX file",
                       description="Prints a JSON line: the output shape, and for logits the values and argmax.")
    r.add_argument("model", nargs="?", default=None, help="quantized-model folder (from `intengine quantize`)")
    r.add_argument("--onnx", default=None, metavar="FILE", help="run this ONNX file on ONNX Runtime instead")
    r.add_argument("--text", action="append", default=None, help="input text (repeat for a batch)")
    r.add_argument("--ids", action="append", default=None, help="token ids '0 31414 2' (repeat for a batch)")
    r.add_argument("--tokenizer", default=None, metavar="DIR", help="checkpoint folder holding the tokenizer")
    r.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens (128)")
    r.add_argument("--backend", default="cpu", choices=["cpu", "ref", "cuda"], help="intengine backend (cpu)")
    r.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: physical cores)")
    r.add_argument("--save", default=None, metavar="FILE.npy", help="also save the output array")
    r.set_defaults(func=_cmd_run)

    e = sub.add_parser("export", help="export to ONNX: QDQ (ORT's int8 kernels) or integer-only (bit-exact)",
                       description="MODEL is a checkpoint folder or preset (quantized here with the calibration "
                                   "options) or a quantized-model folder (integer format only).")
    e.add_argument("model", help="checkpoint folder, preset, or quantized-model folder")
    e.add_argument("--format", required=True, choices=["qdq", "integer"], help="ONNX flavour")
    e.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write (atomically)")
    _add_calibration(e)
    e.set_defaults(func=_cmd_export)

    i = sub.add_parser("inspect", help="per-node error report (SQNR vs FP32, worst first)",
                       description="For a checkpoint folder or preset: quantize it and compare every integer "
                                   "value with FP32 on one random batch. For a quantized folder: graph summary.")
    i.add_argument("model", help="checkpoint folder, preset, or quantized-model folder")
    i.add_argument("--top", type=int, default=20, help="rows to show (default 20)")
    i.add_argument("--batch", type=int, default=2, help="rows of the comparison batch (default 2)")
    i.add_argument("--seq", type=int, default=64, help="length of the comparison batch (default 64)")
    i.add_argument("--graph", action="store_true", help="also print the integer graph")
    _add_calibration(i)
    i.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except IntengineError as exc:
        print(f"intengine: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # unwritable output paths and the like
        print(f"intengine: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

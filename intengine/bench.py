"""The quantize-and-benchmark job behind ``intengine bench`` (and ``bench/quantize_and_benchmark.py``).

::

    report = run_bench(BenchConfig(model="roberta-base", batch=8, seq=128))
    print(format_table(report))

Steps: load the FP32 model (checkpoint folder or preset), calibrate and quantize it, measure
parity against FP32 on the benchmark batch (cosine and max |error| on valid tokens, argmax
agreement for heads, the worst values of the per-node error report), build the ONNX models, then
time every engine **interleaved** in one run (each repetition runs every engine once, round
robin, so load from other processes hits them alike) and report medians, spread, speed-up ratios,
model sizes, peak memory and the time per op type of intengine's ``cpu`` run.

Engines: ``torch-fp32`` (eager), ``intengine-cpu`` (the integer program on numba kernels),
``intengine-cuda`` (when a real GPU is present), ``ort-fp32`` (the FP32 graph exported to ONNX),
``ort-qdq`` and ``ort-integer`` (intengine's two ONNX exports on ONNX Runtime) and
``ort-dynamic-int8`` (ONNX Runtime's own ``quantize_dynamic`` of the FP32 export).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError, IntengineError

__all__ = ["BenchConfig", "DEFAULT_MODEL", "ENGINES", "run_bench", "format_table", "write_reports"]

DEFAULT_MODEL = "roberta-base"
ENGINES = ("torch-fp32", "intengine-cpu", "intengine-cuda", "ort-fp32", "ort-qdq", "ort-integer",
           "ort-dynamic-int8")


@dataclass(frozen=True)
class BenchConfig:
    model: str = DEFAULT_MODEL  # checkpoint folder or preset name
    task: str = "base"
    batch: int = 8
    seq: int = 128
    calib: str = "random"  # "random" or a text file (one example per line)
    calib_batches: int = 8
    calib_batch_size: int = 8
    calib_seq: int | None = None  # None: the benchmark's seq
    method: str = "minmax"
    engines: tuple[str, ...] = ENGINES
    threads: int = 2
    reps: int = 5
    warmup: int = 1
    out: str | None = None
    seed: int = 0
    progress: bool = True
    command: str = ""


# ============================================================================ small utilities


class Progress:
    """A one-line text progress bar on stderr (no dependency; silent when disabled)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.n, self.enabled = label, max(total, 1), 0, enabled
        self.live = enabled and sys.stderr.isatty()  # redraw in place only on a terminal
        self.t0 = time.perf_counter()
        self._draw()

    def _draw(self, final: bool = False) -> None:
        if not (self.live or (self.enabled and final)):
            return
        frac = self.n / self.total
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        sys.stderr.write(f"{chr(13) if self.live else ''}  {self.label:<28s} [{bar}] {self.n}/{self.total}  {time.perf_counter() - self.t0:6.1f}s")
        sys.stderr.flush()

    def step(self, k: int = 1) -> None:
        self.n = min(self.total, self.n + k)
        self._draw()

    def done(self) -> None:
        self.n = self.total
        self._draw(final=True)
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _log(cfg: BenchConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


def _rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_during(fn: Callable[[], object]) -> tuple[object, int | None]:
    """``fn()`` and the peak growth of the resident set while it ran, sampled every 0.5 ms by a
    thread (covers numpy, torch, numba and ONNX Runtime allocations alike)."""
    import threading

    base = _rss_bytes()
    if base is None:
        return fn(), None
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            r = _rss_bytes()
            if r is not None and r > peak[0]:
                peak[0] = r
            stop.wait(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out = fn()
    finally:
        stop.set()
        th.join()
    r = _rss_bytes()
    return out, max(peak[0], r or 0) - base


def cpu_flags() -> list[str]:
    """The ISA flags that matter for int8 inference on this CPU (Linux ``/proc/cpuinfo``)."""
    want = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
            "amx_int8", "amx_bf16")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in want if w in have]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("intengine", "numpy", "numba", "torch", "onnx", "onnxruntime"):
        try:
            if mod == "intengine":
                from importlib.metadata import version

                out[mod] = version("intengine")
            else:
                out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing version is reported, not fatal
            out[mod] = "?"
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den else float("nan")


def _valid(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Entries of valid tokens for per-token outputs ``[B, T, ...]``; everything otherwise."""
    if y.ndim >= 2 and y.shape[:2] == mask.shape:
        return y[mask.astype(bool)]
    return y


def parity(ref: np.ndarray, got: np.ndarray, mask: np.ndarray, task: str) -> dict:
    """Cosine, max |err| on valid tokens; argmax agreement of logits (heads)."""
    if ref.shape != got.shape:
        raise IntengineError(f"output shape {got.shape} differs from the FP32 output {ref.shape}")
    r, g = _valid(ref, mask), _valid(got, mask)
    out = {"cosine": _cosine(r, g), "max_abs_err": float(np.abs(r.astype(np.float64) - g).max())}
    if task != "base":
        out["argmax_agreement"] = float(np.mean(np.argmax(r, -1) == np.argmax(g, -1)))
    return out


# ============================================================================ the job


def _load_model(cfg: BenchConfig):
    from .api import load_fp32

    return load_fp32(cfg.model, task=cfg.task)


def _calibration(cfg: BenchConfig, model):
    from .calibrate import random_batches, text_batches

    if cfg.calib == "random":
        return random_batches(model, cfg.calib_batches, cfg.calib_batch_size, cfg.calib_seq or cfg.seq,
                              seed=cfg.seed + 1)
    if not os.path.isfile(cfg.calib):
        raise ConfigError(f"--calib {cfg.calib!r}: expected 'random' or a text file (one example per line)")
    from .tokenizer import load_tokenizer

    if not os.path.isdir(cfg.model):
        raise ConfigError(f"--calib {cfg.calib}: text calibration needs a checkpoint folder with tokenizer files, "
                          f"got the preset {cfg.model!r} (use --calib random)")
    it = text_batches(cfg.calib, load_tokenizer(cfg.model), cfg.calib_batch_size, cfg.calib_seq or cfg.seq)
    return [b for _, b in zip(range(cfg.calib_batches), it)]


class _Tracked:
    """An iterable of batches that advances a progress bar as calibration consumes it."""

    def __init__(self, batches, bar: Progress):
        self.batches, self.bar = batches, bar

    def __iter__(self):
        for b in self.batches:
            yield b
            self.bar.step()


def _cuda_available() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def _set_threads(n: int) -> None:
    import numba
    import torch

    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _model_bytes_fp32(model) -> int:
    seen, total = set(), 0
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def run_bench(cfg: BenchConfig) -> dict:
    """Run the whole job; returns the report as a JSON-ready dict (see :func:`write_reports`)."""
    import torch

    from .onnx_export import export_onnx, ort_session
    from .onnx_qdq import build_float_model
    from .quantize import quantize
    from .report import error_report, summary

    unknown = [e for e in cfg.engines if e not in ENGINES]
    if unknown:
        raise ConfigError(f"--backends: unknown engine(s) {unknown}; expected some of {', '.join(ENGINES)}")
    if cfg.batch < 1 or cfg.seq < 2 or cfg.reps < 1:
        raise ConfigError(f"need --batch >= 1, --seq >= 2, --reps >= 1 (got {cfg.batch}, {cfg.seq}, {cfg.reps})")
    _set_threads(cfg.threads)
    report: dict = {"config": asdict(cfg), "command": cfg.command, "versions": versions(),
                    "cpu": {"model": cpu_model(), "flags": cpu_flags(), "threads": cfg.threads}}
    t_start = time.perf_counter()

    _log(cfg, f"intengine bench: {cfg.model} ({cfg.task}), batch {cfg.batch}, seq {cfg.seq}, {cfg.threads} threads")
    t0 = time.perf_counter()
    model = _load_model(cfg)
    family = str(getattr(model, "family", "?")).rsplit(".", 1)[-1]
    report["model"] = {"name": cfg.model, "family": family, "task": cfg.task,
                       "fp32_bytes": _model_bytes_fp32(model), "load_s": time.perf_counter() - t0}

    # ---- calibrate + quantize
    batches = _calibration(cfg, model)
    if not batches:
        raise ConfigError(f"--calib {cfg.calib}: no calibration batches")
    t0 = time.perf_counter()
    bar = Progress("calibrate + quantize", len(batches), cfg.progress)
    qm = quantize(model, _Tracked(batches, bar), method=cfg.method)
    bar.done()
    report["quantize"] = {"method": cfg.method, "batches": len(batches), "seconds": time.perf_counter() - t0,
                          "integer_nodes": len(qm.graph.nodes),
                          "integer_bytes": int(sum(a.nbytes for a in qm.graph.constants.values()))}

    # ---- the benchmark batch (random tokens, every row full length)
    from .calibrate import random_batches

    x = random_batches(model, 1, cfg.batch, cfg.seq, seed=cfg.seed + 1000)[0]
    x["attention_mask"][:] = True
    ids, mask, types = x["input_ids"], x["attention_mask"], x["token_type_ids"]

    # ---- engines
    runners: dict[str, Callable[[], np.ndarray]] = {}
    sizes: dict[str, int] = {"torch-fp32": report["model"]["fp32_bytes"]}
    tid, tmask, ttypes = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)

    def torch_run():
        with torch.inference_mode():
            y = model(tid, tmask, ttypes)
        return y.numpy()

    skipped: dict[str, str] = {}
    if "torch-fp32" in cfg.engines:
        runners["torch-fp32"] = torch_run
    if "intengine-cpu" in cfg.engines:
        ex = qm.executor("cpu")
        runners["intengine-cpu"] = lambda: ex.run(ids, mask, types)
        sizes["intengine-cpu"] = report["quantize"]["integer_bytes"]
    if "intengine-cuda" in cfg.engines:
        if _cuda_available():
            exc = qm.executor("cuda")
            runners["intengine-cuda"] = lambda: exc.run(ids, mask, types)
            sizes["intengine-cuda"] = report["quantize"]["integer_bytes"]
        else:
            skipped["intengine-cuda"] = "no CUDA GPU"
    tmpdir = tempfile.TemporaryDirectory(prefix="intengine-bench-")
    onnx_dir = Path(cfg.out) if cfg.out else Path(tmpdir.name)
    onnx_dir.mkdir(parents=True, exist_ok=True)
    ort_engines = [e for e in cfg.engines if e.startswith("ort-")]
    if ort_engines:
        import onnx

        bar = Progress("build ONNX models", len(ort_engines), cfg.progress)
        fp32_path = onnx_dir / "model-fp32.onnx"
        if "ort-fp32" in ort_engines or "ort-dynamic-int8" in ort_engines:
            onnx.save(build_float_model(qm.fp32_graph, cfg.task), str(fp32_path))
        paths = {}
        for eng in ort_engines:
            try:
                if eng == "ort-fp32":
                    paths[eng] = fp32_path
                elif eng == "ort-qdq":
                    paths[eng] = Path(export_onnx(qm, onnx_dir / "model-qdq.onnx", format="qdq"))
                elif eng == "ort-integer":
                    paths[eng] = Path(export_onnx(qm, onnx_dir / "model-integer.onnx", format="integer"))
                elif eng == "ort-dynamic-int8":
                    from onnxruntime.quantization import QuantType, quantize_dynamic

                    dyn = onnx_dir / "model-ort-dynamic-int8.onnx"
                    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" hint
                    quantize_dynamic(str(fp32_path), str(dyn), weight_type=QuantType.QInt8)  # ORT's defaults
                    paths[eng] = dyn
            except Exception as exc:  # noqa: BLE001 - one broken engine must not sink the report
                skipped[eng] = f"{type(exc).__name__}: {exc}"
            bar.step()
        bar.done()
        feeds_all = {"input_ids": ids, "attention_mask": mask.astype(np.int64), "token_type_ids": types}
        for eng, pth in paths.items():
            sess = ort_session(str(pth), threads=cfg.threads)
            feeds = {i.name: feeds_all[i.name] for i in sess.get_inputs()}
            runners[eng] = (lambda s, f: (lambda: s.run(None, f)[0]))(sess, feeds)
            sizes[eng] = pth.stat().st_size
    order = [e for e in ENGINES if e in runners]

    # ---- parity on the benchmark batch
    outputs: dict[str, np.ndarray] = {}
    peak: dict[str, int | None] = {}
    bar = Progress("parity + peak memory", len(order), cfg.progress)
    for eng in list(order):
        try:
            y, peak[eng] = peak_rss_during(runners[eng])
            outputs[eng] = np.asarray(y, dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - e.g. an ORT kernel refusing the model: report, go on
            if eng.startswith("intengine"):
                raise
            skipped[eng] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            order.remove(eng)
            continue
        bar.step()
    bar.done()
    ref = outputs.get("torch-fp32")
    if ref is None:
        ref = np.asarray(torch_run(), dtype=np.float32)
    report["parity"] = {eng: parity(ref, y, mask, cfg.task) for eng, y in outputs.items() if eng != "torch-fp32"}
    rows = error_report(qm, {"input_ids": ids[: min(2, cfg.batch)], "attention_mask": mask[: min(2, cfg.batch)],
                             "token_type_ids": types[: min(2, cfg.batch)]})
    summ = summary(rows)
    report["error_report"] = {
        "worst": [{"name": r.name, "op": r.op, "sqnr_db": r.sqnr_db, "cosine": r.cosine,
                   "max_abs_err": r.max_abs_err} for r in rows[:8]],
        "per_layer": [{"name": r.name, "layer": layer, "sqnr_db": r.sqnr_db}
                      for layer, r in summ.worst_per_layer.items()],
        "summary": str(summ),
    }

    # ---- interleaved timing
    for eng in order:  # warm-up
        for _ in range(cfg.warmup):
            runners[eng]()
    times: dict[str, list[float]] = {e: [] for e in order}
    bar = Progress("timing (interleaved)", cfg.reps * len(order), cfg.progress)
    for _ in range(cfg.reps):
        for eng in order:
            t0 = time.perf_counter()
            runners[eng]()
            times[eng].append(time.perf_counter() - t0)
            bar.step()
    bar.done()
    if "intengine-cpu" in runners:
        prof = qm.executor("cpu").profile(ids, mask, types, reps=min(3, cfg.reps))
        tot = sum(prof.values()) or 1.0
        report["profile"] = {op: {"ms": s * 1e3, "share": s / tot}
                             for op, s in sorted(prof.items(), key=lambda kv: -kv[1])}
    report["latency"] = {
        eng: {"median_ms": float(np.median(ts) * 1e3), "min_ms": float(np.min(ts) * 1e3),
              "max_ms": float(np.max(ts) * 1e3), "reps": len(ts)} for eng, ts in times.items()}
    med = {e: report["latency"][e]["median_ms"] for e in order}
    for eng in order:
        r = report["latency"][eng]
        if "torch-fp32" in med:
            r["speedup_vs_torch_fp32"] = med["torch-fp32"] / med[eng]
        if "ort-dynamic-int8" in med:
            r["ratio_to_ort_dynamic_int8"] = med[eng] / med["ort-dynamic-int8"]
        r["model_bytes"] = sizes.get(eng)
        r["peak_rss_delta_bytes"] = peak.get(eng)
    report["skipped"] = skipped
    report["total_s"] = time.perf_counter() - t_start
    if cfg.out:
        write_reports(report, cfg.out)
    tmpdir.cleanup()
    return report


# ============================================================================ reports


def _num(v, fmt: str, missing: str = "—") -> str:
    return missing if v is None else format(v, fmt)


def _mb(n) -> str:
    return "—" if n is None else f"{n / 2**20:.1f}"


def format_table(report: dict) -> str:
    """The terminal table (plain text, no plotting dependency)."""
    cfg = report["config"]
    lines = [f"command: {report['command']}",
             f"model {cfg['model']} ({report['model']['family']}, {cfg['task']}), batch {cfg['batch']}, "
             f"seq {cfg['seq']}, {cfg['threads']} threads, {cfg['reps']} reps interleaved; "
             f"calibration {cfg['calib']} / {cfg['method']}",
             f"CPU: {report['cpu']['model']} [{' '.join(report['cpu']['flags'])}]", ""]
    head = ["engine", "median ms", "min", "max", "x torch fp32", "/ ORT dyn int8", "cosine", "max|err|",
            "argmax", "size MB", "peak +MB"]
    rows = []
    for eng, r in report["latency"].items():
        p = report["parity"].get(eng, {})
        rows.append([eng, f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}",
                     f"{r.get('speedup_vs_torch_fp32', float('nan')):.2f}",
                     f"{r.get('ratio_to_ort_dynamic_int8', float('nan')):.2f}",
                     f"{p['cosine']:.5f}" if "cosine" in p else "ref",
                     f"{p['max_abs_err']:.3g}" if "max_abs_err" in p else "—",
                     f"{p['argmax_agreement']:.3f}" if "argmax_agreement" in p else "—",
                     _mb(r.get("model_bytes")), _mb(r.get("peak_rss_delta_bytes"))])
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w[0] if i == 0 else "{:>%d}" % w[i] for i in range(len(head)))
    lines.append(fmt.format(*head))
    lines.append(fmt.format(*("-" * x for x in w)))
    lines += [fmt.format(*r) for r in rows]
    for eng, why in report.get("skipped", {}).items():
        lines.append(f"skipped {eng}: {why}")
    if "profile" in report:
        lines.append("")
        lines.append("intengine-cpu time per op type: " + ", ".join(
            f"{op} {v['ms']:.1f} ms ({100 * v['share']:.0f}%)" for op, v in report["profile"].items() if v["share"] >= 0.005))
    lines.append("")
    lines.append("worst values (error report, SQNR dB): " + ", ".join(
        f"{r['name']} {r['sqnr_db']:.1f}" for r in report["error_report"]["worst"][:5]))
    q = report["quantize"]
    lines.append(f"quantize: {q['seconds']:.1f} s on {q['batches']} batches; {q['integer_nodes']} integer nodes; "
                 f"total bench {report['total_s']:.0f} s")
    return "\n".join(lines)


def _markdown(report: dict) -> str:
    cfg = report["config"]
    md = [f"# intengine bench: {cfg['model']}", "", f"Command: `{report['command']}`", "",
          f"{report['model']['family']} / {cfg['task']}, batch {cfg['batch']}, seq {cfg['seq']}, "
          f"{cfg['threads']} threads, {cfg['reps']} repetitions interleaved (medians). "
          f"CPU: {report['cpu']['model']} ({', '.join(report['cpu']['flags'])}).", "",
          "| engine | median ms | min–max ms | × torch FP32 | / ORT dynamic int8 | cosine vs FP32 | max abs err | "
          "argmax agree | size MB | peak +MB |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for eng, r in report["latency"].items():
        p = report["parity"].get(eng, {})
        md.append(f"| {eng} | {r['median_ms']:.1f} | {r['min_ms']:.1f}–{r['max_ms']:.1f} | "
                  f"{r.get('speedup_vs_torch_fp32', float('nan')):.2f} | {r.get('ratio_to_ort_dynamic_int8', float('nan')):.2f} | "
                  f"{_num(p.get('cosine'), '.5f', 'ref')} | {_num(p.get('max_abs_err'), '.3g')} | "
                  f"{_num(p.get('argmax_agreement'), '.3f')} | {_mb(r.get('model_bytes'))} | "
                  f"{_mb(r.get('peak_rss_delta_bytes'))} |")
    if report.get("skipped"):
        md += [""] + [f"- skipped {e}: {w}" for e, w in report["skipped"].items()]
    if "profile" in report:
        md += ["", "## intengine-cpu: time per op type", "", "| op | ms | share |", "|---|---|---|"]
        md += [f"| {op} | {v['ms']:.1f} | {100 * v['share']:.1f}% |" for op, v in report["profile"].items()]
    md += ["", "## Worst values (per-node error report)", "", "| value | op | SQNR dB | cosine | max abs err |",
           "|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['op']} | {r['sqnr_db']:.1f} | {r['cosine']:.5f} | {r['max_abs_err']:.3g} |"
           for r in report["error_report"]["worst"]]
    md += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(md)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plots(report: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    lat = report["latency"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(lat)
    ax.barh(names, [lat[n]["median_ms"] for n in names],
            xerr=[[lat[n]["median_ms"] - lat[n]["min_ms"] for n in names],
                  [lat[n]["max_ms"] - lat[n]["median_ms"] for n in names]], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("latency per batch, ms (median, min–max)")
    cfg = report["config"]
    ax.set_title(f"{cfg['model']} batch {cfg['batch']} seq {cfg['seq']}, {cfg['threads']} threads")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
    made.append("latency.png")
    layers = report["error_report"]["per_layer"]
    if layers:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([r["layer"] for r in layers], [r["sqnr_db"] for r in layers], marker="o")
        ax.set_ylabel("worst SQNR in layer, dB")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.set_title("per-layer error (worst value per layer)")
        fig.tight_layout()
        fig.savefig(out / "layer_error.png", dpi=120)
        plt.close(fig)
        made.append("layer_error.png")
    return made


def write_reports(report: dict, out: str | os.PathLike) -> list[str]:
    """``report.json``, ``report.md`` and (with matplotlib) ``latency.png`` / ``layer_error.png``."""
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {d}: cannot create the report folder ({exc.strerror})") from exc
    _atomic_write(d / "report.json", json.dumps(report, indent=2, default=float))
    _atomic_write(d / "report.md", _markdown(report))
    return ["report.json", "report.md"] + _plots(report, d)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name] + sys.argv[1:])


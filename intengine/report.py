"""Per-node error report: every integer value against the FP32 value it stands for.

::

    rows = error_report(qm, batch)          # one batch: {"input_ids", "attention_mask", ...}
    print(format_report(rows, top=10))      # worst SQNR first
    print(summary(rows))                    # worst value per layer, final-output cosine / max |err|

Lowering names each integer value after the fp32 value it stands for (``name``, or
``name + ".q"`` for a graph output, whose float ``name`` is the final ``dequantize``).  For every
value an fp32 node produces that has such an integer counterpart carrying a scale, the integer
tensor (from :meth:`intengine.runtime.Executor.trace`) is dequantized with that scale (a float,
or per-channel floats along the last axis) and compared with the FP32 interpreter's value
(:func:`intengine.interp.run_fp32`, streamed through its ``observe`` hook) on valid tokens only
(every ``"T"`` axis masked by ``attention_mask``, as calibration does).  Integer-only values
(``position_ids``) and helper values with no fp32 counterpart are not reported.

Metrics (float64, over the valid entries; ``r`` the FP32 value, ``e = dequant(q) - r``):
SQNR ``10·log10(Σr² / Σe²)`` dB (``inf`` when exact), cosine, ``max |e|`` and the relative error
``‖e‖ / ‖r‖``.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from . import ir
from .calibrate import _valid
from .errors import ReportError
from .interp import prepare_inputs, run_fp32
from .runtime import Executor

__all__ = ["NodeError", "ReportSummary", "error_report", "format_report", "summary"]

_BITS = {"i8": 8, "u8": 8, "i16": 16, "i32": 32, "i64": 64, "bool": 1}


@dataclass(frozen=True)
class NodeError:
    """How far one integer value is from its FP32 counterpart (valid tokens of one batch)."""

    name: str                 # the fp32 value name (the integer value is name or name + ".q")
    op: str                   # the integer op that produced it
    sqnr_db: float            # 10·log10(Σr² / Σe²); inf when exact
    cosine: float
    max_abs_err: float
    rel_err: float            # ‖e‖₂ / ‖r‖₂
    scale: float | tuple[float, ...]   # per-tensor step, or per-channel steps (last axis)
    bits: int                 # width of the integer container (i8/u8: 8, i16: 16, i32: 32)
    dtype: str                # integer dtype (i8, u8, i16, i32)
    shape: tuple[int, ...]    # concrete shape on this batch (before masking)
    fp_op: str = ""           # the fp32 op it stands for
    count: int = 0            # entries compared (valid tokens)
    order: int = 0            # position of the fp32 node in the graph
    is_output: bool = False   # a graph output (compared before its final dequantize)

    @property
    def layer(self) -> str:
        """Group of the value: ``"emb"``, ``"layer3"``, ``"head"``, ... (its first name part)."""
        return self.name.split(".", 1)[0]


def _int_name(fp: ir.Graph, name: str) -> str:
    return name + ".q" if name in fp.outputs else name


def _dequant(q: np.ndarray, scale) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float64)
    return q.astype(np.float64) * s  # a per-channel vector broadcasts along the last axis


def _metrics(r: np.ndarray, d: np.ndarray) -> tuple[float, float, float, float]:
    e = d - r
    sig, err = float(r @ r), float(e @ e)
    if err == 0.0:
        sqnr = math.inf
    elif sig == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(sig / err)
    nr, nd = math.sqrt(sig), math.sqrt(float(d @ d))
    if nr == 0.0 and nd == 0.0:
        cos = 1.0
    elif nr == 0.0 or nd == 0.0:
        cos = 0.0
    else:
        cos = float(r @ d) / (nr * nd)
    max_abs = float(np.max(np.abs(e))) if e.size else 0.0
    rel = math.sqrt(err) / nr if nr > 0 else (0.0 if err == 0.0 else math.inf)
    return sqnr, cos, max_abs, rel


def error_report(qm, batch: Mapping[str, np.ndarray], backend: str = "ref") -> list[NodeError]:
    """Compare every integer value of ``qm`` with its FP32 value on ``batch``; worst SQNR first.

    ``batch``: a dict with ``input_ids`` and optionally ``attention_mask``, ``token_type_ids``
    (e.g. one of :func:`intengine.calibrate.random_batches`).  ``backend`` runs the integer graph
    (any backend: they are bit-identical).  Needs ``qm.fp32_graph``: a model from
    :func:`intengine.load_quantized` has none (:class:`~intengine.errors.ReportError`).
    """
    fp = getattr(qm, "fp32_graph", None)
    if fp is None:
        raise ReportError(
            "error_report needs the FP32 graph, but this QuantizedModel has none (fp32_graph is None: "
            "a model from load_quantized stores only the integer program); quantize the FP32 model "
            "(intengine.quantize(load_fp32(...), batches)) to get a report"
        )
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ReportError(f"error_report needs a batch dict with 'input_ids', got {type(batch).__name__}")
    inputs = prepare_inputs(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
    mask = inputs["attention_mask"]
    ig: ir.Graph = qm.graph
    trace = Executor(ig, backend, fuse=False).trace(**inputs)  # unfused: every value of qm.graph is traced
    producer = {o: n for n in ig.nodes for o in n.outputs}
    fp_op = {o: (k, n.op) for k, n in enumerate(fp.nodes) for o in n.outputs}
    ivalues = {v.name: v for v in ig.values}
    rows: list[NodeError] = []

    def observe(name: str, ref: np.ndarray) -> None:
        iname = _int_name(fp, name)
        v = ivalues.get(iname)
        if v is None or v.scale is None or v.dtype not in ir.INT_DTYPES or iname not in trace:
            return
        q = np.asarray(trace[iname])
        if q.shape != ref.shape:
            warnings.warn(f"error_report: integer value {iname!r} has shape {q.shape}, fp32 value {name!r} "
                          f"{ref.shape}; not compared", stacklevel=3)
            return
        r = _valid(fp, name, ref.astype(np.float64), mask).ravel()
        d = _valid(fp, name, _dequant(q, v.scale), mask).ravel()
        if r.size == 0:
            return
        sqnr, cos, max_abs, rel = _metrics(r, d)
        k, op = fp_op[name]
        rows.append(NodeError(
            name=name, op=producer[iname].op, sqnr_db=sqnr, cosine=cos, max_abs_err=max_abs, rel_err=rel,
            scale=v.scale, bits=_BITS[v.dtype], dtype=v.dtype, shape=tuple(q.shape), fp_op=op,
            count=int(r.size), order=k, is_output=name in fp.outputs,
        ))

    run_fp32(fp, **inputs, observe=observe)
    return sorted(rows, key=lambda e: (e.sqnr_db if not math.isnan(e.sqnr_db) else math.inf, e.order))


# ----------------------------------------------------------------------------- text


def _fmt_scale(s) -> str:
    if isinstance(s, tuple):
        return f"pc{len(s)}:{min(s):.2g}..{max(s):.2g}"
    return f"{s:.4g}"


def _fmt_shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def format_report(rows: list[NodeError], top: int | None = None) -> str:
    """A text table of ``rows`` (as given: :func:`error_report` sorts worst first); ``top`` keeps
    the first ``top`` rows.  The graph output is marked ``*``."""
    shown = list(rows if top is None else rows[:top])
    head = ("#", "value", "op", "fp op", "dtype", "scale", "shape", "SQNR dB", "cosine", "max|err|", "rel err")
    body = []
    for i, r in enumerate(shown, 1):
        body.append((
            str(i), r.name + (" *" if r.is_output else ""), r.op, r.fp_op, r.dtype, _fmt_scale(r.scale),
            _fmt_shape(r.shape), f"{r.sqnr_db:.2f}", f"{r.cosine:.5f}", f"{r.max_abs_err:.3g}",
            f"{r.rel_err:.3g}",
        ))
    widths = [max(len(h), *(len(b[c]) for b in body)) if body else len(h) for c, h in enumerate(head)]
    right = {0, 7, 8, 9, 10}

    def line(cells):
        return "  ".join(c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body]
    if top is not None and len(rows) > top:
        out.append(f"... {len(rows) - top} more value(s)")
    return "\n".join(out)


@dataclass(frozen=True)
class ReportSummary:
    """``worst_per_layer``: the lowest-SQNR row of each layer group (graph order);
    ``output``: the final output's row (None if not reported); ``worst``: the overall worst row."""

    worst_per_layer: Mapping[str, NodeError]
    output: NodeError | None
    worst: NodeError | None

    def __str__(self) -> str:
        lines = []
        if self.output is not None:
            o = self.output
            lines.append(f"final output {o.name}: cosine {o.cosine:.5f}, max|err| {o.max_abs_err:.4g}, "
                         f"SQNR {o.sqnr_db:.2f} dB, rel err {o.rel_err:.3g}")
        if self.worst is not None:
            lines.append(f"worst value: {self.worst.name} ({self.worst.op}) SQNR {self.worst.sqnr_db:.2f} dB")
        w = max((len(k) for k in self.worst_per_layer), default=5)
        for layer, r in self.worst_per_layer.items():
            lines.append(f"  {layer.ljust(w)}  worst {r.name} ({r.op}): SQNR {r.sqnr_db:.2f} dB, "
                         f"cosine {r.cosine:.5f}")
        return "\n".join(lines)


def _layer_key(name: str):
    m = re.fullmatch(r"layer(\d+)", name)
    return (1, int(m.group(1)), "") if m else ((0, 0, name) if name == "emb" else (2, 0, name))


def summary(rows: list[NodeError]) -> ReportSummary:
    """Worst value per layer group, the final output's row, and the overall worst row."""
    worst: dict[str, NodeError] = {}
    for r in rows:
        cur = worst.get(r.layer)
        if cur is None or r.sqnr_db < cur.sqnr_db:
            worst[r.layer] = r
    per_layer = {k: worst[k] for k in sorted(worst, key=_layer_key)}
    outs = [r for r in rows if r.is_output]
    output = min(outs, key=lambda r: r.order) if outs else None
    overall = min(rows, key=lambda r: r.sqnr_db) if rows else None
    return ReportSummary(per_layer, output, overall)

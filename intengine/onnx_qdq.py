"""QDQ ONNX export: the fp32 graph as float ONNX with QuantizeLinear/DequantizeLinear pairs that
ONNX Runtime's CPU graph optimizer fuses into integer kernels.

::

    model = build_qdq_model(qm)                     # onnx.ModelProto, opset 17
    model = build_float_model(qm.fp32_graph)        # the same graph without Q/DQ (FP32 baseline)

One translation function per fp32-stage op (:data:`TRANSLATE`, semantics in
:mod:`intengine.interp`).  Quantization points, chosen for ONNX Runtime's fast int8 kernels
(MLAS U8S8: u8 activations × s8 weights; S8S8 and s8 × s8 ``MatMulInteger`` are several times
slower on x86):

* **every MatMul input**, and nowhere else: ``linear`` / ``matmul`` / ``conv1d`` (as im2col +
  MatMul) read ``DequantizeLinear(QuantizeLinear(x))``.  ORT rewrites ``DQ → MatMul ← DQ`` into
  ``MatMulIntegerToFloat`` (u8 × s8 → float, bias fused) — the integer product with a float
  epilogue.  Softmax, LayerNorm, GELU, tanh, residual and score adds stay float32: intengine
  keeps those at 16/22 bits or in wide integers, which 8-bit ``QLinearAdd``/``QLinearSoftmax``
  would only make less accurate (and not faster on 2 cores).
* **activations**: the scale intengine's integer graph uses for that value (``qm.graph``), else
  the calibrated 8-bit scale ``threshold / 127`` (``qm.qparams``).  A symmetric int8 activation
  at scale ``s`` is emitted as **uint8 with zero point 128** at scale ``s`` (the same grid); the
  u8 range [0, 255] is one step wider than intengine's [-127, 127] at the negative end (no extra
  Clip is emitted).  When the activation is the right-hand operand of an activation × activation
  product (``K`` in ``Q·Kᵀ``, ``V`` in ``P·V``) it is int8 with zero point 0 instead (MLAS has no
  fast u8 × u8 path).  Softmax probabilities (and NEZHA's probability buckets) are u8, zero
  point 0, at intengine's 1/255.  A constant multiplier of the product (``1/√d``) is folded into
  the dequantize scale of an input.  Transposes of a quantized right operand run on the int8
  tensor.
* **weights**: int8, zero point 0, per output channel exactly as
  :func:`intengine.lower._quantize_weight` (``S_w = max|w_row| / 127``, round half to even;
  per-tensor where a relative-position gather reads the product), stored transposed ``[K, N]``
  with the scale along axis 1; constant right operands of ``matmul`` (DeBERTa's relative tables)
  per tensor.  Embedding tables are int8 per tensor (as intengine); the lookup is
  ``Gather(int8 table) → DequantizeLinear``.  Biases and LayerNorm parameters stay float32.

Inputs ``input_ids``, ``attention_mask`` (int64) and ``token_type_ids`` (only when the graph
reads it), shape ``[batch, sequence]``; output ``last_hidden_state`` (task ``base``) or
``logits``, float32, the meaning of :meth:`intengine.quantize.QuantizedModel.run`.
Relative-position tables are stored for the captured ``Tmax`` and sliced ``[:T, :T]`` at run
time (a longer input fails inside ONNX Runtime's Gather/Slice).

Layouts chosen for ONNX Runtime's CPU kernels (measured, onnxruntime 1.31, DeBERTa base, batch 8,
length 128):

* DeBERTa's c2p/p2c (``gather(matmul(x, table))`` with an index ``I[i, j] = d[i - j]``): the
  table's int8 columns re-ordered once at export by relative distance (``2·Tmax`` columns), the
  ``2T`` of them that length ``T`` reads sliced at run time, one ``[.., T, 2T]`` product and a
  skew (two Slices, two Reshapes) instead of a ``[.., T, R]`` product and a per-element Gather
  (:func:`_rel_product`).  Other index tables keep the Gather.
* the pair-masked softmax (QDQ): the key mask added, the padded query rows zeroed on the u8
  ``P·V`` output (``Q(0)`` is the zero point) rather than two Wheres on ``[.., T, T]``.
* a LayerNorm after a residual add runs on a unit-axis view, out of ORT's SkipLayerNormalization
  (slower there than Add + LayerNormalization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ir
from .errors import ExportError
from .onnx_export import package_version, prune_unused
from .kernels.gather import toeplitz_diagonal
from .kernels.quant import quantize_ref, symmetric_scale
from .kernels.softmax import SOFTMAX_OUT_SCALE

__all__ = ["build_qdq_model", "build_float_model", "TRANSLATE", "QDQExportError", "MIN_OPSET"]

MIN_OPSET = 17  # LayerNormalization
_F32_MIN = float(np.finfo(np.float32).min)
_INPUT_DIMS = ("batch", "sequence")


class QDQExportError(ExportError):
    """The fp32 graph cannot be translated to ONNX (names the node and the op)."""


def _onnx_dtype(np_dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))


def _quantize_per_tensor(w: np.ndarray, scale_mul: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """int8 ``w`` at one symmetric scale (as lower.py) and the float32 DequantizeLinear scale
    (``S_w·scale_mul``)."""
    s_w = symmetric_scale(np.abs(w).max(), 8)
    return quantize_ref(w, s_w, None, 8), np.asarray(float(s_w) * scale_mul, np.float32)


def _skew_columns(diag: np.ndarray) -> np.ndarray:
    """Table columns for the skewed relative product: column ``c`` (of ``2n``) holds relative
    distance ``i - j = n - 1 - c`` (the last, ``-n``, is never read: clamped)."""
    n = (diag.shape[0] + 1) // 2
    return diag[np.clip(2 * n - 2 - np.arange(2 * n), 0, 2 * n - 2)]


@dataclass(frozen=True)
class _ActQuant:
    scale: float
    zero_point: int
    dtype: type  # np.uint8 or np.int8


class _Quantizer:
    """Where the activation and weight scales come from (``None`` scales: float export)."""

    def __init__(self, qm):
        self.fp32_graph: ir.Graph = qm.fp32_graph
        self.qparams: Mapping = qm.qparams or {}
        g = getattr(qm, "graph", None)
        self.int_values: dict[str, ir.Value] = {}
        if g is not None and getattr(g, "stage", None) == "integer":
            self.int_values = {v.name: v for v in g.values}
        self._producer = {o: n for n in self.fp32_graph.nodes for o in n.outputs}

    def _probability(self, name: str) -> bool:
        """Softmax outputs and NEZHA's buckets of them (through data movement)."""
        n = self._producer.get(name)
        while n is not None and n.op in ("reshape", "transpose"):
            n = self._producer.get(n.inputs[0])
        return n is not None and n.op in ("softmax", "scatter_add")

    def activation(self, name: str, signed: bool) -> _ActQuant:
        v = self.int_values.get(name)
        if v is not None and v.dtype in ("i8", "u8") and isinstance(v.scale, float):
            scale, unsigned = v.scale, v.dtype == "u8"
        elif self._probability(name):
            scale, unsigned = SOFTMAX_OUT_SCALE, True
        elif name in self.qparams:
            t = float(np.max(np.asarray(self.qparams[name].threshold)))
            scale, unsigned = max(t, 1e-8) / 127.0, False
        else:
            raise QDQExportError(
                f"no quantization scale for activation {name!r}: it is neither in the integer graph "
                "nor in the calibrated qparams"
            )
        scale = float(np.float32(scale))
        if unsigned:  # probabilities: [0, 1] on u8 at 1/255
            return _ActQuant(scale, 0, np.uint8)
        if signed:
            return _ActQuant(scale, 0, np.int8)
        return _ActQuant(scale, 128, np.uint8)


class _Emitter:
    """Builds the ONNX graph node by node; ``env`` maps fp32 value names to ONNX tensor names."""

    def __init__(self, g: ir.Graph, quant: _Quantizer | None):
        self.g, self.quant = g, quant
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.env: dict[str, str] = {}
        self._names: set[str] = set()
        self._cache: dict = {}
        self._consumers: dict[str, list[ir.Node]] = {}
        for n in g.nodes:
            for i in n.inputs:
                self._consumers.setdefault(i, []).append(n)
        self._producer = {o: n for n in g.nodes for o in n.outputs}
        # softmax outputs whose padded query rows are zeroed at their P·V product instead
        # (value -> bool [B, 1, T, 1] rows tensor)
        self.row_zero: dict[str, str] = {}
        # their P·V products: value -> (product before the row mask, rows tensor)
        self.row_zero_out: dict[str, tuple[str, str]] = {}
        self._qtags: dict[str, set[str]] = {}  # value -> integer types its MatMul readers need
        for n in g.nodes:
            if n.op in ("linear", "conv1d") or (n.op == "matmul" and n.inputs[1] in g.constants):
                self._qtags.setdefault(n.inputs[0], set()).add("a")
            elif n.op == "matmul":
                self._qtags.setdefault(n.inputs[0], set()).add("a")
                self._qtags.setdefault(n.inputs[1], set()).add("b")

    # ---------------------------------------------------------------- basics
    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._names or name in self.inits:
            k += 1
            name = f"{hint}_{k}"
        self._names.add(name)
        return name

    def const(self, arr, hint: str) -> str:
        """An initializer (deduplicated by name: the same hint must mean the same data)."""
        arr = np.asarray(arr)
        if hint in self.inits:
            return hint
        name = self.fresh(hint)
        self.inits[name] = numpy_helper.from_array(np.array(arr, order="C", copy=True), name)
        return name

    def ints(self, values, hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def scalar(self, value, dtype, hint: str) -> str:
        return self.const(np.asarray(value, dtype=dtype), hint)

    def node(self, op: str, inputs, hint: str, *, domain: str | None = None, **attrs) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    def bind(self, fp_name: str, onnx_name: str) -> None:
        self.env[fp_name] = onnx_name

    def x(self, fp_name: str) -> str:
        try:
            return self.env[fp_name]
        except KeyError:
            raise QDQExportError(f"internal: value {fp_name!r} used before it is translated") from None

    def consumers(self, fp_name: str) -> list[ir.Node]:
        return self._consumers.get(fp_name, [])

    # ---------------------------------------------------------------- shared sub-graphs
    def once(self, key, build: Callable[[], str]) -> str:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def seq_len(self) -> str:
        """1-D int64 ``[T]``."""
        return self.once("T", lambda: self.node(
            "Slice", [self.node("Shape", [self.x("input_ids")], "shape_ids"), self.ints([1], "one_i64"),
                      self.ints([2], "two_i64")], "seq_len"))

    def seq_len_2(self) -> str:
        """1-D int64 ``[T, T]``."""
        return self.once("TT", lambda: self.node("Concat", [self.seq_len(), self.seq_len()], "seq_len_2", axis=0))

    def seq_expr(self, key: str) -> str:
        """1-D int64 ``[1]`` shape arithmetic on ``T`` (shared): ``"T-1"``, ``"2T-1"``,
        ``"T-1+T(2T-1)"``."""
        def build():
            t = self.seq_len()
            one = self.ints([1], "one_i64")
            if key == "T-1":
                return self.node("Sub", [t, one], "seq_len_m1")
            if key == "2T-1":
                return self.node("Sub", [self.node("Add", [t, t], "seq_len_x2"), one], "seq_len_x2m1")
            if key == "T-1+T(2T-1)":
                return self.node("Add", [self.seq_expr("T-1"), self.node("Mul", [t, self.seq_expr("2T-1")],
                                                                         "seq_len_skew_len")], "seq_len_skew_end")
            raise QDQExportError(f"internal: unknown sequence expression {key!r}")

        return self.once(("seq", key), build)

    def rel_window(self, n: int, extend: bool = False) -> tuple[str, str]:
        """``[n - T]`` and ``[n + T]``: the columns of a ``2n``-column skewed table that length
        ``T`` reads.  A lookup (Gather) rather than a Sub, so that ``T > n`` fails in ONNX
        Runtime (index out of range) instead of wrapping around as a negative Slice start.
        ``extend``: the table is first padded by ``p = max(T - n, 0)`` columns on each side
        (:meth:`rel_pads`), so the window is ``[n + p - T, n + p + T)`` for any ``T``."""
        def build():
            t = self.seq_len()
            if extend:
                start = self.node("Max", [self.node("Sub", [self.ints([n], f"n{n}_i64"), t], f"rel_start_{n}_d"),
                                          self.ints([0], "zero_i64")], f"rel_start_{n}_ext")
            else:
                start = self.node("Gather", [self.const(np.arange(n, -1, -1, dtype=np.int64), f"rel_start_{n}"),
                                             t], f"rel_start_{n}_T", axis=0)
            tag = "_ext" if extend else ""
            return start, self.node("Add", [start, self.node("Add", [t, t], f"rel_width_{n}_T")],
                                    f"rel_end_{n}{tag}_T")

        return self.once(("relwin", n, extend), build)

    def rel_pads(self, n: int, rank: int) -> str:
        """``Pad`` amounts for a skewed table of rank ``rank``: ``max(T - n, 0)`` columns before
        and after the last axis."""
        def build():
            p = self.node("Max", [self.node("Sub", [self.seq_len(), self.ints([n], f"n{n}_i64")], f"rel_pad_{n}_d"),
                                  self.ints([0], "zero_i64")], f"rel_pad_{n}")
            zeros = self.ints([0] * (rank - 1), f"zeros{rank - 1}_i64")
            return self.node("Concat", [zeros, p, zeros, p], f"rel_pads_{n}_r{rank}", axis=0)

        return self.once(("relpads", n, rank), build)

    def skew(self, y: str, rank: int, hint: str) -> str:
        """``out[..., i, j] = y[..., i, j - i + T - 1]`` for ``y`` ``[..., T, 2T]``: in the flat
        ``[..., T·2T]`` view that entry sits at ``i·(2T-1) + j + (T-1)``, so two Slices and two
        Reshapes (contiguous copies) replace a per-element Gather."""
        lead = [0] * (rank - 2)
        flat = self.node("Reshape", [y, self.ints(lead + [-1], f"shape_flat{rank}")], hint + ".flat")
        win = self.node("Slice", [flat, self.seq_expr("T-1"), self.seq_expr("T-1+T(2T-1)"),
                                  self.ints([rank - 2], f"axis{rank - 2}_i64")], hint + ".window")
        shape = self.once(("skewshape", rank), lambda: self.node(
            "Concat", [self.ints(lead + [-1], f"shape_flat{rank}"), self.seq_expr("2T-1")], f"skew_shape{rank}",
            axis=0))
        rows = self.node("Reshape", [win, shape], hint + ".rows")
        return self.node("Slice", [rows, self.ints([0], "zero_i64"), self.seq_len(),
                                   self.ints([rank - 1], f"axis{rank - 1}_i64")], hint)

    def index_TT(self, index_name: str, flat_width: int | None = None, extend: bool = False) -> str:
        """The constant index table ``[Tmax, Tmax]`` sliced to ``[:T, :T]``; with ``flat_width``
        ``n``, entry ``(i, j)`` holds ``i·n + I[i, j]`` (a Gather into the ``[.., T·n]`` view).
        ``extend`` (a saturating Toeplitz table, :func:`~intengine.kernels.gather.index_for_length`):
        built from the diagonal ``d`` as ``d[clip(i - j, ±(Tmax - 1)) + Tmax - 1]``, any ``T``."""

        def build():
            index = self.g.constants[index_name]
            diag = toeplitz_diagonal(index) if extend else None
            hint = index_name if flat_width is None else f"{index_name}.flat{flat_width}"
            if diag is None:
                idx = index.astype(np.int64)
                if flat_width is not None:
                    idx = idx + np.arange(idx.shape[0], dtype=np.int64)[:, None] * flat_width
                return self.node("Slice", [self.const(idx, hint), self.ints([0, 0], "zeros2_i64"), self.seq_len_2(),
                                           self.ints([0, 1], "axes01_i64")], hint + ".TT")
            n = index.shape[0]
            t = self.node("Squeeze", [self.seq_len(), self.ints([0], "zero_i64")], "seq_len_scalar")
            pos = self.node("Range", [self.scalar(0, np.int64, "i64_0"), t, self.scalar(1, np.int64, "i64_1")],
                            "seq_positions")
            col = self.node("Unsqueeze", [pos, self.ints([0], "zero_i64")], "seq_positions_row")
            row = self.node("Unsqueeze", [pos, self.ints([1], "one_i64")], "seq_positions_col")
            dist = self.node("Clip", [self.node("Sub", [row, col], "seq_distance"),
                                      self.scalar(-(n - 1), np.int64, f"i64_m{n - 1}"),
                                      self.scalar(n - 1, np.int64, f"i64_{n - 1}")], f"seq_distance_{n}")
            dist = self.node("Add", [dist, self.scalar(n - 1, np.int64, f"i64_{n - 1}")], f"seq_distance_{n}_0")
            idx = self.node("Gather", [self.const(diag, hint + ".diag"), dist], hint + ".TT", axis=0)
            if flat_width is not None:
                idx = self.node("Add", [idx, self.node("Mul", [row, self.scalar(flat_width, np.int64,
                                                                                f"i64_{flat_width}")],
                                                       f"seq_row_offset_{flat_width}")], hint + ".TT.flat")
            return idx

        return self.once(("index", index_name, flat_width, extend), build)

    def mask_bool(self, fp_name: str) -> str:
        return self.once(("mask", fp_name), lambda: self.node("Cast", [self.x(fp_name)], fp_name + ".bool",
                                                                to=TensorProto.BOOL))

    # ---------------------------------------------------------------- quantization helpers
    def quant_root(self, fp_name: str) -> tuple[str, list[ir.Node]]:
        """Walk back from a MatMul input through ``reshape``/``transpose`` nodes whose input has
        no other reader: the quantization then happens before the data movement (which runs on
        the 1-byte tensor) and ORT has no Q/DQ to propagate."""
        chain: list[ir.Node] = []
        v = fp_name
        while True:
            n = self._producer.get(v)
            if n is None or n.op not in ("reshape", "transpose") or len(self.consumers(n.inputs[0])) != 1:
                break
            src = self._producer.get(n.inputs[0])
            if (len(self._qtags.get(fp_name, ())) > 1 and src is not None
                    and (src.op == "matmul" or (src.op == "linear" and src.attr("bias") is None))):
                # two QuantizeLinear readers of a bare MatMul output: ORT would fuse neither
                # (no QLinearMatMul, no MatMulIntegerToFloat); quantize after the data movement
                break
            chain.append(n)
            v = n.inputs[0]
        return v, chain[::-1]

    def quantized_input(self, fp_name: str, *, signed: bool, scale_mul: float = 1.0,
                        transpose_last: bool = False) -> str:
        """``DQ(Q(x))`` for a MatMul input: one QuantizeLinear per (value, type) placed before
        the value's reshape/transpose chain (:meth:`quant_root`), the chain replayed on the
        integer tensor, a fresh DequantizeLinear per use (ORT wants one DQ per fused node);
        ``transpose_last`` swaps the last two axes of the integer tensor; ``scale_mul`` folds a
        constant into the DQ scale."""
        if self.quant is None:
            y = self.x(fp_name)
            if transpose_last:
                y = self.transpose_last(y, self.g.value(fp_name).shape, fp_name + ".T")
            if scale_mul != 1.0:
                y = self.node("Mul", [y, self.scalar(scale_mul, np.float32, f"{fp_name}.mul")], fp_name + ".scaled")
            return y
        aq = self.quant.activation(fp_name, signed)
        tag = "s8" if aq.dtype is np.int8 else "u8"
        root, chain = self.quant_root(fp_name)
        zp = self.scalar(aq.zero_point, aq.dtype, f"{fp_name}.{tag}.zero_point")
        s0 = self.scalar(aq.scale, np.float32, f"{fp_name}.{tag}.scale")

        def build():
            rz = self.row_zero_out.get(root)
            if rz is None:
                q = self.node("QuantizeLinear", [self.x(root), s0, zp], f"{root}.{tag}")
            else:  # rows zeroed after quantization: Q(0) is the zero point
                q = self.node("Where", [rz[1], self.node("QuantizeLinear", [rz[0], s0, zp], f"{root}.all_rows.{tag}"),
                                        zp], f"{root}.{tag}")
            for n in chain:
                q = self.data_movement(n, q, f"{n.outputs[0]}.{tag}")
            return q

        q = self.once(("q", fp_name, tag), build)
        if transpose_last:
            q = self.once(("qT", fp_name, tag), lambda: self.transpose_last(q, self.g.value(fp_name).shape,
                                                                           f"{fp_name}.{tag}.T"))
        s_name = s0
        if scale_mul != 1.0:
            s_name = self.scalar(float(np.float32(aq.scale * scale_mul)), np.float32,
                                 f"{fp_name}.{tag}.scalex{scale_mul:.6g}")
        return self.node("DequantizeLinear", [q, s_name, zp], f"{fp_name}.{tag}.dq")

    def data_movement(self, n: ir.Node, src: str, hint: str) -> str:
        if n.op == "transpose":
            return self.node("Transpose", [src], hint, perm=list(n.attr("perm")))
        tgt = self.reshape_target(self.g.value(n.inputs[0]).shape, n.attr("shape"))
        return self.node("Reshape", [src, self.ints(tgt, "shape_" + "_".join(map(str, tgt)).replace("-", "m"))], hint)

    def transpose_last(self, y: str, shape, hint: str) -> str:
        r = len(shape)
        perm = list(range(r - 2)) + [r - 1, r - 2]
        return self.node("Transpose", [y], hint, perm=perm)

    def weight(self, wname: str, w: np.ndarray, per_channel: bool, hint: str, scale_mul: float = 1.0,
               channel_axis: int = -1) -> str:
        """A float weight (``[.., K, N]`` for MatMul, ``[N, K]`` for Gemm with ``transB``): the
        float initializer, or int8 + DequantizeLinear with symmetric scales along
        ``channel_axis`` (per channel) or per tensor, as lower.py."""
        if self.quant is None:
            w = w if scale_mul == 1.0 else (w * np.float32(scale_mul)).astype(np.float32)
            return self.const(w.astype(np.float32), hint)
        w = np.asarray(w, dtype=np.float32)
        if per_channel:
            ax = channel_axis % w.ndim
            absmax = np.abs(np.moveaxis(w, ax, -1).reshape(-1, w.shape[ax])).max(axis=0)
            s_w = symmetric_scale(absmax, 8)  # float32 [N]
            wq = quantize_ref(w, s_w, ax, 8)
            scale = (s_w.astype(np.float64) * scale_mul).astype(np.float32)
            zp = np.zeros(scale.shape, np.int8)
            axis = {"axis": ax}
        else:
            wq, scale = _quantize_per_tensor(w, scale_mul)
            zp = np.asarray(0, np.int8)
            axis = {}
        tag = "pc" if per_channel else "pt"
        q = self.const(wq, f"{hint}.{tag}.s8")
        s = self.const(scale, f"{hint}.{tag}.scale" + ("" if scale_mul == 1.0 else f"x{scale_mul:.6g}"))
        z = self.const(zp, f"{hint}.{tag}.zero_point")
        return self.node("DequantizeLinear", [q, s, z], f"{hint}.dq", **axis)

    def bias(self, bname: str, x: str, w_nk: np.ndarray, per_channel: bool) -> str:
        """A bias for Gemm: float, or int32 at ``S_x·S_w[c]`` + DequantizeLinear (axis 0)."""
        b = self.g.constants[bname]
        if self.quant is None:
            return self.const(b, bname)
        s_x = np.float32(self.quant.activation(x, signed=False).scale)
        absmax = np.abs(w_nk).max(axis=1)
        if not per_channel:
            absmax = np.full_like(absmax, absmax.max())
        s_b = (s_x * symmetric_scale(absmax, 8)).astype(np.float32)
        bq = np.rint(b.astype(np.float64) / s_b.astype(np.float64))
        if np.abs(bq).max(initial=0) >= 2**31 - 1:
            raise QDQExportError(f"bias {bname!r} does not fit int32 at S_x·S_w")
        q = self.const(bq.astype(np.int32), f"{bname}.s32")
        s = self.const(s_b, f"{bname}.s32.scale")
        z = self.const(np.zeros(s_b.shape, np.int32), f"{bname}.s32.zero_point")
        return self.node("DequantizeLinear", [q, s, z], f"{bname}.dq", axis=0)

    def reshape_target(self, in_shape, out_shape) -> list[int]:
        """ONNX Reshape target for symbolic IR shapes: copied dims as 0, one unknown as -1."""
        target, unknown = [], 0
        for k, d in enumerate(out_shape):
            if isinstance(d, int) or (isinstance(d, str) and d.isdigit()):
                target.append(int(d))
            elif k < len(in_shape) and in_shape[k] == d:
                target.append(0)
            else:
                target.append(-1)
                unknown += 1
        if unknown > 1:
            raise QDQExportError(f"reshape {tuple(in_shape)} -> {tuple(out_shape)}: more than one unknown dim")
        return target


# =============================================================================== translations


def _out(node: ir.Node) -> str:
    return node.outputs[0]


def t_embedding(E: _Emitter, node: ir.Node) -> None:
    tname = node.attr("table")
    table = E.g.constants[tname]
    ids = E.x(node.inputs[0])
    if E.quant is None:
        E.bind(_out(node), E.node("Gather", [E.const(table, tname), ids], _out(node), axis=0))
        return
    s = symmetric_scale(np.abs(table).max(), 8)  # per tensor, as lower_embedding
    tq = E.const(quantize_ref(table, s, None, 8), f"{tname}.s8")
    g = E.node("Gather", [tq, ids], _out(node) + ".s8", axis=0)
    y = E.node("DequantizeLinear", [g, E.scalar(float(s), np.float32, f"{tname}.scale"),
                                    E.scalar(0, np.int8, f"{tname}.zero_point")], _out(node))
    E.bind(_out(node), y)


def t_position_ids(E: _Emitter, node: ir.Node) -> None:
    ids = E.x(node.inputs[0])
    o = _out(node)
    one = E.scalar(1, np.int64, "one_i64_s")
    if node.attr("kind") == "arange":
        t = E.node("Squeeze", [E.seq_len(), E.ints([0], "zero_i64")], "seq_len_s")
        r = E.node("Range", [E.scalar(0, np.int64, "zero_i64_s"), t, one], o + ".range")
        y = E.node("Expand", [r, E.node("Shape", [ids], o + ".shape")], o)
    else:  # cumsum(ids != pad) * (ids != pad) + pad
        pad = int(node.attr("padding_idx"))
        padc = E.scalar(pad, np.int64, f"pad_{pad}_i64")
        is_pad = E.node("Equal", [ids, padc], o + ".is_pad")
        not_pad = E.node("Cast", [E.node("Not", [is_pad], o + ".not_pad_b")], o + ".not_pad",
                         to=TensorProto.INT64)
        cs = E.node("CumSum", [not_pad, one], o + ".cumsum")
        y = E.node("Add", [E.node("Mul", [cs, not_pad], o + ".masked"), padc], o)
    E.bind(o, y)


def _binary(op: str):
    def t(E: _Emitter, node: ir.Node) -> None:
        a, b = node.inputs
        E.bind(_out(node), E.node(op, [E.x(a), E.x(b)], _out(node)))

    t.__name__ = f"t_{op.lower()}"
    return t


def _gather_consumer(E: _Emitter, fp_name: str) -> bool:
    return any(c.op == "gather" for c in E.consumers(fp_name))


def t_linear(E: _Emitter, node: ir.Node) -> None:
    (x,) = node.inputs
    wname = node.attr("weight")
    w = E.g.constants[wname]  # [N, K]
    # a gather along the output axis would mix channels in intengine: per tensor there too
    per_channel = not _gather_consumer(E, _out(node))
    xa = E.quantized_input(x, signed=False)
    bname = node.attr("bias")
    if len(E.g.value(x).shape) == 2:
        # [B, K] (pooler/classifier heads): Gemm(transB).  ORT's QDQ Gemm rule (→ QGemm) wants
        # every input dequantized: the bias is int32 at S_x·S_w[c], as intengine's bias_i32.
        # (A 2-D MatMul + Add would become a float Gemm first and stay float.)
        ins = [xa, E.weight(wname, w, per_channel, wname, channel_axis=0)]
        if bname is not None:
            ins.append(E.bias(bname, x, w, per_channel))
        E.bind(_out(node), E.node("Gemm", ins, _out(node), transB=1))
        return
    wb = E.weight(wname, np.ascontiguousarray(w.T), per_channel, wname + ".T")
    y = E.node("MatMul", [xa, wb], _out(node) + (".matmul" if node.attr("bias") else ""))
    if bname is not None:
        y = E.node("Add", [y, E.const(E.g.constants[bname], bname)], _out(node))
    E.bind(_out(node), y)


def t_matmul(E: _Emitter, node: ir.Node) -> None:
    a, b = node.inputs
    scale = float(node.attr("scale", 1.0))
    tb = bool(node.attr("transpose_b"))
    if b in E.g.constants:  # DeBERTa's relative tables: per-tensor int8, the scale folded in
        w = E.g.constants[b]
        w_kn = np.ascontiguousarray(np.swapaxes(w, -1, -2)) if tb else w
        if _rel_product(E, node, w_kn, scale):
            return
        xa = E.quantized_input(a, signed=False)
        wb = E.weight(b, w_kn, per_channel=False, hint=b + (".T" if tb else ""), scale_mul=scale)
        E.bind(_out(node), E.node("MatMul", [xa, wb], _out(node)))
        return
    xa = E.quantized_input(a, signed=False, scale_mul=scale)
    xb = E.quantized_input(b, signed=True, transpose_last=tb)
    rows = E.row_zero.get(a)
    if rows is None:
        E.bind(_out(node), E.node("MatMul", [xa, xb], _out(node)))
        return
    # P·V with the padded query rows of P not zeroed (t_softmax): zero those rows of the
    # product instead (Σ_j 0·v_j = 0, as intengine), [.., T, d] rather than [.., T, T] entries.
    # A quantized reader zeroes them on the 1-byte tensor (the zero point: quantized_input);
    # the float Where is for other readers (pruned when there are none).
    y = E.node("MatMul", [xa, xb], _out(node) + ".all_rows")
    E.row_zero_out[_out(node)] = (y, rows)
    E.bind(_out(node), E.node("Where", [rows, y, E.scalar(0.0, np.float32, "zero_f32")], _out(node)))


def _rel_product(E: _Emitter, node: ir.Node, w_kn: np.ndarray, scale: float) -> bool:
    """``gather(matmul(x, table))`` with a relative-position index ``I[i, j] = d[i - j]``
    (DeBERTa's c2p/p2c): the table's columns re-ordered once at export into ``2·Tmax`` columns by
    relative distance (column ``c`` ↔ ``i - j = Tmax - 1 - c``; int8 columns of intengine's
    per-tensor table, so the same integers), its ``2T`` columns for length ``T`` sliced at run
    time, one MatMul ``[.., T, 2T]`` and a skew (:meth:`_Emitter.skew`) instead of a ``[.., T,
    R]`` product and a per-element Gather.  False (nothing emitted) when the pattern does not
    hold."""
    readers = E.consumers(_out(node))
    if len(readers) != 1 or readers[0].op != "gather" or _out(node) in E.g.outputs:
        return False
    gat = readers[0]
    index = E.g.constants[gat.attr("index")]
    diag = toeplitz_diagonal(index)
    r = len(E.g.value(_out(node)).shape)
    if diag is None or r < 2 or diag.max() >= w_kn.shape[-1] or diag.min() < 0:
        return False
    n = index.shape[0]
    cols = _skew_columns(diag)
    tname = node.inputs[1]
    extend = bool(gat.attr("extend", False))
    start, end = E.rel_window(n, extend)
    axis = E.ints([w_kn.ndim - 1], f"axis{w_kn.ndim - 1}_i64")

    def window(table: str, hint: str) -> str:
        if extend:  # T > n: the edge columns (saturated distances) repeated on both sides
            table = E.node("Pad", [table, E.rel_pads(n, w_kn.ndim)], hint + ".pad", mode="edge")
        return E.node("Slice", [table, start, end, axis], hint + ".T")

    if E.quant is None:
        table = E.const(np.take(w_kn * np.float32(scale), cols, axis=-1).astype(np.float32), f"{tname}.skew")
        wb = window(table, f"{tname}.skew")
    else:
        wq, s_w = _quantize_per_tensor(w_kn, scale)
        table = E.const(np.ascontiguousarray(np.take(wq, cols, axis=-1)), f"{tname}.skew.pt.s8")
        wq_T = window(table, f"{tname}.skew.pt.s8")
        wb = E.node("DequantizeLinear", [wq_T, E.const(s_w, f"{tname}.skew.pt.scale"),
                                         E.const(np.asarray(0, np.int8), f"{tname}.skew.pt.zero_point")],
                    f"{tname}.skew.dq")
    xa = E.quantized_input(node.inputs[0], signed=False)
    y = E.node("MatMul", [xa, wb], _out(node) + ".skewed")
    E.bind(_out(gat), E.skew(y, r, _out(gat)))
    return True


def t_data_movement(E: _Emitter, node: ir.Node) -> None:
    """``reshape`` (symbolic dims copied as 0) / ``transpose``."""
    E.bind(_out(node), E.data_movement(node, E.x(node.inputs[0]), _out(node)))


def t_select(E: _Emitter, node: ir.Node) -> None:
    idx = int(node.attr("index"))
    E.bind(_out(node), E.node("Gather", [E.x(node.inputs[0]), E.scalar(idx, np.int64, f"index_{idx}_i64_s")],
                              _out(node), axis=int(node.attr("axis"))))


def t_gather(E: _Emitter, node: ir.Node) -> None:
    """``out[..., i, j] = x[..., i, I[i, j]]``: a Gather into the ``[..., T·n]`` view with the
    flattened table ``i·n + I[i, j]`` (sliced to ``[:T, :T]``)."""
    if _out(node) in E.env:  # translated with its relative product (_rel_product)
        return
    (x,) = node.inputs
    shape = E.g.value(x).shape
    n = shape[-1]
    if not isinstance(n, int):
        raise QDQExportError(f"node {node.label}: gather needs a static last dim, got {shape}")
    r = len(shape)
    flat = E.node("Reshape", [E.x(x), E.ints([0] * (r - 2) + [-1], f"shape_flat{r}")], _out(node) + ".flat")
    idx = E.index_TT(node.attr("index"), flat_width=n, extend=bool(node.attr("extend", False)))
    E.bind(_out(node), E.node("Gather", [flat, idx], _out(node), axis=r - 2))


def t_scatter_add(E: _Emitter, node: ir.Node) -> None:
    """``out[..., i, p] = Σ_{j: I[i, j] = p} x[..., i, j]``: ScatterElements(reduction="add")
    into zeros ``[..., T, size]``."""
    (x,) = node.inputs
    size = int(node.attr("size"))
    r = len(E.g.value(x).shape)
    xs = E.x(x)
    shp = E.node("Shape", [xs], _out(node) + ".in_shape")
    lead = E.node("Slice", [shp, E.ints([0], "zero_i64"), E.ints([r - 1], f"rank{r}m1_i64")], _out(node) + ".lead")
    zshape = E.node("Concat", [lead, E.ints([size], f"size_{size}_i64")], _out(node) + ".zshape", axis=0)
    zeros = E.node("ConstantOfShape", [zshape], _out(node) + ".zeros",
                   value=numpy_helper.from_array(np.zeros(1, np.float32)))
    idx = E.node("Expand", [E.index_TT(node.attr("index")), shp], _out(node) + ".index")
    E.bind(_out(node), E.node("ScatterElements", [zeros, idx, xs], _out(node), axis=r - 1, reduction="add"))


def t_softmax(E: _Emitter, node: ir.Node) -> None:
    s, mask = node.inputs
    kind = node.attr("mask")
    if kind not in ("key", "pair"):
        raise QDQExportError(f"node {node.label}: unknown softmax mask kind {kind!r}")
    mb = E.mask_bool(mask)
    if kind == "pair" and E.quant is None:
        # the float model (FP32 baseline, input of ORT's own quantizers): Where / Softmax / Where,
        # which ORT's static quantizer turns into fast QLinearWhere (a broadcast QLinearAdd of the
        # key mask is several times slower there)
        valid = E.once(("pairmask", mask), lambda: E.node("Unsqueeze", [E.node("And", [
            E.node("Unsqueeze", [mb, E.ints([2], "axes2_i64")], mask + ".rows"),
            E.node("Unsqueeze", [mb, E.ints([1], "axes1_i64")], mask + ".cols")], mask + ".pairs"),
            E.ints([1], "axes1_i64")], mask + ".pairs4"))
        m = E.node("Where", [valid, E.x(s), E.scalar(_F32_MIN, np.float32, "f32_min")], _out(node) + ".masked")
        p = E.node("Softmax", [m], _out(node) + ".softmax", axis=-1)
        E.bind(_out(node), E.node("Where", [valid, p, E.scalar(0.0, np.float32, "zero_f32")], _out(node)))
        return
    # masked keys: + float32 min (exp underflows to 0; for a valid query row this is the pair
    # mask's Where(valid, s, min) too, since |s| is far below min's rounding step)
    add = E.once(("keymask", mask), lambda: E.node(
        "Unsqueeze", [E.node("Where", [mb, E.scalar(0.0, np.float32, "zero_f32"),
                                       E.scalar(_F32_MIN, np.float32, "f32_min")], mask + ".additive"),
                      E.ints([1, 2], "axes12_i64")], mask + ".additive_keys"))
    o = _out(node)
    p = E.node("Softmax", [E.node("Add", [E.x(s), add], o + ".masked")], o + (".softmax" if kind == "pair" else ""),
               axis=-1)
    if kind == "key":
        E.bind(o, p)
        return
    # pair (QDQ): the rows of padded queries are all zero.  When only P·V products read P, their
    # [.., T, d] outputs get the row mask (t_matmul) instead of the [.., T, T] probabilities.
    rows = E.once(("rowmask", mask), lambda: E.node("Unsqueeze", [mb, E.ints([1, 3], "axes13_i64")],
                                                    mask + ".rows4"))
    readers = E.consumers(o)
    if o not in E.g.outputs and readers and all(
            c.op == "matmul" and c.inputs[0] == o and c.inputs[1] != o and c.inputs[1] not in E.g.constants
            and len(E.g.value(_out(c)).shape) == 4 for c in readers):
        E.row_zero[o] = rows
        E.bind(o, p)
        return
    E.bind(o, E.node("Where", [rows, p, E.scalar(0.0, np.float32, "zero_f32")], o))


def t_mask_fill(E: _Emitter, node: ir.Node) -> None:
    x, mask = node.inputs
    r = len(E.g.value(x).shape)
    mb = E.mask_bool(mask)
    if r > 2:
        axes = list(range(2, r))
        mb = E.once(("maskr", mask, r), lambda: E.node("Unsqueeze", [mb, E.ints(axes, f"axes_2to{r}_i64")],
                                                      f"{mask}.bool{r}d"))
    v = float(node.attr("value", 0.0))
    E.bind(_out(node), E.node("Where", [mb, E.x(x), E.scalar(v, np.float32, f"fill_{v:g}_f32")], _out(node)))


def t_layernorm(E: _Emitter, node: ir.Node) -> None:
    """``LayerNormalization`` over the last axis.  After a residual ``add`` it runs on a view
    with a unit axis before the last (zero-copy Reshapes): ORT would otherwise fuse ``Add →
    LayerNormalization`` into ``SkipLayerNormalization``, whose CPU kernel (onnxruntime 1.31)
    is several times slower than the two ops it replaces."""
    w, b = node.attr("weight"), node.attr("bias")
    (x,) = node.inputs
    o = _out(node)
    params = [E.const(E.g.constants[w], w), E.const(E.g.constants[b], b)]
    eps = float(node.attr("eps"))
    src = E._producer.get(x)
    r = len(E.g.value(x).shape)
    if src is None or src.op != "add" or r < 2:
        E.bind(o, E.node("LayerNormalization", [E.x(x)] + params, o, axis=-1, epsilon=eps))
        return
    lead = [0] * (r - 1)
    xu = E.node("Reshape", [E.x(x), E.ints(lead + [1, -1], f"shape_unit_last{r}")], o + ".in")
    y = E.node("LayerNormalization", [xu] + params, o + ".unit", axis=-1, epsilon=eps)
    E.bind(o, E.node("Reshape", [y, E.ints(lead + [-1], f"shape_drop_unit{r + 1}")], o))


def t_gelu(E: _Emitter, node: ir.Node) -> None:
    """The patterns ORT's GeluFusion / FastGeluFusion recognise (→ Gelu / FastGelu kernels)."""
    x = E.x(node.inputs[0])
    o = _out(node)

    def c(v, hint):
        return E.scalar(v, np.float32, hint)

    if node.attr("approximate", "none") == "tanh":
        x3 = E.node("Mul", [E.node("Mul", [x, x], o + ".x2"), x], o + ".x3")
        inner = E.node("Add", [x, E.node("Mul", [x3, c(0.044715, "gelu_c")], o + ".cx3")], o + ".inner")
        arg = E.node("Mul", [inner, c(math.sqrt(2.0 / math.pi), "gelu_sqrt2pi")], o + ".arg")
        t = E.node("Tanh", [arg], o + ".tanh")
    else:
        t = E.node("Erf", [E.node("Div", [x, c(math.sqrt(2.0), "sqrt2_f32")], o + ".div")], o + ".erf")
    one_p = E.node("Add", [t, c(1.0, "one_f32")], o + ".onep")
    E.bind(o, E.node("Mul", [E.node("Mul", [x, one_p], o + ".xmul"), c(0.5, "half_f32")], o))


def t_tanh(E: _Emitter, node: ir.Node) -> None:
    E.bind(_out(node), E.node("Tanh", [E.x(node.inputs[0])], _out(node)))


def t_conv1d(E: _Emitter, node: ir.Node) -> None:
    """Channels-last conv1d.  ``groups == 1``: im2col (pad, K shifted slices, concat on
    channels) and one quantized MatMul; the padding and slices run on the quantized tensor
    (padded with the zero point).  ``groups > 1``: a float Conv between transposes."""
    (x,) = node.inputs
    wname = node.attr("weight")
    w = E.g.constants[wname]  # [O, C/g, K]
    O, Cg, K = w.shape
    pad = int(node.attr("padding"))
    groups = int(node.attr("groups"))
    o = _out(node)
    bias = node.attr("bias")
    if groups != 1:
        xt = E.node("Transpose", [E.x(x)], o + ".ncw", perm=[0, 2, 1])
        ins = [xt, E.const(w, wname)] + ([E.const(E.g.constants[bias], bias)] if bias else [])
        c = E.node("Conv", ins, o + ".conv", group=groups, pads=[pad, pad], kernel_shape=[K])
        E.bind(o, E.node("Transpose", [c], o, perm=[0, 2, 1]))
        return
    if E.quant is None:
        src, pad_value = E.x(x), E.scalar(0.0, np.float32, "zero_f32")
    else:
        aq = E.quant.activation(x, signed=False)
        zp = E.scalar(aq.zero_point, aq.dtype, f"{x}.u8.zero_point")
        src = E.once(("q", x, "u8"), lambda: E.node(
            "QuantizeLinear", [E.x(x), E.scalar(aq.scale, np.float32, f"{x}.u8.scale"), zp], f"{x}.u8"))
        pad_value = zp
    xp = E.node("Pad", [src, E.ints([0, pad, 0, 0, pad, 0], f"pads_t{pad}"), pad_value], o + ".pad")
    cols = []
    for k in range(K):
        end = -(K - 1 - k) if k < K - 1 else np.iinfo(np.int64).max
        cols.append(E.node("Slice", [xp, E.ints([k], f"start_{k}_i64"), E.ints([end], f"end_{end}_i64"),
                                     E.ints([1], "one_i64")], f"{o}.tap{k}"))
    col = E.node("Concat", cols, o + ".im2col", axis=-1)
    if E.quant is not None:
        col = E.node("DequantizeLinear", [col, E.scalar(aq.scale, np.float32, f"{x}.u8.scale"), zp], o + ".im2col.dq")
    w_kn = np.ascontiguousarray(np.transpose(w, (2, 1, 0)).reshape(K * Cg, O))  # [(k, c), o]
    y = E.node("MatMul", [col, E.weight(wname, w_kn, True, wname + ".im2col")], o + (".matmul" if bias else ""))
    if bias:
        y = E.node("Add", [y, E.const(E.g.constants[bias], bias)], o)
    E.bind(o, y)


TRANSLATE: dict[str, Callable[[_Emitter, ir.Node], None]] = {
    "embedding": t_embedding,
    "position_ids": t_position_ids,
    "add": _binary("Add"),
    "mul": _binary("Mul"),
    "linear": t_linear,
    "matmul": t_matmul,
    "reshape": t_data_movement,
    "transpose": t_data_movement,
    "select": t_select,
    "gather": t_gather,
    "scatter_add": t_scatter_add,
    "softmax": t_softmax,
    "mask_fill": t_mask_fill,
    "layernorm": t_layernorm,
    "gelu": t_gelu,
    "tanh": t_tanh,
    "conv1d": t_conv1d,
}


# =============================================================================== entry points


def _dims(shape) -> list:
    return [{"B": "batch", "T": "sequence"}.get(d, d) if isinstance(d, str) else int(d) for d in shape]


def _translate(g: ir.Graph, quant: _Quantizer | None, *, output_name: str, opset: int, name: str,
               doc: str) -> onnx.ModelProto:
    if opset < MIN_OPSET:
        raise QDQExportError(f"opset {opset} is too old: the export needs opset >= {MIN_OPSET} (LayerNormalization)")
    if g.stage != "fp32":
        raise QDQExportError(f"the ONNX translator reads an fp32-stage graph, got stage {g.stage!r}")
    ir.verify_fp32(g)
    E = _Emitter(g, quant)
    used = {i for n in g.nodes for i in n.inputs}
    inputs = []
    for i in g.inputs:
        if i not in used:
            continue
        E._names.add(i)
        E.bind(i, i)
        inputs.append(helper.make_tensor_value_info(i, TensorProto.INT64, list(_INPUT_DIMS)))
    if "input_ids" not in E.env:  # Shape(input_ids) gives T
        raise QDQExportError("the graph does not read input_ids")
    for node in g.nodes:
        fn = TRANSLATE.get(node.op)
        if fn is None:
            raise QDQExportError(f"node {node.label}: no ONNX translation for op {node.op!r}")
        fn(E, node)
    outputs = []
    for k, o in enumerate(g.outputs):
        oname = output_name if k == 0 else f"{output_name}_{k}"
        E.nodes.append(helper.make_node("Identity", [E.x(o)], [oname], name=oname))
        outputs.append(helper.make_tensor_value_info(oname, TensorProto.FLOAT, _dims(g.value(o).shape),
                                                     doc_string=f"intengine value {o}"))
    # float data movement whose integer copy replaced it, unused shared constants
    nodes, inits = prune_unused(E.nodes, list(E.inits.values()), [o.name for o in outputs])
    # shapes of the translated values (symbolic batch/sequence): ORT's fusions (BiasGelu)
    # need ranks and hidden sizes that its own inference loses after Scatter/Gather
    produced = {o for n in nodes for o in n.output}
    value_info = [
        helper.make_tensor_value_info(E.env[v.name], _onnx_dtype(ir.NUMPY_DTYPES[v.dtype]), _dims(v.shape))
        for v in g.values
        if v.name in E.env and E.env[v.name] in produced and v.name not in g.outputs and v.dtype in ("f32", "i64")
    ]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits, doc_string=doc,
                              value_info=value_info)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="intengine",
                              producer_version=package_version(), doc_string=doc)
    model.ir_version = max(8, helper.find_min_ir_version_for(opsets))
    return model


def output_name_for(task: str) -> str:
    return "last_hidden_state" if task == "base" else "logits"


def build_qdq_model(qm, *, opset: int = MIN_OPSET) -> onnx.ModelProto:
    """The QDQ ONNX model of a :class:`~intengine.quantize.QuantizedModel` (``qm.fp32_graph``
    translated op by op, Q/DQ at the MatMul inputs with intengine's scales; module docstring)."""
    g = getattr(qm, "fp32_graph", None)
    if not isinstance(g, ir.Graph):
        raise QDQExportError("build_qdq_model needs a QuantizedModel with its fp32 graph (qm.fp32_graph)")
    task = str(getattr(qm, "task", "base"))
    return _translate(g, _Quantizer(qm), output_name=output_name_for(task), opset=opset,
                      name=f"intengine-{getattr(qm, 'family', '?')}-{task}-qdq",
                      doc="intengine QDQ export: u8 activations (zero point 128) x s8 per-channel weights")


def build_float_model(fp32_graph: ir.Graph, task: str = "base", *, opset: int = MIN_OPSET,
                      output_name: str | None = None) -> onnx.ModelProto:
    """The same translation without quantization: the FP32 ONNX model of an fp32-stage graph
    (the baseline that ``onnxruntime.quantization`` quantizes in ``bench/onnx_export.py``)."""
    return _translate(fp32_graph, None, output_name=output_name or output_name_for(task), opset=opset,
                      name=f"intengine-{task}-fp32", doc="intengine FP32 export")

"""Lowering: fp32-stage graph + calibrated ranges → integer-stage graph.

One small rule per fp32 op kind (:data:`RULES`) rewrites a node into integer nodes.  All float
math happens here, once: weight quantization, bias folding, dyadic multipliers
(:func:`~intengine.kernels.requant.quantize_multiplier`) and the ``*_params`` of the nonlinear
kernels.  The result holds only integer constants (``graph.constants``) and integer attrs; the
single float op is the final ``dequantize`` of each graph output.

Quantization points (I-BERT, research/ibert.md §1.4):

* embeddings: int8 tables (per tensor), lookups summed with ``rescale_add`` into the 16-bit
  ``emb.sum`` scale (a partial sum feeding another add is also kept at 16 bits);
* linear: int8 weights per output channel, int32 bias at ``S_x·S_w``; the output is requantized
  in the fused epilogue to the calibrated 8-bit scale, or kept as int32 accumulators (per-channel
  scale ``S_x·S_w[c]``) when every consumer is an ``add`` (residuals: I-BERT's QuantAct(22)
  with identity reads the accumulators directly);
* attention: ``Q·Kᵀ`` with ``1/√d`` folded into the multiplier → int16 scores at the calibrated
  scale (int32 accumulators when they feed an add), ``softmax`` with the key mask → u8 at 1/255,
  ``P·V`` (u8 × int8, Vᵀ) requantized to int8;
* residual adds: ``rescale_add`` into the 22-bit calibrated scale (int32), then ``layernorm``
  → int8; ``gelu`` with fused requant to int8 (int32 wide output when a LayerNorm reads it);
  pooler ``tanh`` → int16 at 1/32767, requantized to int8 at the calibrated scale;
* outputs: int32 accumulators of the head (pre-shifted so ``|q| < 2^24``) or int8, then
  ``dequantize``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from . import ir
from .errors import LoweringError
from .kernels.gelu import gelu_params
from .kernels.layernorm import layernorm_params
from .kernels.quant import quantize_ref, symmetric_scale
from .kernels.requant import quantize_multiplier, quantize_multipliers
from .kernels.softmax import SOFTMAX_OUT_SCALE, softmax_params
from .kernels.tanh import tanh_params

__all__ = ["lower", "RULES", "LoweringError"]

_DTYPE_OF_BITS = ((8, "i8"), (16, "i16"), (32, "i32"))
MIN_ACT_SCALE = 2.0**-24
DEQUANT_BOUND = 1 << 23  # integer outputs stay below 2^24 (exact in float32 for dequantize)


def _dtype_for_bits(bits: int) -> str:
    for w, d in _DTYPE_OF_BITS:
        if bits <= w:
            return d
    raise LoweringError(f"no integer container for {bits} bits")


def _qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


class _Lowerer:
    """State of one lowering: the fp32 graph, the ranges, and the integer graph being built."""

    def __init__(self, g: ir.Graph, qparams: Mapping, family: str, force: frozenset = frozenset(),
                 gelu: str = "table"):
        self.g, self.qp, self.family, self.force, self.gelu = g, qparams, family, force, gelu
        self.values: dict[str, ir.Value] = {}
        self.nodes: list[ir.Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.fconst: dict[str, np.ndarray] = dict(g.constants)  # float constants (+ derived ones)
        self.env: dict[str, str] = {}  # fp32 value name -> integer value name
        self._consumers: dict[str, list[ir.Node]] = {}
        for n in g.nodes:
            for i in n.inputs:
                self._consumers.setdefault(i, []).append(n)

    # ---------------------------------------------------------------- graph building
    def consumers(self, name: str) -> list[ir.Node]:
        return self._consumers.get(name, [])

    def int_name(self, fp_name: str) -> str:
        return fp_name + ".q" if fp_name in self.g.outputs else fp_name

    def value(self, fp_name: str) -> ir.Value:
        """The integer value standing for fp32 value ``fp_name``."""
        try:
            return self.values[self.env[fp_name]]
        except KeyError:
            raise LoweringError(f"internal: fp32 value {fp_name!r} has not been lowered") from None

    def const(self, name: str, arr: np.ndarray, dtype: str) -> str:
        arr = np.ascontiguousarray(arr, dtype=ir.NUMPY_DTYPES[dtype])
        if name in self.constants:
            if not np.array_equal(self.constants[name], arr):
                raise LoweringError(f"internal: constant {name!r} defined twice with different data")
            return name
        self.constants[name] = arr
        self.values[name] = ir.Value(name, dtype, arr.shape)
        return name

    def emit(self, op: str, inputs, out: str, vdtype: str, vshape, scale=None, *, fp: str | None = None,
             **attrs) -> str:
        """Append an integer node; ``fp`` names the fp32 value it stands for (then ``out`` is
        derived from it)."""
        if fp is not None:
            out = self.int_name(fp)
        if isinstance(scale, np.ndarray):
            scale = float(scale.ravel()[0]) if scale.size == 1 else tuple(float(s) for s in scale.ravel())
        elif scale is not None and not isinstance(scale, tuple):
            scale = float(scale)
        if out in self.values:
            raise LoweringError(f"internal: integer value {out!r} declared twice")
        self.values[out] = ir.Value(out, vdtype, tuple(vshape), scale)
        self.nodes.append(ir.Node(op, tuple(inputs), (out,), tuple(attrs.items()), name=out))
        if fp is not None:
            self.env[fp] = out
        return out

    def multiplier(self, name: str, real) -> tuple[str | int, str | int]:
        """``real`` (scalar or per-channel) → (m_i32, shift): ints for a scalar, else constants."""
        real = np.asarray(real, dtype=np.float64)
        if real.size == 1:
            return quantize_multiplier(float(real.ravel()[0]))
        m, s = quantize_multipliers(real)
        return self.const(f"{name}.m_i32", m, "i32"), self.const(f"{name}.shift", s, "i32")

    # ---------------------------------------------------------------- ranges
    def act_qp(self, fp_name: str):
        if fp_name not in self.qp:
            raise LoweringError(f"no calibrated range for value {fp_name!r}: calibrate(graph, batches) first")
        return self.qp[fp_name]

    def act_scale(self, fp_name: str, bits: int) -> float:
        """Step of ``fp_name`` at ``bits`` from its calibrated threshold."""
        t = float(np.max(np.asarray(self.act_qp(fp_name).threshold)))
        # floor at 2^-24 (the smallest scale the nonlinear kernels' params accept): only a
        # near-zero range (e.g. all-zero attention scores) is affected, and a larger step still
        # covers it
        return max(t / _qmax(bits), MIN_ACT_SCALE)

    def out_bits(self, fp_name: str, partial_sum: bool = False) -> int:
        """Bits of an activation: the calibrated width; 16 for scores feeding softmax and (when
        ``partial_sum``, i.e. produced by an add) for sums feeding another add."""
        bits = int(self.act_qp(fp_name).bits)
        ops = {c.op for c in self.consumers(fp_name)}
        if "softmax" in ops or (partial_sum and "add" in ops):
            bits = max(bits, 16)
        return bits

    def feeds_only_adds(self, fp_name: str) -> bool:
        """Every use is an ``add`` (possibly through data movement): int32 may flow there."""
        cons = self.consumers(fp_name)
        if not cons or fp_name in self.g.outputs:
            return False
        for c in cons:
            if c.op == "add":
                continue
            if c.op in ("gather", "transpose", "reshape") and self.feeds_only_adds(c.outputs[0]):
                continue
            return False
        return True

    def scalar_scale(self, fp_name: str, what: str) -> float:
        s = self.value(fp_name).scale
        if s is None or isinstance(s, tuple):
            raise LoweringError(f"{what}: input {fp_name!r} must carry one per-tensor scale, got {s!r}")
        return float(s)

    def to_i8(self, fp_name: str) -> str:
        """The int8 form of ``fp_name``: itself, or a ``requantize`` of a wider value (a 16-bit
        sum, int32 accumulators) to the calibrated 8-bit scale."""
        v = self.value(fp_name)
        if v.dtype == "i8":
            return v.name
        name = f"{v.name}.i8"
        if name not in self.values:
            s_out = self.act_scale(fp_name, 8)
            m, s = self.multiplier(name, np.asarray(v.scale, np.float64) / s_out)
            self.emit("requantize", [v.name], name, "i8", v.shape, s_out, m_i32=m, shift=s, out_bits=8)
        return name

    def mask_as(self, mask: str, shape: tuple) -> str:
        """The ``[B, T]`` bool mask reshaped to broadcast against a tensor of ``shape`` (the
        ``"T"`` axis of the mask at the first ``"T"`` of ``shape`` after the batch axis)."""
        t_axis = list(shape).index("T", 1)
        tgt = ("B",) + tuple("T" if k == t_axis else 1 for k in range(1, len(shape)))
        name = f"{mask}.as{len(shape)}d{t_axis}"
        if name not in self.values:
            self.emit("reshape", [self.env[mask]], name, "bool", tgt, shape=tgt)
        return name

    def fail(self, node: ir.Node, why: str):
        raise LoweringError(f"cannot lower op {node.op!r} (node {node.label}, family {self.family}): {why}")


# =============================================================================== rules


def lower_embedding(L: _Lowerer, node: ir.Node) -> None:
    """int8 table (per tensor) + ``embedding_lookup``; output at the table scale."""
    tname = node.attr("table")
    table = L.fconst[tname]
    s = symmetric_scale(np.abs(table).max(), 8)
    tq = L.const(f"{tname}.table_i8", quantize_ref(table, s, None, 8), "i8")
    (ids,) = node.inputs
    out = node.outputs[0]
    L.emit("embedding_lookup", [L.env[ids]], "", "i8", L.g.value(out).shape, float(s), fp=out, table=tq)


def lower_position_ids(L: _Lowerer, node: ir.Node) -> None:
    out = node.outputs[0]
    L.emit("position_ids", [L.env[node.inputs[0]]], "", "i64", L.g.value(out).shape, fp=out,
           **dict(node.attrs))


def lower_add(L: _Lowerer, node: ir.Node) -> None:
    """``rescale_add`` of both operands into the calibrated output scale (22 bits for residuals,
    16 for the embedding sum and for partial sums)."""
    out = node.outputs[0]
    a, b = node.inputs
    bits = L.out_bits(out, partial_sum=True)
    s_out = L.act_scale(out, bits)
    va, vb = L.value(a), L.value(b)
    if tuple(va.shape) != tuple(vb.shape):
        L.fail(node, f"operands have different shapes {va.shape} and {vb.shape}")
    ma, sa = L.multiplier(f"{out}.a", np.asarray(va.scale, np.float64) / s_out)
    mb, sb = L.multiplier(f"{out}.b", np.asarray(vb.scale, np.float64) / s_out)
    L.emit("rescale_add", [va.name, vb.name], "", _dtype_for_bits(bits), L.g.value(out).shape, s_out,
           fp=out, m_a=ma, shift_a=sa, m_b=mb, shift_b=sb, out_bits=bits)


def _quantize_weight(L: _Lowerer, wname: str, per_channel: bool) -> tuple[str, np.ndarray]:
    w = L.fconst[wname]
    absmax = np.abs(w).max(axis=1)
    if not per_channel:
        absmax = np.full_like(absmax, absmax.max())
    s_w = symmetric_scale(absmax, 8)  # float32 [N]
    tag = "w_i8" if per_channel else "w_i8_pt"
    wq = L.const(f"{wname}.{tag}", quantize_ref(w, s_w, 0, 8), "i8")
    return wq, s_w.astype(np.float64) if per_channel else s_w[:1].astype(np.float64)


def lower_linear(L: _Lowerer, node: ir.Node) -> None:
    """int8 per-channel weight, int32 bias at ``S_x·S_w``, fused requant to the output scale.

    Output forms: int8 at the calibrated scale (default); int32 accumulators at the per-channel
    ``S_x·S_w[c]`` when every consumer is an add; at a graph output, the accumulators
    pre-shifted by ``2^-k`` so that ``|q| < 2^24`` for the float32 dequantize.
    """
    out = node.outputs[0]
    (x,) = node.inputs
    vx = L.value(x)
    if vx.dtype == "u8" and node.attr("bias") is None:
        return _lower_u8_linear(L, node)
    if vx.dtype in ("i16", "i32"):
        vx = L.values[L.to_i8(x)]  # e.g. DeBERTa-v2's embed_proj reading the 16-bit embedding sum
    if vx.dtype != "i8":
        L.fail(node, f"input {x!r} is {vx.dtype}; integer linear reads int8")
    if vx.scale is None or isinstance(vx.scale, tuple):
        L.fail(node, f"input {x!r} must carry one per-tensor scale, got {vx.scale!r}")
    s_x = float(vx.scale)
    # a gather along the output axis would mix channels: per-tensor weight scale there
    per_channel = not any(c.op == "gather" for c in L.consumers(out))
    wq, s_w = _quantize_weight(L, node.attr("weight"), per_channel)
    acc_scale = s_x * s_w  # [N]
    bias = None
    bname = node.attr("bias")
    max_bias = 0.0
    if bname is not None:
        b = np.rint(L.fconst[bname].astype(np.float64) / acc_scale)
        max_bias = float(np.abs(b).max()) if b.size else 0.0
        if max_bias >= 2**30:
            L.fail(node, f"bias {bname!r} does not fit the int32 accumulator at S_x·S_w (|b| ≥ 2^30)")
        bias = L.const(f"{out}.bias_i32", b, "i32")
    shape = L.g.value(out).shape
    attrs = dict(weight=wq, bias=bias)
    if out in L.g.outputs:
        k_dim = L.fconst[node.attr("weight")].shape[1]
        bound = k_dim * 127 * 127 + max_bias
        k = max(0, math.ceil(math.log2(bound / DEQUANT_BOUND))) if bound > DEQUANT_BOUND else 0
        if k:
            m, s = quantize_multiplier(2.0 ** -k)
            L.emit("linear", [vx.name], "", "i32", shape, acc_scale * 2.0**k, fp=out, **attrs,
                   m_i32=m, shift=s, out_bits=32)
        else:
            L.emit("linear", [vx.name], "", "i32", shape, acc_scale, fp=out, **attrs)
        return
    if L.feeds_only_adds(out):
        L.emit("linear", [vx.name], "", "i32", shape, acc_scale, fp=out, **attrs)
        return
    bits = L.out_bits(out)
    s_out = L.act_scale(out, bits)
    m, s = L.multiplier(out, acc_scale / s_out)
    L.emit("linear", [vx.name], "", _dtype_for_bits(bits), shape, s_out, fp=out, **attrs,
           m_i32=m, shift=s, out_bits=bits)


def _lower_u8_linear(L: _Lowerer, node: ir.Node) -> None:
    """A bias-free linear over u8 (NEZHA's bucketed probabilities · value table): the batched
    ``matmul`` kernel takes u8 × i8, with the int8 weight ``[N, K]`` as a broadcast constant."""
    out = node.outputs[0]
    vx = L.value(node.inputs[0])
    s_x = L.scalar_scale(node.inputs[0], "linear")
    wq, s_w = _quantize_weight(L, node.attr("weight"), per_channel=True)
    acc_scale = s_x * s_w
    shape = L.g.value(out).shape
    if L.feeds_only_adds(out):
        L.emit("matmul", [vx.name, wq], "", "i32", shape, acc_scale, fp=out)
        return
    bits = L.out_bits(out)
    s_out = L.act_scale(out, bits)
    m, s = L.multiplier(out, acc_scale / s_out)
    L.emit("matmul", [vx.name, wq], "", _dtype_for_bits(bits), shape, s_out, fp=out, m_i32=m, shift=s,
           out_bits=bits)


def lower_gather(L: _Lowerer, node: ir.Node) -> None:
    """Relative-position gather (``out[..., i, j] = x[..., i, I[i, j]]``): integer data movement;
    the index table becomes an int64 constant.  The input must have one per-tensor scale."""
    out = node.outputs[0]
    v = L.value(node.inputs[0])
    if isinstance(v.scale, tuple):
        L.fail(node, "gather along a per-channel axis would mix channel scales")
    idx = L.const(node.attr("index"), L.fconst[node.attr("index")], "i64")
    extend = {"extend": True} if node.attr("extend", False) else {}
    L.emit("gather", [v.name], "", v.dtype, L.g.value(out).shape, v.scale, fp=out, index=idx, **extend)


def lower_scatter_add(L: _Lowerer, node: ir.Node) -> None:
    """NEZHA's bucketing of probabilities by relative distance: exact integer sums of the u8
    probabilities (scale 1/255), saturated to 255 (a bucket never holds more than its row's mass,
    which exceeds 255 only by the row's rounding)."""
    out = node.outputs[0]
    v = L.value(node.inputs[0])
    if v.dtype != "u8":
        L.fail(node, f"scatter_add expects u8 probabilities, got {v.dtype}")
    idx = L.const(node.attr("index"), L.fconst[node.attr("index")], "i64")
    L.emit("scatter_add", [v.name], "", "u8", L.g.value(out).shape, v.scale, fp=out, index=idx,
           size=int(node.attr("size")))


def lower_matmul(L: _Lowerer, node: ir.Node) -> None:
    """Batched ``A·Bᵀ`` (the kernel's NT layout; B is transposed when the fp32 op is NN).

    ``scale`` (1/√d) is folded into the multiplier.  Scores feeding softmax become int16 at the
    calibrated scale; accumulators feeding an add stay int32; everything else int8.
    """
    out = node.outputs[0]
    a, b = node.inputs
    va = L.value(a)
    if b in L.fconst:
        # DeBERTa's projected relative tables Kr / Qr [h, 2S, d]: int8 per tensor, broadcast over B
        if not node.attr("transpose_b"):
            L.fail(node, "a constant right operand must be stored [.., N, K] (transpose_b)")
        table = L.fconst[b]
        s_t = symmetric_scale(np.abs(table).max(), 8)
        tq = L.const(f"{b}.i8", quantize_ref(table, s_t, None, 8), "i8")
        L.values[tq] = ir.Value(tq, "i8", table.shape, float(s_t))
        vb = L.values[tq]
    else:
        vb = L.value(b)
    if va.dtype not in ("i8", "u8") or vb.dtype != "i8":
        L.fail(node, f"operands are {va.dtype} × {vb.dtype}; the integer matmul takes i8/u8 × i8")
    s_a = L.scalar_scale(a, "matmul")
    if isinstance(vb.scale, tuple) or vb.scale is None:
        L.fail(node, f"right operand {b!r} must carry one per-tensor scale")
    s_b = float(vb.scale)
    bname = vb.name
    if not node.attr("transpose_b"):
        shp = tuple(vb.shape)
        perm = tuple(range(len(shp) - 2)) + (len(shp) - 1, len(shp) - 2)
        bname = L.emit("transpose", [vb.name], f"{out}.bT", "i8", tuple(shp[p] for p in perm), s_b,
                       perm=perm)
    real = s_a * s_b * float(node.attr("scale", 1.0))
    shape = L.g.value(out).shape
    if L.feeds_only_adds(out):
        # the accumulators carry S_a·S_b·scale: the scale folds into the consumer's multiplier
        L.emit("matmul", [va.name, bname], "", "i32", shape, real, fp=out)
        return
    bits = L.out_bits(out)
    s_out = L.act_scale(out, bits)
    m, s = quantize_multiplier(real / s_out)
    L.emit("matmul", [va.name, bname], "", _dtype_for_bits(bits), shape, s_out, fp=out,
           m_i32=m, shift=s, out_bits=bits)


def _key_mask(L: _Lowerer, mask: str) -> str:
    name = f"{mask}.keys"
    if name not in L.values:
        L.emit("reshape", [L.env[mask]], name, "bool", ("B", 1, 1, "T"), shape=("B", 1, 1, "T"))
    return name


def lower_softmax(L: _Lowerer, node: ir.Node) -> None:
    """i-softmax over keys (mask ``[B,1,1,T]``); u8 probabilities at scale 1/255."""
    out = node.outputs[0]
    x, mask = node.inputs
    kind = node.attr("mask")
    if kind not in ("key", "pair"):
        L.fail(node, f"unknown softmax mask kind {kind!r}")
    vx = L.value(x)
    if vx.dtype not in ("i8", "i16", "i32"):
        L.fail(node, f"scores are {vx.dtype}")
    shape = L.g.value(out).shape
    if "softmax" in L.force:
        op, attrs = "float_softmax", dict(in_scale=L.scalar_scale(x, "softmax"))
    else:
        p = softmax_params(L.scalar_scale(x, "softmax"))
        op, attrs = "softmax", dict(m_i32=int(p.m_i32), shift=int(p.shift))
    if kind == "key":
        L.emit(op, [vx.name, _key_mask(L, mask)], "", "u8", shape, SOFTMAX_OUT_SCALE, fp=out, **attrs)
        return
    # DeBERTa's pair mask m_i ∧ m_j: on a valid query row it is the key mask; rows of padded
    # queries are all-zero (XSoftmax), which a mask_fill over the query axis reproduces exactly
    keyed = L.emit(op, [vx.name, _key_mask(L, mask)], f"{out}.keyed", "u8", shape, SOFTMAX_OUT_SCALE, **attrs)
    L.emit("mask_fill", [keyed, L.mask_as(mask, tuple(shape))], "", "u8", shape, SOFTMAX_OUT_SCALE, fp=out)


def lower_layernorm(L: _Lowerer, node: ir.Node) -> None:
    """i-LayerNorm on int32 input (narrower inputs are widened first) → int8 at the calibrated scale."""
    out = node.outputs[0]
    (x,) = node.inputs
    vx = L.value(x)
    s_in = L.scalar_scale(x, "layernorm")
    bits = 8 if out in L.g.outputs else L.out_bits(out)
    s_out = L.act_scale(out, bits)
    if "layernorm" in L.force:
        w = L.fconst[node.attr("weight")]
        b = L.fconst[node.attr("bias")]
        for cname, arr in ((node.attr("weight"), w), (node.attr("bias"), b)):
            L.constants.setdefault(cname, np.ascontiguousarray(arr, np.float32))
            L.values.setdefault(cname, ir.Value(cname, "f32", arr.shape))
        L.emit("float_layernorm", [vx.name, node.attr("weight"), node.attr("bias")], "", _dtype_for_bits(bits),
               L.g.value(out).shape, s_out, fp=out, in_scale=s_in, out_scale=s_out, out_bits=bits,
               eps=float(node.attr("eps")))
        return
    src = vx.name
    if vx.dtype != "i32":
        src = L.emit("cast_int", [vx.name], f"{x}.i32", "i32", vx.shape, s_in, to="i32")
    g = L.fconst
    p = layernorm_params(g[node.attr("weight")], g[node.attr("bias")], node.attr("eps"), s_out, bits,
                         in_scale=s_in)
    L.emit("layernorm", [src], "", _dtype_for_bits(bits), L.g.value(out).shape, s_out, fp=out,
           m_i32=L.const(f"{out}.m_i32", p.m_i32, "i32"), shift=L.const(f"{out}.shift", p.shift, "i32"),
           bias_i64=L.const(f"{out}.bias_i64", p.bias_i64, "i64"), eps_m=int(p.eps_m), eps_e=int(p.eps_e),
           out_bits=bits)


def gelu_table(s_in: float, s_out: float, approximate: str = "none") -> np.ndarray:
    """``clip(⌊GELU(v·s_in) / s_out + 1/2⌋, ±127)`` for every int8 ``v`` (entry ``v + 128``),
    int8 ``[256]``: the exact function (erf, or the tanh form) in float64, at lowering time."""
    v = np.arange(-128, 128, dtype=np.float64) * float(s_in)
    if approximate == "tanh":
        y = 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    else:
        y = 0.5 * v * (1.0 + np.array([math.erf(t / math.sqrt(2.0)) for t in v]))
    return np.clip(np.floor(y / float(s_out) + 0.5), -127, 127).astype(np.int8)


def lower_gelu(L: _Lowerer, node: ir.Node) -> None:
    """GELU.  int8 input and int8 output (``gelu="table"``, the default): a 256-entry table of the
    exact function at the calibrated scales (``lut``); otherwise I-BERT's i-GELU with fused
    requant to int8, or the wide int32 output when a LayerNorm reads it."""
    out = node.outputs[0]
    (x,) = node.inputs
    vx = L.value(x)
    if "gelu" in L.force:
        s_out = L.act_scale(out, 8)
        L.emit("float_gelu", [vx.name], "", "i8", L.g.value(out).shape, s_out, fp=out,
               in_scale=L.scalar_scale(x, "gelu"), out_scale=s_out, out_bits=8,
               approximate=node.attr("approximate", "none"))
        return
    in_bits = {"i8": 8, "i16": 16, "i32": 32}.get(vx.dtype)
    if in_bits is None:
        L.fail(node, f"input is {vx.dtype}")
    s_in = L.scalar_scale(x, "gelu")
    shape = L.g.value(out).shape
    cons = L.consumers(out)
    wide = bool(cons) and all(c.op == "layernorm" for c in cons) and out not in L.g.outputs
    if L.gelu == "table" and in_bits == 8 and not wide:
        s_out = L.act_scale(out, 8)
        table = gelu_table(s_in, s_out, node.attr("approximate", "none"))
        L.emit("lut", [vx.name], "", "i8", shape, s_out, fp=out, table=L.const(f"{out}.table", table, "i8"))
        return
    if wide:
        p = gelu_params(s_in, in_bits)
        L.emit("gelu", [vx.name], "", "i32", shape, p.out_scale, fp=out, **p.kernel_args)
        return
    s_out = L.act_scale(out, 8)
    p = gelu_params(s_in, in_bits, out_scale=s_out, out_bits=8)
    L.emit("gelu", [vx.name], "", "i8", shape, s_out, fp=out, **p.kernel_args)


def lower_tanh(L: _Lowerer, node: ir.Node) -> None:
    """i-tanh at 16 bits (step 1/32767), then requantized to int8 at the calibrated output scale:
    a pooler whose inputs span ±0.03 keeps ~127 levels instead of the ~4 of a fixed 1/127 step."""
    out = node.outputs[0]
    (x,) = node.inputs
    p = tanh_params(L.scalar_scale(x, "tanh"), 16)
    wide = L.emit("tanh", [L.env[x]], f"{out}.i16", "i16", L.g.value(out).shape, p.out_scale,
                  m_i32=int(p.m_i32), shift=int(p.shift), out_bits=16)
    s_out = L.act_scale(out, 8)
    m, s = quantize_multiplier(p.out_scale / s_out)
    L.emit("requantize", [wide], "", "i8", L.g.value(out).shape, s_out, fp=out, m_i32=m, shift=s, out_bits=8)


def lower_mask_fill(L: _Lowerer, node: ir.Node) -> None:
    """Zero the rows of padded tokens (DeBERTa): ``where(mask, x, 0)``; dtype and scale kept
    (only ``value=0`` is representable without a scale change)."""
    out = node.outputs[0]
    x, mask = node.inputs
    if float(node.attr("value", 0.0)) != 0.0:
        L.fail(node, f"mask_fill value {node.attr('value')!r}: only 0 is lowered")
    v = L.value(x)
    L.emit("mask_fill", [v.name, L.mask_as(mask, tuple(v.shape))], "", v.dtype, L.g.value(out).shape, v.scale,
           fp=out)


def lower_conv1d(L: _Lowerer, node: ir.Node) -> None:
    """DeBERTa-v2's nGiE Conv1d over the sequence (channels last) as ``unfold`` + integer linear.

    ``unfold`` gathers the ``k`` shifted copies of ``x [B, T, C]`` (zeros beyond the sequence)
    into ``[B, T, k·C]``; the weight ``[O, C/g, k]`` becomes the dense ``[O, k·C]`` matrix of the
    same sum (grouped convolutions: block-diagonal, zeros elsewhere), so the usual linear rule
    (per-channel int8 weights, int32 bias, fused requant) applies unchanged.
    """
    out = node.outputs[0]
    (x,) = node.inputs
    w = L.fconst[node.attr("weight")]
    o_ch, cg, k = w.shape
    groups, pad = int(node.attr("groups")), int(node.attr("padding"))
    c = cg * groups
    if 2 * pad != k - 1:
        L.fail(node, f"padding {pad} with kernel {k} changes the sequence length")
    dense = np.zeros((o_ch, k, c), np.float32)
    og = o_ch // groups
    for gi in range(groups):
        dense[gi * og:(gi + 1) * og, :, gi * cg:(gi + 1) * cg] = np.transpose(w[gi * og:(gi + 1) * og], (0, 2, 1))
    wname = f"{node.attr('weight')}.unfolded"
    L.fconst[wname] = dense.reshape(o_ch, k * c)
    vx = L.value(x)
    xi = L.values[L.to_i8(x)]
    ufp = f"{out}.unfold"
    L.emit("unfold", [xi.name], "", "i8", tuple(vx.shape[:-1]) + (k * c,), xi.scale, fp=ufp, size=k, padding=pad)
    lower_linear(L, ir.Node("linear", (ufp,), (out,), (("weight", wname), ("bias", node.attr("bias"))), name=out))


def _passthrough(op: str, *keys: str) -> Callable[[_Lowerer, ir.Node], None]:
    def rule(L: _Lowerer, node: ir.Node) -> None:
        out = node.outputs[0]
        v = L.value(node.inputs[0])
        if isinstance(v.scale, tuple) and op != "reshape":
            L.fail(node, "a per-channel scale cannot pass through this op")
        attrs = {k: node.attr(k) for k in keys}
        L.emit(op, [v.name], "", v.dtype, L.g.value(out).shape, v.scale, fp=out, **attrs)

    rule.__name__ = f"lower_{op}"
    rule.__doc__ = f"Integer data movement ``{op}``: same dtype and scale."
    return rule


def lower_reshape(L: _Lowerer, node: ir.Node) -> None:
    """Reshape keeps dtype and scale (a per-channel scale only if the last axis is kept)."""
    out = node.outputs[0]
    v = L.value(node.inputs[0])
    shape = L.g.value(out).shape
    if isinstance(v.scale, tuple) and shape[-1] != v.shape[-1]:
        L.fail(node, "reshape would split the per-channel axis")
    L.emit("reshape", [v.name], "", v.dtype, shape, v.scale, fp=out, shape=node.attr("shape"))


def _unsupported(why: str) -> Callable[[_Lowerer, ir.Node], None]:
    def rule(L: _Lowerer, node: ir.Node) -> None:
        L.fail(node, why)

    return rule


RULES: dict[str, Callable[[_Lowerer, ir.Node], None]] = {
    "embedding": lower_embedding,
    "position_ids": lower_position_ids,
    "add": lower_add,
    "linear": lower_linear,
    "matmul": lower_matmul,
    "softmax": lower_softmax,
    "layernorm": lower_layernorm,
    "gelu": lower_gelu,
    "tanh": lower_tanh,
    "reshape": lower_reshape,
    "transpose": _passthrough("transpose", "perm"),
    "select": _passthrough("select", "axis", "index"),
    "gather": lower_gather,
    "scatter_add": lower_scatter_add,
    "mask_fill": lower_mask_fill,
    "conv1d": lower_conv1d,
    "mul": _unsupported("elementwise mul is not lowered"),
}


FORCE_DEQUANT = {"none": frozenset(), "gelu": frozenset({"gelu"}), "softmax": frozenset({"softmax"}),
                 "layernorm": frozenset({"layernorm"}), "nonlinear": frozenset({"gelu", "softmax", "layernorm"})}


GELU_MODES = ("table", "ibert")


def lower(graph: ir.Graph, qparams: Mapping, family: str = "?", force_dequant: str = "none",
          gelu: str = "table") -> ir.Graph:
    """The integer-stage graph of an fp32-stage ``graph`` with calibrated ``qparams``
    (:func:`intengine.calibrate.calibrate`).  ``verify_integer`` holds on the result.

    ``force_dequant`` (I-BERT's option, for accuracy studies): ``gelu``, ``softmax``,
    ``layernorm`` or ``nonlinear`` (all three) lowers those ops to float islands
    (:data:`~intengine.ir.FLOAT_ISLAND_OPS`: integer in, float math, integer out at the same
    scales); the result is a ``"mixed"``-stage graph (:func:`~intengine.ir.verify_mixed`).

    ``gelu``: ``"table"`` (default) lowers a GELU with int8 input and int8 output to a 256-entry
    table of the exact function (:func:`gelu_table`, op ``lut``: integer data movement at run
    time, same cost as i-GELU's own int8 table) and keeps I-BERT's i-GELU for wider inputs;
    ``"ibert"`` uses i-GELU everywhere (I-BERT's erf polynomial, off by up to 0.018 and by ~10 %
    of ``x`` near 0)."""
    if force_dequant not in FORCE_DEQUANT:
        raise LoweringError(f"force_dequant must be one of {', '.join(FORCE_DEQUANT)}, got {force_dequant!r}")
    if gelu not in GELU_MODES:
        raise LoweringError(f"gelu must be one of {', '.join(GELU_MODES)}, got {gelu!r}")
    if graph.stage != "fp32":
        raise LoweringError(f"lower expects an fp32-stage graph, got stage {graph.stage!r}")
    if not qparams:
        raise LoweringError("lower needs calibrated ranges: calibrate(graph, batches) returned nothing")
    L = _Lowerer(graph, qparams, family, FORCE_DEQUANT[force_dequant], gelu)
    for name in graph.inputs:
        v = graph.value(name)
        L.values[name] = ir.Value(name, v.dtype, v.shape)
        L.env[name] = name
    for node in graph.nodes:
        rule = RULES.get(node.op)
        if rule is None:
            raise LoweringError(f"cannot lower op {node.op!r} (node {node.label}, family {family}): no rule")
        rule(L, node)
    outs = []
    for o in graph.outputs:
        v = L.value(o)
        if v.scale is None:
            raise LoweringError(f"graph output {o!r} carries no scale")
        scale = v.scale
        if isinstance(scale, tuple):
            scale_attr, axis = tuple(np.float32(s).item() for s in scale), -1
        else:
            scale_attr, axis = float(np.float32(scale)), None
        L.values[o] = ir.Value(o, "f32", v.shape)
        L.nodes.append(ir.Node("dequantize", (v.name,), (o,), (("scale", scale_attr), ("axis", axis)), name=o))
        outs.append(o)
    stage = "mixed" if any(n.op in ir.FLOAT_ISLAND_OPS for n in L.nodes) else "integer"
    g = ir.Graph(stage=stage, inputs=graph.inputs, outputs=tuple(outs), nodes=tuple(L.nodes),
                 values=tuple(L.values.values()), constants=L.constants)
    ir.verify_lowered(g)
    return g


# ----------------------------------------------------------------------------- integer-stage fusion


def fuse_add_layernorm(g: ir.Graph) -> ir.Graph:
    """``layernorm(rescale_add(a, b))`` → ``add_layernorm(a, b)`` wherever the sum is an int32
    tensor read by that LayerNorm alone (and is no graph output): the residual add and
    LayerNorm that close each sub-layer become one kernel call, and the 22-bit sum never goes
    through memory.  Bit-identical by definition (``add_layernorm_ref`` is the composition).
    The runtime applies it when it binds a graph; saved graphs and ONNX exports keep both ops."""
    sole = ir.sole_producers(g)
    fused: dict[str, ir.Node] = {}  # the rescale_add output → the add_layernorm replacing its reader
    for n in g.nodes:
        add = sole.get(n.inputs[0]) if n.op == "layernorm" else None
        if add is None or add.op != "rescale_add" or g.value(add.outputs[0]).dtype != "i32":
            continue
        attrs = tuple((k, v) for k, v in add.attrs if k != "out_bits") + (("add_bits", add.attr("out_bits")),) + n.attrs
        fused[add.outputs[0]] = ir.Node("add_layernorm", add.inputs, n.outputs, attrs, name=n.name)
    if not fused:
        return g
    nodes = []
    for n in g.nodes:
        if n.op == "rescale_add" and n.outputs[0] in fused:
            continue
        nodes.append(fused.get(n.inputs[0], n) if n.op == "layernorm" else n)
    gone = set(fused)
    out = ir.Graph(stage=g.stage, inputs=g.inputs, outputs=g.outputs, nodes=tuple(nodes),
                   values=tuple(v for v in g.values if v.name not in gone), constants=g.constants)
    ir.verify_lowered(out)
    return out


def fuse_rel_scores(g: ir.Graph) -> ir.Graph:
    """DeBERTa's score sum ``rescale_add(rescale_add(qk, gather(c2p_all)), transpose(gather(p2c_all)))``
    (the transpose swapping the last two axes) → ``rel_scores(qk, c2p_all, p2c_all)`` wherever
    each intermediate has that one reader and is no graph output: the two gathered terms, the
    transposed one and the partial sum never go through memory.  Bit-identical by definition
    (``rel_scores_ref`` is the composition).  Applied by the runtime, like :func:`fuse_add_layernorm`."""
    producers = ir.sole_producers(g)

    def sole(name: str, op: str) -> ir.Node | None:
        n = producers.get(name)
        return n if n is not None and n.op == op else None

    fused: dict[str, ir.Node] = {}  # outer rescale_add output → its rel_scores
    gone: set[str] = set()  # outputs of the nodes folded in
    for n in g.nodes:
        if n.op != "rescale_add":
            continue
        inner, tr = sole(n.inputs[0], "rescale_add"), sole(n.inputs[1], "transpose")
        if inner is None or tr is None:
            continue
        rank = len(g.value(tr.outputs[0]).shape)
        c2p, p2c = sole(inner.inputs[1], "gather"), sole(tr.inputs[0], "gather")
        if c2p is None or p2c is None or tuple(tr.attr("perm")) != tuple(range(rank - 2)) + (rank - 1, rank - 2):
            continue
        attrs = (("c2p_index", c2p.attr("index")), ("c2p_extend", bool(c2p.attr("extend", False))),
                 ("p2c_index", p2c.attr("index")), ("p2c_extend", bool(p2c.attr("extend", False))))
        for suffix, add in (("1", inner), ("2", n)):
            attrs += tuple((f"{k}{suffix}", add.attr(k)) for k in ("m_a", "shift_a", "m_b", "shift_b"))
            attrs += ((f"bits{suffix}", add.attr("out_bits")),)
        fused[n.outputs[0]] = ir.Node("rel_scores", (inner.inputs[0], c2p.inputs[0], p2c.inputs[0]), n.outputs,
                                      attrs, name=n.name)
        gone |= {inner.outputs[0], tr.outputs[0], c2p.outputs[0], p2c.outputs[0]}
    if not fused:
        return g
    nodes = tuple(fused.get(n.outputs[0], n) for n in g.nodes if n.outputs[0] not in gone)
    out = ir.Graph(stage=g.stage, inputs=g.inputs, outputs=g.outputs, nodes=nodes,
                   values=tuple(v for v in g.values if v.name not in gone), constants=g.constants)
    ir.verify_lowered(out)
    return out

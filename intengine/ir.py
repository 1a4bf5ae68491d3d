"""intengine's graph IR: small frozen dataclasses, a printer and per-stage verifiers.

A :class:`Graph` is a straight-line SSA program: ``nodes`` in execution order,
each reading named :class:`Value` s and producing new ones.  Weights and
integer constants live in ``constants`` (name → numpy array).  Two stages
exist:

* ``"fp32"``: captured from the FP32 reference modules; float ops.
* ``"integer"``: after lowering; only integer ops from :data:`INTEGER_OPS`,
  plus ``dequantize`` nodes that turn an integer graph output into float32.
  :func:`verify_integer` proves that no float op or float tensor survives
  between the token ids and the final dequantize.
* ``"mixed"``: lowered with I-BERT's ``force_dequant``: as ``"integer"``, but the
  ops of :data:`FLOAT_ISLAND_OPS` (integer in and out, float math inside, float
  constants such as LayerNorm's γ/β) are allowed (:func:`verify_mixed`).

Scales are metadata: a value's real meaning is ``scale · int`` (a float, or a
tuple of per-channel floats along the last axis).  Kernels never see them —
lowering turns them into integer multipliers and shifts stored in ``attrs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import IntengineError


class GraphError(IntengineError, ValueError):
    """A graph breaks an IR invariant (names the node and the value at fault)."""


FLOAT_DTYPES = frozenset({"f32"})
INT_DTYPES = frozenset({"i8", "u8", "i16", "i32", "i64", "bool"})
DTYPES = FLOAT_DTYPES | INT_DTYPES
NUMPY_DTYPES = {
    "f32": np.float32, "i8": np.int8, "u8": np.uint8, "i16": np.int16,
    "i32": np.int32, "i64": np.int64, "bool": np.bool_,
}

# Ops of the fp32 stage (captured from the torch modules).
FP32_OPS = frozenset({
    "embedding", "add", "mul", "linear", "matmul", "softmax", "gelu", "tanh", "layernorm",
    "conv1d", "gather", "reshape", "transpose", "mask_fill", "position_ids", "scatter_add", "select",
})
# Integer ops: the kernel registry's run-time ops plus integer data movement.
INTEGER_OPS = frozenset({
    "requantize", "rescale_add", "linear", "matmul", "gelu", "lut", "exp", "softmax", "layernorm", "add_layernorm",
    "tanh", "rel_scores",
    "embedding_lookup", "gather", "clamp_index", "reshape", "transpose", "concat", "slice", "cast_int",
    "position_ids", "select", "scatter_add", "mask_fill", "unfold",
})
BOUNDARY_OPS = frozenset({"dequantize"})  # integer → float32, only at graph outputs
# I-BERT's ``force_dequant``: integer in, integer out, float math inside (stage "mixed" only)
FLOAT_ISLAND_OPS = frozenset({"float_gelu", "float_softmax", "float_layernorm"})


@dataclass(frozen=True)
class Value:
    """A tensor: ``dtype`` from :data:`DTYPES`; ``shape`` dims are ints or symbols (``"B"``, ``"T"``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    scale: float | tuple[float, ...] | None = None

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise GraphError(f"value {self.name!r}: unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if self.scale is not None and self.dtype in FLOAT_DTYPES:
            raise GraphError(f"value {self.name!r}: a float tensor carries no quantization scale")


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    name: str = ""

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def label(self) -> str:
        return self.name or f"{self.op}->{','.join(self.outputs)}"


def _frozen_mapping(m: Mapping | None) -> Mapping:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class Graph:
    stage: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    values: tuple[Value, ...]
    constants: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "constants", _frozen_mapping(self.constants))
        object.__setattr__(self, "_by_name", {v.name: v for v in self.values})

    def value(self, name: str) -> Value:
        try:
            return self._by_name[name]
        except KeyError:
            raise GraphError(f"graph has no value named {name!r}") from None

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]


def sole_producers(g: Graph) -> dict[str, Node]:
    """``{value: the node producing it}`` for the values read exactly once and not graph outputs:
    the intermediates a rewrite may fold into their one reader."""
    reads: dict[str, int] = {}
    for n in g.nodes:
        for i in n.inputs:
            reads[i] = reads.get(i, 0) + 1
    return {o: n for n in g.nodes for o in n.outputs if reads.get(o) == 1 and o not in g.outputs}


# ----------------------------------------------------------------------------- printer


def _fmt_shape(shape: Iterable) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _fmt_scale(scale) -> str:
    if scale is None:
        return ""
    if isinstance(scale, tuple):
        return f" @s=per-channel({len(scale)}, {min(scale):.3g}..{max(scale):.3g})"
    return f" @s={scale:.4g}"


def _fmt_attr(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (tuple, list)) and len(v) > 4:
        return f"({len(v)} items)"
    return repr(v)


def format_graph(g: Graph) -> str:
    """Readable listing: one line per node, ``%out: dtype[shape] @scale = op(%in, ...) {attrs}``."""
    lines = [f"graph[{g.stage}] (" + ", ".join(f"%{n}: {g.value(n).dtype}{_fmt_shape(g.value(n).shape)}" for n in g.inputs) + ")"]
    for c, arr in g.constants.items():
        lines.append(f"  const %{c}: {arr.dtype}{_fmt_shape(arr.shape)}")
    for node in g.nodes:
        outs = ", ".join(
            f"%{o}: {g.value(o).dtype}{_fmt_shape(g.value(o).shape)}{_fmt_scale(g.value(o).scale)}" for o in node.outputs
        )
        attrs = " {" + ", ".join(f"{k}={_fmt_attr(v)}" for k, v in node.attrs) + "}" if node.attrs else ""
        lines.append(f"  {outs} = {node.op}({', '.join('%' + i for i in node.inputs)}){attrs}")
    lines.append("  return " + ", ".join("%" + o for o in g.outputs))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- verifiers


def verify_structure(g: Graph) -> None:
    """SSA and naming: every value declared once, defined before use, outputs defined."""
    declared: set[str] = set()
    for v in g.values:
        if v.name in declared:
            raise GraphError(f"value {v.name!r} is declared twice")
        declared.add(v.name)
    defined = set(g.inputs) | set(g.constants)
    for name in defined:
        if name not in declared:
            raise GraphError(f"graph input or constant {name!r} has no Value declaration")
    for c, arr in g.constants.items():
        v = g.value(c)
        if np.dtype(NUMPY_DTYPES[v.dtype]) != arr.dtype or tuple(v.shape) != arr.shape:
            raise GraphError(f"constant {c!r}: array is {arr.dtype}{arr.shape}, declared {v.dtype}{_fmt_shape(v.shape)}")
    for node in g.nodes:
        for i in node.inputs:
            if i not in defined:
                raise GraphError(f"node {node.label}: input {i!r} is used before it is defined")
        for o in node.outputs:
            if o in defined:
                raise GraphError(f"node {node.label}: output {o!r} is defined twice")
            if o not in declared:
                raise GraphError(f"node {node.label}: output {o!r} has no Value declaration")
            defined.add(o)
    for o in g.outputs:
        if o not in defined:
            raise GraphError(f"graph output {o!r} is never produced")


def verify_fp32(g: Graph) -> None:
    """The captured stage: known fp32 ops only."""
    if g.stage != "fp32":
        raise GraphError(f"verify_fp32 expects an fp32-stage graph, got stage {g.stage!r}")
    verify_structure(g)
    for node in g.nodes:
        if node.op not in FP32_OPS:
            raise GraphError(f"node {node.label}: op {node.op!r} is not an fp32-stage op")


def verify_integer(g: Graph) -> None:
    """The lowered stage: no float op and no float tensor between the inputs and the final dequantize.

    * graph inputs and every constant are integer tensors;
    * every node is an integer op, or a ``dequantize`` whose input is an
      integer tensor and whose float32 output is a graph output read by no node;
    * every value other than those dequantize outputs has an integer dtype.
    """
    if g.stage != "integer":
        raise GraphError(f"verify_integer expects an integer-stage graph, got stage {g.stage!r}")
    _verify_lowered(g, islands=False)


def verify_mixed(g: Graph) -> None:
    """``force_dequant`` graphs: :func:`verify_integer`'s rules, except that the float-island ops
    (:data:`FLOAT_ISLAND_OPS`) may run and read float constants; their inputs and outputs are
    still integer tensors, so every other op stays integer."""
    if g.stage != "mixed":
        raise GraphError(f"verify_mixed expects a mixed-stage graph, got stage {g.stage!r}")
    _verify_lowered(g, islands=True)


def verify_lowered(g: Graph) -> None:
    """:func:`verify_integer` or :func:`verify_mixed`, by the graph's stage."""
    if g.stage == "mixed":
        verify_mixed(g)
    else:
        verify_integer(g)


def _verify_lowered(g: Graph, islands: bool) -> None:
    verify_structure(g)
    island_consts = {i for n in g.nodes if islands and n.op in FLOAT_ISLAND_OPS for i in n.inputs
                     if i in g.constants}
    for name in list(g.inputs) + list(g.constants):
        if g.value(name).dtype not in INT_DTYPES and name not in island_consts:
            raise GraphError(f"input or constant {name!r} is {g.value(name).dtype}: the integer graph takes integers only")
    float_ok: set[str] = set(island_consts)
    for node in g.nodes:
        if node.op in BOUNDARY_OPS:
            (src,) = node.inputs
            if g.value(src).dtype not in INT_DTYPES:
                raise GraphError(f"node {node.label}: dequantize reads float tensor {src!r}")
            for o in node.outputs:
                if o not in g.outputs:
                    raise GraphError(f"node {node.label}: dequantized {o!r} is not a graph output")
                if g.consumers(o):
                    raise GraphError(f"node {node.label}: dequantized {o!r} feeds {g.consumers(o)[0].label}; floats may only leave the graph")
                float_ok.add(o)
            continue
        if node.op not in INTEGER_OPS and not (islands and node.op in FLOAT_ISLAND_OPS):
            raise GraphError(f"node {node.label}: op {node.op!r} is not an integer op")
        floats = island_consts if node.op in FLOAT_ISLAND_OPS else set()
        for name in node.inputs + node.outputs:
            if g.value(name).dtype not in INT_DTYPES and name not in floats:
                raise GraphError(f"node {node.label}: value {name!r} is {g.value(name).dtype}, not an integer tensor")
    for v in g.values:
        if v.dtype in FLOAT_DTYPES and v.name not in float_ok:
            raise GraphError(f"value {v.name!r} is float32 but is not a final dequantize output")

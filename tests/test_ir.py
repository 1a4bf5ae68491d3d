"""IR: printer and verifiers on hand-built graphs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from intengine.ir import Graph, GraphError, Node, Value, format_graph, verify_fp32, verify_integer


def _integer_graph(**over):
    values = [
        Value("ids", "i64", ("B", "T")),
        Value("emb", "i8", (10, 4)),
        Value("x", "i8", ("B", "T", 4), 0.05),
        Value("w", "i8", (3, 4)),
        Value("y", "i32", ("B", "T", 3), 0.001),
        Value("out", "f32", ("B", "T", 3)),
    ]
    nodes = [
        Node("embedding_lookup", ("emb", "ids"), ("x",)),
        Node("linear", ("x", "w"), ("y",), (("out_bits", 32),), name="dense"),
        Node("dequantize", ("y",), ("out",)),
    ]
    consts = {"emb": np.zeros((10, 4), np.int8), "w": np.ones((3, 4), np.int8)}
    kw = dict(stage="integer", inputs=("ids",), outputs=("out",), nodes=tuple(nodes), values=tuple(values), constants=consts)
    kw.update(over)
    return Graph(**kw)


def test_valid_integer_graph_passes_and_prints():
    g = _integer_graph()
    verify_integer(g)
    text = format_graph(g)
    assert "%y: i32[B,T,3] @s=0.001 = linear(%x, %w) {out_bits=32}" in text
    assert "const %w: int8[3,4]" in text


def test_float_op_is_rejected():
    g = _integer_graph()
    nodes = list(g.nodes)
    nodes[1] = Node("gelu_f32", ("x", "w"), ("y",))
    with pytest.raises(GraphError, match="'gelu_f32' is not an integer op"):
        verify_integer(dataclasses.replace(g, nodes=tuple(nodes)))


def test_float_tensor_inside_is_rejected():
    g = _integer_graph()
    values = [dataclasses.replace(v, dtype="f32", scale=None) if v.name == "y" else v for v in g.values]
    with pytest.raises(GraphError, match="'y' is f32"):
        verify_integer(dataclasses.replace(g, values=tuple(values)))


def test_dequantized_value_must_not_feed_more_integer_work():
    g = _integer_graph()
    values = list(g.values) + [Value("z", "i8", ("B", "T", 3))]
    nodes = list(g.nodes) + [Node("requantize", ("out",), ("z",))]
    with pytest.raises(GraphError, match="floats may only leave the graph"):
        verify_integer(dataclasses.replace(g, values=tuple(values), nodes=tuple(nodes)))


def test_float_constant_is_rejected():
    g = _integer_graph()
    values = [Value("w", "f32", (3, 4)) if v.name == "w" else v for v in g.values]
    consts = dict(g.constants, w=np.ones((3, 4), np.float32))
    with pytest.raises(GraphError, match="'w' is f32"):
        verify_integer(dataclasses.replace(g, values=tuple(values), constants=consts))


def test_structure_errors_name_the_value():
    g = _integer_graph()
    with pytest.raises(GraphError, match="'x' is used before"):
        verify_integer(dataclasses.replace(g, nodes=(g.nodes[1], g.nodes[0], g.nodes[2])))
    with pytest.raises(GraphError, match="constant 'w'"):
        verify_integer(dataclasses.replace(g, constants=dict(g.constants, w=np.ones((4, 3), np.int8))))
    with pytest.raises(GraphError, match="never produced"):
        verify_integer(dataclasses.replace(g, outputs=("nope",)))
    with pytest.raises(GraphError, match="unknown dtype"):
        Value("q", "f16", (1,))
    with pytest.raises(GraphError, match="fp32-stage"):
        verify_fp32(g)

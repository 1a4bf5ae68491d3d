"""Integer-only ONNX export (``intengine.onnx_integer``): onnxruntime equals the ``ref`` backend bit
for bit, with dynamic batch/sequence, ``onnx.checker`` passes, and no float op survives except
the final dequantize.  Single-op IR graphs push every translation through the extremes of its
input dtype (the bounds the uint64 shift tricks rely on)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

import intengine
from intengine import ir
from intengine.calibrate import random_batches
from intengine.errors import IntengineError, LoweringError
from intengine.kernels.gelu import gelu_params, gelu_ref
from intengine.kernels.layernorm import layernorm_params
from intengine.kernels.requant import quantize_multiplier, quantize_multipliers
from intengine.kernels.softmax import exp_params, exp_ref, softmax_params
from intengine.kernels.tanh import tanh_params
from intengine.models import init_weights
from intengine.onnx_integer import OnnxTranslationError, build_integer_model, translate_graph
from intengine.quantize import quantize
from intengine.runtime import Executor

ort = pytest.importorskip("onnxruntime")

TASKS = ["base", "sequence-classification", "token-classification", "question-answering", "masked-lm"]
CASES = ([("roberta-tiny", t) for t in TASKS] + [("nezha-cn-tiny", t) for t in TASKS]
         + [("deberta-base-tiny", "sequence-classification"), ("deberta-v3-base-tiny", "masked-lm"),
            ("deberta-v2-xlarge-tiny", "token-classification")])
SHAPES = [(3, 13), (2, 6)]  # (batch, sequence): one model, two run-time shapes


def session(model: onnx.ModelProto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def padded_batch(m, b, t, seed=5):
    x = random_batches(m, 1, b, t, seed=seed)[0]
    x["attention_mask"][:] = True
    x["attention_mask"][0, t - 3:] = False  # a padded row
    if b > 2:
        x["attention_mask"][2, 1:] = False  # a row with one valid token
    return x


def ort_feed(sess, x):
    return {i.name: np.asarray(x[i.name], dtype=np.int64) for i in sess.get_inputs()}


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def exported(request):
    preset, task = request.param
    m = intengine.load_fp32(preset, task=task)
    init_weights(m, 0, std=0.15)  # larger weights: non-trivial activations
    qm = quantize(m, random_batches(m, 2, 3, 12))
    model = build_integer_model(qm)
    return m, qm, model, session(model)


def test_ort_equals_ref_bit_for_bit(exported):
    m, qm, _, sess = exported
    for b, t in SHAPES:
        x = padded_batch(m, b, t)
        want = qm.run(**x, backend="ref")
        (got,) = sess.run(None, ort_feed(sess, x))
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("exported", [c for c in CASES if c[0].startswith("deberta")], indirect=True,
                         ids=lambda c: f"{c[0]}-{c[1]}")
def test_ort_longer_than_max_positions(exported):
    """DeBERTa without absolute positions takes inputs longer than its captured relative tables
    (extended index, rebuilt in ONNX from the Toeplitz diagonal): still bit-exact with ref."""
    m, qm, _, sess = exported
    gathers = [n for n in qm.graph.nodes if n.op == "gather"]
    assert gathers and all(n.attr("extend", False) for n in gathers)
    t = 2 * qm.graph.constants[gathers[0].attr("index")].shape[0] + 3
    x = padded_batch(dataclasses.replace(m.config, max_position_embeddings=t), 3, t)
    want = qm.run(**x, backend="ref")
    (got,) = sess.run(None, ort_feed(sess, x))
    np.testing.assert_array_equal(got, want)


def test_interface_and_checker(exported):
    _, qm, model, _ = exported
    onnx.checker.check_model(model, full_check=True)
    g = model.graph
    names = [i.name for i in g.input]
    assert names[:2] == ["input_ids", "attention_mask"]
    reads_types = any("token_type_ids" in n.inputs for n in qm.graph.nodes)
    assert ("token_type_ids" in names) == reads_types
    for i in g.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in g.output] == list(qm.graph.outputs)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in g.output)
    ops = {n.op_type for n in g.node}
    assert "MatMulInteger" in ops and not ops & {"MatMul", "Gemm", "QLinearMatMul", "DequantizeLinear", "Softmax",
                                                 "LayerNormalization", "Erf", "Tanh", "Exp", "Sqrt", "Pow"}


def test_no_float_op_but_the_final_dequantize(exported):
    _, qm, model, _ = exported
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    outs = set(qm.graph.outputs)
    for node in model.graph.node:
        floats = [t for t in list(node.input) + list(node.output) if types.get(t) in float_types]
        if not floats:
            continue
        # the dequantize of output o: Cast(int → float) named o/dequantize.cast, Mul(·, scale) named o
        owner = node.name.split("/")[0]
        assert owner in outs and node.op_type in ("Cast", "Mul"), (node.name, node.op_type, floats)
        if node.op_type == "Cast":
            assert types[node.input[0]] not in float_types
    for t in model.graph.initializer:
        if t.data_type in float_types:
            assert t.name.split("/")[0] in outs and t.name.endswith("dequantize.scale"), t.name


@pytest.mark.parametrize("preset,kw", [("roberta-tiny", {"tables": False}), ("nezha-cn-tiny", {"tables": False}),
                                       ("roberta-tiny", {"weights": "u8", "opset": 21}),
                                       ("deberta-v2-xlarge-tiny", {"opset": 18})])
def test_variants_bit_exact(preset, kw):
    """Arithmetic i-GELU/i-tanh/i-exp instead of tables; uint8 weights (the u8×u8 path for x86
    without VNNI); other opsets than the default 17."""
    m = intengine.load_fp32(preset, task="sequence-classification" if preset == "roberta-tiny" else "masked-lm")
    init_weights(m, 1, std=0.15)
    qm = quantize(m, random_batches(m, 2, 3, 12))
    model = build_integer_model(qm, **kw)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == kw.get("opset", 17)
    if kw.get("tables") is False:
        assert not any(n.input[0].endswith(("gelu.table", "tanh.table", "exp.table")) for n in model.graph.node)
    sess = session(model)
    x = padded_batch(m, 3, 11, seed=9)
    np.testing.assert_array_equal(sess.run(None, ort_feed(sess, x))[0], qm.run(**x, backend="ref"))


# ------------------------------------------------------------------ single-op graphs at the extremes

RNG = np.random.default_rng(0)
IR_OF = {np.int8: "i8", np.int16: "i16", np.int32: "i32", np.int64: "i64", np.uint8: "u8", np.bool_: "bool"}


def extreme(dtype, shape):
    """Random values over the whole dtype range, with its min/max/0/±1 planted."""
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=np.int64)
    flat = x.reshape(-1)
    special = [info.min, info.max, 0, 1, -1 if info.min < 0 else 2, info.min + 1, info.max - 1]
    flat[:len(special)] = special
    return x.astype(dtype)


def single_op(op, inputs: dict, out_dtype: str, attrs: dict, constants: dict | None = None, tables=True, want=None):
    """Run one IR node through the runtime's ``ref`` binding (or compare with ``want``) and
    through onnxruntime."""
    constants = {k: np.ascontiguousarray(v) for k, v in (constants or {}).items()}
    values = [ir.Value(k, IR_OF[v.dtype.type], v.shape) for k, v in inputs.items()]
    values += [ir.Value(k, IR_OF[v.dtype.type], v.shape) for k, v in constants.items()]
    shape = next(iter(inputs.values())).shape
    values.append(ir.Value("y", out_dtype, shape))
    node = ir.Node(op, tuple(inputs), ("y",), tuple(attrs.items()), name="y")
    g = ir.Graph("integer", tuple(inputs), ("y",), (node,), tuple(values), constants)
    if want is None:
        ex = Executor(g, "ref")
        want = ex._steps[0][1].fn([inputs[k] for k in inputs], shape[0], shape[1] if len(shape) > 1 else 1)
    sess = session(translate_graph(g, tables=tables))
    (got,) = sess.run(None, dict(inputs))
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype,bits", [(np.int32, 8), (np.int16, 8), (np.int8, 16), (np.int32, 22)])
def test_requantize_extremes(dtype, bits):
    x = extreme(dtype, (4, 6, 16))
    m, s = quantize_multipliers(RNG.uniform(-3e-3, 3e-3, 16))  # per channel, signs included
    single_op("requantize", {"x": x}, {8: "i8", 16: "i16", 22: "i32"}[bits],
              dict(m_i32="m", shift="s", out_bits=bits), {"m": m, "s": s})
    mi, si = quantize_multiplier(0.37)
    single_op("requantize", {"x": x}, {8: "i8", 16: "i16", 22: "i32"}[bits], dict(m_i32=mi, shift=si, out_bits=bits))


def test_rescale_add_extremes():
    a, c = extreme(np.int32, (3, 5, 8)), extreme(np.int32, (3, 5, 8))
    ma, sa = quantize_multipliers(RNG.uniform(1e-6, 1e-1, 8))
    mb, sb = quantize_multiplier(2.0**-40)
    single_op("rescale_add", {"a": a, "b": c}, "i32",
              dict(m_a="ma", shift_a="sa", m_b=mb, shift_b=sb, out_bits=22), {"ma": ma, "sa": sa})


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("out", ["wide", "requant8", "requant16"])
def test_gelu_extremes(dtype, out):
    """The wide int32 output (``out_scale=None``) and requantized int8/int16 outputs (the output
    scale folded into ``w0``/``m_erf``), table and arithmetic forms."""
    bits = {np.int8: 8, np.int16: 16, np.int32: 32}[dtype]
    scale = {np.int8: 0.05, np.int16: 3e-4, np.int32: 2e-8}[dtype]
    if out == "wide":
        p, out_dtype = gelu_params(scale, bits), "i32"
    elif out == "requant8":
        p, out_dtype = gelu_params(scale, bits, out_scale=0.03, out_bits=8), "i8"
    else:
        p, out_dtype = gelu_params(scale, bits, out_scale=2e-4, out_bits=16), "i16"
    x = extreme(dtype, (3, 7, 12))
    for tables in (True, False):
        single_op("gelu", {"x": x}, out_dtype, p.kernel_args, tables=tables)
        single_op("gelu", {"x": x}, out_dtype, p.kernel_args, tables=tables, want=gelu_ref(x, **p.kernel_args))


@pytest.mark.parametrize("dtype,scale", [(np.int8, 0.04), (np.int16, 2e-4), (np.int32, 2.0**-24), (np.int8, 256.0)])
def test_tanh_and_exp_extremes(dtype, scale):
    x = extreme(dtype, (5, 40))
    for tables in (True, False):
        single_op("tanh", {"x": x}, "i8", tanh_params(scale, 8).kernel_args, tables=tables)
        # (the runtime binds no standalone exp node: its kernel is the specification)
        p = exp_params(scale).kernel_args
        single_op("exp", {"x": x}, "i32", p, tables=tables, want=exp_ref(x, **p))


@pytest.mark.parametrize("dtype,scale", [(np.int8, 0.05), (np.int16, 1e-4), (np.int32, 2.0**-24), (np.int16, 256.0)])
def test_softmax_extremes(dtype, scale):
    x = extreme(dtype, (2, 3, 5, 9))
    mask = RNG.random((2, 1, 1, 9)) < 0.7
    mask[1] = False  # fully masked rows: all zeros
    mask[0, ..., 0] = True
    single_op("softmax", {"x": x, "mask": mask}, "u8", softmax_params(scale).kernel_args)


@pytest.mark.parametrize("eps,scale", [(1e-5, 1e-3), (0.0, 1e-3), (1e-12, 3e-9), (1e-5, 40.0)])
def test_layernorm_extremes(eps, scale):
    c = 24
    x = extreme(np.int32, (3, 6, c))
    x[0, 0] = 7  # constant row: β
    x[0, 1] = np.iinfo(np.int32).max
    x[0, 1, ::2] = np.iinfo(np.int32).min  # widest possible row
    x[0, 2] = 0
    x[0, 2, 3] = 1  # tiny variance
    x[1] = RNG.integers(-3, 4, size=(6, c))
    gamma, beta = RNG.normal(0, 1, c), RNG.normal(0, 1, c)
    gamma[0] = -gamma[0]
    p = layernorm_params(gamma, beta, eps, 0.02, 8, in_scale=scale)
    attrs = dict(m_i32="m", shift="s", bias_i64="b", eps_m=int(p.eps_m), eps_e=int(p.eps_e), out_bits=8)
    single_op("layernorm", {"x": x}, "i8", attrs, {"m": p.m_i32, "s": p.shift, "b": p.bias_i64})


def test_matmul_u8_probabilities_and_broadcast_table():
    """u8 × i8 (zero point 0) and a constant ``[h, N, K]`` right operand broadcast over the batch."""
    a = extreme(np.uint8, (2, 3, 5, 16))
    table = extreme(np.int8, (3, 7, 16))
    table[table == -128] = -127
    values = [ir.Value("a", "u8", a.shape), ir.Value("t", "i8", table.shape), ir.Value("y", "i8", (2, 3, 5, 7))]
    m, s = quantize_multiplier(1e-4)
    node = ir.Node("matmul", ("a", "t"), ("y",), (("m_i32", m), ("shift", s), ("out_bits", 8)), name="y")
    g = ir.Graph("integer", ("a",), ("y",), (node,), tuple(values), {"t": table})
    want = Executor(g, "ref")._steps[0][1].fn([a, table], 2, 3)
    (got,) = session(translate_graph(g)).run(None, {"a": a})
    np.testing.assert_array_equal(got, want)


def test_untranslatable_op_names_node_and_op():
    values = (ir.Value("x", "i32", ("B", 4)), ir.Value("y", "i32", ("B", 4)))
    node = ir.Node("clamp_index", ("x",), ("y",), name="layer3.attn.clamp")
    g = ir.Graph("integer", ("x",), ("y",), (node,), values, {})
    with pytest.raises(OnnxTranslationError, match=r"layer3\.attn\.clamp.*'clamp_index'") as e:
        translate_graph(g)
    assert isinstance(e.value, LoweringError) and isinstance(e.value, IntengineError)


def test_bias_free_output_linear_stays_integer():
    """``MatMulInteger → Cast → Mul`` (a bias-free head + dequantize) must not be fused by
    onnxruntime into a float kernel: still bit-exact at every optimization level."""
    x = extreme(np.int8, (2, 5, 64))
    x[x == -128] = -127
    w = extreme(np.int8, (48, 64))
    w[w == -128] = -127
    scale = tuple(float(np.float32(v)) for v in RNG.uniform(1e-6, 1e-3, 48))
    values = (ir.Value("x", "i8", ("B", "T", 64)), ir.Value("w", "i8", (48, 64)), ir.Value("acc", "i32", ("B", "T", 48)),
              ir.Value("out", "f32", ("B", "T", 48)))
    nodes = (ir.Node("linear", ("x",), ("acc",), (("weight", "w"), ("bias", None)), name="acc"),
             ir.Node("dequantize", ("acc",), ("out",), (("scale", scale), ("axis", -1)), name="out"))
    g = ir.Graph("integer", ("x",), ("out",), nodes, values, {"w": w})
    steps = Executor(g, "ref")._steps
    want = steps[1][1].fn([steps[0][1].fn([x], 2, 5)], 2, 5)
    model = translate_graph(g)
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], want)

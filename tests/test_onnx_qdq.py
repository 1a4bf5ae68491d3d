"""QDQ ONNX export (intengine.onnx_qdq) and the export facade (intengine.onnx_export): ONNX
Runtime vs intengine's integer runtime, integer kernels in ORT's optimized graph, dynamic
shapes, metadata, atomic writes and the error paths.  Tiny presets only."""

from __future__ import annotations

import collections
import dataclasses
import os
import types

import numpy as np
import onnx
import pytest

import intengine
from intengine import ir
from intengine.calibrate import calibrate, random_batches
from intengine.capture import capture
from intengine.errors import ExportError, IntengineError, LoweringError
from intengine.interp import run_fp32
from intengine.models import init_weights
from intengine.onnx_export import build_model, export_onnx, ort_run, ort_session
from intengine.onnx_qdq import TRANSLATE, build_float_model, build_qdq_model
from intengine.quantize import QuantizedModel

ort = pytest.importorskip("onnxruntime")

CASES = [
    ("roberta-tiny", "sequence-classification"),
    ("roberta-tiny", "token-classification"),
    ("nezha-cn-tiny", "sequence-classification"),
    ("nezha-cn-tiny", "token-classification"),
    ("deberta-base-tiny", "token-classification"),  # v1: c2p/p2c, pair mask
    ("deberta-v3-base-tiny", "sequence-classification"),  # v2: log buckets
    ("deberta-v2-xlarge-tiny", "token-classification"),  # v2 + nGiE conv
]
MIN_COSINE = 0.999
MIN_ARGMAX_AGREEMENT = 0.99
# ORT ops that carry an integer product (the QDQ rewrites of MatMul / Gemm)
INTEGER_KERNELS = {"MatMulIntegerToFloat", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul", "MatMulInteger",
                   "QAttention", "QLinearConv"}
FLOAT_PRODUCTS = {"MatMul", "Gemm", "FusedGemm", "FusedMatMul", "Conv", "FusedConv"}


def _load(preset, task):
    m = intengine.load_fp32(preset, task=task, num_labels=3)
    init_weights(m, 0, std=0.05)  # non-trivial activations, still LN-dominated like real models
    return m


def _quantized(m):
    """``quantize(...)``, or — where a family's integer lowering is not there yet — a stand-in
    with the fp32 graph and the calibrated ranges (all the QDQ export reads)."""
    cal = random_batches(m, 4, 8, 32)
    try:
        return intengine.quantize(m, cal)
    except LoweringError:
        g = capture(m)
        return types.SimpleNamespace(fp32_graph=g, qparams=calibrate(g, cal), graph=None,
                                     family=m.family.rsplit(".", 1)[-1], task=m.task, method="minmax")


def _valid(a, mask):
    return a[mask.astype(bool)] if a.ndim == 3 else a


def cosine_valid(ref, got, mask):
    a, b = _valid(ref, mask).astype(np.float64).ravel(), _valid(got, mask).astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def argmax_agreement(ref, got, mask, min_margin=0.0):
    """Share of predictions (valid tokens, or rows) with the same argmax; only predictions whose
    reference top-2 margin is at least ``min_margin`` count (near-ties of a random head are coin
    flips for any 8-bit model)."""
    r, g = _valid(ref, mask).reshape(-1, ref.shape[-1]), _valid(got, mask).reshape(-1, ref.shape[-1])
    top2 = np.sort(r, axis=-1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) >= min_margin
    return float((r.argmax(-1) == g.argmax(-1))[keep].mean()), int(keep.sum())


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def case(request, tmp_path_factory):
    preset, task = request.param
    m = _load(preset, task)
    qm = _quantized(m)
    path = str(tmp_path_factory.mktemp("qdq") / f"{preset}-{task}.onnx")
    if isinstance(qm, QuantizedModel):
        export_onnx(qm, path)
    else:
        onnx.save(build_qdq_model(qm), path)
    opt = path[:-5] + ".opt.onnx"
    sess = ort_session(path, threads=2, optimized_model_path=opt)
    return types.SimpleNamespace(m=m, qm=qm, path=path, opt=opt, sess=sess, preset=preset, task=task)


def _reference(c, x):
    """intengine's integer runtime where the family lowers, else the fp32 interpreter."""
    if isinstance(c.qm, QuantizedModel):
        return c.qm.run(**x, backend="ref")
    return run_fp32(c.qm.fp32_graph, **x)


def test_qdq_matches_intengine(case):
    b = 64 if case.task == "sequence-classification" else 16
    x = random_batches(case.m, 1, b, 32, seed=11)[0]
    got = ort_run(case.sess, **x)
    ref = _reference(case, x)
    fp = run_fp32(case.qm.fp32_graph, **x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    mask = x["attention_mask"]
    assert cosine_valid(ref, got, mask) >= MIN_COSINE
    assert cosine_valid(fp, got, mask) >= MIN_COSINE
    # argmax: every prediction whose intengine top-2 margin exceeds 5% of the logits' spread
    margin = 0.05 * float(np.std(_valid(ref, mask)))
    agree, n = argmax_agreement(ref, got, mask, min_margin=margin)
    assert n >= 0.8 * _valid(ref, mask).reshape(-1, ref.shape[-1]).shape[0]
    assert agree >= MIN_ARGMAX_AGREEMENT, (agree, n)
    agree_all, _ = argmax_agreement(ref, got, mask)
    assert agree_all >= 0.95


def test_integer_kernels_replace_float_products(case):
    ops = collections.Counter(n.op_type for n in onnx.load(case.opt).graph.node)
    g = case.qm.fp32_graph
    products = sum(1 for n in g.nodes if n.op in ("linear", "matmul")
                   or (n.op == "conv1d" and n.attr("groups") == 1))
    assert not FLOAT_PRODUCTS & set(ops), ops
    assert sum(ops[k] for k in INTEGER_KERNELS) == products, ops
    # every LayerNorm is one LayerNormalization kernel; residual add + LayerNorm are kept out of
    # SkipLayerNormalization (its onnxruntime CPU kernel is slower than Add + LayerNormalization)
    assert ops["LayerNormalization"] == len([n for n in g.nodes if n.op == "layernorm"]), ops
    assert ops["SkipLayerNormalization"] == 0, ops
    # bias + GELU fused
    assert ops["BiasGelu"] + ops["Gelu"] + ops["FastGelu"] >= 1, ops


def test_relative_terms_without_gather(case):
    """DeBERTa's c2p/p2c (a gather of a product with a constant relative table): no per-element
    Gather of the relative products in ONNX Runtime's graph (a skewed product: Slices and
    Reshapes instead), and ONNX Runtime's graph still holds one integer product per term."""
    g = case.qm.fp32_graph
    producer = {o: n for n in g.nodes for o in n.outputs}
    rel = [n for n in g.nodes if n.op == "gather" and producer[n.inputs[0]].op == "matmul"
           and producer[n.inputs[0]].inputs[1] in g.constants]
    if not rel:
        pytest.skip("no gather of a relative-table product in this family")
    opt = onnx.load(case.opt)
    ops = collections.Counter(n.op_type for n in opt.graph.node)
    gathered = {n.output[0] for n in opt.graph.node if n.op_type in ("Gather", "GatherElements", "GatherND")}
    assert not gathered & {n.outputs[0] for n in rel}, gathered
    assert ops["GatherElements"] + ops["GatherND"] == 0, ops
    assert ops["Slice"] >= 3 * len(rel), ops
    skewed = [n for n in opt.graph.node if n.output[0] in {p.outputs[0] + ".skewed" for p in
                                                            (producer[r.inputs[0]] for r in rel)}]
    assert len(skewed) == len(rel) and all(n.op_type in INTEGER_KERNELS for n in skewed), skewed


def test_relative_terms_longer_inputs(case):
    """Inputs longer than the captured relative tables: where the gathers extend (no absolute
    positions: the FP32 model takes any length) the export runs them too, padding the skewed
    table with its saturated edge columns, and stays close to the interpreter; otherwise a longer
    input fails in ONNX Runtime (an out-of-range lookup), it does not wrap around into wrong columns."""
    g = case.qm.fp32_graph
    gathers = [n for n in g.nodes if n.op == "gather"]
    if not gathers:
        pytest.skip("no relative-position gather in this family")
    tmax = min(int(g.constants[gathers[0].attr("index")].shape[0]), case.m.config.max_position_embeddings)
    x = random_batches(case.m, 1, 1, tmax, seed=2)[0]
    assert x["input_ids"].shape == (1, tmax)
    assert ort_run(case.sess, **x).shape[0] == 1
    if all(n.attr("extend", False) for n in gathers):
        longer = dataclasses.replace(case.m.config, max_position_embeddings=2 * tmax + 3)
        x = random_batches(longer, 1, 4, 2 * tmax + 3, seed=2)[0]
        got = ort_run(case.sess, **x)
        assert cosine_valid(run_fp32(g, **x), got, x["attention_mask"]) >= MIN_COSINE
        return
    longer = {k: np.concatenate([v, v[:, -1:]], axis=1) for k, v in x.items()}
    with pytest.raises(Exception, match="(?i)out of|bounds|range|broadcast"):
        ort_run(case.sess, **longer)


def test_dynamic_shapes(case):
    """One export, other batch sizes and lengths (relative tables sliced at run time): outputs
    follow intengine, and a row run alone, unpadded, gives its output inside the padded batch."""
    refs, gots = [], []
    for b, t in [(1, 5), (3, 17), (2, 40), (4, 64)]:
        x = random_batches(case.m, 1, b, t, seed=b * 100 + t)[0]
        got = ort_run(case.sess, **x)
        ref = _reference(case, x)
        assert got.shape == ref.shape
        refs.append(_valid(ref, x["attention_mask"]).reshape(-1))
        gots.append(_valid(got, x["attention_mask"]).reshape(-1))
        n = int(x["attention_mask"][-1].sum())
        alone = ort_run(case.sess, x["input_ids"][-1:, :n], x["attention_mask"][-1:, :n],
                        x["token_type_ids"][-1:, :n])
        np.testing.assert_allclose(alone[0, :n] if got.ndim == 3 else alone[0],
                                   got[-1, :n] if got.ndim == 3 else got[-1], rtol=1e-4, atol=1e-5)
    ref, got = np.concatenate(refs), np.concatenate(gots)
    assert cosine_valid(ref, got, np.ones(1)) >= MIN_COSINE


def test_float_translation_matches_interpreter(case):
    """Without Q/DQ the translation is the fp32 interpreter (every op translation checked)."""
    model = build_float_model(case.qm.fp32_graph, case.task)
    onnx.checker.check_model(model, full_check=True)
    sess = ort_session(model, threads=2)
    x = random_batches(case.m, 1, 3, 21, seed=5)[0]
    got, ref = ort_run(sess, **x), run_fp32(case.qm.fp32_graph, **x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_inputs_outputs_and_metadata(case):
    model = onnx.load(case.path)
    ins = [i.name for i in model.graph.input]
    assert ins[:2] == ["input_ids", "attention_mask"]
    assert ("token_type_ids" in ins) == any("token_type_ids" in n.inputs for n in case.qm.fp32_graph.nodes)
    for i in model.graph.input:
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"]
    (out,) = model.graph.output
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.opset_import[0].version >= 17
    if isinstance(case.qm, QuantizedModel):
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["intengine_version"] == intengine.__version__
        assert meta["intengine_format"] == "qdq"
        assert meta["family"] == case.qm.family and meta["task"] == case.task
        assert meta["calibration_method"] == "minmax"


def test_every_fp32_op_has_a_translation():
    assert set(TRANSLATE) == set(ir.FP32_OPS)


# ----------------------------------------------------------------------------- facade and errors


@pytest.fixture(scope="module")
def roberta_qm():
    m = _load("roberta-tiny", "token-classification")
    return m, intengine.quantize(m, random_batches(m, 2, 4, 16))


def test_export_rejects_non_quantized_models(roberta_qm, tmp_path):
    m, qm = roberta_qm
    p = tmp_path / "x.onnx"
    for bad in (m, object(), None, qm.graph):
        with pytest.raises(ExportError, match="QuantizedModel"):
            export_onnx(bad, p)
    unlowered = QuantizedModel(qm.fp32_graph, qm.fp32_graph, qm.qparams, qm.family, qm.task)
    with pytest.raises(ExportError, match="not lowered"):
        export_onnx(unlowered, p)
    no_fp32 = QuantizedModel(qm.graph, None, qm.qparams, qm.family, qm.task)
    with pytest.raises(ExportError, match="fp32 graph"):
        export_onnx(no_fp32, p)
    corrupted = QuantizedModel(qm.graph, qm.fp32_graph, qm.qparams, qm.family, qm.task)
    corrupted.graph = ir.Graph("integer", qm.graph.inputs, qm.graph.outputs, qm.graph.nodes[1:], qm.graph.values,
                               qm.graph.constants)
    with pytest.raises(ExportError, match="corrupted"):
        export_onnx(corrupted, p)
    with pytest.raises(ExportError, match="format"):
        export_onnx(qm, p, format="tflite")
    with pytest.raises(ExportError, match="opset"):
        export_onnx(qm, p, opset=13)
    assert issubclass(ExportError, IntengineError)
    assert os.listdir(tmp_path) == []


def test_export_unwritable_path_names_it(roberta_qm, tmp_path):
    _, qm = roberta_qm
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for bad in (blocker / "model.onnx", tmp_path / "missing" / "model.onnx", tmp_path):
        with pytest.raises(ExportError, match="cannot write") as e:
            export_onnx(qm, bad)
        assert str(bad) in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_failed_export_leaves_no_partial_file(roberta_qm, tmp_path, monkeypatch):
    _, qm = roberta_qm
    p = tmp_path / "model.onnx"
    real_save = onnx.save_model

    def save_then_fail(model, f, *a, **k):
        real_save(model, f, *a, **k)  # the bytes are on disk (in the temporary folder) ...
        raise OSError(28, "No space left on device")  # ... and then the write fails

    monkeypatch.setattr(onnx, "save_model", save_then_fail)
    with pytest.raises(ExportError, match="No space left"):
        export_onnx(qm, p)
    assert os.listdir(tmp_path) == []
    # an existing file is replaced only by a complete one
    monkeypatch.setattr(onnx, "save_model", real_save)
    p.write_bytes(b"old")
    monkeypatch.setattr(onnx, "save_model", save_then_fail)
    with pytest.raises(ExportError):
        export_onnx(qm, p)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]


def test_export_roundtrip_and_external_data(roberta_qm, tmp_path, monkeypatch):
    m, qm = roberta_qm
    x = random_batches(m, 1, 2, 12, seed=3)[0]
    p = export_onnx(qm, tmp_path / "small.onnx")
    assert p == str(tmp_path / "small.onnx") and os.listdir(tmp_path) == ["small.onnx"]
    y_small = ort_run(ort_session(p), **x)
    import intengine.onnx_export as oe

    monkeypatch.setattr(oe, "EXTERNAL_DATA_THRESHOLD", 0)  # as if the weights were > 2 GB
    p = export_onnx(qm, tmp_path / "big.onnx")
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data", "small.onnx"]
    assert os.path.getsize(tmp_path / "big.onnx") < os.path.getsize(tmp_path / "big.onnx.data")
    np.testing.assert_array_equal(ort_run(ort_session(p, threads=1), **x), y_small)


def test_ort_run_feeds_declared_inputs_only(roberta_qm):
    m, qm = roberta_qm
    sess = ort_session(build_model(qm, "qdq"), threads=1)
    x = random_batches(m, 1, 2, 9, seed=4)[0]
    full = ort_run(sess, **x)
    # RoBERTa presets read token types; the defaults (all-ones mask, zero types) are the same run
    ids = x["input_ids"][:, :6]
    np.testing.assert_array_equal(ort_run(sess, ids), ort_run(sess, ids, np.ones_like(ids), np.zeros_like(ids)))
    assert full.shape == (2, 9, 3)
    with pytest.raises(IntengineError):
        ort_run(sess, x["input_ids"], x["attention_mask"][:, :3])


def test_integer_format_export(roberta_qm, tmp_path):
    pytest.importorskip("intengine.onnx_integer", reason="intengine.onnx_integer is not there yet")
    m, qm = roberta_qm
    p = export_onnx(qm, tmp_path / "int.onnx", format="integer")
    meta = {q.key: q.value for q in onnx.load(p).metadata_props}
    assert meta["intengine_format"] == "integer"
    x = random_batches(m, 1, 2, 10, seed=6)[0]
    got, ref = ort_run(ort_session(p, threads=1), **x), qm.run(**x, backend="ref")
    assert cosine_valid(ref, got, x["attention_mask"]) >= 0.9999


def test_qdq_from_calibrated_ranges_only():
    """Without an integer graph (a family whose lowering is not there), the activation scales
    come from the calibrated qparams (threshold / 127; probabilities at 1/255)."""
    m = _load("deberta-v2-xlarge-tiny", "token-classification")
    g = capture(m)
    qp = calibrate(g, random_batches(m, 4, 8, 32))
    stand_in = types.SimpleNamespace(fp32_graph=g, qparams=qp, graph=None, family="deberta_v2", task=m.task)
    sess = ort_session(build_qdq_model(stand_in), threads=2)
    x = random_batches(m, 1, 8, 32, seed=12)[0]
    assert cosine_valid(run_fp32(g, **x), ort_run(sess, **x), x["attention_mask"]) >= MIN_COSINE


def test_tanh_gelu_translation():
    """``gelu {approximate="tanh"}`` (gelu_new): the FastGelu pattern, float and QDQ."""
    m = _load("roberta-tiny", "token-classification")
    g = capture(m)
    nodes = tuple(ir.Node(n.op, n.inputs, n.outputs, (("approximate", "tanh"),), n.name) if n.op == "gelu" else n
                  for n in g.nodes)
    g = ir.Graph(g.stage, g.inputs, g.outputs, nodes, g.values, g.constants)
    x = random_batches(m, 1, 4, 16, seed=8)[0]
    ref = run_fp32(g, **x)
    got = ort_run(ort_session(build_float_model(g, m.task), threads=1), **x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    stand_in = types.SimpleNamespace(fp32_graph=g, qparams=calibrate(g, random_batches(m, 2, 4, 16)), graph=None,
                                     family="roberta", task=m.task)
    got = ort_run(ort_session(build_qdq_model(stand_in), threads=1), **x)
    assert cosine_valid(ref, got, x["attention_mask"]) >= MIN_COSINE


def test_relative_gather_fallback_for_non_toeplitz_index():
    """An index that is not a function of ``i - j`` keeps the Gather translation (float and QDQ
    follow the interpreter); a Toeplitz one is recognised whatever its clamping."""
    from intengine.kernels.gather import toeplitz_diagonal as _toeplitz_diagonal
    from intengine.onnx_qdq import _skew_columns

    n = 6
    i, j = np.indices((n, n))
    clamped = np.clip(i - j + 2, 0, 4)
    d = _toeplitz_diagonal(clamped)
    assert d is not None and np.array_equal(d[i - j + n - 1], clamped)
    cols = _skew_columns(d)  # column c <-> i - j = n - 1 - c
    assert cols.shape == (2 * n,) and all(cols[c] == d[2 * n - 2 - c] for c in range(2 * n - 1))
    assert _toeplitz_diagonal(clamped.T[:, ::-1] + i) is None
    assert _toeplitz_diagonal(np.zeros((2, 3), np.int64)) is None

    m = _load("deberta-v3-base-tiny", "token-classification")
    g = capture(m)
    consts = dict(g.constants)
    idx = consts["rel.c2p_index"]
    rng = np.random.default_rng(0)
    consts["rel.c2p_index"] = rng.integers(0, int(idx.max()) + 1, idx.shape).astype(idx.dtype)
    assert _toeplitz_diagonal(consts["rel.c2p_index"]) is None
    g = ir.Graph(g.stage, g.inputs, g.outputs, g.nodes, g.values, consts)
    x = random_batches(m, 1, 3, 20, seed=9)[0]
    ref = run_fp32(g, **x)
    model = build_float_model(g, m.task)
    assert any(n.op_type == "Gather" and n.output[0].endswith("attn.c2p") for n in model.graph.node)
    got = ort_run(ort_session(model, threads=1), **x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    stand_in = types.SimpleNamespace(fp32_graph=g, qparams=calibrate(g, random_batches(m, 2, 4, 20)), graph=None,
                                     family="deberta_v2", task=m.task)
    got = ort_run(ort_session(build_qdq_model(stand_in), threads=1), **x)
    assert cosine_valid(ref, got, x["attention_mask"]) >= MIN_COSINE


def test_extended_gather_without_the_skewed_product(monkeypatch):
    """The Gather translation of an ``extend`` gather (used where the skewed relative product does
    not apply) rebuilds the index from its Toeplitz diagonal, so it too takes inputs longer than
    the captured tables and follows the interpreter."""
    import intengine.onnx_qdq as qdq

    monkeypatch.setattr(qdq, "_rel_product", lambda *a, **k: False)
    m = _load("deberta-v3-base-tiny", "token-classification")
    g = capture(m)
    n = g.constants["rel.c2p_index"].shape[0]
    model = build_float_model(g, m.task)
    assert any(nd.op_type == "Gather" and nd.output[0].endswith("attn.c2p") for nd in model.graph.node)
    longer = dataclasses.replace(m.config, max_position_embeddings=n + 7)
    x = random_batches(longer, 1, 2, n + 7, seed=9)[0]
    ref = run_fp32(g, **x)
    got = ort_run(ort_session(model, threads=1), **x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))

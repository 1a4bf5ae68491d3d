"""Integer lowering + runtime: verify_integer, ref == cpu bit for bit, accuracy vs the FP32
module on valid tokens, every head, and the error paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import intengine
from intengine import ir
from intengine.calibrate import calibrate, random_batches
from intengine.capture import capture
from intengine.errors import CalibrationError, IntengineError, LoweringError
from intengine.lower import RULES, lower
from intengine.models import init_weights
from intengine.quantize import QuantizedModel, quantize
from intengine.runtime import Executor

TASKS = ["base", "sequence-classification", "token-classification", "question-answering", "masked-lm"]
SUPPORTED = ["roberta-tiny", "ibert-roberta-tiny", "nezha-cn-tiny", "deberta-base-tiny", "deberta-v3-base-tiny",
             "deberta-v2-xlarge-tiny"]
CASES = [(p, t) for p in ("roberta-tiny", "nezha-cn-tiny", "deberta-base-tiny", "deberta-v3-base-tiny")
         for t in TASKS] + [
    ("ibert-roberta-tiny", "base"), ("ibert-roberta-tiny", "sequence-classification"),
    ("deberta-v2-xlarge-tiny", "base"), ("deberta-v2-xlarge-tiny", "token-classification")]
MIN_COSINE = 0.98


def load(preset, task, std=None):
    m = intengine.load_fp32(preset, task=task)
    if std is not None:
        init_weights(m, 0, std=std)  # larger weights: non-trivial activations
    return m


def batch(m, seed=7, b=3, t=24):
    return random_batches(m, 1, b, t, seed=seed)[0]


def torch_out(m, x):
    with torch.no_grad():
        y = m(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"]),
              torch.from_numpy(x["token_type_ids"]))
    y = getattr(y, "logits", y)
    if isinstance(y, tuple):
        y = y[0]
    return y.detach().numpy()


def cosine_valid(ref, got, mask):
    """Cosine over the valid tokens' entries (all entries for pooled outputs)."""
    if ref.ndim == 3:
        ref, got = ref[mask.astype(bool)], got[mask.astype(bool)]
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module", params=CASES, ids=lambda v: f"{v[0]}-{v[1]}")
def quantized(request):
    preset, task = request.param
    m = load(preset, task, std=0.15)
    qm = quantize(m, random_batches(m, 3, 4, 24), method="minmax")
    return m, qm


def test_integer_graph_verifies(quantized):
    _, qm = quantized
    g = qm.graph
    ir.verify_integer(g)
    assert all(arr.dtype.kind in "iub" for arr in g.constants.values())
    assert [n.op for n in g.nodes if n.op not in ir.INTEGER_OPS] == ["dequantize"]
    for n in g.nodes:  # every attr is an int, a name, a tuple of ints, or the output scale
        for k, v in n.attrs:
            if n.op == "dequantize" and k == "scale":
                continue
            assert not isinstance(v, float), (n.label, k, v)


def test_ref_cpu_bit_exact_and_accuracy(quantized):
    m, qm = quantized
    x = batch(m)
    y_ref = qm.run(**x, backend="ref")
    y_cpu = qm.run(**x, backend="cpu")
    assert y_ref.dtype == np.float32
    np.testing.assert_array_equal(y_ref, y_cpu)
    fp = torch_out(m, x)
    assert y_ref.shape == fp.shape
    cos = cosine_valid(fp, y_ref, x["attention_mask"])
    assert cos >= MIN_COSINE, cos


@pytest.mark.parametrize("preset", SUPPORTED)
def test_base_cosine_default_init(preset):
    m = load(preset, "base")
    qm = quantize(m, random_batches(m, 3, 4, 24))
    x = batch(m, seed=11)
    cos = cosine_valid(torch_out(m, x), qm.run(**x, backend="cpu"), x["attention_mask"])
    assert cos >= MIN_COSINE, cos


def test_executor_packs_once(monkeypatch):
    from intengine.kernels import registry

    m = load("roberta-tiny", "sequence-classification")
    qm = quantize(m, random_batches(m, 2, 2, 16))
    ex = qm.executor("ref")
    calls = []
    real = registry.get_kernel

    def spy(op, backend):
        calls.append(op)
        return real(op, backend)

    monkeypatch.setattr(registry, "get_kernel", spy)
    x = batch(m, b=2, t=8)
    ex.run(**x)
    ex.run(**x)
    assert calls == []  # kernels and packed weights were bound at construction
    assert qm.executor("ref") is ex
    n_linear = sum(n.op == "linear" for n in qm.graph.nodes)
    assert n_linear == 2 * 6 + 2


def test_short_and_single_row_inputs():
    m = load("roberta-tiny", "token-classification", std=0.15)
    qm = quantize(m, random_batches(m, 2, 2, 16))
    ids = np.array([5, 6, 7])
    y = qm.run(ids, backend="cpu")
    assert y.shape == (1, 3, m.config.num_labels)
    with pytest.raises(intengine.errors.InputError):
        qm.run(np.array([[5, 10_000]]))


def test_lower_with_explicit_calibration_dict():
    m = load("roberta-tiny", "base")
    g = capture(m)
    qp = calibrate(g, random_batches(m, 2, 2, 16), method="percentile")
    ig = lower(g, qp, "roberta")
    ir.verify_integer(ig)
    qm = quantize(m, qp)
    assert isinstance(qm, QuantizedModel)
    x = batch(m, b=2, t=8)
    np.testing.assert_array_equal(qm.run(**x), Executor(ig, "ref").run(**x))


def test_rules_table_covers_fp32_ops():
    assert set(RULES) == set(ir.FP32_OPS)


def test_no_calibration_batches_is_an_error():
    m = load("roberta-tiny", "base")
    with pytest.raises(CalibrationError):
        quantize(m, [])
    with pytest.raises(CalibrationError):
        quantize(m, None)
    g = capture(m)
    with pytest.raises(LoweringError):
        lower(g, {}, "roberta")


@pytest.mark.parametrize("mode,ops", [("gelu", {"float_gelu"}), ("softmax", {"float_softmax"}),
                                      ("layernorm", {"float_layernorm"}),
                                      ("nonlinear", {"float_gelu", "float_softmax", "float_layernorm"})])
def test_force_dequant(mode, ops, tmp_path):
    """I-BERT's force_dequant: float islands between integer tensors, a "mixed" graph that the
    integer verifier refuses; backends still agree bit for bit and accuracy holds."""
    m = load("deberta-v3-base-tiny", "base", std=0.15)
    calib = random_batches(m, 2, 4, 24)
    qm = quantize(m, calib, force_dequant=mode)
    g = qm.graph
    assert g.stage == "mixed"
    ir.verify_mixed(g)
    with pytest.raises(ir.GraphError):
        ir.verify_integer(g)
    present = {n.op for n in g.nodes}
    assert ops <= present
    assert not present & {o.replace("float_", "") for o in ops}  # the forced integer ops are gone
    x = batch(m)
    y = qm.run(**x, backend="ref")
    np.testing.assert_array_equal(y, qm.run(**x, backend="cpu"))
    assert cosine_valid(torch_out(m, x), y, x["attention_mask"]) >= MIN_COSINE
    loaded = intengine.load_quantized(qm.save(tmp_path / "q"))  # mixed graphs round-trip too
    np.testing.assert_array_equal(loaded.run(**x, backend="ref"), y)
    with pytest.raises(LoweringError, match="force_dequant"):
        quantize(m, calib, force_dequant="everything")


def test_deberta_relative_terms_and_conv_are_integer():
    """DeBERTa-v2 (conv on): int8 relative tables broadcast in matmul, integer gathers, the pair
    mask as key-masked softmax + query mask_fill, and the nGiE conv as unfold + linear."""
    m = load("deberta-v2-xlarge-tiny", "base", std=0.15)
    qm = quantize(m, random_batches(m, 2, 2, 16))
    ops = [n.op for n in qm.graph.nodes]
    assert ops.count("unfold") == 1 and ops.count("gather") == 2 * m.config.num_hidden_layers
    c2p = next(n for n in qm.graph.nodes if n.name == "layer0.attn.c2p_all")
    table = qm.graph.value(c2p.inputs[1])
    assert table.dtype == "i8" and c2p.inputs[1] in qm.graph.constants
    assert qm.graph.value("layer0.attn.c2p_all").dtype == "i32"  # accumulators flow into the score sum
    probs = next(n for n in qm.graph.nodes if n.name == "layer0.attn.probs")
    assert probs.op == "mask_fill"
    # padded query rows give all-zero probabilities, like XSoftmax
    x = batch(m, b=2, t=10)
    x["attention_mask"][0] = True
    x["attention_mask"][1, 6:] = False
    tr = qm.executor("ref").trace(**x)
    p = tr["layer0.attn.probs"]
    assert not p[1, :, 6:].any() and p[0].sum(-1).min() > 0


def test_unloweable_attribute_names_op_and_family():
    m = load("deberta-base-tiny", "base")
    g = capture(m)
    qp = calibrate(g, random_batches(m, 1, 2, 8))
    nodes = tuple(ir.Node(n.op, n.inputs, n.outputs, tuple((k, 1.0 if k == "value" else v) for k, v in n.attrs),
                          n.name) for n in g.nodes)
    bad = ir.Graph(g.stage, g.inputs, g.outputs, nodes, g.values, g.constants)
    with pytest.raises(LoweringError, match=r"op 'mask_fill'.*family deberta.*only 0") as e:
        lower(bad, qp, "deberta")
    assert isinstance(e.value, IntengineError) and isinstance(e.value, ValueError)


def test_cuda_backend_through_registry():
    """The same executor on the ``cuda`` backend (numba's simulator without a GPU): tiny shape."""
    from intengine.kernels.registry import load_cuda

    if not load_cuda():
        pytest.skip("no cuda backend (neither a GPU nor the simulator)")
    for preset in ("roberta-tiny", "deberta-v2-xlarge-tiny"):
        m = load(preset, "sequence-classification", std=0.15)
        qm = quantize(m, random_batches(m, 1, 2, 8))
        x = batch(m, b=1, t=4)
        np.testing.assert_array_equal(qm.run(**x, backend="cuda"), qm.run(**x, backend="ref"))


@pytest.mark.parametrize("preset", ["roberta-tiny", "nezha-cn-tiny", "deberta-v3-base-tiny"])
def test_bad_inputs_are_clear_errors(preset):
    m = load(preset, "base")
    qm = quantize(m, random_batches(m, 1, 2, 8))
    limit = qm.executor("ref").max_len
    if preset.startswith("deberta"):  # relative positions only: any length (test_pipeline_property)
        assert limit is None
        limit = m.config.max_position_embeddings
    else:  # RoBERTa's position table (minus padding_idx + 1), NEZHA's relative index
        assert limit == m.config.max_position_embeddings - (2 if preset.startswith("roberta") else 0)
    ok = np.full((1, limit), 5)
    assert qm.run(ok, backend="ref").shape[1] == limit
    if not preset.startswith("deberta"):
        with pytest.raises(intengine.errors.InputError, match=f"length {limit + 1}.*{limit} positions"):
            qm.run(np.full((1, limit + 1), 5), backend="ref")
    with pytest.raises(intengine.errors.InputError, match="integer"):
        qm.run(np.full((1, 4), 5.0))
    with pytest.raises(intengine.errors.InputError, match="attention_mask"):
        qm.run(np.full((2, 4), 5), np.ones((2, 3), bool))
    with pytest.raises(intengine.errors.InputError, match="shape"):
        qm.run(np.full((2, 4, 1), 5))


def test_gelu_table_is_the_exact_function_rounded():
    """Every entry of the int8 GELU table is the exact GELU (erf, or the tanh form) of its input
    value, rounded half up to the output step and saturated at ±127."""
    import math

    from intengine.lower import gelu_table

    s_in, s_out = 4.0 / 127, 3.0 / 127
    v = np.arange(-128, 128) * s_in
    for approx, f in (("none", lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2)))),
                      ("tanh", lambda t: 0.5 * t * (1 + math.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))))):
        table = gelu_table(s_in, s_out, approx)
        assert table.dtype == np.int8 and table.shape == (256,)
        exact = np.array([f(t) for t in v]) / s_out
        inside = np.abs(exact) <= 127
        assert np.all(np.abs(table[inside] - exact[inside]) <= 0.5 + 1e-9)
        assert np.all(table[~inside] == 127)  # GELU(4.03) / s_out > 127: saturated


def test_gelu_modes():
    """Default ``gelu="table"``: int8-input GELUs become ``lut`` (the exact function, tabulated),
    wide-output ones (read by a LayerNorm) stay i-GELU; ``"ibert"``: i-GELU everywhere."""
    m = load("deberta-v3-base-tiny", "masked-lm", std=0.1)  # FFN GELUs, and a head GELU → LayerNorm
    g = capture(m)
    qp = calibrate(g, random_batches(m, 2, 3, 16))
    ops = [n.op for n in lower(g, qp, "deberta_v2").nodes]
    assert ops.count("lut") == m.config.num_hidden_layers and ops.count("gelu") == 1
    ops = [n.op for n in lower(g, qp, "deberta_v2", gelu="ibert").nodes]
    assert "lut" not in ops and ops.count("gelu") == m.config.num_hidden_layers + 1
    with pytest.raises(LoweringError, match="gelu must be one of table, ibert"):
        lower(g, qp, "deberta_v2", gelu="exact")

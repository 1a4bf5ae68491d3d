"""Quantized-model folders: save → load round trip (graph equal node for node, ref/cpu runs
bit-identical), generic attr encoding, atomic writes, and every load-time rejection."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import intengine
from intengine import ir
from intengine.calibrate import random_batches
from intengine.errors import IntengineError, QuantizedFormatError
from intengine.quantize import QuantizedModel
from intengine.serialize import (
    FORMAT,
    FORMAT_VERSION,
    GRAPH_NAME,
    WEIGHTS_NAME,
    _canonical_sha256,
    _file_sha256,
    load_quantized,
    save_quantized,
)

CASES = [("roberta-tiny", "sequence-classification"), ("nezha-cn-tiny", "base")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def model(request):
    preset, task = request.param
    m = intengine.load_fp32(preset, task=task)
    qm = intengine.quantize(m, random_batches(m, 2, 3, 16), method="percentile")
    return m, qm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One roberta-tiny folder; tests that damage it work on copies."""
    m = intengine.load_fp32("roberta-tiny", task="sequence-classification")
    qm = intengine.quantize(m, random_batches(m, 2, 3, 16))
    path = save_quantized(qm, tmp_path_factory.mktemp("q") / "model")
    return qm, path


def _copy(src, dst):
    dst.mkdir()
    for name in (GRAPH_NAME, WEIGHTS_NAME):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _rewrite(path, mutate, fix_checksum=True):
    """Edit graph.json's document with ``mutate(doc)``; re-sign it unless told not to."""
    doc = json.loads((path / GRAPH_NAME).read_text())
    mutate(doc)
    if fix_checksum:
        doc["sha256"][GRAPH_NAME] = _canonical_sha256(doc)
    (path / GRAPH_NAME).write_text(json.dumps(doc))


# ----------------------------------------------------------------------------- round trip


def test_round_trip_bit_identical(model, tmp_path):
    m, qm = model
    path = qm.save(tmp_path / "q")
    assert sorted(os.listdir(path)) == [GRAPH_NAME, WEIGHTS_NAME]
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temporary folder left behind
    q2 = intengine.load_quantized(path)
    assert isinstance(q2, QuantizedModel) and q2.fp32_graph is None
    assert (q2.family, q2.task, q2.method) == (qm.family, qm.task, "percentile")
    g, g2 = qm.graph, q2.graph
    assert g2 == g and hash(g2) == hash(g)
    assert len(g2.nodes) == len(g.nodes)
    for a, b in zip(g.nodes, g2.nodes):
        assert a == b
        for (ka, va), (kb, vb) in zip(a.attrs, b.attrs):
            assert ka == kb and type(va) is type(vb), (a.label, ka, va, vb)
    assert g2.values == g.values
    assert list(g2.constants) == list(g.constants)
    for name, arr in g.constants.items():
        assert g2.constants[name].dtype == arr.dtype
        np.testing.assert_array_equal(g2.constants[name], arr)
    assert set(q2.qparams) == set(qm.qparams)
    for name, qp in qm.qparams.items():
        assert q2.qparams[name].bits == qp.bits
        np.testing.assert_array_equal(q2.qparams[name].threshold, qp.threshold)
        np.testing.assert_array_equal(q2.qparams[name].scale, qp.scale)
    x = random_batches(m, 1, 3, 20, seed=5)[0]
    for backend in ("ref", "cpu"):
        np.testing.assert_array_equal(q2.run(**x, backend=backend), qm.run(**x, backend=backend))


def test_graph_json_header(saved):
    qm, path = saved
    doc = json.loads((path / GRAPH_NAME).read_text())
    assert doc["format"] == FORMAT and doc["format_version"] == FORMAT_VERSION == 3
    assert doc["intengine_version"] == intengine.__version__
    assert doc["family"] == "roberta" and doc["task"] == "sequence-classification"
    assert doc["method"] == "minmax"
    assert doc["sha256"][WEIGHTS_NAME] == _file_sha256(path / WEIGHTS_NAME)
    assert doc["sha256"][GRAPH_NAME] == _canonical_sha256(doc)
    q = doc["qparams"]["layer0.attn.q"]
    assert q["bits"] == 8 and isinstance(q["threshold"], float)
    w = doc["qparams"]["roberta.encoder.layer.0.attention.self.query.weight"]
    assert len(w["threshold"]) == w["shape"][0] == 32
    assert {v["dtype"] for v in doc["graph"]["values"]} >= {"i8", "i32", "f32"}


def test_method_unknown_for_a_qparams_dict(tmp_path):
    m = intengine.load_fp32("roberta-tiny", task="base")
    qm = intengine.quantize(m, random_batches(m, 1, 2, 8))
    qm2 = intengine.quantize(m, dict(qm.qparams))
    assert qm2.method is None
    assert load_quantized(qm2.save(tmp_path / "q")).method is None


def _synthetic(attrs) -> QuantizedModel:
    """A minimal valid integer graph whose one node carries ``attrs``."""
    vals = (ir.Value("input_ids", "i64", ("B", "T")), ir.Value("attention_mask", "bool", ("B", "T")),
            ir.Value("token_type_ids", "i64", ("B", "T")), ir.Value("t", "i8", (3, 2)),
            ir.Value("x", "i8", ("B", "T", 2), (0.5, 0.25)), ir.Value("y", "f32", ("B", "T", 2)))
    nodes = (ir.Node("embedding_lookup", ("input_ids",), ("x",), (("table", "t"),) + tuple(attrs), name="x"),
             ir.Node("dequantize", ("x",), ("y",), (("scale", (0.5, 0.25)), ("axis", -1)), name="y"))
    g = ir.Graph("integer", ("input_ids", "attention_mask", "token_type_ids"), ("y",), nodes, vals,
                 {"t": np.arange(6, dtype=np.int8).reshape(3, 2)})
    return QuantizedModel(g, None, {}, "synthetic", "base")


def test_attrs_round_trip_exactly(tmp_path):
    attrs = (
        ("none", None), ("flag", True), ("off", False), ("int", -7), ("big", 2**40), ("f", 0.1),
        ("tiny", 5e-324), ("negzero", -0.0), ("inf", math.inf), ("ninf", -math.inf), ("s", "B"),
        ("shape", ("B", "T", 4, 8)), ("empty", ()), ("nested", ((1, 2.5), ("a", None), ())),
        ("list", [1, (2, 3), [4.0, "x"]]), ("np_int", np.int32(3)), ("np_float", np.float32(0.1)),
        ("unicode", "é→"), ("dollar", "$list"),
    )
    qm = _synthetic(attrs)
    q2 = load_quantized(save_quantized(qm, tmp_path / "q"))
    assert q2.graph == qm.graph  # (a list attr makes the graph unhashable, on both sides)
    got = dict(q2.graph.nodes[0].attrs)
    assert got["shape"] == ("B", "T", 4, 8) and type(got["shape"]) is tuple
    assert got["empty"] == () and type(got["empty"]) is tuple
    assert type(got["nested"][0]) is tuple and type(got["list"]) is list and type(got["list"][1]) is tuple
    assert type(got["list"][2]) is list
    assert type(got["int"]) is int and type(got["f"]) is float and type(got["flag"]) is bool
    assert got["tiny"] == 5e-324 and math.copysign(1.0, got["negzero"]) == -1.0
    assert got["inf"] == math.inf and got["ninf"] == -math.inf
    assert got["np_int"] == 3 and got["np_float"] == float(np.float32(0.1))
    assert q2.graph.value("x").scale == (0.5, 0.25)
    ids = np.array([[0, 2, 1]])
    np.testing.assert_array_equal(q2.run(ids, backend="ref"), qm.run(ids, backend="ref"))


def test_nan_attr_round_trips(tmp_path):
    q2 = load_quantized(save_quantized(_synthetic((("v", math.nan),)), tmp_path / "q"))
    assert math.isnan(q2.graph.nodes[0].attr("v"))


def test_unstorable_attr_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(QuantizedFormatError, match=r"attr 'w'.*ndarray"):
        save_quantized(_synthetic((("w", np.zeros(2)),)), tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomic writes


def test_replaces_existing_model_folder(saved, tmp_path):
    qm, _ = saved
    path = save_quantized(qm, tmp_path / "q")
    other = _synthetic(())
    save_quantized(other, path)
    assert load_quantized(path).family == "synthetic"
    assert [p.name for p in tmp_path.iterdir()] == ["q"]


def test_failed_save_keeps_existing_folder(saved, tmp_path, monkeypatch):
    import intengine.serialize as ser

    qm, _ = saved
    path = save_quantized(qm, tmp_path / "q")
    before = {n: (path / n).read_bytes() for n in (GRAPH_NAME, WEIGHTS_NAME)}

    def boom(doc):
        raise OSError("disk full")

    monkeypatch.setattr(ser, "_dump", boom)  # fails after model.safetensors was written
    with pytest.raises(OSError, match="disk full"):
        save_quantized(_synthetic(()), path)
    assert {n: (path / n).read_bytes() for n in before} == before
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # the temporary folder is gone


def test_refuses_to_replace_a_foreign_folder(saved, tmp_path):
    qm, _ = saved
    target = tmp_path / "notes"
    target.mkdir()
    (target / "readme.txt").write_text("keep me")
    with pytest.raises(QuantizedFormatError, match="overwrite=True"):
        save_quantized(qm, target)
    assert (target / "readme.txt").read_text() == "keep me"
    save_quantized(qm, target, overwrite=True)
    assert not (target / "readme.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(QuantizedFormatError, match="not a folder"):
        save_quantized(qm, tmp_path / "file")


# ----------------------------------------------------------------------------- rejections


def test_missing_folder_and_files(saved, tmp_path):
    _, src = saved
    with pytest.raises(QuantizedFormatError, match="does not exist"):
        load_quantized(tmp_path / "nope")
    for name in (GRAPH_NAME, WEIGHTS_NAME):
        p = _copy(src, tmp_path / f"no-{name}")
        (p / name).unlink()
        with pytest.raises(QuantizedFormatError, match=rf"{name}: missing"):
            load_quantized(p)


def test_other_format_and_version(saved, tmp_path):
    _, src = saved
    p = _copy(src, tmp_path / "fmt")
    _rewrite(p, lambda d: d.update(format="onnx-qdq"))
    with pytest.raises(QuantizedFormatError, match=r"graph.json: field 'format' is 'onnx-qdq', expected "):
        load_quantized(p)
    p = _copy(src, tmp_path / "ver")
    _rewrite(p, lambda d: d.update(format_version=2))  # format 2: the GELU constants of the old spec
    with pytest.raises(QuantizedFormatError, match="written by intengine format 2, this intengine reads 3"):
        load_quantized(p)
    p = _copy(src, tmp_path / "nover")
    _rewrite(p, lambda d: d.pop("format_version"))
    with pytest.raises(QuantizedFormatError, match="missing field 'format_version'"):
        load_quantized(p)


def test_modified_files_fail_the_checksum(saved, tmp_path):
    _, src = saved
    p = _copy(src, tmp_path / "w")
    data = bytearray((p / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 1  # one bit of the last tensor's data
    (p / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(QuantizedFormatError, match=r"model.safetensors: checksum mismatch.*modified"):
        load_quantized(p)

    def scale_up(d):
        d["graph"]["values"][5]["scale"] = 1.0

    p = _copy(src, tmp_path / "g")
    _rewrite(p, scale_up, fix_checksum=False)
    with pytest.raises(QuantizedFormatError, match=r"graph.json: checksum mismatch.*modified"):
        load_quantized(p)


def test_malformed_json(saved, tmp_path):
    _, src = saved
    p = _copy(src, tmp_path / "j")
    text = (p / GRAPH_NAME).read_text()
    (p / GRAPH_NAME).write_text(text[: len(text) // 2])
    with pytest.raises(QuantizedFormatError, match=r"graph.json: malformed JSON at line \d+"):
        load_quantized(p)
    (p / GRAPH_NAME).write_text("[1, 2]")
    with pytest.raises(QuantizedFormatError, match="expected a JSON object"):
        load_quantized(p)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["graph"].pop("nodes"), r"missing field 'graph.nodes'"),
    (lambda d: d.pop("family"), r"missing field 'family'"),
    (lambda d: d["graph"]["values"][3].update(dtype="f16"), r"field 'graph.values\[3\].dtype': expected one of"),
    (lambda d: d["graph"]["values"][3].update(shape="BT"), r"field 'graph.values\[3\].shape'"),
    (lambda d: d["graph"]["nodes"][0].update(attrs=[["table"]]), r"field 'graph.nodes\[0\].attrs\[0\]'"),
    (lambda d: d["graph"]["nodes"][0]["attrs"].append(["x", {"$set": [1]}]),
     r"field 'graph.nodes\[0\].attrs\[1\]\[1\]'"),
    (lambda d: d["graph"]["nodes"][0].update(op="softmax_f32"), r"not a valid integer graph.*softmax_f32"),
    (lambda d: d["graph"].update(stage="fp32"), r"field 'graph.stage'"),
    (lambda d: d["qparams"]["layer0.attn.q"].update(bits="8"), r"field 'qparams.layer0.attn.q.bits'"),
    (lambda d: d["qparams"]["layer0.attn.q"].update(threshold=-1.0), r"field 'qparams.layer0.attn.q'.*threshold"),
    (lambda d: d["sha256"].pop(WEIGHTS_NAME), r"missing field 'sha256.model.safetensors'"),
], ids=["no-nodes", "no-family", "dtype", "shape", "attr-pair", "attr-tag", "op", "stage", "bits", "threshold",
        "no-weights-sum"])
def test_malformed_fields_name_the_field(saved, tmp_path, mutate, match):
    _, src = saved
    p = _copy(src, tmp_path / "f")
    _rewrite(p, mutate)
    with pytest.raises(QuantizedFormatError, match=match) as e:
        load_quantized(p)
    assert isinstance(e.value, IntengineError) and isinstance(e.value, ValueError)
    assert GRAPH_NAME in str(e.value)


def _rewrite_weights(path, mutate):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(path / WEIGHTS_NAME))
    mutate(arrays)
    save_file(arrays, str(path / WEIGHTS_NAME))
    digest = _file_sha256(path / WEIGHTS_NAME)
    _rewrite(path, lambda d: d["sha256"].update({WEIGHTS_NAME: digest}))


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.update({"layer0.attn.q.bias_i32": a["layer0.attn.q.bias_i32"].astype(np.int64)}),
     r"tensor 'layer0.attn.q.bias_i32' is int64\[32\], but graph.json declares i32\[32\]"),
    (lambda a: a.update({"layer0.attn.q.bias_i32": a["layer0.attn.q.bias_i32"][:16].copy()}),
     r"tensor 'layer0.attn.q.bias_i32' is int32\[16\], but graph.json declares i32\[32\]"),
    (lambda a: a.pop("layer0.attn.q.bias_i32"), r"missing tensor\(s\) \['layer0.attn.q.bias_i32'\]"),
    (lambda a: a.update(extra=np.zeros(2, np.int8)), r"tensor\(s\) \['extra'\] not declared"),
], ids=["dtype", "shape", "missing", "extra"])
def test_constants_must_match_declarations(saved, tmp_path, mutate, match):
    _, src = saved
    p = _copy(src, tmp_path / "c")
    _rewrite_weights(p, mutate)
    with pytest.raises(QuantizedFormatError, match=match):
        load_quantized(p)


def test_loaded_model_runs_without_fp32_graph(saved):
    qm, path = saved
    q2 = load_quantized(path)
    assert q2.fp32_graph is None and "roberta" in repr(q2)
    ids = np.array([[0, 5, 6, 7, 2]])
    np.testing.assert_array_equal(q2(ids), qm(ids))
    np.testing.assert_array_equal(q2.executor("ref").run(ids), qm.executor("ref").run(ids))

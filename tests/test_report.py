"""Per-node error report: coverage of the integer values, metrics on valid tokens, ordering,
the final output's accuracy, a damaged scale showing up at the top, and the text output."""

from __future__ import annotations

import math

import numpy as np
import pytest

import intengine
from intengine.calibrate import calibrate, random_batches
from intengine.calibration import QParams
from intengine.capture import capture
from intengine.errors import ReportError
from intengine.interp import run_fp32
from intengine.report import NodeError, error_report, format_report, summary

CASES = [("roberta-tiny", "sequence-classification"), ("nezha-cn-tiny", "base")]
INTEGER_ONLY = {"emb.position_ids"}  # int64 positions: no scale, nothing to compare


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0])
def reported(request):
    preset, task = request.param
    m = intengine.load_fp32(preset, task=task)
    g = capture(m)
    qp = calibrate(g, random_batches(m, 3, 4, 24))
    qm = intengine.quantize(m, qp)
    x = random_batches(m, 1, 3, 24, seed=7)[0]
    assert not x["attention_mask"].all()  # padded rows: masking matters
    return m, qm, qp, x, error_report(qm, x)


def test_covers_every_scaled_value(reported):
    m, qm, _, _, rows = reported
    names = [r.name for r in rows]
    assert len(names) == len(set(names))
    produced = [o for n in qm.fp32_graph.nodes for o in n.outputs]
    assert set(names) == set(produced) - INTEGER_ONLY
    L = m.config.num_hidden_layers
    for i in range(L):
        for part in ("attn.q", "attn.k", "attn.v", "attn.qk", "attn.probs", "attn.ctx", "attn.out",
                     "attn.residual", "attn.ln", "ffn.fc1", "ffn.act", "ffn.fc2", "ffn.residual", "ffn.ln"):
            assert f"layer{i}.{part}" in names
    if m.family.endswith("nezha"):
        assert {"layer0.attn.rel_k", "layer0.attn.rel_v_buckets", "layer0.attn.rel_v"} <= set(names)
    outs = [r for r in rows if r.is_output]
    assert [r.name for r in outs] == list(qm.fp32_graph.outputs)
    assert {"emb.ln"} <= set(names)
    assert all(isinstance(r, NodeError) for r in rows)


def test_metrics_finite_sorted_and_on_valid_tokens(reported):
    m, qm, _, x, rows = reported
    sq = [r.sqnr_db for r in rows]
    assert all(math.isfinite(s) for s in sq)
    assert sq == sorted(sq)
    for r in rows:
        assert -1.0 <= r.cosine <= 1.0 + 1e-12 and r.rel_err >= 0 and r.max_abs_err >= 0
        assert r.dtype in ("i8", "u8", "i16", "i32") and r.bits in (8, 16, 32)
    mask = x["attention_mask"].astype(bool)
    H = m.config.hidden_size
    by = {r.name: r for r in rows}
    assert by["emb.ln"].count == mask.sum() * H
    assert by["emb.ln"].shape == mask.shape + (H,)
    heads = m.config.num_attention_heads
    per_row = mask.sum(axis=1)
    assert by["layer0.attn.probs"].count == heads * int((per_row**2).sum())  # (query, key) pairs


def test_values_match_a_direct_computation(reported):
    _, qm, _, x, rows = reported
    by = {r.name: r for r in rows}
    trace = qm.executor("ref").trace(**x)
    ref = {}
    run_fp32(qm.fp32_graph, **x, observe=lambda n, a: ref.__setitem__(n, a) if n in by else None)
    mask = x["attention_mask"].astype(bool)
    for name in ("emb.ln", "layer0.attn.out"):  # a per-tensor and a per-channel (last axis) scale
        v = qm.graph.value(name)
        d = trace[name].astype(np.float64) * np.asarray(v.scale)
        r, d = ref[name][mask].astype(np.float64).ravel(), d[mask].ravel()
        e = d - r
        row = by[name]
        assert row.sqnr_db == pytest.approx(10 * np.log10((r @ r) / (e @ e)))
        assert row.max_abs_err == pytest.approx(np.abs(e).max())
        assert row.cosine == pytest.approx(r @ d / np.linalg.norm(r) / np.linalg.norm(d))
        assert row.rel_err == pytest.approx(np.linalg.norm(e) / np.linalg.norm(r))
    assert isinstance(qm.graph.value("layer0.attn.out").scale, tuple)
    assert by["layer0.attn.out"].sqnr_db > 15


def test_final_output_and_summary(reported):
    m, qm, _, _, rows = reported
    s = summary(rows)
    assert s.output is not None and s.output.is_output
    assert s.output.cosine >= 0.99, s.output
    assert s.worst == rows[0]
    L = m.config.num_hidden_layers
    assert [f"layer{i}" for i in range(L)] == [k for k in s.worst_per_layer if k.startswith("layer")]
    assert next(iter(s.worst_per_layer)) == "emb"
    for layer, r in s.worst_per_layer.items():
        assert r.layer == layer
        assert r.sqnr_db == min(x.sqnr_db for x in rows if x.layer == layer)
    text = str(s)
    assert "final output" in text and f"cosine {s.output.cosine:.5f}" in text and "layer0" in text


def test_cpu_backend_gives_the_same_report(reported):
    _, qm, _, x, rows = reported
    assert error_report(qm, x, backend="cpu") == rows


@pytest.mark.parametrize("victim", ["layer1.ffn.fc1", "layer0.attn.v"])
def test_damaged_scale_is_among_the_worst(reported, victim):
    m, _, qp, x, rows = reported
    bad = dict(qp)
    bad[victim] = QParams(qp[victim].threshold * 100, qp[victim].bits)
    damaged = error_report(intengine.quantize(m, bad), x)
    names = [r.name for r in damaged]
    assert victim in names[:5], format_report(damaged, top=8)
    before = {r.name: r.sqnr_db for r in rows}
    after = {r.name: r.sqnr_db for r in damaged}
    assert after[victim] < before[victim] - 20
    assert after[victim] < min(before.values())


def test_format_report(reported):
    _, _, _, _, rows = reported
    text = format_report(rows, top=5)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["#", "value", "op"] and "SQNR dB" in lines[0]
    assert len(lines) == 2 + 5 + 1 and lines[-1] == f"... {len(rows) - 5} more value(s)"
    assert rows[0].name in lines[2] and f"{rows[0].sqnr_db:.2f}" in lines[2]
    full = format_report(rows)
    assert len(full.splitlines()) == 2 + len(rows)
    out = next(r for r in rows if r.is_output)
    assert f"{out.name} *" in full
    assert "pc" in full  # per-channel scales are summarised
    assert format_report([]).splitlines()[0].startswith("#")


def test_loaded_model_has_no_fp32_graph(reported, tmp_path):
    _, qm, _, x, _ = reported
    q2 = intengine.load_quantized(qm.save(tmp_path / "q"))
    with pytest.raises(ReportError, match="FP32 graph.*load_quantized"):
        error_report(q2, x)
    with pytest.raises(ReportError, match="input_ids"):
        error_report(qm, {"ids": x["input_ids"]})

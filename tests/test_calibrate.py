"""Calibration driver: observers per value over streamed batches, masking of padded tokens,
weights, I-BERT range overrides, batch sources and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import intengine
from intengine.calibrate import (
    activation_bits,
    activation_values,
    calibrate,
    ibert_ranges,
    random_batches,
    text_batches,
    weight_constants,
)
from intengine.calibration import METHODS, QParams
from intengine.capture import capture
from intengine.errors import CalibrationError
from intengine.interp import run_fp32


@pytest.fixture(scope="module")
def roberta():
    m = intengine.load_fp32("roberta-tiny", task="sequence-classification")
    return m, capture(m)


@pytest.mark.parametrize(
    "preset", ["roberta-tiny", "nezha-cn-tiny", "deberta-base-tiny", "deberta-v2-xlarge-tiny"]
)
def test_every_value_and_weight_gets_qparams(preset):
    m = intengine.load_fp32(preset, task="masked-lm")
    g = capture(m)
    qp = calibrate(g, random_batches(m, n=2, batch=2, seq=12))
    acts, weights = activation_values(g), weight_constants(g)
    assert set(qp) == set(acts) | set(weights)
    assert all(isinstance(q, QParams) and np.all(q.scale > 0) for q in qp.values())
    assert "layer0.attn.probs" in acts and "emb.position_ids" not in qp  # integer values: none
    # per-channel linear weights, per-tensor tables
    wq = g.nodes[[n.outputs[0] for n in g.nodes].index("layer0.attn.q")].attr("weight")
    assert qp[wq].threshold.shape == (g.constants[wq].shape[0],)
    table = [n for n in g.nodes if n.op == "embedding"][0].attr("table")
    assert qp[table].threshold.shape == ()
    assert qp[table].bits == 8


def test_bits_policy(roberta):
    _, g = roberta
    bits = activation_bits(g)
    assert bits["emb.sum"] == 16
    assert bits["layer0.attn.residual"] == 22 and bits["layer1.ffn.residual"] == 22
    assert bits["layer0.attn.q"] == 8 and bits["layer0.attn.probs"] == 8
    qp = calibrate(g, random_batches(roberta[0], 1, 2, 8), bits={"layer0.attn.q": 16})
    assert qp["layer0.attn.q"].bits == 16 and qp["emb.sum"].bits == 16
    qp = calibrate(g, random_batches(roberta[0], 1, 2, 8), bits=4)
    assert qp["emb.sum"].bits == 4


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs(roberta, method):
    m, g = roberta
    qp = calibrate(g, random_batches(m, n=3, batch=2, seq=10, seed=1), method=method)
    mm = calibrate(g, random_batches(m, n=3, batch=2, seq=10, seed=1), method="minmax")
    for n in ("emb.ln", "layer0.attn.probs", "layer1.ffn.act"):
        t = float(qp[n].threshold)
        slack = 2 if method in ("percentile", "mse", "entropy") else 1  # histogram edges
        assert 0 < t <= float(mm[n].threshold) * (1 + 1e-6) * slack


def test_masking_excludes_padded_tokens():
    """Pad positions hold a huge embedding; the observed ranges must not see it."""
    m = intengine.load_fp32("roberta-tiny", task="base")
    pad = m.config.pad_token_id
    with torch.no_grad():
        m.embeddings.word_embeddings.weight[pad] = 1000.0
    g = capture(m)
    batches = random_batches(m, n=2, batch=3, seq=12, seed=2)
    assert any((b["attention_mask"] == 0).any() for b in batches)
    qp = calibrate(g, batches)
    assert float(qp["emb.word"].threshold) < 10.0
    assert float(qp["emb.sum"].threshold) < 10.0

    # ranges equal min-max over valid tokens computed independently through the observe hook
    seen: dict[str, float] = {}

    def hook(name, x, mask):
        if name == "emb.word":
            v = x[mask.astype(bool)]
        elif name == "layer0.attn.probs":  # [B, h, T, T]: valid (query, key) pairs
            pair = mask[:, None, :, None].astype(bool) & mask[:, None, None, :].astype(bool)
            v = x[np.broadcast_to(pair, x.shape)]
        elif name == "layer1.ffn.ln":
            v = x[mask.astype(bool)]
        else:
            return
        seen[name] = max(seen.get(name, 0.0), float(np.abs(v).max()))

    for b in batches:
        mk = b["attention_mask"]
        run_fp32(g, b["input_ids"], mk, observe=lambda n, x, mk=mk: hook(n, x, mk))
    for name in ("emb.word", "layer0.attn.probs", "layer1.ffn.ln"):
        assert float(qp[name].threshold) == pytest.approx(seen[name], rel=1e-6), name
    # without masking the padded rows would have dominated
    full = max(float(np.abs(run_fp32_values(g, b)["emb.word"]).max()) for b in batches)
    assert full == 1000.0


def run_fp32_values(g, b):
    out = {}
    run_fp32(g, b["input_ids"], b["attention_mask"], observe=lambda n, x: out.__setitem__(n, x))
    return out


def test_masking_pair_for_probs_deberta():
    m = intengine.load_fp32("deberta-v3-base-tiny", task="base")
    g = capture(m)
    ids = np.full((2, 8), 5, dtype=np.int64)
    mask = np.ones((2, 8), dtype=np.int64)
    mask[1, 3:] = 0
    qp = calibrate(g, [{"input_ids": ids, "attention_mask": mask}], method="minmax")
    vals = run_fp32_values(g, {"input_ids": ids, "attention_mask": mask})
    s = vals["layer1.attn.scores"]
    pair = (mask[:, None, :, None] & mask[:, None, None, :]).astype(bool)
    expect = np.abs(s[np.broadcast_to(pair, s.shape)]).max()
    assert float(qp["layer1.attn.scores"].threshold) == pytest.approx(float(expect), rel=1e-6)


def test_ibert_overrides(roberta):
    m, g = roberta
    ranges = {
        "roberta.encoder.layer.0.attention.self.query_activation": (-3.5, 4.25),
        "roberta.embeddings.output_activation": (-7.0, 6.0),
        "roberta.embeddings.embeddings_act1": (-2.0, 1.0),
        "roberta.encoder.layer.1.output.ln_input_act": (-30.0, 20.0),
        "roberta.encoder.layer.1.attention.self.softmax.act": (-1.0, 1.0),  # no counterpart
    }
    mapped = ibert_ranges(g, ranges)
    assert set(mapped) == {"layer0.attn.q", "emb.ln", "emb.sum", "layer1.ffn.residual"}
    qp = calibrate(g, random_batches(m, 1, 2, 8), overrides=ranges)
    assert float(qp["layer0.attn.q"].threshold) == 4.25 and qp["layer0.attn.q"].bits == 8
    assert float(qp["emb.ln"].threshold) == 7.0
    assert qp["emb.sum"].bits == 16 and qp["layer1.ffn.residual"].bits == 22
    assert float(qp["layer1.ffn.residual"].threshold) == 30.0


def test_ibert_checkpoint_ranges_end_to_end(tmp_path):
    """A calibrated I-BERT checkpoint's ranges come through load_fp32 → calibrate(overrides=)."""
    from intengine.checkpoint import save_hf_folder

    m = intengine.load_fp32("ibert-roberta-tiny", task="base")
    m.calibration_ranges = {"roberta.encoder.layer.0.attention.self.key_activation": (-1.5, 2.5)}
    m.layernorm_shifts = {}
    save_hf_folder(m, tmp_path / "ck")
    loaded = intengine.load_fp32(tmp_path / "ck", task="base")
    assert loaded.calibration_ranges
    g = capture(loaded)
    qp = calibrate(g, random_batches(loaded, 1, 2, 8), overrides=loaded.calibration_ranges)
    assert float(qp["layer0.attn.k"].threshold) == 2.5


def test_random_batches_shapes_and_padding():
    m = intengine.load_fp32("nezha-cn-tiny", task="base")
    bs = random_batches(m, n=3, batch=4, seq=500, seed=7)  # seq capped at max length 128
    assert len(bs) == 3
    for b in bs:
        assert b["input_ids"].shape == (4, 128) and b["input_ids"].dtype == np.int64
        assert (b["input_ids"][b["attention_mask"] == 1] != m.config.pad_token_id).all()
        assert (b["input_ids"][b["attention_mask"] == 0] == m.config.pad_token_id).all()
        assert b["attention_mask"][:, 0].all()
        assert set(np.unique(b["token_type_ids"])) <= {0, 1}
    again = random_batches(m.config, n=3, batch=4, seq=500, seed=7)
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(bs, again))


def test_text_batches(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text(
        "\n".join("[PAD] [UNK] [CLS] [SEP] [MASK] hello world the cat sat on mat".split()) + "\n"
    )
    (folder / "config.json").write_text('{"model_type": "nezha"}')
    text = tmp_path / "calib.txt"
    text.write_text("hello world\n\nthe cat sat on the mat the cat sat\nhello\n")
    batches = list(text_batches(text, folder, batch=2, seq=6))
    assert [b["input_ids"].shape for b in batches] == [(2, 6), (1, 3)]
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    m = intengine.load_fp32("nezha-cn-tiny", task="base")
    tok = intengine.load_tokenizer(folder)
    qp = calibrate(capture(m), text_batches(text, tok, 2, 6), method="ema")
    assert "layer1.ffn.ln" in qp
    with pytest.raises(CalibrationError, match="does not exist"):
        list(text_batches(tmp_path / "nope.txt", folder, 2, 6))


def test_errors(roberta):
    m, g = roberta
    with pytest.raises(CalibrationError, match="no batches"):
        calibrate(g, [])
    with pytest.raises(CalibrationError, match="no batches"):
        calibrate(g, random_batches(m, 0, 2, 8))
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        calibrate(g, random_batches(m, 1, 2, 8), method="magic")
    with pytest.raises(CalibrationError, match="input_ids"):
        calibrate(g, [{"ids": np.zeros((1, 4), dtype=np.int64)}])
    with pytest.raises(CalibrationError, match="no valid token"):
        ids = np.ones((1, 4), dtype=np.int64)
        calibrate(g, [{"input_ids": ids, "attention_mask": np.zeros((1, 4))}])

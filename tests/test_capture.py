"""Capture (torch module → fp32 IR) and the numpy fp32 interpreter: parity with the torch
modules for every family and head, on padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import intengine
from intengine import ir
from intengine.capture import CaptureError, capture
from intengine.errors import InputError
from intengine.interp import run_fp32
from intengine.models import init_weights

PRESETS = [
    "roberta-tiny",
    "ibert-roberta-tiny",
    "nezha-cn-tiny",
    "deberta-base-tiny",
    "deberta-v3-base-tiny",
    "deberta-v2-xlarge-tiny",
]
TASKS = [
    "base",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "masked-lm",
]
TOL = 1e-4


def load(preset, task, seed=0):
    m = intengine.load_fp32(preset, task=task, seed=seed)
    # larger weights than the default N(0, 0.02): non-trivial activations and logits
    init_weights(m, seed, std=0.15)
    return m


def make_batch(model, B=3, T=13, seed=0):
    rng = np.random.default_rng(seed)
    cfg = model.config
    ids = rng.integers(3, cfg.vocab_size, (B, T))
    mask = np.ones((B, T), dtype=np.int64)
    if B > 1:
        mask[1, T - 4 :] = 0
    if B > 2:
        mask[2, 5:] = 0
    ids[mask == 0] = cfg.pad_token_id
    types = None
    if getattr(cfg, "type_vocab_size", 0) > 1:
        types = np.zeros_like(ids)
        types[:, T // 2 :] = 1
    return ids, mask, types


def torch_out(model, ids, mask, types):
    with torch.no_grad():
        t = None if types is None else torch.from_numpy(types)
        return model(torch.from_numpy(ids), torch.from_numpy(mask), t).numpy()


def max_diff(out, ref, mask):
    assert out.shape == ref.shape and out.dtype == np.float32
    d = np.abs(out - ref)
    if out.ndim == 3:  # per-token outputs: padded rows are not meaningful
        d = d[mask.astype(bool)]
    return float(d.max())


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("preset", PRESETS)
def test_parity(preset, task):
    model = load(preset, task)
    g = capture(model)
    ir.verify_fp32(g)
    ids, mask, types = make_batch(model)
    ref = torch_out(model, ids, mask, types)
    seen = []
    out = run_fp32(g, ids, mask, types, observe=lambda n, a: seen.append(n))
    scale = max(1.0, float(np.abs(ref).max()))
    assert max_diff(out, ref, mask) <= TOL * scale
    # observe sees every node output exactly once, in order
    assert seen == [n.outputs[0] for n in g.nodes]
    assert g.outputs == (seen[-1],)


@pytest.mark.parametrize("preset", ["nezha-cn-tiny", "deberta-v3-base-tiny", "deberta-base-tiny"])
def test_parity_long_relative_clipping(preset):
    """T beyond NEZHA's max_relative_position (16) and DeBERTa-v3's log buckets."""
    model = load(preset, "base", seed=3)
    ids, mask, types = make_batch(model, B=2, T=40, seed=1)
    out = run_fp32(capture(model), ids, mask, types)
    assert max_diff(out, torch_out(model, ids, mask, types), mask) <= TOL


def test_default_mask_and_types_and_1d_input():
    model = load("roberta-tiny", "base")
    g = capture(model)
    ids = np.array([0, 5, 17, 99, 2])
    ref = torch_out(model, ids[None], np.ones((1, 5), dtype=np.int64), None)
    out = run_fp32(g, ids)
    assert out.shape == (1, 5, 32)
    assert np.abs(out - ref).max() <= TOL


def test_value_names_and_printer():
    g = capture(load("nezha-cn-tiny", "sequence-classification"))
    names = {v.name for v in g.values}
    for n in ["emb.sum", "emb.ln", "layer0.attn.q", "layer0.attn.scores", "layer0.attn.probs",
              "layer0.attn.rel_k", "layer0.attn.rel_v", "layer0.attn.ctx", "layer0.attn.residual",
              "layer0.ffn.act", "layer1.ffn.ln", "head.logits"]:
        assert n in names, n
    text = ir.format_graph(g)
    assert text.startswith("graph[fp32] (%input_ids: i64[B,T], %attention_mask: bool[B,T]")
    assert "= softmax(%layer0.attn.scores, %attention_mask) {mask='key'}" in text
    assert "= gelu(%layer0.ffn.fc1) {approximate='none'}" in text
    assert "const %nezha.encoder.layer.0.attention.self.query.weight: float32[64,64]" in text
    assert text.splitlines()[-1] == "  return %head.logits"
    # constants: float32 weights, int64 indices, tied decoder shares the word table
    for c, arr in g.constants.items():
        assert arr.dtype in (np.float32, np.int64), c


def test_tied_decoder_is_one_constant():
    g = capture(load("roberta-tiny", "masked-lm"))
    logits = [n for n in g.nodes if n.outputs == ("head.logits",)][0]
    assert logits.attr("weight") == "roberta.embeddings.word_embeddings.weight"
    emb = [n for n in g.nodes if n.outputs == ("emb.word",)][0]
    assert emb.attr("table") == logits.attr("weight")


def test_deberta_relative_terms_are_gathers_over_folded_tables():
    g = capture(load("deberta-v3-base-tiny", "base"))
    ops = {n.outputs[0]: n for n in g.nodes}
    c2p = ops["layer0.attn.c2p"]
    assert c2p.op == "gather" and c2p.attr("index") == "rel.c2p_index"
    assert c2p.attr("extend") is True  # no absolute positions: any length
    assert ops["layer0.attn.p2c"].op == "transpose"
    assert g.constants["layer0.attn.c2p_table"].shape == (4, 16, 8)  # [heads, 2·buckets, d]
    # 64 positions; the log-bucketed index saturates at distance 64 (on the negative side)
    assert g.constants["rel.c2p_index"].shape == (65, 65)
    assert ops["layer0.attn.probs"].attr("mask") == "pair"
    g2 = capture(load("deberta-v2-xlarge-tiny", "base"))
    assert [n.op for n in g2.nodes if n.outputs[0].startswith("conv.")] == [
        "conv1d", "mask_fill", "gelu", "add", "layernorm", "mask_fill"]


def test_errors():
    with pytest.raises(CaptureError, match="model.family"):
        capture(torch.nn.Linear(2, 2))
    model = load("nezha-cn-tiny", "base")
    g = capture(model)
    with pytest.raises(InputError, match="outside the embedding table"):
        run_fp32(g, np.array([[1, 2, 5000]]))
    with pytest.raises(InputError, match="exceeds the 128 positions"):
        run_fp32(g, np.ones((1, 200), dtype=np.int64))
    with pytest.raises(InputError, match="shape"):
        run_fp32(g, np.ones((1, 4), dtype=np.int64), attention_mask=np.ones((1, 5)))
    with pytest.raises(InputError, match="integer"):
        run_fp32(g, np.ones((1, 4), dtype=np.float32))

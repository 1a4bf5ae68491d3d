"""Property: every valid configuration of every family goes through the whole pipeline.

Hypothesis draws a random, valid Hugging Face ``config.json`` dict per family (tiny sizes: hidden
<= 64, 1-2 layers, small vocabulary) with the family's options (NEZHA's relative window, DeBERTa
v1's relative attention / c2p / p2c / absolute positions, DeBERTa-v2's log buckets, shared keys,
LayerNorm on the relative table, the nGiE conv, ...), a task, a weight scale and an input batch.
The FP32 module is built with seeded random weights, then

    capture → calibrate (random_batches) → lower → ir.verify_integer → run on ref and cpu

and the test requires ``ref == cpu`` bit for bit (every example) and a cosine >= 0.98 with the FP32
torch module's output on valid tokens (over an 8-row batch; hidden >= 16, no 2-feature LayerNorm:
below that the FP32 function is too ill-conditioned at int8 resolution, see the test).
Configurations are only excluded where the FP32 module (i.e. the family's ``Config.from_hf``,
which follows transformers) rejects them; each exclusion says why.  Near-zero calibrated ranges
(all-zero attention scores) once crashed lowering: ``test_near_zero_scores_lower`` keeps them
covered.  Lengths are drawn up to ``max_position_embeddings``; DeBERTa without absolute
positions also takes longer inputs (``test_deberta_relative_only_longer_than_max_positions``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from intengine import ir
from intengine.calibrate import calibrate, random_batches
from intengine.capture import CaptureError, capture
from intengine.errors import InputError
from intengine.lower import lower
from intengine.models import TASKS, get_family, init_weights
from intengine.quantize import QuantizedModel, quantize

FAMILY_NAMES = ("roberta", "nezha", "deberta", "deberta-v2")
MIN_COSINE = 0.98
MAX_HIDDEN, MAX_SEQ, MAX_BATCH = 64, 24, 3
EXAMPLES_PER_FAMILY = 10
ACC_ROWS = 8  # rows of the batch the accuracy (cosine) is measured on
MIN_ACC_HIDDEN = 16  # smallest hidden size whose accuracy is checked (see the test)
POS_ATT_TYPES = ((), ("c2p",), ("p2c",), ("c2p", "p2c"))


# ----------------------------------------------------------------------------- config strategies


@st.composite
def _sizes(draw, *, even_head: bool) -> dict:
    """Heads x head size = hidden <= 64 (NEZHA's sinusoid table needs an even head size)."""
    heads = draw(st.sampled_from([1, 2, 4]))
    head_sizes = [h for h in range(1, MAX_HIDDEN // heads + 1) if not (even_head and h % 2)]
    common = [s for s in (8, 16) if s in head_sizes]  # biased to sizes whose accuracy is checked
    head = draw(st.sampled_from(head_sizes) | st.sampled_from(common))
    return dict(
        hidden_size=heads * head,
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 2)),
        intermediate_size=draw(st.integers(4, 96)),
        vocab_size=draw(st.integers(8, 120)),
        hidden_act="gelu",
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-7, 1e-5])),
        num_labels=draw(st.integers(1, 3)),
    )


@st.composite
def family_configs(draw, family: str) -> dict:
    """A ``config.json`` dict of ``family`` that ``Config.from_hf`` accepts (tiny sizes)."""
    d = draw(_sizes(even_head=family == "nezha"))
    if family == "roberta":
        # positions run up to T + pad_token_id (1): max_position_embeddings >= 3 leaves >= 1
        # position (from_hf rejects less); type_vocab_size must be positive
        d.update(model_type="roberta", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                 max_position_embeddings=draw(st.integers(3, 40)),
                 type_vocab_size=draw(st.sampled_from([1, 2])))
    elif family == "nezha":
        d.update(model_type="nezha", pad_token_id=0,
                 max_position_embeddings=draw(st.integers(1, 40)),
                 max_relative_position=draw(st.integers(1, 32)),
                 type_vocab_size=draw(st.sampled_from([1, 2])))
    elif family in ("deberta", "deberta-v2"):
        rel = draw(st.booleans())
        pos_att = draw(st.sampled_from(POS_ATT_TYPES))
        # both spellings transformers accepts: "c2p|p2c" and a list
        spellings = ["|".join(pos_att), list(pos_att)]
        pos_att_type = draw(st.sampled_from(spellings)) if pos_att else None
        d.update(
            model_type=family, pad_token_id=0,
            max_position_embeddings=draw(st.integers(1, 40)),
            type_vocab_size=draw(st.sampled_from([0, 1, 2])),
            relative_attention=rel,
            max_relative_positions=draw(st.sampled_from([-1]) | st.integers(1, 32)),
            position_biased_input=draw(st.booleans()),
            pos_att_type=pos_att_type,
            # embedding_size != hidden_size adds the embed_proj linear
            embedding_size=draw(st.sampled_from([None]) | st.integers(2, MAX_HIDDEN)),
            pooler_hidden_act=draw(st.sampled_from(["gelu", "tanh"])),
        )
        if family == "deberta-v2":
            hidden = d["hidden_size"]
            d.update(
                # position_buckets: -1/0 = off, 1 is rejected by from_hf (log of 0 buckets)
                position_buckets=draw(st.sampled_from([-1, 0]) | st.integers(2, 16)),
                norm_rel_ebd=draw(st.sampled_from(["none", "layer_norm"])),
                share_att_key=draw(st.booleans()),
                # even kernels are rejected by from_hf (no same-length padding)
                conv_kernel_size=draw(st.sampled_from([0, 1, 3, 5])),
                conv_act=draw(st.sampled_from(["tanh", "gelu"])),
                conv_groups=draw(st.sampled_from([g for g in (1, 2, 4) if hidden % g == 0])),
                attention_head_size=hidden // d["num_attention_heads"],
            )
    else:
        raise ValueError(family)
    return d


def build_fp32(hf: dict, task: str, seed: int, std: float) -> torch.nn.Module:
    """The FP32 module of a config dict, as ``load_fp32`` builds presets (seeded random weights)."""
    fam = get_family(hf["model_type"], "hypothesis config")
    cfg = fam.Config.from_hf(dict(hf), "hypothesis config")
    m = fam.build(cfg, task, None)
    init_weights(m, seed, std=std)
    m.requires_grad_(False)
    return m.eval()


def integer_max_length(cfg) -> int:
    """Longest sequence both the FP32 module and the integer program accept.

    RoBERTa: ``max_position_embeddings - pad - 1``; NEZHA: ``max_position_embeddings``; DeBERTa
    with absolute positions: ``max_position_embeddings``.  DeBERTa *without* absolute positions
    accepts any length (FP32 and integer program alike); the property still draws lengths up to
    ``max_position_embeddings`` (longer ones: ``test_deberta_relative_only_longer_than_max_positions``).
    """
    return getattr(cfg, "max_length", None) or cfg.max_position_embeddings


def torch_out(m, x) -> np.ndarray:
    with torch.no_grad():
        y = m(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"]),
              torch.from_numpy(x["token_type_ids"]))
    return y.detach().numpy()


def cosine_valid(ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> float:
    """Cosine over the valid tokens' entries (all entries for pooled outputs)."""
    if ref.ndim == 3:
        ref, got = ref[mask.astype(bool)], got[mask.astype(bool)]
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------- the property


def lower_verified(g: ir.Graph, qp, family: str, gelu: str = "table") -> ir.Graph:
    """lower → verify_integer."""
    ig = lower(g, qp, family, gelu=gelu)
    ir.verify_integer(ig)
    return ig


def run_pipeline(hf: dict, task: str, seed: int, std: float, b: int, t: int, gelu: str = "table"):
    """Build, quantize, run on ref and cpu: ``(fp32 out, ref out, cpu out, inputs, qm, module)``.

    Calibration and evaluation batches come from the same distribution (``random_batches`` at
    length ``t``: rows of ``t//2 .. t`` tokens, pad after), with different seeds.  On purpose:
    calibrating on 12-24 tokens and then running a 1-token row puts that row's attention context
    (the value vector itself, not an average) outside the calibrated ranges, and the cosine of its
    two QA logits drops to ~0.85; that is out-of-distribution input, not a lowering error.
    32 calibration sequences: a pooler sees one row per sequence, and 12 under-sampled its range
    (``test_small_range_gelu_pooler_accuracy``).
    """
    m = build_fp32(hf, task, seed, std)
    g = capture(m)
    qp = calibrate(g, random_batches(m, 8, 4, t, seed=seed), method="minmax")
    ig = lower_verified(g, qp, m.family.rsplit(".", 1)[-1], gelu)
    qm = QuantizedModel(ig, g, qp, ig_family(m), task)
    return (*evaluate(m, qm, b, t, seed + 1), qm, m)


def evaluate(m, qm: QuantizedModel, b: int, t: int, seed: int):
    """``(fp32 out, ref out, cpu out, inputs)`` on ``b`` random rows of length <= ``t``."""
    x = random_batches(m, 1, b, t, seed=seed)[0]
    return torch_out(m, x), qm.run(**x, backend="ref"), qm.run(**x, backend="cpu"), x


def ig_family(m) -> str:
    return m.family.rsplit(".", 1)[-1]


def check_outputs(fp: np.ndarray, y_ref: np.ndarray, y_cpu: np.ndarray, x: dict) -> float:
    """ref == cpu bit for bit; returns the cosine with the FP32 output on valid tokens."""
    assert y_ref.dtype == np.float32 and y_ref.shape == fp.shape
    np.testing.assert_array_equal(y_ref, y_cpu)
    if not np.any(fp):  # degenerate module (e.g. every LayerNorm over one feature): exact zeros
        np.testing.assert_allclose(y_ref, 0.0, atol=1e-6)
        return 1.0
    return cosine_valid(fp, y_ref, x["attention_mask"])


def two_feature_layernorm(g: ir.Graph) -> bool:
    return any(n.op == "layernorm" and g.constants[n.attr("weight")].shape[-1] == 2
               for n in g.nodes)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@settings(max_examples=EXAMPLES_PER_FAMILY)
@given(data=st.data())
def test_random_config_pipeline(family, data):
    hf = data.draw(family_configs(family), label="config")
    task = data.draw(st.sampled_from(TASKS), label="task")
    std = data.draw(st.sampled_from([0.02, 0.08, 0.15]), label="init std")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    b = data.draw(st.integers(1, MAX_BATCH), label="batch")
    cfg = get_family(hf["model_type"], "config").Config.from_hf(dict(hf), "hypothesis config")
    t = data.draw(st.integers(1, min(MAX_SEQ, integer_max_length(cfg))), label="seq")
    fp, y_ref, y_cpu, x, qm, m = run_pipeline(hf, task, seed, std, b, t)
    check_outputs(fp, y_ref, y_cpu, x)  # ref == cpu on the drawn batch
    gathers = [n for n in qm.graph.nodes if n.op == "gather"]
    if gathers and all(n.attr("extend", False) for n in gathers):
        # relative positions only: past the captured index tables too (ref == cpu; no cosine bound:
        # such lengths are outside the calibration data)
        t_long = qm.graph.constants[gathers[0].attr("index")].shape[0] + 3
        longer = dataclasses.replace(cfg, max_position_embeddings=t_long)
        xl = random_batches(longer, 1, b, t_long, seed=seed + 3)[0]
        assert np.isfinite(torch_out(m, xl)).all()
        np.testing.assert_array_equal(qm.run(**xl, backend="ref"), qm.run(**xl, backend="cpu"))
        event("relative positions only: checked past the captured tables")
    # Accuracy on ACC_ROWS rows of the same length: with b = t = 1 a token-classification output
    # can be one number, whose cosine is only its sign (-1 for a near-zero logit).
    fp, y_ref, y_cpu, x = evaluate(m, qm, ACC_ROWS, t, seed + 2)
    cos = check_outputs(fp, y_ref, y_cpu, x)
    note(f"cosine {cos:.5f}")
    if cfg.hidden_size < MIN_ACC_HIDDEN:
        # Lowering and ref == cpu are checked above for every size.  Below 16 features the FP32
        # function is ill-conditioned at int8 resolution: a LayerNorm rescales a few-feature
        # vector whose norm can be near the step of its quantized inputs (hidden 8, vocabulary 8,
        # one position: word + position embeddings nearly cancel for one token, cosine 0.94),
        # and a classifier over 4-8 features cancels to near-zero logits.
        event(f"cosine not checked: hidden_size < {MIN_ACC_HIDDEN}")
        return
    if two_feature_layernorm(qm.fp32_graph):
        # A LayerNorm over 2 features is sign(x1 - x2)·γ + β except within √eps of a tie: the
        # FP32 function itself jumps there (e.g. a token whose two projected embedding features
        # nearly coincide), so any perturbation flips it (cosine 0.76 seen at hidden_size 2 and
        # at DeBERTa's masked-lm head with embedding_size 2).  Lowering and ref == cpu are still
        # checked above; the accuracy bound is not meaningful for such a function.
        event("cosine not checked: LayerNorm over 2 features (ill-conditioned in FP32)")
        return
    assert cos >= MIN_COSINE, cos


# ----------------------------------------------------------------------------- findings, pinned

def _zeroed(preset: str, task: str, module: str):
    import intengine

    m = intengine.load_fp32(preset, task=task)
    sub = m.get_submodule(module)
    with torch.no_grad():
        sub.weight.zero_()
        if getattr(sub, "bias", None) is not None:
            sub.bias.zero_()
    return m


@pytest.mark.parametrize("preset, task, module", [
    # scores == 0
    ("roberta-tiny", "sequence-classification", "roberta.encoder.layer.0.attention.self.query"),
    # q = k = 0: qk, c2p and p2c all zero
    ("deberta-base-tiny", "base", "encoder.layer.0.attention.self.in_proj"),
    ("nezha-cn-tiny", "sequence-classification", "nezha.pooler.dense"),  # tanh input == 0
], ids=["roberta-scores", "deberta-scores", "nezha-pooler-tanh"])
def test_near_zero_scores_lower(preset, task, module):
    """A module whose attention scores (or pooler tanh input) are all zero is valid FP32 (uniform
    attention) and must quantize like any other."""
    m = _zeroed(preset, task, module)
    # raised KernelInputError before the 2^-24 scale floor
    qm = quantize(m, random_batches(m, 2, 4, 16))
    ir.verify_integer(qm.graph)
    x = random_batches(m, 1, 3, 16, seed=5)[0]
    cos = check_outputs(torch_out(m, x), qm.run(**x, backend="ref"), qm.run(**x, backend="cpu"), x)
    assert cos >= MIN_COSINE, cos


@pytest.mark.parametrize("preset", ["deberta-base-tiny", "deberta-v3-base-tiny"])
def test_deberta_relative_only_longer_than_max_positions(preset):
    """DeBERTa v1/v2 without absolute positions (``position_biased_input=false``) take any length
    in FP32 (as transformers: relative positions are clamped / log-bucketed); the integer program
    folds its relative index tables past their saturation point and extends them (``extend``
    gathers), so it takes any length too: ref == cpu, FP32 accuracy, and the extended index equals
    the model's own at that length."""
    import intengine
    from intengine.capture import _deberta_rel_index
    from intengine.kernels.gather import index_for_length

    m = intengine.load_fp32(preset, task="token-classification")
    init_weights(m, 0, std=0.1)
    tmax = m.config.max_position_embeddings
    qm = quantize(m, random_batches(m, 2, 4, tmax))
    assert qm.executor("cpu").max_len is None
    enc = m.deberta.encoder
    v2 = m.config.model_type == "deberta-v2"
    for t in (tmax + 8, 3 * tmax + 1):
        longer = dataclasses.replace(m.config, max_position_embeddings=t)  # random_batches caps at it
        x = random_batches(longer, 1, 2, t, seed=3)[0]
        fp = torch_out(m, x)
        cos = check_outputs(fp, qm.run(**x, backend="ref"), qm.run(**x, backend="cpu"), x)
        assert cos >= MIN_COSINE, (t, cos)
        want = [i.numpy() for i in _deberta_rel_index(enc, enc.layer[0].attention.self, v2, t)]
        for name, w in zip(("rel.c2p_index", "rel.p2c_index"), want):
            np.testing.assert_array_equal(index_for_length(qm.fp32_graph.constants[name], t, True), w)


def test_absolute_positions_still_bound_the_length():
    """With absolute positions the position table bounds the length: the gathers do not extend
    and a longer input is an InputError that says so."""
    hf = dict(model_type="deberta", hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
              intermediate_size=32, vocab_size=30, max_position_embeddings=16, relative_attention=True,
              pos_att_type="c2p|p2c", position_biased_input=True)
    m = build_fp32(hf, "base", 0, 0.1)
    qm = quantize(m, random_batches(m, 2, 2, 16))
    gathers = [n for n in qm.graph.nodes if n.op == "gather"]
    assert gathers and not any(n.attr("extend", False) for n in gathers)
    x = random_batches(dataclasses.replace(m.config, max_position_embeddings=20), 1, 2, 20)[0]
    with pytest.raises(InputError, match="longer than the 16 positions"):
        qm.run(**x, backend="ref")


def test_small_range_tanh_head_accuracy():
    """tanh runs at 16 bits and is requantized at the calibrated output scale (a fixed 1/127 step
    left ~4 levels here: cosine 0.917)."""
    import intengine

    m = intengine.load_fp32("roberta-tiny", task="sequence-classification")
    with torch.no_grad():
        m.classifier.dense.weight.mul_(0.1)  # tanh inputs within about +-0.03
    qm = quantize(m, random_batches(m, 4, 4, 16))
    x = random_batches(m, 1, 8, 16, seed=9)[0]
    cos = check_outputs(torch_out(m, x), qm.run(**x, backend="ref"), qm.run(**x, backend="cpu"), x)
    assert cos >= MIN_COSINE, cos


@pytest.mark.parametrize("gelu", ["table", "ibert"])
def test_small_range_gelu_pooler_accuracy(gelu):
    """A DeBERTa pooler whose inputs span a small range (about +-0.26), read by a tiny classifier
    (hidden 18, 3 labels), in a one-position model: every sequence is one token, so the pooler
    sees one row per sequence.  Found by the property test when it calibrated on 12 sequences:
    the calibrated GELU output range (max 0.104) missed the evaluation rows' (0.156) and the
    saturated pooler gave logits cosine 0.971 (0.959 with I-BERT's polynomial).  With the
    property's 32 calibration sequences both GELU lowerings are accurate (0.999 / 0.996)."""
    hf = {"model_type": "deberta", "hidden_size": 18, "num_attention_heads": 2,
          "num_hidden_layers": 1, "intermediate_size": 71, "vocab_size": 71, "hidden_act": "gelu",
          "layer_norm_eps": 1e-07, "num_labels": 3, "pad_token_id": 0,
          "max_position_embeddings": 1, "type_vocab_size": 0, "relative_attention": False,
          "max_relative_positions": 31, "position_biased_input": False, "pos_att_type": ["p2c"]}
    fp, y_ref, y_cpu, x, qm, _ = run_pipeline(hf, "sequence-classification", 4281, 0.02, 3, 1, gelu=gelu)
    assert any(n.op == ("lut" if gelu == "table" else "gelu") and n.outputs[0] == "head.pooled"
               for n in qm.graph.nodes)
    cos = check_outputs(fp, y_ref, y_cpu, x)
    assert cos >= MIN_COSINE, cos


def test_deberta_talking_head_is_refused_clearly():
    """DeBERTa v1's ``talking_head`` (accepted by the FP32 module and transformers) is not
    captured: a CaptureError that names the option, not a crash further down."""
    hf = dict(model_type="deberta", hidden_size=8, num_attention_heads=2, num_hidden_layers=1,
              intermediate_size=16, vocab_size=20, max_position_embeddings=16,
              relative_attention=True, pos_att_type="c2p|p2c", talking_head=True)
    m = build_fp32(hf, "base", 0, 0.1)
    x = random_batches(m, 1, 2, 8)[0]
    assert np.isfinite(torch_out(m, x)).all()
    with pytest.raises(CaptureError, match="talking-head"):
        capture(m)

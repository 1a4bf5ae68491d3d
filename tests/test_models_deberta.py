"""Parity of the FP32 DeBERTa v1 / v2 / v3 reference modules against transformers.

Tiny random-init transformers models (weights perturbed so that biases, LN
affine and the q/v biases are non-trivial) are saved with ``save_pretrained``;
our module is built from the saved ``config.json`` and loads the saved
``model.safetensors`` (or goes through ``intengine.load_fp32`` when that
exists).  Outputs are compared on valid (unpadded) tokens only.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file

from intengine.errors import ConfigError, InputError
from intengine.models import deberta, deberta_v2

TOL = 1e-4
B, T = 3, 12
VOCAB = 97

HF_CLASSES = {
    "deberta": {
        "base": "DebertaModel",
        "sequence-classification": "DebertaForSequenceClassification",
        "token-classification": "DebertaForTokenClassification",
        "question-answering": "DebertaForQuestionAnswering",
        "masked-lm": "DebertaForMaskedLM",
    },
    "deberta-v2": {
        "base": "DebertaV2Model",
        "sequence-classification": "DebertaV2ForSequenceClassification",
        "token-classification": "DebertaV2ForTokenClassification",
        "question-answering": "DebertaV2ForQuestionAnswering",
        "masked-lm": "DebertaV2ForMaskedLM",
    },
}
FAMILY = {"deberta": deberta, "deberta-v2": deberta_v2}
TASKS = list(HF_CLASSES["deberta"])

_SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)

# (model_type, name, extra config) -- each variant keeps the tiny sizes above
V1_CONFIGS = [
    # deberta-base features: c2p|p2c, no absolute positions, no types, maxrel -1 -> max_pos
    (
        "deberta",
        "v1-base",
        dict(relative_attention=True, pos_att_type="c2p|p2c", position_biased_input=False),
    ),
    # c2p only, tight clamp (maxrel 4 < T), absolute positions + token types
    (
        "deberta",
        "v1-c2p-clamp-types",
        dict(
            relative_attention=True, pos_att_type="c2p", max_relative_positions=4, type_vocab_size=2
        ),
    ),
    # p2c only, talking heads, embedding_size != hidden (embed_proj), tanh pooler, gelu_new
    (
        "deberta",
        "v1-p2c-talking-embproj",
        dict(
            relative_attention=True,
            pos_att_type="p2c",
            max_relative_positions=6,
            talking_head=True,
            embedding_size=24,
            pooler_hidden_act="tanh",
            hidden_act="gelu_new",
            position_biased_input=False,
        ),
    ),
    # no relative attention but pos_att_type listed (the scale factor still counts it), MS head
    (
        "deberta",
        "v1-norel-legacyfalse",
        dict(
            relative_attention=False,
            pos_att_type=["c2p", "p2c"],
            type_vocab_size=2,
            legacy=False,
            tie_word_embeddings=False,
        ),
    ),
]
V2_CONFIGS = [
    # deberta-v3-base features: buckets, LN on rel table, shared keys, p2c|c2p
    (
        "deberta-v2",
        "v3-base",
        dict(
            relative_attention=True,
            position_buckets=8,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type="p2c|c2p",
            position_biased_input=False,
        ),
    ),
    # deberta-v2-xlarge features: + conv (gelu), explicit attention_head_size, 8 heads
    (
        "deberta-v2",
        "v2-xlarge-conv",
        dict(
            relative_attention=True,
            position_buckets=6,
            max_relative_positions=10,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type="p2c|c2p",
            conv_kernel_size=3,
            conv_act="gelu",
            num_attention_heads=8,
            attention_head_size=4,
            position_biased_input=False,
        ),
    ),
    # c2p only, separate pos_key_proj, no buckets (maxrel clamp), conv k=5 groups=2 tanh, types
    (
        "deberta-v2",
        "v2-c2p-conv-groups",
        dict(
            relative_attention=True,
            pos_att_type="c2p",
            max_relative_positions=5,
            share_att_key=False,
            conv_kernel_size=5,
            conv_groups=2,
            type_vocab_size=2,
            position_biased_input=True,
        ),
    ),
    # p2c only, separate pos_query_proj, buckets, legacy=False MS head
    (
        "deberta-v2",
        "v2-p2c-legacyfalse",
        dict(
            relative_attention=True,
            pos_att_type="p2c",
            position_buckets=10,
            share_att_key=False,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            legacy=False,
            tie_word_embeddings=False,
            hidden_act="relu",
        ),
    ),
    # no pos_att_type with relative attention on (rel table unused), embed_proj, absolute positions
    (
        "deberta-v2",
        "v2-rel-noatttype-embproj",
        dict(
            relative_attention=True,
            pos_att_type=None,
            position_buckets=8,
            type_vocab_size=3,
            embedding_size=20,
        ),
    ),
]
ALL_CONFIGS = V1_CONFIGS + V2_CONFIGS


def _inputs(seed: int, with_types: bool):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    lengths = [T, T - 5, 4][:B]
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = ids * mask  # pad id 0
    tt = None
    if with_types:
        tt = torch.zeros(B, T, dtype=torch.long)
        tt[:, T // 2 :] = 1
        tt = tt * mask
    return ids, mask, tt


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seen = set()
        for p in model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _hf_model(model_type: str, extra: dict, task: str, num_labels: int, seed: int):
    cfg_cls = (
        transformers.DebertaConfig if model_type == "deberta" else transformers.DebertaV2Config
    )
    cfg = cfg_cls(
        **{**_SMALL, **extra},
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, HF_CLASSES[model_type][task])(cfg).eval()
    _perturb(model, seed + 1)
    return model


def _hf_out(model, task, ids, mask, tt):
    with torch.no_grad():
        kw = dict(input_ids=ids, attention_mask=mask)
        if tt is not None:
            kw["token_type_ids"] = tt
        out = model(**kw)
    if task == "base":
        return out.last_hidden_state
    if task == "question-answering":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def _load_ours(path: str, task: str, num_labels: int):
    """Our module from a saved folder: ``intengine.load_fp32``, else config + safetensors."""
    try:
        from intengine import load_fp32  # type: ignore[attr-defined]
    except ImportError:
        load_fp32 = None
    if load_fp32 is not None:
        try:
            return load_fp32(path, task=task)
        except NotImplementedError:  # pragma: no cover - loader not finished yet
            pass
    with open(os.path.join(path, "config.json")) as f:
        d = json.load(f)
    fam = FAMILY[d["model_type"]]
    cfg = fam.Config.from_hf(d, os.path.join(path, "config.json"))
    model = fam.build(cfg, task, num_labels)
    model.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=True)
    return model.eval()


def _max_diff(task, ours, ref, mask):
    if task == "sequence-classification":
        return (ours - ref).abs().max().item()
    valid = mask.bool()
    return (ours[valid] - ref[valid]).abs().max().item()


@pytest.mark.parametrize("model_type,name,extra", ALL_CONFIGS, ids=[c[1] for c in ALL_CONFIGS])
def test_parity_all_heads(model_type, name, extra, tmp_path):
    with_types = extra.get("type_vocab_size", 0) > 0
    ids, mask, tt = _inputs(hash(name) % 1000, with_types)
    for i, task in enumerate(TASKS):
        num_labels = 2 if task == "question-answering" else 3
        seed = 17 * i + len(name)
        hf = _hf_model(model_type, extra, task, num_labels, seed)
        path = str(tmp_path / task)
        hf.save_pretrained(path, safe_serialization=True)
        ours = _load_ours(path, task, num_labels)
        # the state-dict keys are exactly transformers'
        assert list(ours.state_dict()) == list(hf.state_dict()), (name, task)
        ref = _hf_out(hf, task, ids, mask, tt)
        with torch.no_grad():
            got = ours(ids, attention_mask=mask, token_type_ids=tt)
        assert got.shape == ref.shape, (name, task, got.shape, ref.shape)
        diff = _max_diff(task, got, ref, mask)
        assert diff <= TOL, f"{name}/{task}: max |diff| {diff:.3g}"


def test_pooled_output_matches_hf(tmp_path):
    _, _, extra = V2_CONFIGS[1]
    hf = _hf_model("deberta-v2", extra, "sequence-classification", 3, 5)
    hf.save_pretrained(str(tmp_path))
    ours = _load_ours(str(tmp_path), "sequence-classification", 3)
    ids, mask, _ = _inputs(1, False)
    with torch.no_grad():
        ref = hf.pooler(hf.deberta(ids, attention_mask=mask).last_hidden_state)
        got = ours.pooled(ids, mask)
    assert (got - ref).abs().max().item() <= TOL


def test_legacy_mlm_tied_decoder(tmp_path):
    """With tie_word_embeddings the saved file omits the decoder; ours ties it to the word table."""
    _, _, extra = V1_CONFIGS[0]
    hf = _hf_model("deberta", extra, "masked-lm", 2, 3)
    hf.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "cls.predictions.decoder.weight" not in saved
    ours = _load_ours(str(tmp_path), "masked-lm", 2)
    dec = ours.cls.predictions.decoder
    assert dec.weight is ours.deberta.embeddings.word_embeddings.weight
    assert dec.bias is ours.cls.predictions.bias
    # plain load_state_dict of the saved file works too (a pre-hook fills the tied aliases)
    direct = deberta.build(ours.config, "masked-lm")
    direct.load_state_dict(saved, strict=True)
    ids, mask, _ = _inputs(4, False)
    with torch.no_grad():
        assert torch.equal(direct(ids, mask), ours(ids, mask))


def test_ignored_position_embeddings_key():
    """MS checkpoints carry an absolute table even when position_biased_input is false."""
    cfg = deberta_v2.Config.from_hf(deberta_v2.PRESETS["deberta-v3-base-tiny"], "preset")
    m = deberta_v2.build(cfg, "token-classification", 2)
    sd = dict(m.state_dict())
    sd["deberta.embeddings.position_embeddings.weight"] = torch.zeros(64, 32)
    m.load_state_dict(sd, strict=True)


def test_log_buckets_match_hf():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    rel = torch.arange(-600, 601)
    for buckets, maxpos in [(256, 512), (8, 64), (6, 10), (10, 32), (2, 5)]:
        ref = make_log_bucket_position(rel, buckets, maxpos).long()
        assert torch.equal(deberta_v2.log_bucket_position(rel, buckets, maxpos), ref)


@pytest.mark.parametrize(
    "fam,name",
    [(deberta, n) for n in deberta.PRESETS] + [(deberta_v2, n) for n in deberta_v2.PRESETS],
)
def test_presets_roundtrip_through_transformers(fam, name):
    cfg = fam.Config.from_hf(fam.PRESETS[name], name)
    hf_dict = cfg.to_hf()
    cfg_cls = transformers.DebertaConfig if fam is deberta else transformers.DebertaV2Config
    hf_cfg = cfg_cls.from_dict(hf_dict)
    back = fam.Config.from_hf(hf_cfg.to_dict(), name)
    assert back.replace(id2label=None) == cfg  # default labels come back spelled out
    assert back.num_labels == cfg.num_labels == 2
    assert fam.Config.from_hf(hf_dict, name).replace(id2label=None) == cfg


def test_preset_features():
    v3 = deberta_v2.Config.from_hf(deberta_v2.PRESETS["deberta-v3-base"], "p")
    assert (v3.position_buckets, v3.share_att_key, v3.norm_rel_ebd, v3.conv_kernel_size) == (
        256,
        True,
        ("layer_norm",),
        0,
    )
    xl = deberta_v2.Config.from_hf(deberta_v2.PRESETS["deberta-v2-xlarge-tiny"], "p")
    assert xl.conv_kernel_size == 3 and xl.conv_act == "gelu" and xl.attention_head_size == 16
    b = deberta.Config.from_hf(deberta.PRESETS["deberta-base"], "p")
    assert b.pos_att_type == ("c2p", "p2c") and not b.position_biased_input and b.rel_span == 512
    assert deberta.TOKENIZER_KIND == "bpe" and deberta_v2.TOKENIZER_KIND == "sentencepiece"
    assert deberta.MODEL_TYPES == ("deberta",) and deberta_v2.MODEL_TYPES == ("deberta-v2",)


@pytest.mark.parametrize(
    "fam,patch,field",
    [
        (deberta, {"hidden_size": 30}, "hidden_size"),
        (deberta, {"num_attention_heads": "4"}, "num_attention_heads"),
        (deberta, {"hidden_act": "nope"}, "hidden_act"),
        (deberta, {"pos_att_type": 3}, "pos_att_type"),
        (deberta, {"model_type": "bert"}, "model_type"),
        (deberta, {"pooler_hidden_size": 16}, "pooler_hidden_size"),
        (
            deberta_v2,
            {"attention_head_size": 16, "hidden_size": 32, "num_attention_heads": 4},
            "attention_head_size",
        ),
        (deberta_v2, {"conv_kernel_size": 4}, "conv_kernel_size"),
        (deberta_v2, {"conv_groups": 3}, "conv_groups"),
        (deberta_v2, {"norm_rel_ebd": "rms"}, "norm_rel_ebd"),
        (deberta_v2, {"layer_norm_eps": -1}, "layer_norm_eps"),
    ],
)
def test_config_errors_name_field_and_source(fam, patch, field):
    base = dict(fam.PRESETS["deberta-base-tiny" if fam is deberta else "deberta-v2-xlarge-tiny"])
    base.update(patch)
    with pytest.raises(ConfigError) as ei:
        fam.Config.from_hf(base, "/ckpt/config.json")
    assert field in str(ei.value) and "/ckpt/config.json" in str(ei.value)


def test_class_defaults_apply_for_absent_keys():
    cfg = deberta_v2.Config.from_hf({"model_type": "deberta-v2"}, "c")
    assert (cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers, cfg.layer_norm_eps) == (
        1536,
        128100,
        24,
        1e-7,
    )
    assert cfg.position_buckets == -1 and cfg.conv_act == "tanh" and not cfg.relative_attention
    cfg1 = deberta.Config.from_hf({}, "c")
    assert (cfg1.hidden_size, cfg1.vocab_size, cfg1.position_biased_input) == (768, 50265, True)


def test_ms_mlm_head_needs_embedding_size_equal_hidden():
    d = dict(deberta_v2.PRESETS["deberta-v3-base-tiny"], legacy=False, embedding_size=16)
    cfg = deberta_v2.Config.from_hf(d, "c")
    deberta_v2.build(cfg, "base")
    with pytest.raises(ConfigError, match="embedding_size"):
        deberta_v2.build(cfg, "masked-lm")


def test_bad_task_and_inputs():
    cfg = deberta.Config.from_hf(deberta.PRESETS["deberta-base-tiny"], "p")
    with pytest.raises(ConfigError):
        deberta.build(cfg, "multiple-choice", 2)
    with pytest.raises(ConfigError):
        deberta.build(cfg, "sequence-classification", 0)
    assert deberta.build(cfg, "question-answering", 3).qa_outputs.out_features == 2
    m = deberta.build(cfg, "base")
    assert (m.task, m.family, m.calibration_ranges) == ("base", "intengine.models.deberta", {})
    with pytest.raises(InputError):
        m(torch.tensor([[1, 2, 1000]]))
    with pytest.raises(InputError):
        m(torch.tensor([[[1, 2, 3]]]))
    with pytest.raises(InputError):  # no token type table: non-zero type ids are refused
        m(torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 1, 1]]))
    with pytest.raises(InputError):
        m(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 1]]))
    with pytest.raises(InputError):
        m(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 2, 1]]))


@pytest.mark.parametrize(
    "preset,task",
    [
        ("deberta-base-tiny", "masked-lm"),
        ("deberta-v3-base-tiny", "sequence-classification"),
        ("deberta-v2-xlarge-tiny", "question-answering"),
    ],
)
def test_preset_saved_by_intengine_loads_in_transformers(preset, task, tmp_path):
    """``load_fp32(preset)`` -> ``save_hf_folder`` -> transformers ``from_pretrained``."""
    from intengine import load_fp32, save_hf_folder

    ours = load_fp32(preset, task=task, seed=3)
    _perturb(ours, 4)
    save_hf_folder(ours, tmp_path / "ckpt")
    model_type = ours.config.model_type
    hf = (
        getattr(transformers, HF_CLASSES[model_type][task])
        .from_pretrained(str(tmp_path / "ckpt"))
        .eval()
    )
    ids, mask, _ = _inputs(7, False)
    ids = ids % ours.config.vocab_size
    ref = _hf_out(hf, task, ids, mask, None)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
    assert _max_diff(task, got, ref, mask) <= TOL


def test_task_checkpoint_loads_as_base(tmp_path):
    from intengine import load_fp32

    _, _, extra = V2_CONFIGS[1]
    hf = _hf_model("deberta-v2", extra, "token-classification", 3, 9)
    hf.save_pretrained(str(tmp_path))
    ours = load_fp32(str(tmp_path), task="base")
    assert not any(k.startswith("deberta.") for k in ours.state_dict())
    ids, mask, _ = _inputs(2, False)
    with torch.no_grad():
        ref = hf.deberta(ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    assert _max_diff("base", got, ref, mask) <= TOL


def _hub_mlm_folder(model_type: str, extra: dict, path, *, keep_untied: bool = False):
    """A folder laid out like microsoft/deberta-base, deberta-v3-base: MS head weights
    ``lm_predictions.lm_head.{dense,LayerNorm,bias}`` but no ``legacy`` key in config.json.

    Made from a transformers ``legacy=False`` model (``tie_word_embeddings=False`` as in the
    parity configs); ``keep_untied`` keeps ``tie_word_embeddings: false`` in the config."""
    hf = _hf_model(
        model_type, dict(extra, legacy=False, tie_word_embeddings=False), "masked-lm", 2, 21
    )
    hf.save_pretrained(str(path))
    cfg_path = path / "config.json"
    d = json.loads(cfg_path.read_text())
    del d["legacy"]
    if not keep_untied:
        del d["tie_word_embeddings"]
    cfg_path.write_text(json.dumps(d))
    keys = set(load_file(str(path / "model.safetensors")))
    assert {k for k in keys if not k.startswith("deberta.")} == {
        "lm_predictions.lm_head.dense.weight",
        "lm_predictions.lm_head.dense.bias",
        "lm_predictions.lm_head.LayerNorm.weight",
        "lm_predictions.lm_head.LayerNorm.bias",
        "lm_predictions.lm_head.bias",
    }
    return hf


_HUB_MLM = [V1_CONFIGS[0], V2_CONFIGS[0]]


@pytest.mark.parametrize("model_type,name,extra", _HUB_MLM, ids=[c[1] for c in _HUB_MLM])
def test_hub_mlm_without_legacy_key_loads(model_type, name, extra, tmp_path):
    from intengine import load_fp32
    from intengine.checkpoint import save_hf_folder

    hf = _hub_mlm_folder(model_type, extra, tmp_path / "hub")
    ours = load_fp32(str(tmp_path / "hub"), task="masked-lm")
    assert ours.config.legacy and ours.config.tie_word_embeddings
    assert ours.cls.predictions.decoder.weight is ours.deberta.embeddings.word_embeddings.weight
    ids, mask, _ = _inputs(7, False)
    ref = _hf_out(hf, "masked-lm", ids, mask, None)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
    assert got.shape == ref.shape
    assert _max_diff("masked-lm", got, ref, mask) <= TOL

    # the same folder loads as base (head ignored)
    base = load_fp32(str(tmp_path / "hub"), task="base")
    assert sorted(base.ignored_keys) == [
        "cls.predictions.bias",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.dense.weight",
    ]
    with torch.no_grad():
        ref_h = hf.deberta(ids, attention_mask=mask).last_hidden_state
        assert _max_diff("base", base(ids, mask), ref_h, mask) <= TOL

    # re-saved, it is a legacy folder that transformers itself loads with the real head
    out = save_hf_folder(ours, tmp_path / "resaved")
    cls = getattr(transformers, HF_CLASSES[model_type]["masked-lm"])
    again = cls.from_pretrained(str(out)).eval()
    assert _max_diff("masked-lm", _hf_out(again, "masked-lm", ids, mask, None), ref, mask) <= TOL


def test_hub_mlm_untied_and_direct_load_state_dict(tmp_path):
    """``tie_word_embeddings: false`` without ``legacy``: the untied decoder gets the word table;
    plain ``load_state_dict`` of the hub file works too; ``legacy: false`` is left as is."""
    from intengine import load_fp32
    from intengine.errors import CheckpointError

    _, _, extra = V2_CONFIGS[0]
    hf = _hub_mlm_folder("deberta-v2", extra, tmp_path, keep_untied=True)
    ours = load_fp32(str(tmp_path), task="masked-lm")
    assert ours.config.legacy and not ours.config.tie_word_embeddings
    dec = ours.cls.predictions.decoder.weight
    assert dec is not ours.deberta.embeddings.word_embeddings.weight
    assert torch.equal(dec, ours.deberta.embeddings.word_embeddings.weight)
    ids, mask, _ = _inputs(8, False)
    ref = _hf_out(hf, "masked-lm", ids, mask, None)
    with torch.no_grad():
        assert _max_diff("masked-lm", ours(ids, mask), ref, mask) <= TOL

    saved = load_file(str(tmp_path / "model.safetensors"))
    for tie in (True, False):
        direct = deberta_v2.build(ours.config.replace(tie_word_embeddings=tie), "masked-lm")
        direct.load_state_dict(dict(saved), strict=True)
        with torch.no_grad():
            assert _max_diff("masked-lm", direct(ids, mask), ref, mask) <= TOL

    # an explicit legacy=false config keeps the MS head; a task head is still reported missing
    ms = deberta_v2.build(ours.config.replace(legacy=False), "masked-lm")
    ms.load_state_dict(dict(saved), strict=True)
    with pytest.raises(CheckpointError, match="classifier"):
        load_fp32(str(tmp_path), task="token-classification")

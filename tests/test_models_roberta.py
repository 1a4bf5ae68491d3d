"""RoBERTa / I-BERT FP32 reference: parity with transformers on random-init checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from intengine import load_fp32, save_hf_folder
from intengine.models import roberta

TOL = 1e-4

CONFIGS = {
    # roberta-base shapes in miniature: type_vocab 1, eps 1e-5, pad 1
    "small": {
        "vocab_size": 97,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 40,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
    },
    # token types used, odd head count, other pad id, 3 layers
    "types": {
        "vocab_size": 150,
        "hidden_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 3,
        "intermediate_size": 96,
        "max_position_embeddings": 33,
        "type_vocab_size": 3,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 4,
        "bos_token_id": 0,
        "eos_token_id": 2,
    },
    # wide FFN, single layer, relu
    "wide": {
        "vocab_size": 64,
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 8,
        "intermediate_size": 200,
        "max_position_embeddings": 70,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-6,
        "pad_token_id": 0,
        "hidden_act": "relu",
    },
}

HF_CLASSES = {
    "base": "RobertaModel",
    "sequence-classification": "RobertaForSequenceClassification",
    "token-classification": "RobertaForTokenClassification",
    "question-answering": "RobertaForQuestionAnswering",
    "masked-lm": "RobertaForMaskedLM",
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Larger-than-init random weights, so attention is peaked and biases/LN matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("LayerNorm.weight", "layer_norm.weight")):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def make_inputs(cfg: dict, batch: int = 3, length: int = 13, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pad = cfg["pad_token_id"]
    ids = torch.randint(0, cfg["vocab_size"], (batch, length), generator=gen)
    ids[ids == pad] = (pad + 1) % cfg["vocab_size"]
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 4 :] = 0  # right padding inside the batch
    mask[2, length - 1 :] = 0
    ids[mask == 0] = pad
    types = None
    if cfg.get("type_vocab_size", 2) > 1:
        types = torch.randint(0, cfg["type_vocab_size"], (batch, length), generator=gen)
    return ids, mask, types


def hf_output(model, task, ids, mask, types):
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        kwargs["token_type_ids"] = types
    with torch.no_grad():
        out = model(**kwargs)
    if task == "base":
        return out.last_hidden_state
    if task == "question-answering":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def max_diff(ref, ours, mask):
    diff = (ref - ours).abs()
    if diff.dim() == 3:  # per-token outputs: compare valid tokens only
        diff = diff[mask.bool()]
    return float(diff.max())


def build_hf(task, cfg, seed, model_type="roberta", **extra):
    if model_type == "ibert":
        config = transformers.IBertConfig(**cfg, quant_mode=False, **extra)
        cls = getattr(transformers, HF_CLASSES[task].replace("Roberta", "IBert"))
    else:
        config = transformers.RobertaConfig(**cfg, **extra)
        cls = getattr(transformers, HF_CLASSES[task])
    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize(model, seed)
    return model


@pytest.mark.parametrize("task", list(HF_CLASSES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_transformers(tmp_path, name, task):
    cfg = CONFIGS[name]
    extra = {"num_labels": 5} if task in ("sequence-classification", "token-classification") else {}
    hf = build_hf(task, cfg, seed=hash((name, task)) % 1000, **extra)
    # alternate the on-disk format: safetensors and pickled .bin
    safe = (list(CONFIGS).index(name) + list(HF_CLASSES).index(task)) % 2 == 0
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    ours = load_fp32(tmp_path, task)
    assert not ours.training
    ids, mask, types = make_inputs(cfg)
    ref = hf_output(hf, task, ids, mask, types)
    with torch.no_grad():
        got = ours(ids, mask, types)
    assert got.shape == ref.shape
    assert max_diff(ref, got, mask) <= TOL


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_checkpoint(tmp_path, safe):
    cfg = CONFIGS["types"]
    hf = build_hf("masked-lm", cfg, seed=11)
    hf.save_pretrained(tmp_path, safe_serialization=safe, max_shard_size="40KB")
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    assert (tmp_path / index).is_file()
    assert len(set(json.loads((tmp_path / index).read_text())["weight_map"].values())) > 1
    ours = load_fp32(tmp_path, "masked-lm")
    ids, mask, types = make_inputs(cfg)
    assert (
        max_diff(hf_output(hf, "masked-lm", ids, mask, types), ours(ids, mask, types), mask) <= TOL
    )


def test_pooled_output_matches_roberta_pooler(tmp_path):
    cfg = CONFIGS["small"]
    hf = build_hf("base", cfg, seed=3)
    hf.save_pretrained(tmp_path)
    ours = load_fp32(tmp_path)
    ids, mask, _ = make_inputs(cfg)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).pooler_output
        got = ours.pooled(ids, mask)
    assert float((ref - got).abs().max()) <= TOL


def test_task_checkpoint_loads_as_base(tmp_path):
    cfg = CONFIGS["small"]
    hf = build_hf("sequence-classification", cfg, seed=5)
    hf.save_pretrained(tmp_path)
    ours = load_fp32(tmp_path, "base")
    ids, mask, _ = make_inputs(cfg)
    with torch.no_grad():
        ref = hf.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
    assert max_diff(ref, ours(ids, mask), mask) <= TOL
    assert any(k.startswith("classifier.") for k in ours.ignored_keys)
    with pytest.raises(Exception, match="pooler"):
        ours.pooled(ids, mask)


def test_padding_aware_positions():
    emb = roberta.RobertaEmbeddings(roberta.RobertaConfig(pad_token_id=1, vocab_size=10))
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 1, 7, 2, 1, 1]])
    assert emb.position_ids(ids).tolist() == [[2, 3, 4, 5, 1, 1], [2, 1, 3, 4, 1, 1]]


# ---------------------------------------------------------------------------------------------
# I-BERT checkpoints


def test_ibert_sequence_classification_checkpoint(tmp_path):
    cfg = dict(CONFIGS["types"])
    hf = build_hf("sequence-classification", cfg, seed=21, model_type="ibert", num_labels=3)
    # Calibrate two QuantActs and one IntLayerNorm shift; the rest stay at their ±1e-5 init.
    with torch.no_grad():
        layer0 = hf.ibert.encoder.layer[0]
        layer0.attention.self.query_activation.x_min.fill_(-3.5)
        layer0.attention.self.query_activation.x_max.fill_(4.25)
        hf.ibert.embeddings.output_activation.x_min.fill_(-7.0)
        hf.ibert.embeddings.output_activation.x_max.fill_(6.0)
        layer0.output.LayerNorm.shift.fill_(3)
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ibert"
    ours = load_fp32(tmp_path, "sequence-classification")
    assert isinstance(ours, roberta.RobertaForSequenceClassification)
    assert ours.config.model_type == "ibert" and ours.config.num_labels == 3
    ids, mask, types = make_inputs(cfg)
    diff = max_diff(
        hf_output(hf, "sequence-classification", ids, mask, types), ours(ids, mask, types), mask
    )
    assert diff <= TOL
    assert ours.calibration_ranges == {
        "roberta.encoder.layer.0.attention.self.query_activation": (-3.5, 4.25),
        "roberta.embeddings.output_activation": (-7.0, 6.0),
    }
    assert ours.layernorm_shifts == {"roberta.encoder.layer.0.output.LayerNorm": 3}


def test_ibert_uncalibrated_has_no_ranges(tmp_path):
    cfg = CONFIGS["small"]
    hf = build_hf("masked-lm", cfg, seed=22, model_type="ibert")
    hf.save_pretrained(tmp_path, safe_serialization=False)
    ours = load_fp32(tmp_path, "masked-lm")
    assert ours.calibration_ranges == {} and ours.layernorm_shifts == {}
    ids, mask, types = make_inputs(cfg)
    assert (
        max_diff(hf_output(hf, "masked-lm", ids, mask, types), ours(ids, mask, types), mask) <= TOL
    )


# ---------------------------------------------------------------------------------------------
# presets and config


@pytest.mark.parametrize("task", ["sequence-classification", "masked-lm"])
def test_preset_is_deterministic_and_loads_in_transformers(tmp_path, task):
    a = load_fp32("roberta-tiny", task)
    b = load_fp32("roberta-tiny", task)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    cfg = a.config
    assert cfg.hidden_size <= 64 and cfg.num_hidden_layers == 2 and cfg.vocab_size <= 1000
    save_hf_folder(a, tmp_path / "ckpt")
    hf = getattr(transformers, HF_CLASSES[task]).from_pretrained(tmp_path / "ckpt").eval()
    ids, mask, _ = make_inputs(cfg.to_hf())
    assert max_diff(hf_output(hf, task, ids, mask, None), a(ids, mask), mask) <= TOL


def test_ibert_preset_round_trip(tmp_path):
    save_hf_folder("ibert-roberta-tiny", tmp_path / "ib", task="question-answering", seed=3)
    hf = transformers.IBertForQuestionAnswering.from_pretrained(tmp_path / "ib").eval()
    ours = load_fp32(tmp_path / "ib", "question-answering")
    ids, mask, _ = make_inputs(ours.config.to_hf())
    assert (
        max_diff(hf_output(hf, "question-answering", ids, mask, None), ours(ids, mask), mask) <= TOL
    )


def test_config_defaults_are_hf_class_defaults():
    cfg = roberta.RobertaConfig.from_hf({"model_type": "roberta"}, "test")
    ref = transformers.RobertaConfig()
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    ):
        assert getattr(cfg, field) == getattr(ref, field), field
    icfg = roberta.RobertaConfig.from_hf({"model_type": "ibert"}, "test")
    assert icfg.vocab_size == transformers.IBertConfig().vocab_size
    # checkpoint values win over class defaults
    base = roberta.RobertaConfig.from_hf(roberta.PRESETS["roberta-base"], "preset")
    assert (
        base.max_position_embeddings == 514
        and base.layer_norm_eps == 1e-5
        and base.max_length == 512
    )


def test_to_hf_loads_in_transformers():
    cfg = roberta.RobertaConfig.from_hf(
        dict(CONFIGS["types"], model_type="roberta", num_labels=4), "t"
    )
    d = cfg.to_hf()
    hf_cfg = transformers.AutoConfig.for_model(**d)
    assert hf_cfg.model_type == "roberta" and hf_cfg.num_labels == 4
    assert roberta.RobertaConfig.from_hf(hf_cfg.to_dict(), "again") == cfg

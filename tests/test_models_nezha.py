"""NEZHA FP32 reference: parity with transformers' (deprecated) NEZHA on random-init checkpoints."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "NezhaConfig"):  # pragma: no cover - removed in transformers 5
    pytest.skip("this transformers has no NEZHA", allow_module_level=True)

from safetensors.torch import load_file, save_file

from intengine import load_fp32, save_hf_folder
from intengine.models import nezha

TOL = 1e-4

CONFIGS = {
    # clipping well inside the sequence (m=3 < T=13)
    "clip3": {
        "vocab_size": 120,
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "intermediate_size": 70,
        "max_position_embeddings": 32,
        "max_relative_position": 3,
        "type_vocab_size": 2,
    },
    # no clipping within the sequence, 3 token types, single layer
    "wide": {
        "vocab_size": 90,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 20,
        "max_relative_position": 16,
        "type_vocab_size": 3,
        "layer_norm_eps": 1e-6,
    },
    # deeper, more heads, one token type, relu
    "deep": {
        "vocab_size": 64,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
        "intermediate_size": 96,
        "max_position_embeddings": 16,
        "max_relative_position": 6,
        "type_vocab_size": 1,
        "hidden_act": "relu",
    },
}

HF_CLASSES = {
    "base": "NezhaModel",
    "sequence-classification": "NezhaForSequenceClassification",
    "token-classification": "NezhaForTokenClassification",
    "question-answering": "NezhaForQuestionAnswering",
    "masked-lm": "NezhaForMaskedLM",
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("LayerNorm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def make_inputs(cfg: dict, batch: int = 3, length: int = 13, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg["vocab_size"], (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length - 5 :] = 0
    mask[2, length - 2 :] = 0
    ids[mask == 0] = 0
    types = torch.randint(0, cfg.get("type_vocab_size", 2), (batch, length), generator=gen)
    return ids, mask, types


def hf_output(model, task, ids, mask, types):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if task == "base":
        return out.last_hidden_state
    if task == "question-answering":
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def max_diff(ref, ours, mask):
    diff = (ref - ours).abs()
    if diff.dim() == 3:
        diff = diff[mask.bool()]
    return float(diff.max())


def build_hf(task, cfg, seed, **extra):
    config = transformers.NezhaConfig(**cfg, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, HF_CLASSES[task])(config).eval()
    randomize(model, seed)
    return model


@pytest.mark.parametrize("task", list(HF_CLASSES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_transformers(tmp_path, name, task):
    cfg = CONFIGS[name]
    extra = {"num_labels": 4} if task in ("sequence-classification", "token-classification") else {}
    hf = build_hf(
        task, cfg, seed=list(CONFIGS).index(name) * 10 + list(HF_CLASSES).index(task), **extra
    )
    safe = (list(CONFIGS).index(name) + list(HF_CLASSES).index(task)) % 2 == 0
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    ours = load_fp32(tmp_path, task)
    ids, mask, types = make_inputs(cfg)
    ref = hf_output(hf, task, ids, mask, types)
    with torch.no_grad():
        got = ours(ids, mask, types)
    assert got.shape == ref.shape
    assert max_diff(ref, got, mask) <= TOL


def test_pooled_output(tmp_path):
    cfg = CONFIGS["clip3"]
    hf = build_hf("base", cfg, seed=1)
    hf.save_pretrained(tmp_path)
    ours = load_fp32(tmp_path)
    ids, mask, types = make_inputs(cfg)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
        assert float((ref - ours.pooled(ids, mask, types)).abs().max()) <= TOL


def test_relative_table_equals_hf_positions_encoding():
    cfg = CONFIGS["clip3"]
    hf = build_hf("base", cfg, seed=2)
    buf = hf.encoder.layer[0].attention.self.relative_positions_encoding.positions_encoding
    table = nezha.relative_table(
        cfg["max_relative_position"], cfg["hidden_size"] // cfg["num_attention_heads"]
    )
    n = cfg["max_position_embeddings"]
    assert torch.equal(table[nezha.relative_index(n, cfg["max_relative_position"])], buf)


@pytest.mark.parametrize("safe", [True, False])
def test_checkpoint_with_dead_positions_encoding_buffers(tmp_path, safe):
    """transformers 4.2x saved a [L, L, d] ``positions_encoding`` buffer per layer."""
    cfg = CONFIGS["clip3"]
    hf = build_hf("masked-lm", cfg, seed=3)
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    name = "model.safetensors" if safe else "pytorch_model.bin"
    sd = load_file(tmp_path / name) if safe else torch.load(tmp_path / name, weights_only=True)
    for i, layer in enumerate(hf.nezha.encoder.layer):
        buf = layer.attention.self.relative_positions_encoding.positions_encoding
        sd[
            f"nezha.encoder.layer.{i}.attention.self.relative_positions_encoding.positions_encoding"
        ] = buf.clone()
    sd["nezha.embeddings.token_type_ids"] = torch.zeros(
        1, cfg["max_position_embeddings"], dtype=torch.long
    )
    if safe:
        save_file(sd, tmp_path / name, metadata={"format": "pt"})
    else:
        torch.save(sd, tmp_path / name)
    ours = load_fp32(tmp_path, "masked-lm")
    ids, mask, types = make_inputs(cfg)
    assert (
        max_diff(hf_output(hf, "masked-lm", ids, mask, types), ours(ids, mask, types), mask) <= TOL
    )


def test_pretraining_checkpoint_loads_for_mlm(tmp_path):
    """NezhaForPreTraining carries a pooler and the NSP head; the MLM model ignores both."""
    cfg = CONFIGS["wide"]
    config = transformers.NezhaConfig(**cfg)
    torch.manual_seed(4)
    hf = transformers.NezhaForPreTraining(config).eval()
    randomize(hf, 4)
    hf.save_pretrained(tmp_path)
    ours = load_fp32(tmp_path, "masked-lm")
    ids, mask, types = make_inputs(cfg)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits
    assert max_diff(ref, ours(ids, mask, types), mask) <= TOL
    assert "cls.seq_relationship.weight" in ours.ignored_keys


def test_huawei_key_names(tmp_path):
    """The original release uses ``bert.*`` and ``gamma``/``beta``."""
    cfg = CONFIGS["wide"]
    hf = build_hf("base", cfg, seed=5)
    sd = {}
    for k, v in hf.state_dict().items():
        k = "bert." + k
        if "LayerNorm" in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
        sd[k] = v.contiguous()
    tmp_path.joinpath("config.json").write_text(
        __import__("json").dumps(dict(cfg, model_type="nezha", use_relative_position=True))
    )
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = load_fp32(tmp_path)
    ids, mask, types = make_inputs(cfg)
    assert max_diff(hf_output(hf, "base", ids, mask, types), ours(ids, mask, types), mask) <= TOL


def test_preset_round_trip_through_transformers(tmp_path):
    ours = load_fp32("nezha-cn-tiny", "sequence-classification", num_labels=3)
    c = ours.config
    assert c.hidden_size <= 64 and c.num_hidden_layers == 2 and c.vocab_size <= 1000
    save_hf_folder(ours, tmp_path / "nz")
    hf = transformers.NezhaForSequenceClassification.from_pretrained(tmp_path / "nz").eval()
    ids, mask, types = make_inputs(c.to_hf())
    assert (
        max_diff(
            hf_output(hf, "sequence-classification", ids, mask, types), ours(ids, mask, types), mask
        )
        <= TOL
    )
    again = load_fp32(tmp_path / "nz", "sequence-classification")
    assert again.config == ours.config


def test_config_defaults_are_hf_class_defaults():
    cfg = nezha.NezhaConfig.from_hf({"model_type": "nezha"}, "test")
    ref = transformers.NezhaConfig()
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "max_relative_position",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    ):
        assert getattr(cfg, field) == getattr(ref, field), field


def test_sequence_longer_than_positions_is_rejected():
    from intengine.errors import InputError

    model = load_fp32("nezha-cn-tiny")
    n = model.config.max_position_embeddings
    model(torch.ones(1, n, dtype=torch.long))
    with pytest.raises(InputError, match="exceeds"):
        model(torch.ones(1, n + 1, dtype=torch.long))

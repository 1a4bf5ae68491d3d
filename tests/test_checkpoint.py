"""Checkpoint folders and model inputs: the errors a user sees when something is wrong."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from intengine import load_fp32, save_hf_folder
from intengine.checkpoint import read_state_dict
from intengine.errors import CheckpointError, ConfigError, InputError, IntengineError
from intengine.models import FAMILIES, FAMILY_MODULES, TASKS, get_family


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A roberta-tiny masked-LM checkpoint written by intengine."""
    path = tmp_path_factory.mktemp("ckpt") / "roberta-tiny"
    save_hf_folder("roberta-tiny", path, task="masked-lm")
    return path


def copy_folder(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# ---------------------------------------------------------------------------------------------
# files


def test_round_trip_is_exact(folder):
    a = load_fp32("roberta-tiny", "masked-lm")
    b = load_fp32(folder, "masked-lm")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    sd, path = read_state_dict(folder)
    assert path.name == "model.safetensors"
    assert "lm_head.decoder.weight" not in sd and "lm_head.bias" in sd  # tied tensors once


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        load_fp32(tmp_path / "nope")


def test_unknown_preset_lists_presets():
    with pytest.raises(CheckpointError, match="roberta-tiny"):
        load_fp32("roberta-huge-does-not-exist")


def test_missing_config(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_fp32(ckpt)


def test_config_not_json(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_fp32(ckpt)


def test_missing_weights(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file.*model.safetensors"):
        load_fp32(ckpt)


def test_truncated_safetensors(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        load_fp32(ckpt, "masked-lm")


def test_garbage_safetensors(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    (ckpt / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_fp32(ckpt, "masked-lm")


def test_corrupt_bin(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_fp32(ckpt, "masked-lm")


class _Payload:  # an arbitrary object: weights_only loading must refuse it
    def __reduce__(self):
        return (print, ("code ran",))


def test_bin_with_code_is_refused(folder, tmp_path, capsys):
    ckpt = copy_folder(folder, tmp_path / "c")
    sd = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    sd["evil"] = _Payload()
    torch.save(sd, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_fp32(ckpt, "masked-lm")
    assert "code ran" not in capsys.readouterr().out


def test_bin_and_sharded_bin(folder, tmp_path):
    ref = load_fp32(folder, "masked-lm")
    sd = load_file(folder / "model.safetensors")
    ckpt = tmp_path / "bin"
    ckpt.mkdir()
    (ckpt / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save(sd, ckpt / "pytorch_model.bin")
    got = load_fp32(ckpt, "masked-lm")
    ids = torch.randint(3, 1000, (2, 9))
    assert torch.equal(ref(ids), got(ids))

    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "config.json").write_bytes((folder / "config.json").read_bytes())
    keys = sorted(sd)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[::2],
        "pytorch_model-00002-of-00002.bin": keys[1::2],
    }
    weight_map = {}
    for fname, ks in halves.items():
        torch.save({k: sd[k] for k in ks}, shard / fname)
        weight_map.update({k: fname for k in ks})
    (shard / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    assert torch.equal(ref(ids), load_fp32(shard, "masked-lm")(ids))

    (shard / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="shard files not found.*00002"):
        load_fp32(shard, "masked-lm")


def test_index_listing_absent_key(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    shard = "model-00001-of-00001.safetensors"
    (ckpt / "model.safetensors").rename(ckpt / shard)
    weight_map = {k: shard for k in load_file(ckpt / shard)}
    weight_map["ghost.weight"] = shard
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="index.json.*ghost.weight"):
        load_fp32(ckpt, "masked-lm")


# ---------------------------------------------------------------------------------------------
# config


def _with_config(folder, tmp_path, **changes):
    ckpt = copy_folder(folder, tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def test_unknown_model_type(folder, tmp_path):
    ckpt = _with_config(folder, tmp_path, model_type="gpt2")
    with pytest.raises(ConfigError, match=r"config.json.*'model_type'.*'gpt2'"):
        load_fp32(ckpt)


def test_missing_model_type(folder, tmp_path):
    ckpt = _with_config(folder, tmp_path, model_type=None)
    with pytest.raises(ConfigError, match="model_type"):
        load_fp32(ckpt)


def test_bad_field_names_field_and_file(folder, tmp_path):
    ckpt = _with_config(folder, tmp_path, hidden_size="big")
    with pytest.raises(ConfigError, match=r"config.json.*'hidden_size'"):
        load_fp32(ckpt)


def test_heads_not_dividing_hidden(folder, tmp_path):
    ckpt = _with_config(folder, tmp_path, num_attention_heads=5)
    with pytest.raises(ConfigError, match="num_attention_heads"):
        load_fp32(ckpt)


def test_unknown_task_and_bad_num_labels():
    with pytest.raises(ConfigError, match="unknown task"):
        load_fp32("roberta-tiny", "summarization")
    with pytest.raises(ConfigError, match="num_labels"):
        load_fp32("roberta-tiny", "sequence-classification", num_labels=0)


def test_family_table():
    assert {"roberta", "ibert", "nezha", "deberta", "deberta-v2"} <= set(FAMILY_MODULES)
    assert FAMILIES["ibert"] is FAMILIES["roberta"]
    for model_type in ("roberta", "ibert", "nezha"):
        fam = get_family(model_type, "test")
        assert model_type in fam.MODEL_TYPES
        assert set(fam.HF_ARCHITECTURES) == set(TASKS)
        assert fam.TOKENIZER_KIND in ("bpe", "wordpiece", "sentencepiece")
    with pytest.raises(ConfigError, match="'bert'"):
        get_family("bert", "config.json")


# ---------------------------------------------------------------------------------------------
# keys


def test_key_problems_are_reported_together(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    sd = load_file(ckpt / "model.safetensors")
    del sd["roberta.encoder.layer.1.output.dense.bias"]
    del sd["lm_head.dense.weight"]
    sd["roberta.encoder.layer.9.attention.self.query.weight"] = torch.zeros(2, 2)
    sd["roberta.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(7, 32)
    save_file(sd, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        load_fp32(ckpt, "masked-lm")
    msg = str(info.value)
    assert "model.safetensors" in msg
    for key in (
        "roberta.encoder.layer.1.output.dense.bias",
        "lm_head.dense.weight",
        "roberta.encoder.layer.9.attention.self.query.weight",
        "roberta.encoder.layer.0.intermediate.dense.weight",
    ):
        assert key in msg
    assert (
        "missing keys (2)" in msg and "unexpected keys (1)" in msg and "shape mismatches (1)" in msg
    )


def test_head_missing_from_checkpoint(folder):
    with pytest.raises(CheckpointError, match=r"missing keys.*classifier\.dense\.weight"):
        load_fp32(folder, "sequence-classification")


def test_wrong_num_labels_is_a_shape_error(tmp_path):
    save_hf_folder("roberta-tiny", tmp_path / "cls", task="sequence-classification", num_labels=3)
    assert load_fp32(tmp_path / "cls", "sequence-classification").config.num_labels == 3
    with pytest.raises(
        CheckpointError, match="classifier.out_proj.weight.*\\(3, 32\\).*\\(5, 32\\)"
    ):
        load_fp32(tmp_path / "cls", "sequence-classification", num_labels=5)


def test_base_checkpoint_into_task_model(tmp_path):
    save_hf_folder("nezha-cn-tiny", tmp_path / "base")
    with pytest.raises(CheckpointError, match="qa_outputs.weight"):
        load_fp32(tmp_path / "base", "question-answering")


def test_half_precision_checkpoint_is_upcast(folder, tmp_path):
    ckpt = copy_folder(folder, tmp_path / "c")
    sd = {k: v.half() for k, v in load_file(ckpt / "model.safetensors").items()}
    save_file(sd, ckpt / "model.safetensors", metadata={"format": "pt"})
    model = load_fp32(ckpt, "masked-lm")
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# saving


def test_save_is_atomic_and_refuses_to_clobber(folder, tmp_path):
    target = tmp_path / "out"
    save_hf_folder("nezha-cn-tiny", target)
    assert sorted(os.listdir(target)) == ["config.json", "model.safetensors"]
    with pytest.raises(CheckpointError, match="not empty"):
        save_hf_folder("roberta-tiny", target)
    save_hf_folder("roberta-tiny", target, overwrite=True)
    assert json.loads((target / "config.json").read_text())["model_type"] == "roberta"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp folders left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    save_hf_folder("roberta-tiny", empty)
    assert (empty / "model.safetensors").is_file()


def test_save_rejects_foreign_module(tmp_path):
    with pytest.raises(CheckpointError, match="built by intengine"):
        save_hf_folder(torch.nn.Linear(2, 2), tmp_path / "x")


def test_presets_are_seeded():
    a = load_fp32("nezha-cn-tiny", seed=0)
    b = load_fp32("nezha-cn-tiny", seed=0)
    c = load_fp32("nezha-cn-tiny", seed=1)
    wa, wb, wc = (m.encoder.layer[0].attention.self.query.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    # the encoder does not depend on the head
    d = load_fp32("nezha-cn-tiny", "token-classification", seed=0)
    assert torch.equal(wa, d.nezha.encoder.layer[0].attention.self.query.weight)


# ---------------------------------------------------------------------------------------------
# inputs


@pytest.fixture(scope="module", params=["roberta-tiny", "nezha-cn-tiny"])
def tiny(request):
    return load_fp32(request.param, "sequence-classification")


def test_inputs_ok(tiny):
    ids = torch.randint(3, 100, (2, 8))
    out = tiny(ids, torch.ones(2, 8, dtype=torch.long))
    assert out.shape == (2, 2)
    assert torch.allclose(tiny(ids[0]), out[:1], atol=1e-6)  # 1-D ids = batch of one
    assert torch.allclose(tiny(ids.numpy()), out, atol=1e-6)  # numpy works
    assert torch.allclose(tiny(ids.int(), torch.ones(2, 8, dtype=torch.bool)), out, atol=1e-6)


def test_id_outside_vocabulary(tiny):
    ids = torch.randint(3, 100, (2, 8))
    ids[1, 3] = tiny.config.vocab_size
    with pytest.raises(InputError, match=f"id {tiny.config.vocab_size}.*vocabulary"):
        tiny(ids)
    ids[1, 3] = -1
    with pytest.raises(InputError, match="id -1"):
        tiny(ids)


def test_too_long(tiny):
    n = tiny.config.max_length
    tiny(torch.full((1, n), 5))
    with pytest.raises(InputError, match=f"length {n + 1} exceeds the {n} positions"):
        tiny(torch.full((1, n + 1), 5))


def test_wrong_mask_shape(tiny):
    ids = torch.randint(3, 100, (2, 8))
    with pytest.raises(
        InputError, match=r"attention_mask must have the shape of input_ids \(2, 8\)"
    ):
        tiny(ids, torch.ones(2, 7))
    with pytest.raises(InputError, match="only 0 and 1"):
        tiny(ids, torch.full((2, 8), 2))


def test_wrong_dtypes_and_shapes(tiny):
    with pytest.raises(InputError, match="integer tensor"):
        tiny(torch.rand(2, 8))
    with pytest.raises(InputError, match="shape"):
        tiny(torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(InputError, match="empty"):
        tiny(torch.ones(2, 0, dtype=torch.long))
    with pytest.raises(InputError, match="torch tensor"):
        tiny("hello")
    with pytest.raises(InputError, match="token_type_ids"):
        tiny(torch.ones(2, 8, dtype=torch.long), None, torch.full((2, 8), 7))


def test_errors_share_a_base_class():
    for cls in (CheckpointError, ConfigError, InputError):
        assert issubclass(cls, IntengineError)

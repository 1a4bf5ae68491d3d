"""RoBERTa as I-BERT uses it (model types ``roberta`` and ``ibert``), FP32 reference.

Maths (post-LN BERT layer; see /work/shared/research/encoders.md §0-1)::

    pos  = cumsum(ids != pad) * (ids != pad) + pad          # pads -> pad, tokens -> pad+1, ...
    x    = LN(word[ids] + type[tt] + pos_emb[pos])
    a    = LN(x + Wo·softmax(Q·Kᵀ/√d + M)·V + bo)            # M: additive key mask
    y    = LN(a + W2·act(W1·a + b1) + b2)

Heads: pooler ``tanh(W·h[:,0])`` (base only), ``classifier.{dense,out_proj}`` (tanh between),
``classifier`` (token), ``qa_outputs``, ``lm_head`` (gelu, LN, decoder tied to word embeddings).

An ``ibert`` checkpoint has the same float weights under ``ibert.*`` plus quantization buffers;
:func:`normalize_state_dict` renames and drops them and :func:`extract_calibration` keeps the
calibrated QuantAct ranges and IntLayerNorm shifts.  ``quant_mode`` is recorded but this module
always computes in FP32 (I-BERT's float path).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from . import build_from_classes, cfg_value, check_inputs, read_labels
from .heads import (
    AddNorm,
    Intermediate,
    Pooler,
    RobertaClassificationHead,
    RobertaLMHead,
    activation,
    additive_mask,
)

MODEL_TYPES = ("roberta", "ibert")
BASE_PREFIX = "roberta"
TOKENIZER_KIND = "bpe"

HF_ARCHITECTURES = {
    "base": "RobertaModel",
    "sequence-classification": "RobertaForSequenceClassification",
    "token-classification": "RobertaForTokenClassification",
    "question-answering": "RobertaForQuestionAnswering",
    "masked-lm": "RobertaForMaskedLM",
}
_IBERT_ARCHITECTURES = {k: v.replace("Roberta", "IBert") for k, v in HF_ARCHITECTURES.items()}

# Dead buffers of older transformers versions, and the pooler that task models do not use
# (roberta-base's checkpoint is a masked-LM checkpoint that still carries pooler weights).
IGNORED_KEYS = (
    r"(roberta\.)?embeddings\.position_ids",
    r"(roberta\.)?embeddings\.token_type_ids",
    r"roberta\.pooler\..*",
)

_ROBERTA_BASE = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

PRESETS: dict[str, dict] = {
    "roberta-base": dict(_ROBERTA_BASE),
    "roberta-large": dict(
        _ROBERTA_BASE,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ),
    "ibert-roberta-base": dict(_ROBERTA_BASE, model_type="ibert", quant_mode=False),
    "roberta-tiny": dict(
        _ROBERTA_BASE,
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
    ),
    "ibert-roberta-tiny": dict(
        _ROBERTA_BASE,
        model_type="ibert",
        quant_mode=False,
        vocab_size=1000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
    ),
}


@dataclass(frozen=True)
class RobertaConfig:
    """Fields read from ``config.json``; defaults are the ``RobertaConfig``/``IBertConfig`` class
    defaults, used only when a key is absent."""

    model_type: str = "roberta"
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    num_labels: int = 2
    id2label: dict | None = None
    quant_mode: bool = False
    force_dequant: str = "none"

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        """Longest input: positions run up to ``T + pad_token_id``."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @classmethod
    def from_hf(cls, d: dict, source: str) -> RobertaConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: config must be a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type", "roberta")
        if model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type' is {model_type!r}; this family handles {MODEL_TYPES}"
            )
        # IBertConfig's class default vocabulary differs from RobertaConfig's.
        vocab_default = 30522 if model_type == "ibert" else 50265

        def get(key, default, kind, positive=False, optional=False):
            return cfg_value(d, key, default, kind, source, positive=positive, optional=optional)

        pe_type = d.get("position_embedding_type", "absolute")
        if pe_type != "absolute":
            raise ConfigError(
                f"{source}: field 'position_embedding_type' is {pe_type!r}; only 'absolute' "
                "is supported"
            )
        hidden_act = get("hidden_act", "gelu", str)
        activation(hidden_act, source)
        if model_type == "ibert" and hidden_act != "gelu":
            raise ConfigError(f"{source}: field 'hidden_act' must be 'gelu' for I-BERT")
        num_labels, id2label = read_labels(d, source)
        cfg = cls(
            model_type=model_type,
            vocab_size=get("vocab_size", vocab_default, int, positive=True),
            hidden_size=get("hidden_size", 768, int, positive=True),
            num_hidden_layers=get("num_hidden_layers", 12, int, positive=True),
            num_attention_heads=get("num_attention_heads", 12, int, positive=True),
            intermediate_size=get("intermediate_size", 3072, int, positive=True),
            hidden_act=hidden_act,
            max_position_embeddings=get("max_position_embeddings", 512, int, positive=True),
            type_vocab_size=get("type_vocab_size", 2, int, positive=True),
            layer_norm_eps=get("layer_norm_eps", 1e-12, float, positive=True),
            pad_token_id=get("pad_token_id", 1, int),
            bos_token_id=get("bos_token_id", 0, int, optional=True),
            eos_token_id=get("eos_token_id", 2, int, optional=True),
            tie_word_embeddings=get("tie_word_embeddings", True, bool),
            num_labels=num_labels,
            id2label=id2label,
            quant_mode=get("quant_mode", False, bool),
            force_dequant=get("force_dequant", "none", str),
        )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(
                f"{source}: field 'hidden_size' ({cfg.hidden_size}) is not a multiple of "
                f"'num_attention_heads' ({cfg.num_attention_heads})"
            )
        if not 0 <= cfg.pad_token_id < cfg.vocab_size:
            raise ConfigError(
                f"{source}: field 'pad_token_id' {cfg.pad_token_id} is outside the vocabulary"
            )
        if cfg.max_length < 1:
            raise ConfigError(
                f"{source}: field 'max_position_embeddings' ({cfg.max_position_embeddings}) leaves "
                f"no positions after padding_idx {cfg.pad_token_id}"
            )
        return cfg

    def to_hf(self) -> dict:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("num_labels", "id2label", "quant_mode", "force_dequant")
        }
        d["position_embedding_type"] = "absolute"
        if self.model_type == "ibert":
            d["quant_mode"] = self.quant_mode
            d["force_dequant"] = self.force_dequant
        labels = self.id2label or {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["id2label"] = dict(labels)
        d["label2id"] = {v: int(k) for k, v in labels.items()}
        return d


Config = RobertaConfig


class RobertaEmbeddings(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.padding_idx = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.position_embeddings = nn.Embedding(
            cfg.max_position_embeddings, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def position_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Padding-aware positions: pads get ``padding_idx``, tokens count from ``padding_idx+1``."""
        not_pad = ids.ne(self.padding_idx).long()
        return torch.cumsum(not_pad, dim=1) * not_pad + self.padding_idx

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        x = self.word_embeddings(ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(self.position_ids(ids))
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.head_size = cfg.head_size
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_size).transpose(1, 2)  # [B, h, T, d]

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size) + mask_add
        ctx = torch.softmax(scores, dim=-1) @ v
        b, _, t, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, t, self.heads * self.head_size)


class Attention(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AddNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_add), x)


class Layer(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(
            cfg.hidden_size, cfg.intermediate_size, activation(cfg.hidden_act)
        )
        self.output = AddNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_add)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_add)
        return x


class RobertaModel(nn.Module):
    """Encoder body; keys ``embeddings.*``, ``encoder.*`` and (base task) ``pooler.*``."""

    def __init__(self, cfg: RobertaConfig, add_pooler: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = RobertaEmbeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg.hidden_size) if add_pooler else None

    def check(self, input_ids, attention_mask=None, token_type_ids=None):
        cfg = self.config
        return check_inputs(
            input_ids,
            attention_mask,
            token_type_ids,
            vocab_size=cfg.vocab_size,
            max_length=cfg.max_length,
            type_vocab_size=cfg.type_vocab_size,
        )

    def encode(
        self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None
    ) -> torch.Tensor:
        """Last hidden state from already validated inputs."""
        x = self.embeddings(ids, types)
        return self.encoder(x, additive_mask(mask, x.dtype))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.encode(*self.check(input_ids, attention_mask, token_type_ids))

    def pooled(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """``tanh(W·h[:, 0] + b)``, ``[B, H]``."""
        if self.pooler is None:
            raise ConfigError(
                "this model has no pooler weights (the checkpoint did not carry them)"
            )
        return self.pooler(self.forward(input_ids, attention_mask, token_type_ids))


class _TaskModel(nn.Module):
    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.config = cfg
        self.roberta = RobertaModel(cfg, add_pooler=False)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        ids, mask, types = self.roberta.check(input_ids, attention_mask, token_type_ids)
        return self.head(self.roberta.encode(ids, mask, types))


class RobertaForSequenceClassification(_TaskModel):
    def __init__(self, cfg: RobertaConfig, num_labels: int):
        super().__init__(cfg)
        self.classifier = RobertaClassificationHead(cfg.hidden_size, num_labels)

    def head(self, hidden):
        return self.classifier(hidden)


class RobertaForTokenClassification(_TaskModel):
    def __init__(self, cfg: RobertaConfig, num_labels: int):
        super().__init__(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    def head(self, hidden):
        return self.classifier(hidden)


class RobertaForQuestionAnswering(_TaskModel):
    def __init__(self, cfg: RobertaConfig, num_labels: int = 2):
        super().__init__(cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)

    def head(self, hidden):
        return self.qa_outputs(hidden)  # [..., 0] start, [..., 1] end


class RobertaForMaskedLM(_TaskModel):
    def __init__(self, cfg: RobertaConfig, num_labels: int = 0):
        super().__init__(cfg)
        tied = self.roberta.embeddings.word_embeddings.weight if cfg.tie_word_embeddings else None
        self.lm_head = RobertaLMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps, tied)

    def head(self, hidden):
        return self.lm_head(hidden)


_TASK_CLASSES = {
    "sequence-classification": RobertaForSequenceClassification,
    "token-classification": RobertaForTokenClassification,
    "question-answering": RobertaForQuestionAnswering,
    "masked-lm": RobertaForMaskedLM,
}


def build(cfg: RobertaConfig, task: str = "base", num_labels: int | None = None) -> nn.Module:
    """Module for ``task`` with Hugging Face key names (see the family protocol)."""
    return build_from_classes(
        cfg, task, num_labels, lambda c: RobertaModel(c, add_pooler=True), _TASK_CLASSES, __name__
    )


def architecture(cfg: RobertaConfig, task: str) -> str:
    return (_IBERT_ARCHITECTURES if cfg.model_type == "ibert" else HF_ARCHITECTURES)[task]


# ---------------------------------------------------------------------------------------------
# I-BERT checkpoints

# Persistent buffers of I-BERT's quant modules (HF ``ibert/quant_modules.py``).
_QUANT_BUFFER = re.compile(
    r".*\.(x_min|x_max|act_scaling_factor|weight_integer|weight_scaling_factor|"
    r"fc_scaling_factor|bias_integer|shift)"
)
_QUANT_ACT_INIT = 1e-5  # QuantAct registers x_min=-1e-5, x_max=+1e-5


def _rename_ibert(key: str) -> str:
    return "roberta." + key[len("ibert.") :] if key.startswith("ibert.") else key


def normalize_state_dict(sd: dict, cfg: RobertaConfig) -> dict:
    """``ibert.*`` -> ``roberta.*``; I-BERT quantization buffers removed (they are either derived
    from the float weights or calibration state, see :func:`extract_calibration`)."""
    out = {}
    for key, value in sd.items():
        if _QUANT_BUFFER.fullmatch(key):
            continue
        out[_rename_ibert(key)] = value
    return out


def extract_calibration(sd: dict, cfg: RobertaConfig) -> dict:
    """Calibrated I-BERT state: ``calibration_ranges`` ``{quant_act: (x_min, x_max)}`` and
    ``layernorm_shifts`` ``{int_layernorm: shift}``, module names renamed to ``roberta.*``.

    A QuantAct still at its init range (±1e-5) is uncalibrated and left out; so is a zero shift.
    """
    ranges: dict[str, tuple[float, float]] = {}
    shifts: dict[str, int] = {}
    for key, value in sd.items():
        if key.endswith(".x_min"):
            name = key[: -len(".x_min")]
            hi = sd.get(name + ".x_max")
            if hi is None:
                continue
            lo_f, hi_f = float(value.reshape(-1)[0]), float(hi.reshape(-1)[0])
            initial = math.isclose(lo_f, -_QUANT_ACT_INIT, rel_tol=1e-3) and math.isclose(
                hi_f, _QUANT_ACT_INIT, rel_tol=1e-3
            )
            if not initial:
                ranges[_rename_ibert(name)] = (lo_f, hi_f)
        elif key.endswith(".shift") and "LayerNorm" in key:
            shift = round(float(value.reshape(-1)[0]))
            if shift != 0:
                shifts[_rename_ibert(key[: -len(".shift")])] = shift
    return {"calibration_ranges": ranges, "layernorm_shifts": shifts}


def to_hf_state_dict(sd: dict, model: nn.Module) -> dict:
    """Inverse of :func:`normalize_state_dict` for saving: an ``ibert`` model is written under
    ``ibert.*`` with its calibrated QuantAct ranges and IntLayerNorm shifts restored."""
    if model.config.model_type != "ibert":
        return sd
    out = {
        ("ibert." + k[len("roberta.") :] if k.startswith("roberta.") else k): v
        for k, v in sd.items()
    }
    base = "ibert." if any(k.startswith("ibert.") for k in out) else ""

    def key(name: str) -> str:
        return base + name[len("roberta.") :] if name.startswith("roberta.") else base + name

    for name, (lo, hi) in getattr(model, "calibration_ranges", {}).items():
        out[key(name) + ".x_min"] = torch.tensor([lo], dtype=torch.float32)
        out[key(name) + ".x_max"] = torch.tensor([hi], dtype=torch.float32)
    for name, shift in getattr(model, "layernorm_shifts", {}).items():
        out[key(name) + ".shift"] = torch.tensor([float(shift)], dtype=torch.float32)
    return out

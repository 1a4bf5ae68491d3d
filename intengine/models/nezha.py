"""NEZHA (model type ``nezha``), FP32 reference.

Maths (see /work/shared/research/encoders.md §4)::

    x     = LN(word[ids] + type[tt])                    # no absolute position embedding
    δ_ij  = clip(j - i, -m, m) + m                      # m = max_relative_position
    T[p]  = [sin(p·w_0), cos(p·w_0), sin(p·w_1), ...]   # w_k = 10000^(-2k/d), p in [0, 2m]
    S_ij  = (q_i·k_j + q_i·T[δ_ij]) / √d + M_j          # M: additive key mask
    ctx_i = Σ_j P_ij v_j + Σ_j P_ij T[δ_ij],   P = softmax(S)

T is a fixed function of the head size (not learned), shared by keys and values, all heads and
all layers.  The sinusoid is of the shifted index p, not of the signed distance.  Here the
relative terms are computed as ``gather(q·Tᵀ, δ)`` and ``scatter_add(P, δ)·T`` ([L, 2m+1]
instead of an [L, L, d] tensor); the result equals Hugging Face's one-hot formulation.

Hugging Face 4.2x checkpoints carry a dead ``positions_encoding`` buffer ([512, 512, d] floats)
per layer; :func:`normalize_state_dict` drops it.  The original Huawei checkpoints (``bert.*``,
``gamma``/``beta``) are renamed too.
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
from .heads import AddNorm, BertOnlyMLMHead, Intermediate, Pooler, activation, additive_mask

MODEL_TYPES = ("nezha",)
BASE_PREFIX = "nezha"
TOKENIZER_KIND = "wordpiece"

HF_ARCHITECTURES = {
    "base": "NezhaModel",
    "sequence-classification": "NezhaForSequenceClassification",
    "token-classification": "NezhaForTokenClassification",
    "question-answering": "NezhaForQuestionAnswering",
    "masked-lm": "NezhaForMaskedLM",
}

IGNORED_KEYS = (
    r"(nezha\.)?encoder\.layer\.\d+\.attention\.self\.relative_positions_encoding\..*",
    r"(nezha\.)?embeddings\.(position_ids|token_type_ids)",
    r"nezha\.pooler\..*",  # pre-training checkpoints loaded for MLM / token / QA
    r"cls\.seq_relationship\..*",  # NSP head of pre-training checkpoints
)

_NEZHA_CN_BASE = {
    "model_type": "nezha",
    "vocab_size": 21128,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "max_relative_position": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
}

PRESETS: dict[str, dict] = {
    "nezha-cn-base": dict(_NEZHA_CN_BASE),
    "nezha-cn-large": dict(
        _NEZHA_CN_BASE,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ),
    "nezha-cn-tiny": dict(
        _NEZHA_CN_BASE,
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        max_relative_position=16,
    ),
}


@dataclass(frozen=True)
class NezhaConfig:
    """Fields read from ``config.json``; defaults are the ``NezhaConfig`` class defaults."""

    model_type: str = "nezha"
    vocab_size: int = 21128
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    max_relative_position: int = 64
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 3
    tie_word_embeddings: bool = True
    num_labels: int = 2
    id2label: dict | None = None

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        # Hugging Face slices a [max_position_embeddings]^2 table; keep the same limit.
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, d: dict, source: str) -> NezhaConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: config must be a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type", "nezha")
        if model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type' is {model_type!r}; this family handles {MODEL_TYPES}"
            )
        if d.get("use_relative_position", True) is not True:
            raise ConfigError(
                f"{source}: field 'use_relative_position' is {d['use_relative_position']!r}; "
                "NEZHA without relative positions is not supported"
            )

        def get(key, default, kind, positive=False, optional=False):
            return cfg_value(d, key, default, kind, source, positive=positive, optional=optional)

        hidden_act = get("hidden_act", "gelu", str)
        activation(hidden_act, source)
        num_labels, id2label = read_labels(d, source)
        cfg = cls(
            vocab_size=get("vocab_size", 21128, int, positive=True),
            hidden_size=get("hidden_size", 768, int, positive=True),
            num_hidden_layers=get("num_hidden_layers", 12, int, positive=True),
            num_attention_heads=get("num_attention_heads", 12, int, positive=True),
            intermediate_size=get("intermediate_size", 3072, int, positive=True),
            hidden_act=hidden_act,
            max_position_embeddings=get("max_position_embeddings", 512, int, positive=True),
            max_relative_position=get("max_relative_position", 64, int, positive=True),
            type_vocab_size=get("type_vocab_size", 2, int, positive=True),
            layer_norm_eps=get("layer_norm_eps", 1e-12, float, positive=True),
            pad_token_id=get("pad_token_id", 0, int),
            bos_token_id=get("bos_token_id", 2, int, optional=True),
            eos_token_id=get("eos_token_id", 3, int, optional=True),
            tie_word_embeddings=get("tie_word_embeddings", True, bool),
            num_labels=num_labels,
            id2label=id2label,
        )
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(
                f"{source}: field 'hidden_size' ({cfg.hidden_size}) is not a multiple of "
                f"'num_attention_heads' ({cfg.num_attention_heads})"
            )
        if cfg.head_size % 2:
            raise ConfigError(
                f"{source}: head size hidden_size/num_attention_heads = {cfg.head_size} must be "
                "even for the sinusoidal relative table"
            )
        if not 0 <= cfg.pad_token_id < cfg.vocab_size:
            raise ConfigError(
                f"{source}: field 'pad_token_id' {cfg.pad_token_id} is outside the vocabulary"
            )
        return cfg

    def to_hf(self) -> dict:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("num_labels", "id2label")
        }
        labels = self.id2label or {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["id2label"] = dict(labels)
        d["label2id"] = {v: int(k) for k, v in labels.items()}
        return d


Config = NezhaConfig


def relative_table(max_relative_position: int, depth: int) -> torch.Tensor:
    """``T[p] = [sin(p·w_0), cos(p·w_0), ...]`` for ``p = 0 .. 2m``; ``[2m+1, depth]`` float32."""
    position = torch.arange(2 * max_relative_position + 1, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, depth, 2, dtype=torch.float32) * (-math.log(10000.0) / depth))
    table = torch.zeros(2 * max_relative_position + 1, depth)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


def relative_index(length: int, max_relative_position: int) -> torch.Tensor:
    """``δ[i, j] = clip(j - i, -m, m) + m``, int64 ``[length, length]``."""
    pos = torch.arange(length)
    rel = pos[None, :] - pos[:, None]
    return rel.clamp(-max_relative_position, max_relative_position) + max_relative_position


class NezhaEmbeddings(nn.Module):
    def __init__(self, cfg: NezhaConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        return self.LayerNorm(
            self.word_embeddings(ids) + self.token_type_embeddings(token_type_ids)
        )


class SelfAttention(nn.Module):
    def __init__(self, cfg: NezhaConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.head_size = cfg.head_size
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_size).transpose(1, 2)  # [B, h, T, d]

    def forward(
        self, x: torch.Tensor, mask_add: torch.Tensor, table: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        b, h, t, _ = q.shape
        idx = index.expand(b, h, t, t)
        rel_scores = torch.gather(q @ table.T, -1, idx)  # q_i · T[δ_ij]
        scores = (q @ k.transpose(-1, -2) + rel_scores) / math.sqrt(self.head_size) + mask_add
        probs = torch.softmax(scores, dim=-1)
        # Σ_j P_ij T[δ_ij] = (Σ_{j: δ_ij = p} P_ij) · T[p]
        buckets = torch.zeros(b, h, t, table.shape[0], dtype=probs.dtype, device=probs.device)
        ctx = probs @ v + buckets.scatter_add_(-1, idx, probs) @ table
        return ctx.transpose(1, 2).reshape(b, t, h * self.head_size)


class Attention(nn.Module):
    def __init__(self, cfg: NezhaConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AddNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, mask_add, table, index):
        return self.output(self.self(x, mask_add, table, index), x)


class Layer(nn.Module):
    def __init__(self, cfg: NezhaConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(
            cfg.hidden_size, cfg.intermediate_size, activation(cfg.hidden_act)
        )
        self.output = AddNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, mask_add, table, index):
        a = self.attention(x, mask_add, table, index)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: NezhaConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x, mask_add, table, index):
        for layer in self.layer:
            x = layer(x, mask_add, table, index)
        return x


class NezhaModel(nn.Module):
    """Encoder body; keys ``embeddings.*``, ``encoder.*`` and (base, seq-cls) ``pooler.*``."""

    def __init__(self, cfg: NezhaConfig, add_pooler: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = NezhaEmbeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = Pooler(cfg.hidden_size) if add_pooler else None
        # Not learned and not saved: the sinusoid table is a function of the config.
        self.register_buffer(
            "relative_table",
            relative_table(cfg.max_relative_position, cfg.head_size),
            persistent=False,
        )

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
        x = self.embeddings(ids, types)
        index = relative_index(ids.shape[1], self.config.max_relative_position).to(ids.device)
        return self.encoder(x, additive_mask(mask, x.dtype), self.relative_table, index)

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
    uses_pooler = False

    def __init__(self, cfg: NezhaConfig):
        super().__init__()
        self.config = cfg
        self.nezha = NezhaModel(cfg, add_pooler=self.uses_pooler)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        ids, mask, types = self.nezha.check(input_ids, attention_mask, token_type_ids)
        return self.head(self.nezha.encode(ids, mask, types))


class NezhaForSequenceClassification(_TaskModel):
    """``classifier(pooler(h))``: NEZHA classifies the pooled (tanh) first token."""

    uses_pooler = True

    def __init__(self, cfg: NezhaConfig, num_labels: int):
        super().__init__(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    def head(self, hidden):
        return self.classifier(self.nezha.pooler(hidden))


class NezhaForTokenClassification(_TaskModel):
    def __init__(self, cfg: NezhaConfig, num_labels: int):
        super().__init__(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    def head(self, hidden):
        return self.classifier(hidden)


class NezhaForQuestionAnswering(_TaskModel):
    def __init__(self, cfg: NezhaConfig, num_labels: int = 2):
        super().__init__(cfg)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)

    def head(self, hidden):
        return self.qa_outputs(hidden)  # [..., 0] start, [..., 1] end


class NezhaForMaskedLM(_TaskModel):
    def __init__(self, cfg: NezhaConfig, num_labels: int = 0):
        super().__init__(cfg)
        tied = self.nezha.embeddings.word_embeddings.weight if cfg.tie_word_embeddings else None
        self.cls = BertOnlyMLMHead(
            cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps, activation(cfg.hidden_act), tied
        )

    def head(self, hidden):
        return self.cls(hidden)


_TASK_CLASSES = {
    "sequence-classification": NezhaForSequenceClassification,
    "token-classification": NezhaForTokenClassification,
    "question-answering": NezhaForQuestionAnswering,
    "masked-lm": NezhaForMaskedLM,
}


def build(cfg: NezhaConfig, task: str = "base", num_labels: int | None = None) -> nn.Module:
    """Module for ``task`` with Hugging Face key names (see the family protocol)."""
    return build_from_classes(
        cfg, task, num_labels, lambda c: NezhaModel(c, add_pooler=True), _TASK_CLASSES, __name__
    )


_DEAD_BUFFER = re.compile(r".*\.relative_positions_encoding\.positions_encoding")


def normalize_state_dict(sd: dict, cfg: NezhaConfig) -> dict:
    """Drop dead ``positions_encoding`` buffers; rename Huawei's ``bert.*``/``gamma``/``beta``."""
    huawei = not any(k.startswith("nezha.") for k in sd) and any(k.startswith("bert.") for k in sd)
    out = {}
    for key, value in sd.items():
        if _DEAD_BUFFER.fullmatch(key):
            continue
        if huawei:
            if key.startswith("bert."):
                key = "nezha." + key[len("bert.") :]
            if key.endswith(".gamma"):
                key = key[: -len(".gamma")] + ".weight"
            elif key.endswith(".beta"):
                key = key[: -len(".beta")] + ".bias"
        out[key] = value
    return out

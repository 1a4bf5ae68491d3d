"""FP32 reference DeBERTa (v1), read from Hugging Face checkpoint folders.

Family protocol (see ``intengine.models``): ``MODEL_TYPES``, ``DebertaConfig``
(``from_hf`` / ``to_hf``), ``build(cfg, task, num_labels)``, ``PRESETS`` and
``TOKENIZER_KIND``.  ``state_dict()`` keys are exactly those of the matching
transformers class (``DebertaModel``, ``DebertaFor*``), so weights load with
``load_state_dict``.

The building blocks that DeBERTa-v2/v3 shares with v1 (embeddings, FFN block,
context pooler, task heads, input checks, config readers) live here and are
imported by :mod:`intengine.models.deberta_v2`.

Maths (see the research notes):

* embeddings: ``LN(word[ids] (+ pos[arange]) (+ type[tt]) (-> embed_proj)) * mask``
* attention score, for valid tokens i, j::

      S_ij = (q_i.k_j + q_i.Kr[d_ij] + k_j.Qr[d_ij]) / sqrt(d * scale_factor)

  with ``d_ij = clamp(i - j + span, 0, 2 span - 1)`` into the slice of the
  relative table around its middle, ``Kr = pos_proj(R)``, ``Qr = pos_q_proj(R)``
  and ``scale_factor = 1 + len(pos_att_type)`` (v1 counts every listed type).
* XSoftmax: the 2-D mask is the outer product ``m_i m_j``; masked scores are
  set to the dtype minimum, and rows of padded queries come out all zero.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import check_inputs as _shared_check_inputs

__all__ = [
    "BASE_PREFIX",
    "HF_ARCHITECTURES",
    "IGNORED_KEYS",
    "MODEL_TYPES",
    "PRESETS",
    "TASKS",
    "TOKENIZER_KIND",
    "Config",
    "DebertaConfig",
    "build",
    "normalize_state_dict",
]

MODEL_TYPES: tuple[str, ...] = ("deberta",)
TOKENIZER_KIND = "bpe"
TASKS: tuple[str, ...] = (
    "base",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "masked-lm",
)

BASE_PREFIX = "deberta"
HF_ARCHITECTURES: dict[str, str] = {
    "base": "DebertaModel",
    "sequence-classification": "DebertaForSequenceClassification",
    "token-classification": "DebertaForTokenClassification",
    "question-answering": "DebertaForQuestionAnswering",
    "masked-lm": "DebertaForMaskedLM",
}
# Keys that transformers ignores when they are unexpected (``re.fullmatch``, after the
# ``deberta.`` prefix is fixed): MS checkpoints keep an absolute position table even when
# ``position_biased_input`` is false, and v2/v3 pre-training checkpoints carry the RTD head
# ``mask_predictions.*``.
IGNORED_KEYS: tuple[str, ...] = (
    r"(deberta\.)?embeddings\.position_embeddings\.weight",
    r"mask_predictions\..*",
)
# the same, for the load_state_dict pre-hook (re.search, as transformers does)
IGNORE_UNEXPECTED: tuple[str, ...] = (r"position_embeddings",)

# ---------------------------------------------------------------------------
# Activations (names as in transformers' ACT2FN)
# ---------------------------------------------------------------------------


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact erf GELU
    "gelu_python": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_fast,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "relu6": F.relu6,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "linear": lambda x: x,
}


class Activation(nn.Module):
    """A parameter-free activation chosen by its transformers name."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


# ---------------------------------------------------------------------------
# Config reading helpers
# ---------------------------------------------------------------------------

_MISSING = object()


def _field_error(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: field {key!r} {msg}")


def read_int(d: dict, key: str, default: Any, source: str, *, minimum: int | None = None) -> int:
    v = d.get(key, default)
    if v is _MISSING:
        raise _field_error(source, key, "is required")
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not v.is_integer())
    ):
        raise _field_error(source, key, f"must be an integer, got {v!r}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise _field_error(source, key, f"must be >= {minimum}, got {v}")
    return v


def read_float(d: dict, key: str, default: Any, source: str, *, positive: bool = False) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _field_error(source, key, f"must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or (positive and v <= 0):
        raise _field_error(
            source, key, f"must be a {'positive ' if positive else ''}finite number, got {v!r}"
        )
    return v


def read_bool(d: dict, key: str, default: bool, source: str) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        # config.json written by hand sometimes holds 0/1
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise _field_error(source, key, f"must be true or false, got {v!r}")
    return v


def read_act(d: dict, key: str, default: str, source: str) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or v not in ACTIVATIONS:
        raise _field_error(source, key, f"must be one of {sorted(ACTIVATIONS)}, got {v!r}")
    return v


def read_pos_att_type(d: dict, source: str) -> tuple[str, ...]:
    """``pos_att_type`` as transformers keeps it: a string is lower-cased and split on ``|``."""
    v = d.get("pos_att_type", None)
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(x.strip() for x in v.lower().split("|"))
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise _field_error(
        source, "pos_att_type", f"must be a string like 'c2p|p2c' or a list of strings, got {v!r}"
    )


def check_model_type(d: dict, source: str, model_types: tuple[str, ...]) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: config must be a JSON object, got {type(d).__name__}")
    mt = d.get("model_type")
    if mt is not None and mt not in model_types:
        raise _field_error(source, "model_type", f"must be one of {list(model_types)}, got {mt!r}")


def read_common(d: dict, source: str, defaults: dict) -> dict:
    """Fields shared by DeBERTa v1 and v2/v3; ``defaults`` are the HF config-class defaults."""
    hidden = read_int(d, "hidden_size", defaults["hidden_size"], source, minimum=1)
    heads = read_int(d, "num_attention_heads", defaults["num_attention_heads"], source, minimum=1)
    if hidden % heads != 0:
        raise ConfigError(
            f"{source}: field 'hidden_size' ({hidden}) must be a multiple of "
            f"'num_attention_heads' ({heads})"
        )
    out = dict(
        vocab_size=read_int(d, "vocab_size", defaults["vocab_size"], source, minimum=1),
        hidden_size=hidden,
        num_hidden_layers=read_int(
            d, "num_hidden_layers", defaults["num_hidden_layers"], source, minimum=0
        ),
        num_attention_heads=heads,
        intermediate_size=read_int(
            d, "intermediate_size", defaults["intermediate_size"], source, minimum=1
        ),
        hidden_act=read_act(d, "hidden_act", "gelu", source),
        max_position_embeddings=read_int(d, "max_position_embeddings", 512, source, minimum=1),
        type_vocab_size=read_int(d, "type_vocab_size", 0, source, minimum=0),
        layer_norm_eps=read_float(d, "layer_norm_eps", 1e-7, source, positive=True),
        relative_attention=read_bool(d, "relative_attention", False, source),
        max_relative_positions=read_int(d, "max_relative_positions", -1, source),
        pad_token_id=read_int(d, "pad_token_id", 0, source)
        if d.get("pad_token_id", 0) is not None
        else None,
        position_biased_input=read_bool(d, "position_biased_input", True, source),
        pos_att_type=read_pos_att_type(d, source),
        pooler_hidden_act=read_act(d, "pooler_hidden_act", "gelu", source),
        legacy=read_bool(d, "legacy", True, source),
        tie_word_embeddings=read_bool(d, "tie_word_embeddings", True, source),
    )
    emb = d.get("embedding_size", None)
    out["embedding_size"] = (
        hidden if emb is None else read_int(d, "embedding_size", None, source, minimum=1)
    )
    pooler = d.get("pooler_hidden_size", None)
    pooler = (
        hidden if pooler is None else read_int(d, "pooler_hidden_size", None, source, minimum=1)
    )
    if pooler != hidden:
        raise ConfigError(
            f"{source}: field 'pooler_hidden_size' ({pooler}) must equal 'hidden_size' ({hidden}); "
            "the context pooler and classifier are built on the hidden size"
        )
    id2label = d.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict) or not id2label:
            raise _field_error(source, "id2label", "must be a non-empty object")
        out["num_labels"] = len(id2label)
        out["id2label"] = {str(k): v for k, v in id2label.items()}
    else:
        out["num_labels"] = read_int(d, "num_labels", 2, source, minimum=1)
        out["id2label"] = None
    pad = out["pad_token_id"]
    if pad is not None and not 0 <= pad < out["vocab_size"]:
        raise _field_error(
            source, "pad_token_id", f"must lie in [0, vocab_size={out['vocab_size']}), got {pad}"
        )
    return out


def common_to_hf(cfg: Any) -> dict:
    labels = cfg.id2label or {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "relative_attention": cfg.relative_attention,
        "max_relative_positions": cfg.max_relative_positions,
        "pad_token_id": cfg.pad_token_id,
        "position_biased_input": cfg.position_biased_input,
        "pos_att_type": list(cfg.pos_att_type) if cfg.pos_att_type else None,
        "pooler_hidden_size": cfg.hidden_size,
        "pooler_hidden_act": cfg.pooler_hidden_act,
        "pooler_dropout": 0,
        "legacy": cfg.legacy,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "embedding_size": cfg.embedding_size,
        "id2label": dict(labels),
        "label2id": {v: int(k) for k, v in labels.items()},
    }


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

_V1_DEFAULTS = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
)


@dataclass(frozen=True)
class DebertaConfig:
    """DeBERTa v1 configuration (the fields of ``config.json`` the forward pass uses)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    pad_token_id: int | None = 0
    position_biased_input: bool = True
    pos_att_type: tuple[str, ...] = ()
    pooler_hidden_act: str = "gelu"
    legacy: bool = True
    tie_word_embeddings: bool = True
    embedding_size: int = 768
    num_labels: int = 2
    id2label: dict | None = None
    talking_head: bool = False

    model_type = "deberta"

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> DebertaConfig:
        check_model_type(d, source, MODEL_TYPES)
        kw = read_common(d, source, _V1_DEFAULTS)
        kw["talking_head"] = read_bool(d, "talking_head", False, source)
        return cls(**kw)

    def to_hf(self) -> dict:
        out = {"model_type": self.model_type}
        out.update(common_to_hf(self))
        out["talking_head"] = self.talking_head
        return out

    # -- derived values --------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rel_span(self) -> int:
        """Half the size of the relative table (``max_relative_positions``, or the fallback)."""
        m = self.max_relative_positions
        return m if m >= 1 else self.max_position_embeddings

    @property
    def scale_factor(self) -> int:
        return 1 + len(self.pos_att_type)

    def replace(self, **changes: Any) -> DebertaConfig:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return type(self)(**d)


Config = DebertaConfig


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def check_inputs(
    cfg: Any,
    input_ids: Any,
    attention_mask: Any,
    token_type_ids: Any,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate inputs with the shared :func:`intengine.models.check_inputs`.

    Returns ``(ids long [B,T], mask bool [B,T], type ids long or None)`` on ``device``.
    Relative positions are clamped/bucketed, so without absolute position embeddings
    any length works (as in transformers).
    """
    max_length = cfg.max_position_embeddings if cfg.position_biased_input else sys.maxsize
    ids, mask, tt = _shared_check_inputs(
        input_ids,
        attention_mask,
        token_type_ids,
        vocab_size=cfg.vocab_size,
        max_length=max_length,
        type_vocab_size=cfg.type_vocab_size,
    )
    return ids.to(device), mask.to(device), None if tt is None else tt.to(device)


# ---------------------------------------------------------------------------
# Shared blocks
# ---------------------------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (eps inside the square root, as DebertaLayerNorm); keys weight/bias."""


class Embeddings(nn.Module):
    """``LN(word (+pos) (+type) (-> embed_proj)) * mask``; keys as ``DebertaEmbeddings``."""

    def __init__(self, cfg: Any):
        super().__init__()
        E, H = cfg.embedding_size, cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, E, padding_idx=cfg.pad_token_id)
        self.position_embeddings = (
            nn.Embedding(cfg.max_position_embeddings, E) if cfg.position_biased_input else None
        )
        self.token_type_embeddings = (
            nn.Embedding(cfg.type_vocab_size, E) if cfg.type_vocab_size > 0 else None
        )
        self.embed_proj = nn.Linear(E, H, bias=False) if E != H else None
        self.LayerNorm = LayerNorm(H, eps=cfg.layer_norm_eps)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.word_embeddings(ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings.weight[: ids.shape[1]].unsqueeze(0)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        x = self.LayerNorm(x)
        return x * mask.unsqueeze(-1).to(x.dtype)


class SelfOutput(nn.Module):
    """``LN(dense(ctx) + residual)`` (``attention.output``)."""

    def __init__(self, cfg: Any, in_features: int | None = None):
        super().__init__()
        self.dense = nn.Linear(in_features or cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(ctx) + residual)


class Attention(nn.Module):
    """``attention.self`` (disentangled) + ``attention.output``."""

    def __init__(self, cfg: Any, self_attention: nn.Module):
        super().__init__()
        self.self = self_attention
        self.output = SelfOutput(cfg)

    def forward(self, x: torch.Tensor, mask2: torch.Tensor, rel: Any) -> torch.Tensor:
        return self.output(self.self(x, mask2, rel), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = Activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Output(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Layer(nn.Module):
    """Post-LN transformer layer with a disentangled self-attention."""

    def __init__(self, cfg: Any, self_attention: nn.Module):
        super().__init__()
        self.attention = Attention(cfg, self_attention)
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)

    def forward(self, x: torch.Tensor, mask2: torch.Tensor, rel: Any) -> torch.Tensor:
        """``rel`` is whatever the encoder hands its attentions (v1: the relative table)."""
        a = self.attention(x, mask2, rel)
        return self.output(self.intermediate(a), a)


def pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[B,T]`` bool -> ``[B,1,T,T]`` bool with ``m_i & m_j`` (padded query rows fully masked)."""
    return mask[:, None, :, None] & mask[:, None, None, :]


def xsoftmax(scores: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor:
    """Masked softmax over the last axis; fully masked rows come out all zero."""
    scores = scores.masked_fill(~mask2, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1).masked_fill(~mask2, 0.0)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., T, heads*d]`` -> ``[..., heads, T, d]``."""
    *lead, T, _ = x.shape
    return x.reshape(*lead, T, heads, -1).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, T, d]`` -> ``[B, T, heads*d]``."""
    B, h, T, d = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d)


# ---------------------------------------------------------------------------
# DeBERTa v1 attention and encoder
# ---------------------------------------------------------------------------


class DisentangledSelfAttention(nn.Module):
    """DeBERTa v1 self-attention: per-head interleaved ``in_proj`` (q_h; k_h; v_h rows),
    ``q_bias``/``v_bias`` (no key bias), c2p via ``pos_proj``, p2c via ``pos_q_proj``,
    optional talking heads."""

    def __init__(self, cfg: DebertaConfig):
        super().__init__()
        H, nh = cfg.hidden_size, cfg.num_attention_heads
        self.num_heads = nh
        self.head_size = cfg.head_size
        self.pos_att_type = tuple(cfg.pos_att_type)
        self.scale_factor = cfg.scale_factor
        self.relative_attention = cfg.relative_attention
        self.max_relative_positions = cfg.rel_span
        self.in_proj = nn.Linear(H, 3 * H, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(H))
        self.v_bias = nn.Parameter(torch.zeros(H))
        if cfg.talking_head:
            self.head_logits_proj = nn.Linear(nh, nh, bias=False)
            self.head_weights_proj = nn.Linear(nh, nh, bias=False)
        else:
            self.head_logits_proj = None
            self.head_weights_proj = None
        self.c2p = self.relative_attention and "c2p" in self.pos_att_type
        self.p2c = self.relative_attention and "p2c" in self.pos_att_type
        if self.c2p:
            self.pos_proj = nn.Linear(H, H, bias=False)
        if self.p2c:
            self.pos_q_proj = nn.Linear(H, H)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query (with q_bias), key, value, each ``[B, heads, T, d]``; un-scaled."""
        B, T, _ = x.shape
        nh, d = self.num_heads, self.head_size
        qkv = self.in_proj(x).reshape(B, T, nh, 3 * d).transpose(1, 2)
        q, k, v = qkv.split(d, dim=-1)
        q = q + self.q_bias.reshape(nh, 1, d)
        v = v + self.v_bias.reshape(nh, 1, d)
        return q, k, v

    def rel_span(self, T: int) -> int:
        return min(T, self.max_relative_positions)

    def rel_index(self, T: int, device: torch.device) -> torch.Tensor:
        """``[T, T]`` index ``clamp(i - j + span, 0, 2 span - 1)`` into the sliced table."""
        span = self.rel_span(T)
        pos = torch.arange(T, device=device)
        return torch.clamp(pos[:, None] - pos[None, :] + span, 0, 2 * span - 1)

    def rel_tables(
        self, rel: torch.Tensor, T: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-head ``Kr`` (c2p) and ``Qr`` (p2c, divided by the score scale), ``[heads, 2S, d]``.

        Both depend only on the weights and ``T``.
        """
        span = self.rel_span(T)
        m = self.max_relative_positions
        r = rel[m - span : m + span]
        scale = math.sqrt(self.head_size * self.scale_factor)
        kr = split_heads(self.pos_proj(r), self.num_heads) if self.c2p else None
        qr = split_heads(self.pos_q_proj(r), self.num_heads) / scale if self.p2c else None
        return kr, qr

    def scores(self, q: torch.Tensor, k: torch.Tensor, rel: torch.Tensor | None) -> torch.Tensor:
        """Raw attention scores ``[B, heads, T, T]`` (before masking)."""
        T = q.shape[-2]
        scale = math.sqrt(self.head_size * self.scale_factor)
        q = q / scale
        s = q @ k.transpose(-1, -2)
        if rel is not None and (self.c2p or self.p2c):
            kr, qr = self.rel_tables(rel, T)
            idx = self.rel_index(T, q.device)
            shape = (q.shape[0], self.num_heads, T, T)
            if kr is not None:
                # c2p[i, j] = q_i . Kr[clamp(i - j + span)]
                s = s + torch.gather(q @ kr.transpose(-1, -2), -1, idx.expand(shape))
            if qr is not None:
                # p2c[i, j] = k_j . Qr[clamp(i - j + span)]: gather along key rows with the
                # transposed index, then transpose back
                g = torch.gather(k @ qr.transpose(-1, -2), -1, idx.t().expand(shape))
                s = s + g.transpose(-1, -2)
        return s

    def forward(
        self, x: torch.Tensor, mask2: torch.Tensor, rel: torch.Tensor | None
    ) -> torch.Tensor:
        q, k, v = self.qkv(x)
        s = self.scores(q, k, rel)
        if self.head_logits_proj is not None:
            s = self.head_logits_proj(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        p = xsoftmax(s, mask2)
        if self.head_weights_proj is not None:
            p = self.head_weights_proj(p.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return merge_heads(p @ v)


class Encoder(nn.Module):
    """Layers + the relative position table (``encoder.rel_embeddings``)."""

    def __init__(self, cfg: DebertaConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            [Layer(cfg, DisentangledSelfAttention(cfg)) for _ in range(cfg.num_hidden_layers)]
        )
        self.relative_attention = cfg.relative_attention
        if cfg.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * cfg.rel_span, cfg.hidden_size)

    def rel_table(self) -> torch.Tensor | None:
        return self.rel_embeddings.weight if self.relative_attention else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask2 = pair_mask(mask)
        rel = self.rel_table()
        for layer in self.layer:
            x = layer(x, mask2, rel)
        return x


# ---------------------------------------------------------------------------
# Backbone and heads (shared with v2)
# ---------------------------------------------------------------------------


class Backbone(nn.Module):
    """``DebertaModel``/``DebertaV2Model``: keys ``embeddings.*`` and ``encoder.*``.

    ``forward`` returns the last hidden state ``[B, T, H]``; rows of padded
    tokens are not meaningful (compare valid tokens only).
    """

    def __init__(self, cfg: Any, encoder: nn.Module):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = encoder

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        device = self.embeddings.word_embeddings.weight.device
        ids, mask, tt = check_inputs(self.config, input_ids, attention_mask, token_type_ids, device)
        x = self.embeddings(ids, mask, tt)
        return self.encoder(x, mask)


class ContextPooler(nn.Module):
    """``act(dense(h[:, 0]))`` with ``act = pooler_hidden_act`` (gelu by default)."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = Activation(cfg.pooler_hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden[:, 0]))


class _TaskModel(nn.Module):
    """A backbone under ``deberta.`` plus a head; forward returns the head's main tensor."""

    task = ""
    ignore_unexpected: tuple[str, ...] = IGNORE_UNEXPECTED

    def __init__(self, cfg: Any, backbone: nn.Module):
        super().__init__()
        self.config = cfg
        self.deberta = backbone
        self.register_load_state_dict_pre_hook(_load_pre_hook)

    # filled by subclasses: alias key -> source key, for weights HF ties (and omits when saving)
    def tied_weights(self) -> dict[str, str]:
        return {}

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.deberta(input_ids, attention_mask, token_type_ids)


def _load_pre_hook(
    module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
):
    """Fill tied weights that a saved file omits, and drop keys transformers ignores."""
    if getattr(module, "legacy", False):  # hub MLM weights with the MS head (see above)
        _ms_head_to_legacy(state_dict, prefix, module.config.tie_word_embeddings)
    own = module.state_dict(keep_vars=True)
    for alias, src in module.tied_weights().items():
        a, s = prefix + alias, prefix + src
        if s in state_dict:
            state_dict[a] = state_dict[s]
        elif a in state_dict:
            state_dict[s] = state_dict[a]
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix) :]
        if rel not in own and any(re.search(p, rel) for p in module.ignore_unexpected):
            del state_dict[key]


class SequenceClassification(_TaskModel):
    """``DebertaForSequenceClassification``: ContextPooler + ``classifier``, ``[B, labels]``."""

    task = "sequence-classification"

    def __init__(self, cfg: Any, backbone: nn.Module, num_labels: int):
        super().__init__(cfg, backbone)
        self.pooler = ContextPooler(cfg)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    def pooled(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The ContextPooler output ``act(dense(h[:, 0]))``, ``[B, H]``."""
        return self.pooler(self.hidden_states(input_ids, attention_mask, token_type_ids))

    pooled_output = pooled

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.classifier(self.pooled(input_ids, attention_mask, token_type_ids))


class TokenClassification(_TaskModel):
    """``DebertaForTokenClassification``: logits ``[B, T, labels]``."""

    task = "token-classification"

    def __init__(self, cfg: Any, backbone: nn.Module, num_labels: int):
        super().__init__(cfg, backbone)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.classifier(self.hidden_states(input_ids, attention_mask, token_type_ids))


class QuestionAnswering(_TaskModel):
    """``DebertaForQuestionAnswering``: ``[B, T, 2]`` (start, end) logits."""

    task = "question-answering"

    def __init__(self, cfg: Any, backbone: nn.Module, num_labels: int = 2):
        super().__init__(cfg, backbone)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.qa_outputs(self.hidden_states(input_ids, attention_mask, token_type_ids))


class _LegacyTransform(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        self.act = Activation(cfg.hidden_act)
        self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class _LegacyPredictions(nn.Module):
    """``cls.predictions``: ``decoder(LN(act(dense h)))``; ``decoder.bias`` is ``bias``."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.transform = _LegacyTransform(cfg)
        self.decoder = nn.Linear(cfg.embedding_size, cfg.vocab_size, bias=False)
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class _LegacyMLMHead(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.predictions = _LegacyPredictions(cfg)


class _LMHead(nn.Module):
    """``lm_predictions.lm_head``: ``LN(act(dense h)) @ E_word^T + bias`` (MS LM head)."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = Activation(cfg.hidden_act)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x))) @ word_embeddings.t() + self.bias


class _LMPredictions(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.lm_head = _LMHead(cfg)


_MS_HEAD = "lm_predictions.lm_head."
_LEGACY_HEAD = "cls.predictions."


def _ms_head_to_legacy(sd: dict, prefix: str, tie_word_embeddings: bool) -> bool:
    """Rename an MS head ``lm_predictions.lm_head.*`` to ``cls.predictions.*`` in place.

    Only when ``sd`` has the MS head and no legacy head; returns whether it renamed.  The two
    heads compute the same function, ``LN(act(dense h)) @ E_word^T + bias``, when the legacy
    decoder is the word table, so ``dense``/``LayerNorm`` go to ``transform.*``, ``bias`` stays
    ``bias``, and with ``tie_word_embeddings=false`` the untied decoder is filled with a copy of
    the word table.  Other ``lm_head.*`` keys are left alone (reported as unexpected).
    """
    ms, legacy = prefix + _MS_HEAD, prefix + _LEGACY_HEAD
    if not any(k.startswith(ms) for k in sd) or any(k.startswith(legacy) for k in sd):
        return False
    for key in [k for k in sd if k.startswith(ms)]:
        rest = key[len(ms) :]
        if rest == "bias":
            sd[legacy + "bias"] = sd.pop(key)
        elif rest.startswith(("dense.", "LayerNorm.")):
            sd[legacy + "transform." + rest] = sd.pop(key)
    word = prefix + "deberta.embeddings.word_embeddings.weight"
    if not tie_word_embeddings and word in sd:
        sd[legacy + "decoder.weight"] = sd[word]
    return True


def normalize_state_dict(sd: dict, cfg: Any) -> dict:
    """Family quirk for :func:`intengine.checkpoint.load_folder`: hub masked-LM checkpoints.

    ``microsoft/deberta-base`` and ``microsoft/deberta-v3-base`` have no ``legacy`` key in
    ``config.json`` (so ``legacy=True`` and a ``cls.predictions.*`` head, as in transformers)
    but their weights carry the MS head ``lm_predictions.lm_head.*``.  With ``legacy`` true
    such weights are renamed onto the equivalent legacy head (:func:`_ms_head_to_legacy`);
    the module then also saves in a layout transformers loads without re-initialising the head.
    """
    if not getattr(cfg, "legacy", False):
        return sd
    out = dict(sd)
    _ms_head_to_legacy(out, "", cfg.tie_word_embeddings)
    return out


class MaskedLM(_TaskModel):
    """``DebertaForMaskedLM``: logits ``[B, T, vocab]``.

    ``legacy=True`` (the transformers default): BERT-style ``cls.predictions.*``,
    decoder tied to the word embeddings when ``tie_word_embeddings``.
    ``legacy=False``: the MS head ``lm_predictions.lm_head.*``, whose output
    matrix is always the word embedding table.  The enhanced mask decoder of
    the MS pre-training code is not applied (transformers does not apply it).
    """

    task = "masked-lm"
    ignore_unexpected = IGNORE_UNEXPECTED + (r"^mask_predictions\.",)

    def __init__(self, cfg: Any, backbone: nn.Module):
        super().__init__(cfg, backbone)
        self.legacy = cfg.legacy
        if cfg.legacy:
            self.cls = _LegacyMLMHead(cfg)
            if cfg.tie_word_embeddings:
                self.cls.predictions.decoder.weight = backbone.embeddings.word_embeddings.weight
        else:
            if cfg.embedding_size != cfg.hidden_size:
                raise ConfigError(
                    f"legacy=false masked-LM head needs embedding_size == hidden_size "
                    f"(got {cfg.embedding_size} and {cfg.hidden_size})"
                )
            self.lm_predictions = _LMPredictions(cfg)

    def tied_weights(self) -> dict[str, str]:
        if not self.legacy:
            return {}
        out = {"cls.predictions.decoder.bias": "cls.predictions.bias"}
        if self.config.tie_word_embeddings:
            out["cls.predictions.decoder.weight"] = "deberta.embeddings.word_embeddings.weight"
        return out

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        if self.legacy:
            return self.cls.predictions(h)
        return self.lm_predictions.lm_head(h, self.deberta.embeddings.word_embeddings.weight)


class BaseModel(Backbone):
    """``task="base"``: the backbone itself (keys without the ``deberta.`` prefix)."""

    task = "base"
    ignore_unexpected = IGNORE_UNEXPECTED

    def __init__(self, cfg: Any, encoder: nn.Module):
        super().__init__(cfg, encoder)
        self.register_load_state_dict_pre_hook(_load_pre_hook)

    def tied_weights(self) -> dict[str, str]:
        return {}


def build_task(
    cfg: Any,
    task: str,
    num_labels: int | None,
    make_encoder: Callable[[Any], nn.Module],
    family: str,
) -> nn.Module:
    """Build the module for ``task`` around a fresh encoder (shared by v1 and v2).

    ``num_labels=None`` takes the config's label count; another count replaces it in
    ``model.config`` (which always describes the head it carries).  Question answering always
    has 2 outputs (start, end); masked-LM ignores ``num_labels``.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if num_labels is None:
        num_labels = cfg.num_labels
    elif isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ConfigError(f"num_labels must be a positive int, got {num_labels!r}")
    elif num_labels != cfg.num_labels and task in (
        "sequence-classification",
        "token-classification",
    ):
        cfg = dataclasses.replace(cfg, num_labels=num_labels, id2label=None)
    if task == "base":
        model: nn.Module = BaseModel(cfg, make_encoder(cfg))
    else:
        backbone = Backbone(cfg, make_encoder(cfg))
        if task == "masked-lm":
            model = MaskedLM(cfg, backbone)
        elif task == "question-answering":
            model = QuestionAnswering(cfg, backbone)
        elif task == "sequence-classification":
            model = SequenceClassification(cfg, backbone, num_labels)
        else:
            model = TokenClassification(cfg, backbone, num_labels)
    model.task = task
    model.family = family
    model.calibration_ranges = {}
    return model.eval()


def build(cfg: DebertaConfig, task: str = "base", num_labels: int | None = None) -> nn.Module:
    """FP32 DeBERTa v1 module for ``task`` (eval mode, random init; then ``load_state_dict``)."""
    if not isinstance(cfg, DebertaConfig):
        raise ConfigError(f"deberta.build needs a DebertaConfig, got {type(cfg).__name__}")
    return build_task(cfg, task, num_labels, Encoder, __name__)


# ---------------------------------------------------------------------------
# Presets (HF config.json dicts)
# ---------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    # huggingface.co/microsoft/deberta-base config.json
    "deberta-base": {
        "model_type": "deberta",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "relative_attention": True,
        "pos_att_type": "c2p|p2c",
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "type_vocab_size": 0,
        "vocab_size": 50265,
        "pad_token_id": 0,
    },
    # same features, tiny sizes (for tests and smoke runs)
    "deberta-base-tiny": {
        "model_type": "deberta",
        "hidden_act": "gelu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "relative_attention": True,
        "pos_att_type": "c2p|p2c",
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "type_vocab_size": 0,
        "vocab_size": 1000,
        "pad_token_id": 0,
    },
}

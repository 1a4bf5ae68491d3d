"""FP32 reference DeBERTa-v2 / DeBERTa-v3 (``model_type: deberta-v2``).

Same family protocol as :mod:`intengine.models.deberta`, whose embeddings,
FFN block, pooler, heads and input checks this module reuses.  Differences
from v1 (research notes, section 3):

* separate ``query_proj``/``key_proj``/``value_proj`` (all with bias), head size
  ``attention_head_size`` (must satisfy ``heads * head_size == hidden_size``,
  as transformers' output projection is ``hidden x hidden``);
* relative positions ``r = i - j`` optionally mapped through the log-bucket
  function (``position_buckets``, ``max_relative_positions``); the table has
  ``2 * pos_ebd_size`` rows and ``d_ij = clamp(r + span, 0, 2 span - 1)`` with
  ``span = pos_ebd_size`` (not shrunk to the sequence length as in v1);
* ``norm_rel_ebd="layer_norm"``: ``encoder.LayerNorm`` on the relative table;
* ``share_att_key``: ``Kr = key_proj(R)``, ``Qr = query_proj(R)`` (bias included),
  else ``pos_key_proj`` / ``pos_query_proj``;
* ``scale_factor = 1 + [c2p] + [p2c]``;
* the nGiE ``ConvLayer`` (``conv_kernel_size > 0``) after layer 0:
  ``LN(layer0_out + act(maskfill(conv1d(embedding_out)))) * mask``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from . import deberta as _v1
from .deberta import (
    TASKS,
    Activation,
    Layer,
    LayerNorm,
    build_task,
    check_model_type,
    normalize_state_dict,
    common_to_hf,
    merge_heads,
    pair_mask,
    read_act,
    read_bool,
    read_common,
    read_int,
    split_heads,
    xsoftmax,
)

__all__ = [
    "BASE_PREFIX",
    "HF_ARCHITECTURES",
    "IGNORED_KEYS",
    "MODEL_TYPES",
    "PRESETS",
    "TASKS",
    "TOKENIZER_KIND",
    "Config",
    "DebertaV2Config",
    "build",
    "log_bucket_position",
    "normalize_state_dict",
    "relative_positions",
]

MODEL_TYPES: tuple[str, ...] = ("deberta-v2",)
TOKENIZER_KIND = "sentencepiece"
BASE_PREFIX = "deberta"
HF_ARCHITECTURES: dict[str, str] = {
    "base": "DebertaV2Model",
    "sequence-classification": "DebertaV2ForSequenceClassification",
    "token-classification": "DebertaV2ForTokenClassification",
    "question-answering": "DebertaV2ForQuestionAnswering",
    "masked-lm": "DebertaV2ForMaskedLM",
}
IGNORED_KEYS = _v1.IGNORED_KEYS
IGNORE_UNEXPECTED = _v1.IGNORE_UNEXPECTED

_V2_DEFAULTS = dict(
    vocab_size=128100,
    hidden_size=1536,
    num_hidden_layers=24,
    num_attention_heads=24,
    intermediate_size=6144,
)
_NORM_REL_EBD = ("none", "layer_norm")


@dataclass(frozen=True)
class DebertaV2Config:
    """DeBERTa-v2/v3 configuration (the fields of ``config.json`` the forward pass uses)."""

    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
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
    embedding_size: int = 1536
    num_labels: int = 2
    id2label: dict | None = None
    # read by transformers through getattr (undeclared in DebertaV2Config)
    position_buckets: int = -1
    norm_rel_ebd: tuple[str, ...] = ("none",)
    share_att_key: bool = False
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    attention_head_size: int = 64

    model_type = "deberta-v2"

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> DebertaV2Config:
        check_model_type(d, source, MODEL_TYPES)
        kw = read_common(d, source, _V2_DEFAULTS)
        H, nh = kw["hidden_size"], kw["num_attention_heads"]
        kw["position_buckets"] = read_int(d, "position_buckets", -1, source)
        if kw["position_buckets"] == 1:
            raise ConfigError(
                f"{source}: field 'position_buckets' must be -1/0 (off) or >= 2, got 1"
            )
        nre = d.get("norm_rel_ebd", "none")
        if not isinstance(nre, str):
            raise ConfigError(f"{source}: field 'norm_rel_ebd' must be a string, got {nre!r}")
        nre_t = tuple(x.strip() for x in nre.lower().split("|"))
        bad = [x for x in nre_t if x not in _NORM_REL_EBD]
        if bad:
            raise ConfigError(
                f"{source}: field 'norm_rel_ebd' must be 'none' or 'layer_norm', got {nre!r}"
            )
        kw["norm_rel_ebd"] = nre_t
        kw["share_att_key"] = read_bool(d, "share_att_key", False, source)
        k = read_int(d, "conv_kernel_size", 0, source, minimum=0)
        if k > 0 and k % 2 == 0:
            raise ConfigError(
                f"{source}: field 'conv_kernel_size' must be odd (same-length padding), got {k}"
            )
        kw["conv_kernel_size"] = k
        g = read_int(d, "conv_groups", 1, source, minimum=1)
        if H % g != 0:
            raise ConfigError(f"{source}: field 'conv_groups' ({g}) must divide hidden_size ({H})")
        kw["conv_groups"] = g
        kw["conv_act"] = read_act(d, "conv_act", "tanh", source)
        ahs = d.get("attention_head_size", None)
        ahs = (
            H // nh if ahs is None else read_int(d, "attention_head_size", None, source, minimum=1)
        )
        if ahs * nh != H:
            raise ConfigError(
                f"{source}: field 'attention_head_size' ({ahs}) times num_attention_heads ({nh}) "
                f"must equal hidden_size ({H}): the attention output projection is hidden x hidden"
            )
        kw["attention_head_size"] = ahs
        return cls(**kw)

    def to_hf(self) -> dict:
        out = {"model_type": self.model_type}
        out.update(common_to_hf(self))
        out.update(
            position_buckets=self.position_buckets,
            norm_rel_ebd="|".join(self.norm_rel_ebd),
            share_att_key=self.share_att_key,
            conv_kernel_size=self.conv_kernel_size,
            conv_groups=self.conv_groups,
            conv_act=self.conv_act,
            attention_head_size=self.attention_head_size,
        )
        return out

    # -- derived values --------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.attention_head_size

    @property
    def max_relative(self) -> int:
        """``max_relative_positions``, falling back to ``max_position_embeddings`` when < 1."""
        m = self.max_relative_positions
        return m if m >= 1 else self.max_position_embeddings

    @property
    def pos_ebd_size(self) -> int:
        """Attention span = half the number of rows of the relative table."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative

    @property
    def scale_factor(self) -> int:
        return 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)

    def replace(self, **changes: Any) -> DebertaV2Config:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return type(self)(**d)


Config = DebertaV2Config


# ---------------------------------------------------------------------------
# Relative positions
# ---------------------------------------------------------------------------


def log_bucket_position(rel: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Log-bucket map of relative positions (odd-symmetric; identity for ``|r| <= buckets // 2``).

    Evaluated in float32 with the same operations as the reference so that the
    ``ceil`` lands on the same integer.
    """
    mid = bucket_size // 2
    sign = torch.sign(rel)
    near = (rel < mid) & (rel > -mid)
    abs_pos = torch.where(near, torch.full_like(rel, mid - 1), rel.abs())
    denom = torch.log(torch.tensor((max_position - 1) / mid, dtype=torch.float32))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / denom * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, rel.to(log_pos.dtype), log_pos * sign).long()


def relative_positions(
    T: int, position_buckets: int, max_relative: int, device=None
) -> torch.Tensor:
    """``[T, T]`` long: ``i - j``, log-bucketed when ``position_buckets > 0``."""
    pos = torch.arange(T, device=device)
    rel = pos[:, None] - pos[None, :]
    if position_buckets > 0 and max_relative > 0:
        rel = log_bucket_position(rel, position_buckets, max_relative)
    return rel


# ---------------------------------------------------------------------------
# Attention, conv, encoder
# ---------------------------------------------------------------------------


class DisentangledSelfAttention(nn.Module):
    """DeBERTa-v2 self-attention (``attention.self``)."""

    def __init__(self, cfg: DebertaV2Config):
        super().__init__()
        H, nh, d = cfg.hidden_size, cfg.num_attention_heads, cfg.head_size
        self.num_heads = nh
        self.head_size = d
        self.query_proj = nn.Linear(H, nh * d)
        self.key_proj = nn.Linear(H, nh * d)
        self.value_proj = nn.Linear(H, nh * d)
        self.share_att_key = cfg.share_att_key
        self.relative_attention = cfg.relative_attention
        self.scale_factor = cfg.scale_factor
        self.span = cfg.pos_ebd_size
        self.c2p = cfg.relative_attention and "c2p" in cfg.pos_att_type
        self.p2c = cfg.relative_attention and "p2c" in cfg.pos_att_type
        if cfg.relative_attention and not cfg.share_att_key:
            if self.c2p:
                self.pos_key_proj = nn.Linear(H, nh * d)
            if self.p2c:
                self.pos_query_proj = nn.Linear(H, nh * d)

    @property
    def scale(self) -> float:
        return math.sqrt(self.head_size * self.scale_factor)

    def rel_tables(
        self, rel_table: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-head ``Kr`` (c2p) and ``Qr`` (p2c), ``[heads, 2 span, d]``, both divided by the
        score scale.  ``rel_table`` is the (normalised) relative table; input-independent."""
        r = rel_table[: 2 * self.span]
        kr = qr = None
        if self.c2p:
            kp = self.key_proj if self.share_att_key else self.pos_key_proj
            kr = split_heads(kp(r), self.num_heads) / self.scale
        if self.p2c:
            qp = self.query_proj if self.share_att_key else self.pos_query_proj
            qr = split_heads(qp(r), self.num_heads) / self.scale
        return kr, qr

    def scores(self, q: torch.Tensor, k: torch.Tensor, rel: Any) -> torch.Tensor:
        """Raw scores ``[B, heads, T, T]``; ``rel`` = (normalised table, bucketed i-j) or None."""
        s = q @ (k.transpose(-1, -2) / self.scale)
        if rel is not None and (self.c2p or self.p2c):
            table, rpos = rel
            kr, qr = self.rel_tables(table)
            B, nh, T, _ = q.shape
            shape = (B, nh, T, T)
            if kr is not None:
                # c2p[i, j] = q_i . Kr[clamp(r_ij + span)]
                c2p_pos = torch.clamp(rpos + self.span, 0, 2 * self.span - 1)
                s = s + torch.gather(q @ kr.transpose(-1, -2), -1, c2p_pos.expand(shape))
            if qr is not None:
                # p2c[i, j] = k_j . Qr[clamp(-r_ji + span)]
                p2c_pos = torch.clamp(-rpos + self.span, 0, 2 * self.span - 1)
                g = torch.gather(k @ qr.transpose(-1, -2), -1, p2c_pos.expand(shape))
                s = s + g.transpose(-1, -2)
        return s

    def forward(self, x: torch.Tensor, mask2: torch.Tensor, rel: Any) -> torch.Tensor:
        q = split_heads(self.query_proj(x), self.num_heads)
        k = split_heads(self.key_proj(x), self.num_heads)
        v = split_heads(self.value_proj(x), self.num_heads)
        p = xsoftmax(self.scores(q, k, rel), mask2)
        return merge_heads(p @ v)


class ConvLayer(nn.Module):
    """nGiE: ``LN(residual + act(conv1d(x) with padded rows zeroed)) * mask`` (``encoder.conv``)."""

    def __init__(self, cfg: DebertaV2Config):
        super().__init__()
        k = cfg.conv_kernel_size
        H = cfg.hidden_size
        self.conv = nn.Conv1d(H, H, k, padding=(k - 1) // 2, groups=cfg.conv_groups)
        self.act = Activation(cfg.conv_act)
        self.LayerNorm = LayerNorm(H, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.conv(x.transpose(1, 2)).transpose(1, 2)
        m = mask.unsqueeze(-1)
        out = self.act(out.masked_fill(~m, 0.0))
        return self.LayerNorm(residual + out) * m.to(out.dtype)


class Encoder(nn.Module):
    """Layers, relative table (+ its LayerNorm) and the optional conv layer."""

    def __init__(self, cfg: DebertaV2Config):
        super().__init__()
        self.config = cfg
        self.layer = nn.ModuleList(
            [Layer(cfg, DisentangledSelfAttention(cfg)) for _ in range(cfg.num_hidden_layers)]
        )
        self.relative_attention = cfg.relative_attention
        if cfg.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * cfg.pos_ebd_size, cfg.hidden_size)
        self.norm_rel = "layer_norm" in cfg.norm_rel_ebd
        if self.norm_rel:
            self.LayerNorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.conv = ConvLayer(cfg) if cfg.conv_kernel_size > 0 else None

    def rel_table(self) -> torch.Tensor | None:
        """The relative table as the attentions see it (``LN``-ed when ``norm_rel_ebd``)."""
        if not self.relative_attention:
            return None
        r = self.rel_embeddings.weight
        return self.LayerNorm(r) if self.norm_rel else r

    def rel_positions(self, T: int, device=None) -> torch.Tensor:
        cfg = self.config
        return relative_positions(T, cfg.position_buckets, cfg.max_relative, device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask2 = pair_mask(mask)
        table = self.rel_table()
        rel = None if table is None else (table, self.rel_positions(x.shape[1], x.device))
        emb = x
        for i, layer in enumerate(self.layer):
            x = layer(x, mask2, rel)
            if i == 0 and self.conv is not None:
                x = self.conv(emb, x, mask)
        return x


def build(cfg: DebertaV2Config, task: str = "base", num_labels: int | None = None) -> nn.Module:
    """FP32 DeBERTa-v2/v3 module for ``task`` (eval mode, random init; then ``load_state_dict``)."""
    if not isinstance(cfg, DebertaV2Config):
        raise ConfigError(f"deberta_v2.build needs a DebertaV2Config, got {type(cfg).__name__}")
    return build_task(cfg, task, num_labels, Encoder, __name__)


# ---------------------------------------------------------------------------
# Presets (HF config.json dicts)
# ---------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    # huggingface.co/microsoft/deberta-v3-base config.json
    "deberta-v3-base": {
        "model_type": "deberta-v2",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "relative_attention": True,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": "p2c|c2p",
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "type_vocab_size": 0,
        "vocab_size": 128100,
        "pad_token_id": 0,
    },
    # huggingface.co/microsoft/deberta-v2-xlarge config.json
    "deberta-v2-xlarge": {
        "model_type": "deberta-v2",
        "attention_head_size": 64,
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 1536,
        "initializer_range": 0.02,
        "intermediate_size": 6144,
        "max_position_embeddings": 512,
        "relative_attention": True,
        "position_buckets": 256,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": "p2c|c2p",
        "conv_kernel_size": 3,
        "conv_act": "gelu",
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "num_attention_heads": 24,
        "num_hidden_layers": 24,
        "type_vocab_size": 0,
        "vocab_size": 128100,
        "pooler_hidden_size": 1536,
        "pooler_dropout": 0,
        "pooler_hidden_act": "gelu",
        "pad_token_id": 0,
    },
    # tiny variants: same features, small sizes (log buckets active beyond |i-j| > 4)
    "deberta-v3-base-tiny": {
        "model_type": "deberta-v2",
        "hidden_act": "gelu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "relative_attention": True,
        "position_buckets": 8,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": "p2c|c2p",
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "type_vocab_size": 0,
        "vocab_size": 1000,
        "pad_token_id": 0,
    },
    "deberta-v2-xlarge-tiny": {
        "model_type": "deberta-v2",
        "attention_head_size": 16,
        "hidden_act": "gelu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
        "relative_attention": True,
        "position_buckets": 8,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pos_att_type": "p2c|c2p",
        "conv_kernel_size": 3,
        "conv_act": "gelu",
        "layer_norm_eps": 1e-7,
        "max_relative_positions": -1,
        "position_biased_input": False,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "type_vocab_size": 0,
        "vocab_size": 1000,
        "pooler_hidden_act": "gelu",
        "pad_token_id": 0,
    },
}

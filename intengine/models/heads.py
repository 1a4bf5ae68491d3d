"""Pieces shared by the BERT-style families: the post-LN layer blocks and the task heads.

Attribute names match the Hugging Face modules, so the ``state_dict`` keys line up:
``attention.output.{dense,LayerNorm}``, ``intermediate.dense``, ``output.{dense,LayerNorm}``,
``pooler.dense``, ``classifier.{dense,out_proj}``, ``lm_head.{dense,layer_norm,decoder,bias}``
and ``cls.predictions.{transform.dense,transform.LayerNorm,decoder,bias}``.

Dropout is omitted everywhere: these are inference-only references.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "AddNorm",
    "BertLMHead",
    "BertOnlyMLMHead",
    "Intermediate",
    "Pooler",
    "RobertaClassificationHead",
    "RobertaLMHead",
    "activation",
    "additive_mask",
]


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# Hugging Face ``hidden_act`` names -> functions.  "gelu" is the exact erf GELU.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "tanh": torch.tanh,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str, source: str = "config", field: str = "hidden_act"):
    """The activation function called ``name``; ConfigError if intengine does not know it."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{source}: field {field!r} is {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T]`` bool key mask -> ``[B, 1, 1, T]`` additive mask (0 or the dtype's minimum)."""
    neg = torch.finfo(dtype).min
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill(~mask, neg)[:, None, None, :]


class AddNorm(nn.Module):
    """``LayerNorm(x + dense(h))``: HF ``*SelfOutput`` and ``*Output``."""

    def __init__(self, in_features: int, hidden_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class Intermediate(nn.Module):
    """``act(dense(x))``: HF ``*Intermediate``."""

    def __init__(self, hidden_size: int, intermediate_size: int, act):
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Pooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: RoBERTa / NEZHA pooler."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class RobertaClassificationHead(nn.Module):
    """``out_proj(tanh(dense(h[:, 0])))`` (keys ``classifier.{dense,out_proj}``)."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(hidden[:, 0])))


class _TiedDecoder(nn.Module):
    """Output projection whose bias is the head's ``bias`` parameter (both keys exist)."""

    def __init__(self, hidden_size: int, vocab_size: int, bias: nn.Parameter, weight=None):
        super().__init__()
        self.weight = (
            weight if weight is not None else nn.Parameter(torch.empty(vocab_size, hidden_size))
        )
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RobertaLMHead(nn.Module):
    """``decoder(layer_norm(gelu(dense(h))))``; keys ``lm_head.{dense,layer_norm,decoder,bias}``.

    The decoder weight is the word-embedding matrix when ``tied_weight`` is given; its bias is
    ``lm_head.bias`` (Hugging Face saves only ``lm_head.bias``).
    """

    def __init__(self, hidden_size: int, vocab_size: int, eps: float, tied_weight=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = _TiedDecoder(hidden_size, vocab_size, self.bias, tied_weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden))))


class _BertTransform(nn.Module):
    def __init__(self, hidden_size: int, eps: float, act):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMHead(nn.Module):
    """BERT-style ``predictions``: ``decoder(LN(act(dense(h))))``, keys
    ``{bias, transform.dense, transform.LayerNorm, decoder.weight, decoder.bias}``."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float, act, tied_weight=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.transform = _BertTransform(hidden_size, eps, act)
        self.decoder = _TiedDecoder(hidden_size, vocab_size, self.bias, tied_weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


class BertOnlyMLMHead(nn.Module):
    """``cls.predictions.*`` wrapper (HF ``*OnlyMLMHead``)."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float, act, tied_weight=None):
        super().__init__()
        self.predictions = BertLMHead(hidden_size, vocab_size, eps, act, tied_weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)

"""Calibration driver: stream batches through the fp32 interpreter into one observer per value.

::

    g = capture(model)
    qp = calibrate(g, random_batches(model, n=8, batch=4, seq=64), method="percentile")
    qp["layer0.attn.q"].scale, qp["roberta.encoder.layer.0.attention.self.query.weight"].scale

* **Activations**: every float value a node produces gets one observer
  (:func:`intengine.calibration.make_observer`); memory is bounded by the observers, activations
  are never stored.  Only valid tokens are observed: every axis of a value whose symbolic dim is
  ``"T"`` is masked by ``attention_mask`` (so ``[B, T, H]`` keeps the rows of real tokens and
  ``[B, h, T, T]`` scores/probabilities keep the (query, key) pairs of real tokens).
* **Bits** (I-BERT's quantization points, research/ibert.md §1.4): 16 for the embedding sum
  ``emb.sum``, 22 for a residual add that feeds a LayerNorm, 8 otherwise
  (:func:`activation_bits`; ``bits=`` overrides with an int, a dict or a callable).  The softmax
  output is calibrated like any value; lowering may still fix it to u8 at scale 1/256.
* **Weights**: per-output-channel ``max |w|`` (:func:`intengine.calibration.weight_qparams`,
  axis 0) for ``linear``/``conv1d`` weights, per-tensor for embedding tables and the folded
  relative tables read by ``matmul``.  Biases and LayerNorm parameters get no QParams: lowering
  derives their integer form from the activation and weight scales.
* **I-BERT checkpoints**: ``overrides=model.calibration_ranges`` (QuantAct ``(x_min, x_max)``
  from a calibrated HF I-BERT checkpoint) replaces the observed range of the matching values
  (:func:`ibert_ranges`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from . import ir
from .calibration import QParams, make_observer, weight_qparams
from .errors import CalibrationError
from .interp import prepare_inputs, run_fp32

__all__ = [
    "activation_bits",
    "activation_values",
    "calibrate",
    "ibert_ranges",
    "random_batches",
    "text_batches",
    "weight_constants",
]


# ----------------------------------------------------------------------------- what is calibrated


def activation_values(graph: ir.Graph) -> list[str]:
    """Names of the float values produced by nodes (the values that get an observer)."""
    return [o for n in graph.nodes for o in n.outputs if graph.value(o).dtype in ir.FLOAT_DTYPES]


def weight_constants(graph: ir.Graph) -> dict[str, int | None]:
    """``constant name -> per-channel axis`` (None: per-tensor) of the weight matrices."""
    out: dict[str, int | None] = {}
    for n in graph.nodes:
        if n.op in ("linear", "conv1d"):
            out.setdefault(n.attr("weight"), 0)
        elif n.op == "embedding":
            out.setdefault(n.attr("table"), None)
        elif n.op == "matmul":
            for i in n.inputs:
                if i in graph.constants:
                    out.setdefault(i, None)
    return out


def activation_bits(graph: ir.Graph) -> dict[str, int]:
    """I-BERT's bit widths: 16 for ``emb.sum``, 22 for residual adds feeding a LayerNorm, else 8."""
    bits = {}
    for n in graph.nodes:
        for o in n.outputs:
            if graph.value(o).dtype not in ir.FLOAT_DTYPES:
                continue
            if o == "emb.sum":
                bits[o] = 16
            elif n.op == "add" and any(c.op == "layernorm" for c in graph.consumers(o)):
                bits[o] = 22
            else:
                bits[o] = 8
    return bits


# ----------------------------------------------------------------------------- masking


def _valid(graph: ir.Graph, name: str, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The entries of ``x`` at valid tokens (1-D), or ``x`` itself when nothing is masked."""
    shape = graph.value(name).shape
    t_axes = [i for i, d in enumerate(shape) if d == "T"]
    if not t_axes or mask.all() or shape[0] != "B":
        return x
    keep = np.ones((1,) * x.ndim, dtype=bool)
    for ax in t_axes:
        view = [1] * x.ndim
        view[0], view[ax] = mask.shape[0], mask.shape[1]
        keep = keep & mask.reshape(view)
    return x[np.broadcast_to(keep, x.shape)]


# ----------------------------------------------------------------------------- driver


def calibrate(
    graph: ir.Graph,
    batches: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    *,
    bits: int | Mapping[str, int] | Callable[[str], int] | None = None,
    weight_bits: int = 8,
    per_channel: bool = True,
    overrides: Mapping[str, tuple[float, float]] | None = None,
    **options,
) -> dict[str, QParams]:
    """QParams for every activation value (:func:`activation_values`) and weight
    (:func:`weight_constants`) of an fp32-stage graph.

    ``batches``: an iterable of dicts with ``input_ids`` (and optionally ``attention_mask``,
    ``token_type_ids``) arrays ``[B, T]``; consumed once, streamed.  ``method``: ``minmax``,
    ``ema``, ``percentile``, ``mse`` or ``entropy``; ``options`` go to the observer
    (``momentum=``, ``percentile=``, ``bins=``, ...).  ``overrides``: I-BERT QuantAct ranges
    ``{module: (x_min, x_max)}`` (``model.calibration_ranges``), see :func:`ibert_ranges`.
    """
    if graph.stage != "fp32":
        raise CalibrationError(
            f"calibrate needs an fp32-stage graph (capture(model)), got stage {graph.stage!r}"
        )
    names = activation_values(graph)
    policy = activation_bits(graph)
    if isinstance(bits, int):
        policy = {n: bits for n in names}
    elif isinstance(bits, Mapping):
        policy.update(bits)
    elif callable(bits):
        policy = {n: int(bits(n)) for n in names}
    observers = {n: make_observer(method, **options) for n in names}  # bad method/options fail here

    n_batches = 0
    for k, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise CalibrationError(
                f"calibration batch {k} must be a dict with 'input_ids' "
                f"(got {type(batch).__name__})"
            )
        inputs = prepare_inputs(
            batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids")
        )
        mask = inputs["attention_mask"]

        def observe(name, x, _mask=mask):
            obs = observers.get(name)
            if obs is not None:
                obs.observe(_valid(graph, name, x, _mask))

        run_fp32(graph, **inputs, observe=observe)
        n_batches += 1
    if n_batches == 0:
        raise CalibrationError(
            "calibrate got no batches: pass at least one dict with 'input_ids' "
            "(random_batches(model, n, batch, seq) or text_batches(path, tokenizer, batch, seq))"
        )

    out: dict[str, QParams] = {}
    for n, obs in observers.items():
        if obs.batches == 0:
            raise CalibrationError(
                f"value {n!r} saw no valid token in {n_batches} batch(es): "
                "every attention_mask is all zeros"
            )
        out[n] = obs.compute_qparams(policy[n])
    if overrides:
        out.update(ibert_ranges(graph, overrides))
    for c, axis in weight_constants(graph).items():
        axis = axis if per_channel else None
        out[c] = weight_qparams(graph.constants[c], axis=axis, bits=weight_bits)
    return out


# ----------------------------------------------------------------------------- I-BERT ranges

# QuantAct module (relative to ``roberta.``) -> (value name, bits); ``{i}`` = layer index
_IBERT_ACTS = [
    (r"embeddings\.embeddings_act1", "emb.sum", 16),
    (r"embeddings\.output_activation", "emb.ln", 8),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query_activation", "layer{}.attn.q", 8),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key_activation", "layer{}.attn.k", 8),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value_activation", "layer{}.attn.v", 8),
    (r"encoder\.layer\.(\d+)\.attention\.self\.output_activation", "layer{}.attn.ctx", 8),
    (r"encoder\.layer\.(\d+)\.attention\.output\.ln_input_act", "layer{}.attn.residual", 22),
    (r"encoder\.layer\.(\d+)\.attention\.output\.output_activation", "layer{}.attn.ln", 8),
    (r"encoder\.layer\.(\d+)\.pre_intermediate_act", "layer{}.attn.ln", 8),
    (r"encoder\.layer\.(\d+)\.intermediate\.output_activation", "layer{}.ffn.act", 8),
    (r"encoder\.layer\.(\d+)\.pre_output_act", "layer{}.ffn.act", 8),
    (r"encoder\.layer\.(\d+)\.output\.ln_input_act", "layer{}.ffn.residual", 22),
    (r"encoder\.layer\.(\d+)\.output\.output_activation", "layer{}.ffn.ln", 8),
]


def ibert_ranges(graph: ir.Graph, ranges: Mapping[str, tuple[float, float]]) -> dict[str, QParams]:
    """Map I-BERT QuantAct ranges (``model.calibration_ranges``: ``{"roberta.encoder.layer.0.
    attention.self.query_activation": (x_min, x_max), ...}``) onto the graph's value names, as
    symmetric QParams with I-BERT's bit widths (``T = max(|x_min|, |x_max|)``).

    QuantActs with no counterpart value (the 16-bit ``softmax.act`` inside IntSoftmax) are
    skipped.  Where two QuantActs quantize the same tensor (``attention.output.output_activation``
    and the next layer's ``pre_intermediate_act``), the wider range wins.
    """
    out: dict[str, QParams] = {}
    known = {v.name for v in graph.values}
    for module, (lo, hi) in ranges.items():
        rel = re.sub(r"^(roberta|ibert)\.", "", module)
        for pattern, value, nbits in _IBERT_ACTS:
            m = re.fullmatch(pattern, rel)
            if not m:
                continue
            name = value.format(*m.groups())
            if name not in known:
                raise CalibrationError(
                    f"I-BERT range {module!r} maps to {name!r}, which the graph does not have"
                )
            t = max(abs(float(lo)), abs(float(hi)))
            if name not in out or t > float(out[name].threshold):
                out[name] = QParams(np.float64(t), nbits)
            break
    return out


# ----------------------------------------------------------------------------- batch sources


def random_batches(
    model_or_config, n: int, batch: int, seq: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """``n`` batches of random token ids ``[batch, seq]`` (never the pad id), each row padded
    after a random length in ``[max(1, seq // 2), seq]``; token types 0/1 halves when the model
    has two or more types.  ``seq`` is capped at the model's maximum length."""
    cfg = getattr(model_or_config, "config", model_or_config)
    if n < 0 or batch < 1 or seq < 1:
        raise CalibrationError(
            f"random_batches: need n >= 0, batch >= 1, seq >= 1 (got {n}, {batch}, {seq})"
        )
    max_len = getattr(cfg, "max_length", None) or getattr(cfg, "max_position_embeddings", seq)
    seq = min(seq, max_len)
    pad = getattr(cfg, "pad_token_id", None)
    pad = 0 if pad is None else pad
    ntypes = getattr(cfg, "type_vocab_size", 0) or 0
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, cfg.vocab_size - 1, (batch, seq))
        ids = ids + (ids >= pad)  # skip the pad id
        lengths = rng.integers(max(1, seq // 2), seq + 1, batch)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        ids = np.where(mask == 1, ids, pad).astype(np.int64)
        types = np.zeros_like(ids)
        if ntypes > 1:
            types[:, seq // 2:] = 1
            types *= mask
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return out


def text_batches(
    path: str | os.PathLike, tokenizer, batch: int, seq: int
) -> Iterator[dict[str, np.ndarray]]:
    """Batches from a text file, one example per non-empty line, tokenized with ``tokenizer``
    (an :func:`intengine.load_tokenizer` tokenizer, or a checkpoint folder to load one from),
    truncated to ``seq`` tokens and padded to the longest row of each batch.  Streams the file."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    if batch < 1 or seq < 1:
        raise CalibrationError(f"text_batches: need batch >= 1 and seq >= 1 (got {batch}, {seq})")
    if not os.path.isfile(path):
        raise CalibrationError(f"calibration text file {os.fspath(path)!r} does not exist")
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            lines.append(line)
            if len(lines) == batch:
                yield tokenizer(lines, max_length=seq, padding=True, truncation=True)
                lines = []
    if lines:
        yield tokenizer(lines, max_length=seq, padding=True, truncation=True)

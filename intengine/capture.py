"""Capture: FP32 torch module → fp32-stage :class:`~intengine.ir.Graph`.

One graph builder per model family (RoBERTa/I-BERT, NEZHA, DeBERTa v1, DeBERTa-v2/v3), all
tasks.  We do not trace with ``torch.fx``/``torch.export``: the lowering needs *semantic* ops
("attention scores with relative terms", "layernorm", "gelu", "masked softmax") to place
quantization points and pick integer kernels, while a trace yields aten soup (``var_mean``,
``rsqrt``, ``erf``, ``masked_fill`` on ``finfo.min``, ``scatter_add_``) that would have to be
pattern-matched back into those ops, and is brittle across torch versions.  The builders read
the modules' weights and configs directly and emit one node per semantic op; everything that
depends only on the weights and the sequence length (NEZHA's sinusoid table, DeBERTa's
projected relative tables ``Kr = pos_proj(R)``, ``Qr = pos_q_proj(R)/scale``, the relative index
``δ_ij``) is folded offline into constants, computed for the maximum length ``Tmax`` and sliced
to ``[:T, :T]`` at run time.

Graph inputs: ``input_ids`` i64 [B,T], ``attention_mask`` bool [B,T], ``token_type_ids`` i64
[B,T] (always declared; families without type embeddings ignore it).  Constants are named by
their ``state_dict`` key where one exists (tied weights share one constant), derived ones by the
value that uses them (``layer0.attn.c2p_table``).  Op semantics: see :mod:`intengine.interp`.

Value names (the error report keys on them)::

    emb.word emb.type emb.pos emb.sum emb.proj emb.ln emb.out
    layer{i}.attn.{q,k,v}            [B,T,H]  projections
    layer{i}.attn.{q,k,v}_heads      [B,h,T,d]
    layer{i}.attn.qk                 [B,h,T,T] scaled Q·Kᵀ
    layer{i}.attn.{rel_k,c2p,p2c}    relative score terms (gathered, [B,h,T,T])
    layer{i}.attn.scores  .probs  .ctx  .out  .residual  .ln
    layer{i}.ffn.fc1 .act .fc2 .residual .ln
    conv.{conv,masked,act,residual,ln,out}          (DeBERTa-v2 nGiE, after layer 0)
    head.{cls,dense,act,logits,...}
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import ir
from .errors import IntengineError

__all__ = ["CaptureError", "capture", "ACTIVATION_OPS"]


class CaptureError(IntengineError, ValueError):
    """The module cannot be captured (unknown family, task or unsupported option)."""


# hidden_act name -> (op, attrs)
ACTIVATION_OPS = {
    "gelu": ("gelu", {"approximate": "none"}),
    "gelu_python": ("gelu", {"approximate": "none"}),
    "gelu_new": ("gelu", {"approximate": "tanh"}),
    "gelu_pytorch_tanh": ("gelu", {"approximate": "tanh"}),
    "tanh": ("tanh", {}),
}


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    a = np.ascontiguousarray(t)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    return a.astype(np.int64)


class _Builder:
    def __init__(self, model: torch.nn.Module):
        self.values: dict[str, ir.Value] = {}
        self.nodes: list[ir.Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self._param_names = {}
        for name, p in model.named_parameters():  # tied weights: first name wins
            self._param_names.setdefault(id(p), name)
        for name, b in model.named_buffers():
            self._param_names.setdefault(id(b), name)
        self.shapes: dict[str, tuple] = {}

    # -- values
    def _declare(self, name: str, dtype: str, shape: tuple) -> None:
        if name in self.values:
            raise CaptureError(f"internal: value {name!r} declared twice")
        self.values[name] = ir.Value(name, dtype, tuple(shape))

    def input(self, name: str, dtype: str) -> str:
        self._declare(name, dtype, ("B", "T"))
        return name

    def const(self, tensor, name: str | None = None) -> str:
        """Constant for a parameter (named by its state_dict key) or a derived array."""
        if name is None:
            if id(tensor) not in self._param_names:
                raise CaptureError("internal: unnamed derived constant")
            name = self._param_names[id(tensor)]
        if name in self.constants:
            return name
        arr = _np(tensor)
        self.constants[name] = arr
        self._declare(name, "f32" if arr.dtype == np.float32 else "i64", arr.shape)
        return name

    def shape(self, name: str) -> tuple:
        return self.values[name].shape

    def op(self, op: str, inputs, out: str, out_shape, dtype: str = "f32", **attrs) -> str:
        self._declare(out, dtype, out_shape)
        self.nodes.append(ir.Node(op, tuple(inputs), (out,), tuple(attrs.items()), name=out))
        return out

    # -- semantic helpers
    def linear(self, x: str, out: str, weight, bias=None, *, wname=None, bname=None) -> str:
        w = self.const(weight, wname)
        b = None if bias is None else self.const(bias, bname)
        n_out = self.constants[w].shape[0]
        return self.op("linear", [x], out, self.shape(x)[:-1] + (n_out,), weight=w, bias=b)

    def lin_mod(self, x: str, out: str, mod) -> str:
        return self.linear(x, out, mod.weight, mod.bias)

    def layernorm(self, x: str, out: str, mod) -> str:
        return self.op(
            "layernorm", [x], out, self.shape(x),
            weight=self.const(mod.weight), bias=self.const(mod.bias), eps=float(mod.eps),
        )

    def add(self, a: str, b: str, out: str) -> str:
        return self.op("add", [a, b], out, self.shape(a))

    def act(self, x: str, out: str, name: str) -> str:
        if name not in ACTIVATION_OPS:
            raise CaptureError(
                f"activation {name!r} is not supported by the integer pipeline; "
                f"supported: {', '.join(sorted(ACTIVATION_OPS))}"
            )
        op, attrs = ACTIVATION_OPS[name]
        return self.op(op, [x], out, self.shape(x), **attrs)

    def sum(self, terms: list[str], out: str) -> str:
        """``terms[0] + terms[1] + ...``; the last add is named ``out`` (one term: itself)."""
        x = terms[0]
        for n, t in enumerate(terms[1:], 1):
            x = self.add(x, t, out if n == len(terms) - 1 else f"{out}_partial{n}")
        return x

    def embedding(self, ids: str, out: str, weight) -> str:
        t = self.const(weight)
        return self.op("embedding", [ids], out, ("B", "T", self.constants[t].shape[1]), table=t)

    def split_heads(self, x: str, out: str, heads: int) -> str:
        d = self.shape(x)[-1] // heads
        s = ("B", "T", heads, d)
        r = self.op("reshape", [x], out + "_split", s, shape=s)
        return self.op("transpose", [r], out, ("B", heads, "T", d), perm=(0, 2, 1, 3))

    def merge_heads(self, x: str, out: str) -> str:
        _, h, _, d = self.shape(x)
        t = self.op("transpose", [x], out + "_merge", ("B", "T", h, d), perm=(0, 2, 1, 3))
        return self.op("reshape", [t], out, ("B", "T", h * d), shape=("B", "T", h * d))

    def graph(self, inputs, outputs) -> ir.Graph:
        g = ir.Graph(
            stage="fp32",
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            nodes=tuple(self.nodes),
            values=tuple(self.values.values()),
            constants=self.constants,
        )
        ir.verify_fp32(g)
        return g


def _inputs(b: _Builder) -> tuple[str, str, str]:
    return (
        b.input("input_ids", "i64"),
        b.input("attention_mask", "bool"),
        b.input("token_type_ids", "i64"),
    )


def _ffn(b: _Builder, x: str, p: str, fc1, act_name: str, fc2, ln) -> str:
    h = b.lin_mod(x, f"{p}.ffn.fc1", fc1)
    h = b.act(h, f"{p}.ffn.act", act_name)
    h = b.lin_mod(h, f"{p}.ffn.fc2", fc2)
    h = b.add(h, x, f"{p}.ffn.residual")
    return b.layernorm(h, f"{p}.ffn.ln", ln)


def _attn_out(b: _Builder, ctx: str, x: str, p: str, dense, ln) -> str:
    h = b.lin_mod(ctx, f"{p}.attn.out", dense)
    h = b.add(h, x, f"{p}.attn.residual")
    return b.layernorm(h, f"{p}.attn.ln", ln)


# ============================================================================ RoBERTa / NEZHA


def _bert_layer(b: _Builder, x: str, mask: str, i: int, layer, cfg, rel=None) -> str:
    """Post-LN BERT layer (RoBERTa; NEZHA when ``rel`` = (key_table, value_table, index))."""
    p = f"layer{i}"
    sa = layer.attention.self
    h, d = sa.heads, sa.head_size
    q = b.split_heads(b.lin_mod(x, f"{p}.attn.q", sa.query), f"{p}.attn.q_heads", h)
    k = b.split_heads(b.lin_mod(x, f"{p}.attn.k", sa.key), f"{p}.attn.k_heads", h)
    v = b.split_heads(b.lin_mod(x, f"{p}.attn.v", sa.value), f"{p}.attn.v_heads", h)
    s4 = ("B", h, "T", "T")
    scores = b.op("matmul", [q, k], f"{p}.attn.qk", s4, transpose_b=True, scale=1.0 / math.sqrt(d))
    if rel is not None:
        ktab, vtab, index = rel
        nrel = b.constants[ktab].shape[0]
        qr = b.op("linear", [q], f"{p}.attn.rel_k_all", ("B", h, "T", nrel), weight=ktab, bias=None)
        relk = b.op("gather", [qr], f"{p}.attn.rel_k", s4, index=index)
        scores = b.add(scores, relk, f"{p}.attn.scores")
    probs = b.op("softmax", [scores, mask], f"{p}.attn.probs", s4, mask="key")
    s_ctx = ("B", h, "T", d)
    ctx = b.op("matmul", [probs, v], f"{p}.attn.ctx_heads", s_ctx, transpose_b=False, scale=1.0)
    if rel is not None:
        buckets = b.op(
            "scatter_add", [probs], f"{p}.attn.rel_v_buckets", ("B", h, "T", nrel),
            index=index, size=nrel,
        )
        relv = b.op("linear", [buckets], f"{p}.attn.rel_v", s_ctx, weight=vtab, bias=None)
        ctx = b.add(ctx, relv, f"{p}.attn.ctx_sum")
    ctx = b.merge_heads(ctx, f"{p}.attn.ctx")
    a = _attn_out(b, ctx, x, p, layer.attention.output.dense, layer.attention.output.LayerNorm)
    return _ffn(
        b, a, p, layer.intermediate.dense, cfg.hidden_act, layer.output.dense,
        layer.output.LayerNorm,
    )


def _capture_roberta(model) -> ir.Graph:
    base = model if model.task == "base" else model.roberta
    cfg = base.config
    b = _Builder(model)
    ids, mask, types = _inputs(b)
    emb = base.embeddings
    word = b.embedding(ids, "emb.word", emb.word_embeddings.weight)
    typ = b.embedding(types, "emb.type", emb.token_type_embeddings.weight)
    x = b.add(word, typ, "emb.word_type")
    pos_ids = b.op("position_ids", [ids], "emb.position_ids", ("B", "T"), dtype="i64",
                   kind="padding", padding_idx=int(cfg.pad_token_id))
    pos = b.embedding(pos_ids, "emb.pos", emb.position_embeddings.weight)
    x = b.add(x, pos, "emb.sum")
    x = b.layernorm(x, "emb.ln", emb.LayerNorm)
    for i, layer in enumerate(base.encoder.layer):
        x = _bert_layer(b, x, mask, i, layer, cfg)
    out = _roberta_head(b, model, x, cfg)
    return b.graph(("input_ids", "attention_mask", "token_type_ids"), (out,))


def _roberta_head(b: _Builder, model, x: str, cfg) -> str:
    task = model.task
    if task == "base":
        return x
    if task == "sequence-classification":
        c = model.classifier
        h = b.op("select", [x], "head.cls", ("B", cfg.hidden_size), axis=1, index=0)
        h = b.lin_mod(h, "head.dense", c.dense)
        h = b.op("tanh", [h], "head.act", b.shape(h))
        return b.lin_mod(h, "head.logits", c.out_proj)
    if task == "token-classification":
        return b.lin_mod(x, "head.logits", model.classifier)
    if task == "question-answering":
        return b.lin_mod(x, "head.logits", model.qa_outputs)
    if task == "masked-lm":
        lm = model.lm_head
        h = b.lin_mod(x, "head.dense", lm.dense)
        h = b.act(h, "head.act", "gelu")
        h = b.layernorm(h, "head.ln", lm.layer_norm)
        return b.linear(h, "head.logits", lm.decoder.weight, lm.decoder.bias)
    raise CaptureError(f"RoBERTa capture: unknown task {task!r}")


def _capture_nezha(model) -> ir.Graph:
    from .models.nezha import relative_index

    base = model if model.task == "base" else model.nezha
    cfg = base.config
    b = _Builder(model)
    ids, mask, types = _inputs(b)
    emb = base.embeddings
    word = b.embedding(ids, "emb.word", emb.word_embeddings.weight)
    typ = b.embedding(types, "emb.type", emb.token_type_embeddings.weight)
    x = b.add(word, typ, "emb.sum")
    x = b.layernorm(x, "emb.ln", emb.LayerNorm)
    table = base.relative_table.float()
    d = cfg.head_size
    ktab = b.const(table / math.sqrt(d), "rel.key_table")  # [2m+1, d], 1/√d folded in
    vtab = b.const(table.t().contiguous(), "rel.value_table")  # [d, 2m+1]
    index = b.const(relative_index(cfg.max_length, cfg.max_relative_position), "rel.index")
    for i, layer in enumerate(base.encoder.layer):
        x = _bert_layer(b, x, mask, i, layer, cfg, rel=(ktab, vtab, index))
    task = model.task
    if task == "base":
        out = x
    elif task == "sequence-classification":
        h = b.op("select", [x], "head.cls", ("B", cfg.hidden_size), axis=1, index=0)
        h = b.lin_mod(h, "head.pooler", base.pooler.dense)
        h = b.op("tanh", [h], "head.pooled", b.shape(h))
        out = b.lin_mod(h, "head.logits", model.classifier)
    elif task in ("token-classification", "question-answering"):
        mod = model.classifier if task == "token-classification" else model.qa_outputs
        out = b.lin_mod(x, "head.logits", mod)
    elif task == "masked-lm":
        pr = model.cls.predictions
        h = b.lin_mod(x, "head.dense", pr.transform.dense)
        h = b.act(h, "head.act", cfg.hidden_act)
        h = b.layernorm(h, "head.ln", pr.transform.LayerNorm)
        out = b.linear(h, "head.logits", pr.decoder.weight, pr.decoder.bias)
    else:
        raise CaptureError(f"NEZHA capture: unknown task {task!r}")
    return b.graph(("input_ids", "attention_mask", "token_type_ids"), (out,))


# ============================================================================ DeBERTa v1 / v2


def _deberta_embeddings(b: _Builder, base, cfg, ids: str, mask: str, types: str) -> str:
    emb = base.embeddings
    terms = [b.embedding(ids, "emb.word", emb.word_embeddings.weight)]
    if emb.position_embeddings is not None:
        pos_ids = b.op(
            "position_ids", [ids], "emb.position_ids", ("B", "T"), dtype="i64", kind="arange"
        )
        terms.append(b.embedding(pos_ids, "emb.pos", emb.position_embeddings.weight))
    if emb.token_type_embeddings is not None:
        terms.append(b.embedding(types, "emb.type", emb.token_type_embeddings.weight))
    x = b.sum(terms, "emb.sum")
    if emb.embed_proj is not None:
        x = b.linear(x, "emb.proj", emb.embed_proj.weight, None)
    x = b.layernorm(x, "emb.ln", emb.LayerNorm)
    return b.op("mask_fill", [x, mask], "emb.out", b.shape(x), value=0.0)


def _deberta_attention(b: _Builder, x: str, mask: str, i: int, layer, rel, v2: bool) -> str:
    """``rel``: None or dict with per-layer table constants and the index constants."""
    p = f"layer{i}"
    sa = layer.attention.self
    h, d = sa.num_heads, sa.head_size
    if v2:
        q = b.lin_mod(x, f"{p}.attn.q", sa.query_proj)
        k = b.lin_mod(x, f"{p}.attn.k", sa.key_proj)
        v = b.lin_mod(x, f"{p}.attn.v", sa.value_proj)
        scale = sa.scale
    else:
        H = b.shape(x)[-1]
        w = sa.in_proj.weight.detach().reshape(h, 3, d, H)
        q = b.linear(x, f"{p}.attn.q", w[:, 0].reshape(h * d, H), sa.q_bias,
                     wname=f"{p}.attn.q.weight", bname=b._param_names[id(sa.q_bias)])
        k = b.linear(x, f"{p}.attn.k", w[:, 1].reshape(h * d, H), None, wname=f"{p}.attn.k.weight")
        v = b.linear(x, f"{p}.attn.v", w[:, 2].reshape(h * d, H), sa.v_bias,
                     wname=f"{p}.attn.v.weight", bname=b._param_names[id(sa.v_bias)])
        scale = math.sqrt(d * sa.scale_factor)
        if sa.head_logits_proj is not None or sa.head_weights_proj is not None:
            raise CaptureError("DeBERTa talking-head attention is not supported")
    q = b.split_heads(q, f"{p}.attn.q_heads", h)
    k = b.split_heads(k, f"{p}.attn.k_heads", h)
    v = b.split_heads(v, f"{p}.attn.v_heads", h)
    s4 = ("B", h, "T", "T")
    terms = [b.op("matmul", [q, k], f"{p}.attn.qk", s4, transpose_b=True, scale=1.0 / scale)]
    ext = {"extend": True} if rel is not None and rel["extend"] else {}
    if rel is not None:
        if rel["kr"][i] is not None:
            kr = rel["kr"][i]
            n = b.constants[kr].shape[1]
            # v1: Kr is not pre-scaled (q is scaled); v2: Kr already carries 1/scale
            all_ = b.op("matmul", [q, kr], f"{p}.attn.c2p_all", ("B", h, "T", n),
                        transpose_b=True, scale=1.0 if v2 else 1.0 / scale)
            terms.append(b.op("gather", [all_], f"{p}.attn.c2p", s4, index=rel["c2p_index"], **ext))
        if rel["qr"][i] is not None:
            qr = rel["qr"][i]
            n = b.constants[qr].shape[1]
            all_ = b.op(
                "matmul", [k, qr], f"{p}.attn.p2c_all", ("B", h, "T", n),
                transpose_b=True, scale=1.0,
            )
            g = b.op("gather", [all_], f"{p}.attn.p2c_kq", s4, index=rel["p2c_index"], **ext)
            terms.append(b.op("transpose", [g], f"{p}.attn.p2c", s4, perm=(0, 1, 3, 2)))
    s = b.sum(terms, f"{p}.attn.scores")
    probs = b.op("softmax", [s, mask], f"{p}.attn.probs", s4, mask="pair")
    s_ctx = ("B", h, "T", d)
    ctx = b.op("matmul", [probs, v], f"{p}.attn.ctx_heads", s_ctx, transpose_b=False, scale=1.0)
    ctx = b.merge_heads(ctx, f"{p}.attn.ctx")
    return _attn_out(b, ctx, x, p, layer.attention.output.dense, layer.attention.output.LayerNorm)


def _deberta_rel_index(enc, sa0, v2: bool, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The c2p and p2c index tables ``[t, t]`` (columns of the projected relative tables)."""
    if v2:
        rpos = enc.rel_positions(t)
        span = sa0.span
        return torch.clamp(rpos + span, 0, 2 * span - 1), torch.clamp(-rpos + span, 0, 2 * span - 1)
    c2p_idx = sa0.rel_index(t, torch.device("cpu"))
    return c2p_idx, c2p_idx.t().contiguous()


def _deberta_fold_length(enc, sa0, v2: bool, tmax: int) -> int | None:
    """Smallest ``n ≥ tmax`` whose ``[n, n]`` index tables saturate at their edge distances, or
    None when that cannot be shown (then the tables stay at ``tmax`` and longer inputs are refused).

    Both indices are ``clamp(δ(i - j) + span, 0, 2·span - 1)`` (p2c with ``-δ``) for a
    non-decreasing, odd-symmetric distance map ``δ`` (identity, or DeBERTa-v2's log buckets):
    once the clamp is reached at distance ``D`` it holds for every longer distance.  So the
    tables for ``n = D + 1`` hold every value any length reads, and ``index[i, j] =
    d(clip(i - j, ±(n - 1)))`` past them (:func:`~intengine.kernels.gather.index_for_length`).
    The distance map is evaluated by the model's own code over a window twice the relative span;
    degenerate bucket settings whose map stops growing before the clamp (e.g. 2 buckets) return None.
    """
    span = sa0.span if v2 else sa0.max_relative_positions
    probe = 2 * max(tmax, span, getattr(getattr(enc, "config", None), "max_relative", 0) or 0) + 2
    c2p, _ = _deberta_rel_index(enc, sa0, v2, probe)
    d = c2p[:, 0].numpy()  # d[k] = index at distance +k
    e = c2p[0, :].numpy()  # e[k] = index at distance -k
    top, bottom = 2 * span - 1, 0
    hit = [int(np.argmax(v == lim)) if (v == lim).any() else -1 for v, lim in ((d, top), (e, bottom))]
    if min(hit) < 0 or not ((d[hit[0]:] == top).all() and (e[hit[1]:] == bottom).all()):
        return None
    return max(tmax, max(hit) + 1)


def _capture_deberta(model, v2: bool) -> ir.Graph:
    base = model if model.task == "base" else model.deberta
    cfg = base.config
    b = _Builder(model)
    ids, mask, types = _inputs(b)
    x = _deberta_embeddings(b, base, cfg, ids, mask, types)
    enc = base.encoder
    rel = None
    with torch.no_grad():
        table = enc.rel_table()
        if table is not None:
            sa0 = enc.layer[0].attention.self
            # without absolute positions the FP32 model takes any length: fold the tables and index
            # past the distance where the index saturates, so the gathers can extend to any T
            tmax = cfg.max_position_embeddings
            fold = None if cfg.position_biased_input else _deberta_fold_length(enc, sa0, v2, tmax)
            extend = fold is not None
            tmax = fold or tmax
            rel = {"kr": [], "qr": [], "extend": extend}
            for i, layer in enumerate(enc.layer):
                sa = layer.attention.self
                if v2:
                    kr, qr = sa.rel_tables(table)
                else:
                    kr, qr = sa.rel_tables(table, tmax)
                rel["kr"].append(None if kr is None else b.const(kr, f"layer{i}.attn.c2p_table"))
                rel["qr"].append(None if qr is None else b.const(qr, f"layer{i}.attn.p2c_table"))
            c2p_idx, p2c_idx = _deberta_rel_index(enc, sa0, v2, tmax)
            rel["c2p_index"] = b.const(c2p_idx, "rel.c2p_index")
            rel["p2c_index"] = b.const(p2c_idx, "rel.p2c_index")
    emb_out = x
    for i, layer in enumerate(enc.layer):
        p = f"layer{i}"
        a = _deberta_attention(b, x, mask, i, layer, rel, v2)
        x = _ffn(b, a, p, layer.intermediate.dense, layer.intermediate.act.name,
                 layer.output.dense, layer.output.LayerNorm)
        if i == 0 and v2 and enc.conv is not None:
            conv = enc.conv
            c = b.op("conv1d", [emb_out], "conv.conv", b.shape(emb_out),
                     weight=b.const(conv.conv.weight), bias=b.const(conv.conv.bias),
                     padding=int(conv.conv.padding[0]), groups=int(conv.conv.groups))
            c = b.op("mask_fill", [c, mask], "conv.masked", b.shape(c), value=0.0)
            c = b.act(c, "conv.act", conv.act.name)
            c = b.add(x, c, "conv.residual")
            c = b.layernorm(c, "conv.ln", conv.LayerNorm)
            x = b.op("mask_fill", [c, mask], "conv.out", b.shape(c), value=0.0)
    out = _deberta_head(b, model, x, cfg)
    return b.graph(("input_ids", "attention_mask", "token_type_ids"), (out,))


def _deberta_head(b: _Builder, model, x: str, cfg) -> str:
    task = model.task
    if task == "base":
        return x
    if task == "sequence-classification":
        h = b.op("select", [x], "head.cls", ("B", cfg.hidden_size), axis=1, index=0)
        h = b.lin_mod(h, "head.pooler", model.pooler.dense)
        h = b.act(h, "head.pooled", model.pooler.act.name)
        return b.lin_mod(h, "head.logits", model.classifier)
    if task == "token-classification":
        return b.lin_mod(x, "head.logits", model.classifier)
    if task == "question-answering":
        return b.lin_mod(x, "head.logits", model.qa_outputs)
    if task == "masked-lm":
        if model.legacy:
            pr = model.cls.predictions
            h = b.lin_mod(x, "head.dense", pr.transform.dense)
            h = b.act(h, "head.act", pr.transform.act.name)
            h = b.layernorm(h, "head.ln", pr.transform.LayerNorm)
            return b.linear(h, "head.logits", pr.decoder.weight, pr.bias)
        lm = model.lm_predictions.lm_head
        h = b.lin_mod(x, "head.dense", lm.dense)
        h = b.act(h, "head.act", lm.act.name)
        h = b.layernorm(h, "head.ln", lm.LayerNorm)
        word = model.deberta.embeddings.word_embeddings.weight
        return b.linear(h, "head.logits", word, lm.bias)
    raise CaptureError(f"DeBERTa capture: unknown task {task!r}")


# ============================================================================ entry point

_BUILDERS = {
    "intengine.models.roberta": _capture_roberta,
    "intengine.models.nezha": _capture_nezha,
    "intengine.models.deberta": lambda m: _capture_deberta(m, v2=False),
    "intengine.models.deberta_v2": lambda m: _capture_deberta(m, v2=True),
}


def capture(model: torch.nn.Module) -> ir.Graph:
    """The fp32-stage graph of a loaded FP32 module (:func:`intengine.load_fp32`), any family
    and task; weights are copied into ``graph.constants`` as float32 arrays."""
    family = getattr(model, "family", None)
    if family not in _BUILDERS:
        raise CaptureError(
            f"cannot capture a {type(model).__name__}: model.family is {family!r}; "
            f"expected a module built by intengine.load_fp32 ({', '.join(sorted(_BUILDERS))})"
        )
    with torch.no_grad():
        return _BUILDERS[family](model)

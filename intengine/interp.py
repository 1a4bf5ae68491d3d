"""FP32 interpreter: runs an fp32-stage graph in numpy (float32).

It is the reference the integer graph is compared with, node by node, and the calibration
driver's activation source: ``observe(value_name, array)`` is called for every value a node
produces (never stored here).

Op semantics (fp32 stage; ``x`` is ``inputs[0]``; constant names sit in ``attrs``)::

    embedding(ids) {table}             table[ids]   (an id outside the table: InputError)
    position_ids(ids) {kind, padding_idx}   → i64 [B,T]
        "padding": cumsum(ids != pad)·(ids != pad) + pad   (RoBERTa)
        "arange":  0, 1, ..., T-1 in every row              (DeBERTa absolute positions)
    add(a, b) / mul(a, b)              elementwise, broadcasting
    linear(x) {weight, bias}           x @ weightᵀ (+ bias); weight [out, in], any leading dims
    matmul(a, b) {transpose_b, scale}  scale · (a @ bᵀ | a @ b), batched; b may be a constant
    reshape(x) {shape}                 symbols "B"/"T" resolve from the inputs
    transpose(x) {perm}
    select(x) {axis, index}            x.take(index, axis)   (first token for pooler heads)
    gather(x) {index, extend}          out[..., i, j] = x[..., i, I[i, j]], I = index[:T, :T]
                                       (extend: T past the table, see kernels.gather.index_for_length)
    scatter_add(x) {index, size}       out[..., i, p] = Σ_{j: I[i, j] = p} x[..., i, j]  (NEZHA)
    softmax(s, mask) {mask}            last axis; mask [B,T] bool (True = token):
        "key":  s + (0 | finfo.min) on padded keys       (RoBERTa, NEZHA)
        "pair": XSoftmax: valid = m_i ∧ m_j, invalid → finfo.min, output zeroed where invalid
    mask_fill(x, mask) {value}         rows of padded tokens ([B,T,...]) set to value
    layernorm(x) {weight, bias, eps}   last axis, eps inside the square root
    gelu(x) {approximate}              "none" (erf) or "tanh"
    tanh(x)
    conv1d(x) {weight, bias, padding, groups}   x [B,T,C] channels-last; weight [O, C/g, k]
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import ir
from .errors import InputError
from .kernels.errors import KernelInputError
from .kernels.gather import index_for_length

__all__ = ["run_fp32", "prepare_inputs"]

_F32_MIN = np.finfo(np.float32).min


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.nn.functional.gelu(t, approximate=approximate).numpy()


def _matmul_nt(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ wᵀ`` in float32 through torch (numpy's stacked matmul is 10-100× slower here)."""
    a = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    return torch.matmul(a, b.transpose(-1, -2)).numpy()


def prepare_inputs(input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
    """Validate and normalise the three graph inputs (numpy or torch, [B,T] or [T])."""

    def arr(x, name):
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise InputError(f"{name} must have shape [batch, seq_len], got {x.shape}")
        return x

    ids = arr(input_ids, "input_ids")
    if ids.dtype.kind not in "iu":
        raise InputError(f"input_ids must be an integer array, got dtype {ids.dtype}")
    if ids.size == 0:
        raise InputError(f"input_ids is empty: shape {ids.shape}")
    ids = ids.astype(np.int64)
    if attention_mask is None:
        mask = np.ones(ids.shape, dtype=bool)
    else:
        mask = arr(attention_mask, "attention_mask")
        if mask.shape != ids.shape:
            raise InputError(
                f"attention_mask must have the shape of input_ids {ids.shape}, got {mask.shape}"
            )
        if mask.dtype != np.bool_ and not np.all((mask == 0) | (mask == 1)):
            raise InputError("attention_mask must hold only 0 and 1")
        mask = mask.astype(bool)
    if token_type_ids is None:
        types = np.zeros(ids.shape, dtype=np.int64)
    else:
        types = arr(token_type_ids, "token_type_ids")
        if types.shape != ids.shape:
            raise InputError(
                f"token_type_ids must have the shape of input_ids {ids.shape}, got {types.shape}"
            )
        if types.dtype.kind not in "iu":
            raise InputError(f"token_type_ids must be an integer array, got dtype {types.dtype}")
        types = types.astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _index(g: ir.Graph, node: ir.Node, T: int) -> np.ndarray:
    try:
        return index_for_length(g.constants[node.attr("index")], T, bool(node.attr("extend", False)))
    except KernelInputError as e:
        raise InputError(f"node {node.label}: {e}") from None


def _resolve(shape, B: int, T: int) -> tuple[int, ...]:
    return tuple(B if d == "B" else T if d == "T" else int(d) for d in shape)


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _conv1d(x: np.ndarray, w: np.ndarray, bias, padding: int, groups: int) -> np.ndarray:
    B, T, C = x.shape
    O, Cg, K = w.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
    Tout = T + 2 * padding - K + 1
    og = O // groups
    out = np.zeros((B, Tout, O), dtype=np.float32)
    for gi in range(groups):
        xs = xp[:, :, gi * Cg:(gi + 1) * Cg]
        ws = w[gi * og:(gi + 1) * og]  # [og, Cg, K]
        for k in range(K):
            out[:, :, gi * og:(gi + 1) * og] += xs[:, k:k + Tout, :] @ ws[:, :, k].T
    if bias is not None:
        out += bias
    return out


def _run_node(g: ir.Graph, node: ir.Node, env: dict, B: int, T: int) -> np.ndarray:
    op, a = node.op, node.attr
    ins = [env[i] if i in env else g.constants[i] for i in node.inputs]
    x = ins[0]
    C = g.constants
    if op == "embedding":
        table = C[a("table")]
        if x.size and (x.min() < 0 or x.max() >= table.shape[0]):
            bad = int(x.min()) if x.min() < 0 else int(x.max())
            raise InputError(
                f"{node.label}: index {bad} outside the embedding table [0, {table.shape[0]})"
            )
        return table[x]
    if op == "position_ids":
        if a("kind") == "arange":
            return np.broadcast_to(np.arange(x.shape[1], dtype=np.int64), x.shape).copy()
        pad = a("padding_idx")
        not_pad = (x != pad).astype(np.int64)
        return np.cumsum(not_pad, axis=1) * not_pad + pad
    if op == "add":
        return (x + ins[1]).astype(np.float32)
    if op == "mul":
        return (x * ins[1]).astype(np.float32)
    if op == "linear":
        y = _matmul_nt(x, C[a("weight")])
        if a("bias") is not None:
            y = y + C[a("bias")]
        return y.astype(np.float32)
    if op == "matmul":
        b = ins[1]
        y = _matmul_nt(x, b if a("transpose_b") else np.swapaxes(b, -1, -2))
        scale = a("scale", 1.0)
        if scale != 1.0:
            y = y * np.float32(scale)
        return y.astype(np.float32)
    if op == "reshape":
        return x.reshape(_resolve(a("shape"), B, T))
    if op == "transpose":
        return np.ascontiguousarray(np.transpose(x, a("perm")))
    if op == "select":
        return np.take(x, a("index"), axis=a("axis"))
    if op == "gather":
        idx = _index(g, node, x.shape[-2])
        return np.take_along_axis(x, np.broadcast_to(idx, x.shape[:-1] + (idx.shape[-1],)), axis=-1)
    if op == "scatter_add":
        size = a("size")
        t = x.shape[-2]
        idx = _index(g, node, t)  # [t, t]
        lead = int(np.prod(x.shape[:-2], dtype=np.int64))
        rows = np.arange(lead)[:, None, None] * t + np.arange(t)[None, :, None]  # (n, i)
        flat = (rows * size + idx[None]).ravel()
        w = x.reshape(-1).astype(np.float64)
        out = np.bincount(flat, weights=w, minlength=lead * t * size)
        return out.reshape(x.shape[:-1] + (size,)).astype(np.float32)
    if op == "softmax":
        m = ins[1]
        kind = a("mask")
        if kind == "key":
            add = np.where(m, np.float32(0.0), _F32_MIN).astype(np.float32)
            return _softmax(x + add[:, None, None, :])
        if kind == "pair":
            valid = (m[:, :, None] & m[:, None, :])[:, None]  # [B,1,T,T]
            p = _softmax(np.where(valid, x, _F32_MIN))
            return np.where(valid, p, np.float32(0.0))
        raise ir.GraphError(f"node {node.label}: unknown softmax mask kind {kind!r}")
    if op == "mask_fill":
        m = ins[1].reshape(ins[1].shape + (1,) * (x.ndim - 2))
        return np.where(m, x, np.float32(a("value", 0.0))).astype(np.float32)
    if op == "layernorm":
        xd = x.astype(np.float32)
        mu = xd.mean(axis=-1, keepdims=True)
        c = xd - mu
        var = (c * c).mean(axis=-1, keepdims=True)
        y = c / np.sqrt(var + np.float32(a("eps")))
        return (y * C[a("weight")] + C[a("bias")]).astype(np.float32)
    if op == "gelu":
        return _gelu(x, a("approximate", "none"))
    if op == "tanh":
        return np.tanh(x).astype(np.float32)
    if op == "conv1d":
        bias = C[a("bias")] if a("bias") is not None else None
        return _conv1d(x, C[a("weight")], bias, a("padding"), a("groups"))
    raise ir.GraphError(f"node {node.label}: the fp32 interpreter has no op {op!r}")


def run_fp32(
    graph: ir.Graph,
    input_ids,
    attention_mask=None,
    token_type_ids=None,
    observe: Callable[[str, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Run an fp32-stage graph; returns its (first) output as float32.

    ``observe(value_name, array)``, when given, is called once for every value a node produces,
    in execution order (the array must not be modified).  Intermediate values are dropped as soon
    as no later node reads them.
    """
    if graph.stage != "fp32":
        raise ir.GraphError(f"run_fp32 expects an fp32-stage graph, got stage {graph.stage!r}")
    env = prepare_inputs(input_ids, attention_mask, token_type_ids)
    B, T = env["input_ids"].shape
    last_use: dict[str, int] = {}
    for n, node in enumerate(graph.nodes):
        for i in node.inputs:
            last_use[i] = n
    keep = set(graph.outputs) | set(graph.inputs)
    for n, node in enumerate(graph.nodes):
        y = _run_node(graph, node, env, B, T)
        (out,) = node.outputs
        env[out] = y
        if observe is not None:
            observe(out, y)
        for i in node.inputs:
            if last_use.get(i) == n and i not in keep:
                env.pop(i, None)
    outs = [env[o] for o in graph.outputs]
    return outs[0] if len(outs) == 1 else tuple(outs)

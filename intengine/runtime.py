"""Executor for integer-stage graphs: each node dispatches to ``get_kernel(op, backend)``.

Backends ``ref`` (numpy), ``cpu`` (numba) and ``cuda`` (numba.cuda) share this one executor.
At construction (:class:`Executor`) every node is bound once into a closure: weights are packed
with the backend's ``pack_weight``, constant vectors are fetched, integer attrs are read; a call
then only runs the closures in order and drops intermediates after their last use.  No float
math happens here (the integer graph carries ready-made multipliers and params); the only float
op is the graph-output ``dequantize`` kernel.

Integer data movement (``embedding_lookup``, ``position_ids``, ``reshape``, ``transpose``,
``select``, ``cast_int``, ``mask_fill``, ``unfold``) runs in numpy on the host for every backend;
the relative-position ``gather`` and ``scatter_add`` have kernels (``rel_gather``,
``rel_scatter_add``).  The kernels of the ``cuda`` backend accept host arrays and return host
arrays.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from . import ir
from .errors import InputError
from .interp import prepare_inputs
from .kernels.registry import get_kernel

__all__ = ["Executor", "run_integer"]

_Fn = Callable[[list, int, int], np.ndarray]


def _resolve(shape, B: int, T: int) -> tuple[int, ...]:
    return tuple(B if d == "B" else T if d == "T" else int(d) for d in shape)


def _host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else x


class Executor:
    """An integer graph bound to one backend (weights packed once, here)."""

    def __init__(self, graph: ir.Graph, backend: str = "ref"):
        if graph.stage not in ("integer", "mixed"):
            raise ir.GraphError(f"the runtime executes lowered graphs (stage 'integer' or 'mixed'), got {graph.stage!r}")
        ir.verify_lowered(graph)
        self.graph, self.backend = graph, backend
        self._steps: list[tuple[ir.Node, _Fn]] = [(n, self._bind(n)) for n in graph.nodes]
        last: dict[str, int] = {}
        for k, n in enumerate(graph.nodes):
            for i in n.inputs:
                last[i] = k
        self.max_len = max_sequence_length(graph)
        keep = set(graph.outputs)
        self._free = [[i for i in n.inputs if last.get(i) == k and i not in keep and i not in graph.constants]
                      for k, n in enumerate(graph.nodes)]

    # ---------------------------------------------------------------- binding
    def _c(self, name):
        """A constant array by name, an int attr as is, None as None."""
        if isinstance(name, str):
            return self.graph.constants[name]
        return name

    def _bind(self, node: ir.Node) -> _Fn:
        op, a, be = node.op, node.attr, self.backend
        C = self._c
        if op == "linear":
            packed = get_kernel("pack_weight", be)(self.graph.constants[a("weight")])
            k = get_kernel("linear", be)
            bias = C(a("bias"))
            m, s, bits = C(a("m_i32")), C(a("shift")), a("out_bits", 8)
            return lambda ins, B, T: k(ins[0], packed, bias, m, s, bits)
        if op == "matmul":
            k = get_kernel("matmul", be)
            m, s, bits = C(a("m_i32")), C(a("shift")), a("out_bits", 8)
            return lambda ins, B, T: k(ins[0], ins[1], m, s, bits)
        if op == "requantize":
            k = get_kernel("requantize", be)
            m, s, bits = C(a("m_i32")), C(a("shift")), a("out_bits")
            return lambda ins, B, T: k(ins[0], m, s, bits)
        if op == "rescale_add":
            k = get_kernel("rescale_add", be)
            ma, sa, mb, sb = C(a("m_a")), C(a("shift_a")), C(a("m_b")), C(a("shift_b"))
            bits = a("out_bits")
            return lambda ins, B, T: k(ins[0], ma, sa, ins[1], mb, sb, bits)
        if op == "gelu":
            k = get_kernel("gelu", be)
            kw = {n: a(n) for n in ("in_shift", "b_int", "c_int", "m_erf", "shift_erf", "out_shift")}
            m, s, bits = C(a("m_i32")), C(a("shift")), a("out_bits", 8)
            return lambda ins, B, T: k(ins[0], **kw, m_i32=m, shift=s, out_bits=bits)
        if op == "softmax":
            k = get_kernel("softmax", be)
            m, s = a("m_i32"), a("shift")
            return lambda ins, B, T: k(ins[0], ins[1], m, s)
        if op == "layernorm":
            k = get_kernel("layernorm", be)
            m, s, bias = C(a("m_i32")), C(a("shift")), C(a("bias_i64"))
            em, ee, bits = a("eps_m"), a("eps_e"), a("out_bits")
            return lambda ins, B, T: k(ins[0], m, s, bias, em, ee, bits)
        if op == "tanh":
            k = get_kernel("tanh", be)
            m, s, bits = a("m_i32"), a("shift"), a("out_bits")
            return lambda ins, B, T: k(ins[0], m, s, bits)
        if op == "dequantize":
            k = get_kernel("dequantize", be)
            scale, axis = a("scale"), a("axis")
            sc = np.asarray(scale, dtype=np.float32)
            return lambda ins, B, T: _host(k(_host(ins[0]), sc if sc.ndim else sc.item(), axis))
        if op in ir.FLOAT_ISLAND_OPS:
            return _float_island(node, self.graph.constants)
        # ---- integer data movement (host numpy)
        if op == "embedding_lookup":
            table = self.graph.constants[a("table")]
            label = node.label

            def lookup(ins, B, T):
                ids = ins[0]
                if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
                    bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
                    raise InputError(f"{label}: index {bad} outside the embedding table [0, {table.shape[0]})")
                return table[ids]

            return lookup
        if op == "position_ids":
            kind, pad = a("kind"), a("padding_idx")
            if kind == "arange":
                return lambda ins, B, T: np.broadcast_to(np.arange(T, dtype=np.int64), (B, T)).copy()
            if kind != "padding":
                raise ir.GraphError(f"node {node.label}: unknown position_ids kind {kind!r}")

            def positions(ins, B, T):
                not_pad = (ins[0] != pad).astype(np.int64)
                return np.cumsum(not_pad, axis=1) * not_pad + pad

            return positions
        if op == "reshape":
            shape = a("shape")
            return lambda ins, B, T: _host(ins[0]).reshape(_resolve(shape, B, T))
        if op == "transpose":
            perm = a("perm")
            return lambda ins, B, T: np.ascontiguousarray(np.transpose(_host(ins[0]), perm))
        if op == "select":
            axis, index = a("axis"), a("index")
            return lambda ins, B, T: np.ascontiguousarray(np.take(_host(ins[0]), index, axis=axis))
        if op == "cast_int":
            dt = ir.NUMPY_DTYPES[a("to")]
            return lambda ins, B, T: _host(ins[0]).astype(dt)
        if op == "gather":
            index = self.graph.constants[a("index")]
            k = get_kernel("rel_gather", be)
            sliced: dict[int, np.ndarray] = {}  # T → contiguous index[:T, :T], built once per length

            def gather(ins, B, T):
                t = ins[0].shape[-2]
                if t > index.shape[0]:
                    raise InputError(f"sequence length {t} exceeds the {index.shape[0]} positions of {node.label}")
                if t not in sliced:
                    sliced[t] = np.ascontiguousarray(index[:t, :t])
                return k(ins[0], sliced[t])

            return gather
        if op == "mask_fill":
            # out = x where mask (broadcast) else 0: padded positions become exact zeros
            return lambda ins, B, T: np.where(_host(ins[1]), _host(ins[0]), 0).astype(_host(ins[0]).dtype)
        if op == "unfold":
            size, pad = a("size"), a("padding")

            def unfold(ins, B, T):
                # out[b, t, j·C + c] = x[b, t + j - pad, c] (zero outside [0, T)): Conv1d as a linear
                x = _host(ins[0])
                n, t, c = x.shape
                xp = np.zeros((n, t + 2 * pad, c), x.dtype)
                xp[:, pad:pad + t] = x
                return np.concatenate([xp[:, j:j + t] for j in range(size)], axis=-1)

            return unfold
        if op == "scatter_add":
            index, size = self.graph.constants[a("index")], a("size")
            k = get_kernel("rel_scatter_add", be)
            sliced_s: dict[int, np.ndarray] = {}  # T → contiguous index[:T, :T]

            def scatter_add(ins, B, T):
                t = ins[0].shape[-2]
                if t > index.shape[0]:
                    raise InputError(f"sequence length {t} exceeds the {index.shape[0]} positions of {node.label}")
                if t not in sliced_s:
                    sliced_s[t] = np.ascontiguousarray(index[:t, :t])
                return k(ins[0], sliced_s[t], size)

            return scatter_add
        raise ir.GraphError(f"node {node.label}: the integer runtime has no op {op!r}")

    # ---------------------------------------------------------------- run
    def _inputs(self, input_ids, attention_mask, token_type_ids) -> dict:
        env = prepare_inputs(input_ids, attention_mask, token_type_ids)
        T = env["input_ids"].shape[1]
        if self.max_len is not None and T > self.max_len:
            raise InputError(f"input_ids has sequence length {T}, longer than the {self.max_len} positions this "
                             "model supports (position table / relative-position index): truncate the input")
        return env

    def _execute(self, env: dict, *, keep_all: bool = False, times: dict | None = None) -> dict:
        """Run the bound steps over ``env``; drops intermediates after their last use unless
        ``keep_all`` (then every value is copied to the host); ``times`` collects seconds per op."""
        B, T = env["input_ids"].shape
        consts = self.graph.constants
        for (node, fn), free in zip(self._steps, self._free):
            ins = [env[i] if i in env else consts[i] for i in node.inputs]
            t0 = time.perf_counter()
            y = fn(ins, B, T)
            if times is not None:
                times[node.op] = times.get(node.op, 0.0) + time.perf_counter() - t0
            env[node.outputs[0]] = _host(y) if keep_all else y
            if not keep_all:
                for i in free:
                    env.pop(i, None)
        return env

    def run(self, input_ids, attention_mask=None, token_type_ids=None):
        """Run the graph; returns its (first) float32 output, or a tuple for several outputs."""
        env = self._execute(self._inputs(input_ids, attention_mask, token_type_ids))
        outs = [np.asarray(_host(env[o])) for o in self.graph.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def profile(self, input_ids, attention_mask=None, token_type_ids=None, reps: int = 3) -> dict[str, float]:
        """Median seconds per call spent in each op type over ``reps`` runs (after one warm-up run);
        the kernels' results are host-synchronised like :meth:`run`."""
        self.run(input_ids, attention_mask, token_type_ids)
        per_rep: list[dict[str, float]] = []
        for _ in range(max(1, reps)):
            per_rep.append({})
            self._execute(self._inputs(input_ids, attention_mask, token_type_ids), times=per_rep[-1])
        return {op: float(np.median([r.get(op, 0.0) for r in per_rep])) for op in per_rep[0]}

    def trace(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        """Every value the graph computes (for debugging and node-by-node comparisons)."""
        return self._execute(self._inputs(input_ids, attention_mask, token_type_ids), keep_all=True)


def _float_island(node: ir.Node, consts) -> _Fn:
    """``force_dequant`` ops (stage ``"mixed"``): dequantize, the float op (torch, float32, as the
    FP32 modules compute it), requantize with round-half-even and symmetric saturation.  They run
    on the host for every backend, so backends stay bit-identical."""
    import torch

    from .kernels.quant import quantize_ref

    a = node.attr
    s_in = np.float32(a("in_scale"))

    def deq(x):
        return torch.from_numpy(_host(x).astype(np.float32) * s_in)

    if node.op == "float_gelu":
        approx, s_out, bits = a("approximate"), a("out_scale"), a("out_bits")
        return lambda ins, B, T: quantize_ref(torch.nn.functional.gelu(deq(ins[0]), approximate=approx).numpy(),
                                              s_out, None, bits)
    if node.op == "float_softmax":
        def softmax(ins, B, T):
            x, keep = deq(ins[0]), torch.from_numpy(np.broadcast_to(_host(ins[1]), ins[0].shape).copy())
            p = torch.softmax(x.masked_fill(~keep, torch.finfo(torch.float32).min), dim=-1)
            p = torch.where(keep.any(-1, keepdim=True), p, torch.zeros_like(p))  # fully masked row → 0
            return np.clip(np.rint(p.numpy() * 255.0), 0, 255).astype(np.uint8)

        return softmax
    if node.op == "float_layernorm":
        w, b = torch.from_numpy(consts[node.inputs[1]]), torch.from_numpy(consts[node.inputs[2]])
        eps, s_out, bits = a("eps"), a("out_scale"), a("out_bits")
        return lambda ins, B, T: quantize_ref(
            torch.nn.functional.layer_norm(deq(ins[0]), w.shape, w, b, eps).numpy(), s_out, None, bits)
    raise ir.GraphError(f"node {node.label}: unknown float-island op {node.op!r}")


def max_sequence_length(graph: ir.Graph) -> int | None:
    """The longest input the graph can take: rows of the position-embedding tables read through
    ``position_ids`` (minus RoBERTa's ``padding_idx + 1`` offset) and of the relative-position
    index tables; None when nothing limits it."""
    limits = []
    offset = {}
    for n in graph.nodes:
        if n.op == "position_ids":
            offset[n.outputs[0]] = int(n.attr("padding_idx") or 0) + 1 if n.attr("kind") == "padding" else 0
        elif n.op == "embedding_lookup" and n.inputs[0] in offset:
            limits.append(graph.constants[n.attr("table")].shape[0] - offset[n.inputs[0]])
        elif n.op in ("gather", "scatter_add"):
            limits.append(graph.constants[n.attr("index")].shape[0])
    return min(limits) if limits else None


def run_integer(graph: ir.Graph, input_ids, attention_mask=None, token_type_ids=None, backend: str = "ref"):
    """One-shot convenience: bind ``graph`` to ``backend`` and run it."""
    return Executor(graph, backend).run(input_ids, attention_mask, token_type_ids)

"""Executor for integer-stage graphs: each node dispatches to ``get_kernel(op, backend)``.

Backends ``ref`` (numpy), ``cpu`` (numba) and ``cuda`` (numba.cuda) share this one executor.
At construction (:class:`Executor`) every node is bound once into a closure: weights are packed
with the backend's ``pack_weight`` (constant ``matmul`` operands with ``pack_matmul_b``),
constant vectors are fetched, integer attrs are read; a call then only runs the closures in order
and drops intermediates after their last use.  On ``cpu`` the outputs go to buffers planned once
per input shape (:func:`plan_buffers`).  No float math happens here (the integer graph carries
ready-made multipliers and params); the only float op is the graph-output ``dequantize`` kernel.

Integer data movement (``embedding_lookup``, ``position_ids``, ``reshape``, ``select``,
``cast_int``, ``mask_fill``, ``unfold``) runs in numpy on the host for every backend;
``transpose`` has ``ref``/``cpu`` kernels (the cpu one copies the attention heads' permutes in
parallel; ``cuda`` keeps the numpy copy) and the relative-position ``gather`` and
``scatter_add`` have kernels (``rel_gather``, ``rel_scatter_add``).  The kernels of the
``cuda`` backend accept host arrays and return host arrays.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import ir
from .errors import InputError
from .interp import prepare_inputs
from .lower import fuse_add_layernorm, fuse_rel_scores
from .kernels.errors import KernelInputError
from .kernels.gather import index_for_length
from .kernels.gelu import CONST_NAMES as GELU_CONSTS
from .kernels.registry import available_backends, get_kernel

__all__ = ["BufferPlan", "Executor", "OutputRecord", "plan_buffers", "run_integer"]

_Fn = Callable[..., np.ndarray]  # (ins, B, T[, out=]) → the node's value

def _resolve(shape, B: int, T: int) -> tuple[int, ...]:
    return tuple(B if d == "B" else T if d == "T" else int(d) for d in shape)


def _host(x):
    return x.copy_to_host() if hasattr(x, "copy_to_host") else x


MAX_PLANS = 4  # buffer plans kept per executor (one per input shape (B, T), least recently used dropped)


@dataclass(frozen=True)
class _Step:
    """A bound node: ``fn(ins, B, T)``, and ``fn(ins, B, T, out=buffer)`` when ``takes_out``."""

    fn: _Fn
    takes_out: bool = False


def _with_out(kernel, fn: _Fn) -> _Step:
    """``fn`` forwards ``out=`` to ``kernel``: plannable when the kernel has an ``out`` parameter."""
    return _Step(fn, "out" in inspect.signature(kernel).parameters)


def _index_per_length(index: np.ndarray, label: str, extend: bool) -> Callable[[int], np.ndarray]:
    """``t → [t, t]`` relative-position index (read-only, built once per length, the 16 latest
    lengths kept): the table's leading block, or its saturating extension past the table for an
    ``extend`` gather (:func:`~intengine.kernels.gather.index_for_length`); a length beyond a
    fixed table is an :class:`InputError` naming the node."""

    @functools.lru_cache(maxsize=16)
    def index_for(t: int) -> np.ndarray:
        try:
            arr = np.array(index_for_length(index, t, extend), order="C", copy=True)
        except KernelInputError as e:
            raise InputError(f"{label}: {e}") from None
        arr.setflags(write=False)  # kernels cache what they derive from it (memo_frozen)
        return arr

    return index_for


def _rel_window(index_for: Callable[[int], np.ndarray]) -> Callable[[int], tuple[int, int, np.ndarray]]:
    """``t → (lo, hi, index - lo)``: the columns a relative-position index reads at length ``t``.

    DeBERTa's products with the relative tables span every distance (``2S`` columns), but length
    ``t < S`` reads only ``2t - 1`` of them; the runtime computes just ``[lo, hi]`` (a window of
    the constant table, packed once per window) and shifts the index to match: the same integers,
    less work.  Cached per length (the 16 latest)."""

    @functools.lru_cache(maxsize=16)
    def window(t: int) -> tuple[int, int, np.ndarray]:
        idx = index_for(t)
        lo, hi = (int(idx.min()), int(idx.max())) if idx.size else (0, -1)
        shifted = np.array(idx - lo, order="C", copy=True)
        shifted.setflags(write=False)
        return lo, hi, shifted

    return window


def _mask_fill(x: np.ndarray, mask: np.ndarray, out=None) -> np.ndarray:
    """``x`` where ``mask`` (broadcast) else 0, i.e. ``x·mask`` (exact): padded positions become
    exact zeros.  A mask constant over trailing axes (DeBERTa's padded query rows ``[B, 1, T, 1]``)
    selects whole rows: a copy and the masked rows zeroed, rather than a broadcast multiply."""
    k = 0
    while k < min(x.ndim, mask.ndim) and mask.shape[mask.ndim - 1 - k] == 1:
        k += 1
    if mask.ndim != x.ndim or k == 0 or k == x.ndim:
        return np.multiply(x, mask, out=out, dtype=x.dtype)
    lead = x.shape[:x.ndim - k]
    rows = np.broadcast_to(mask.reshape(mask.shape[:x.ndim - k]) != 0, lead).reshape(-1)
    res = np.empty(x.shape, x.dtype) if out is None else out
    x2, r2 = np.ascontiguousarray(x).reshape(rows.size, -1), res.reshape(rows.size, -1)
    np.copyto(r2, x2)
    r2[~rows] = 0
    return res


def _copy_into(out, view) -> np.ndarray:
    if out is None:
        return np.ascontiguousarray(view)
    np.copyto(out, view)
    return out


@dataclass(frozen=True)
class OutputRecord:
    """A node's output as seen in the recording call (None for device arrays)."""

    shape: tuple
    dtype: np.dtype
    c_contiguous: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class BufferPlan:
    """Preallocated outputs for one input shape: ``outs[k]`` is node ``k``'s output buffer (None:
    the node allocates, e.g. a view or a graph output).  Buffers are views into ``blocks``, reused
    by values whose lifetimes do not overlap (greedy best fit in node order)."""

    shape: tuple[int, int]
    outs: list
    blocks: list
    escaping: frozenset  # graph outputs that view planned memory (copied before they are returned)

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self.blocks))


class Executor:
    """An integer graph bound to one backend (weights packed once, here).

    With ``fuse`` (default) the graph is first rewritten by
    :func:`~intengine.lower.fuse_add_layernorm` and :func:`~intengine.lower.fuse_rel_scores`
    (``self.graph`` is the rewritten one); the residual sums and DeBERTa's score terms they fuse
    away are then never materialized, so :meth:`trace` lacks them (``fuse=False`` keeps every node).

    On the ``cpu`` backend (``plan_buffers``) the first call at each input shape ``(B, T)``
    records every node's output and plans the buffers (:class:`BufferPlan`); later calls at that
    shape write every kernel output into its planned buffer, so a call allocates only views and
    the graph outputs.  A lock serialises calls that use a plan (the buffers are shared).
    """

    def __init__(self, graph: ir.Graph, backend: str = "ref", plan_buffers: bool | None = None, fuse: bool = True):
        if graph.stage not in ("integer", "mixed"):
            raise ir.GraphError(f"the runtime executes lowered graphs (stage 'integer' or 'mixed'), got {graph.stage!r}")
        ir.verify_lowered(graph)
        if fuse:
            graph = fuse_rel_scores(fuse_add_layernorm(graph))
        self.graph, self.backend = graph, backend
        self._windows = self._relative_windows(graph)
        self._steps: list[tuple[ir.Node, _Step]] = [(n, self._bind(n)) for n in graph.nodes]
        last: dict[str, int] = {}
        for k, n in enumerate(graph.nodes):
            for i in n.inputs:
                last[i] = k
        self.max_len = max_sequence_length(graph)
        keep = set(graph.outputs)
        self._free = [[i for i in n.inputs if last.get(i) == k and i not in keep and i not in graph.constants]
                      for k, n in enumerate(graph.nodes)]
        # values nobody reads die at once (unless they are graph outputs)
        self._unused = [[o for o in n.outputs if o not in last and o not in keep] for n in graph.nodes]
        self.plan_buffers = backend == "cpu" if plan_buffers is None else bool(plan_buffers)
        self._plans: OrderedDict[tuple[int, int], BufferPlan] = OrderedDict()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- binding
    @staticmethod
    def _relative_windows(graph: ir.Graph) -> dict[str, Callable[[int], tuple[int, int, np.ndarray]]]:
        """``{product: window}`` for each input of a ``rel_scores`` made by a ``matmul`` with a
        constant table and no per-column epilogue, read by that ``rel_scores`` alone: the matmul
        computes only the window's columns and ``rel_scores`` reads them with the shifted index."""
        sole = ir.sole_producers(graph)
        windows = {}
        for n in graph.nodes:
            if n.op != "rel_scores":
                continue
            for name, term in zip(n.inputs[1:], ("c2p", "p2c")):
                mm = sole.get(name)
                if (mm is None or mm.op != "matmul" or mm.inputs[1] not in graph.constants
                        or isinstance(mm.attr("m_i32"), str)):
                    continue
                index = graph.constants[n.attr(f"{term}_index")]
                windows[name] = _rel_window(_index_per_length(index, n.label, bool(n.attr(f"{term}_extend"))))
        return windows

    def _c(self, name):
        """A constant by name as a read-only C-contiguous copy (kernels validate such arrays once
        and cache what they derive from them), an int attr as is, None as None."""
        if isinstance(name, str):
            arr = np.array(self.graph.constants[name], order="C", copy=True)
            arr.setflags(write=False)
            return arr
        return name

    def _bind(self, node: ir.Node) -> _Fn:
        op, a, be = node.op, node.attr, self.backend
        C = self._c
        if op == "linear":
            packed = get_kernel("pack_weight", be)(self.graph.constants[a("weight")])
            k = get_kernel("linear", be)
            bias = C(a("bias"))
            m, s, bits = C(a("m_i32")), C(a("shift")), a("out_bits", 8)
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], packed, bias, m, s, bits, **o))
        if op == "matmul":
            k = get_kernel("matmul", be)
            m, s, bits = C(a("m_i32")), C(a("shift")), a("out_bits", 8)
            if node.inputs[1] in self.graph.constants and be in available_backends("pack_matmul_b"):
                # a constant right operand (DeBERTa's relative tables) is packed once, here
                pack, table = get_kernel("pack_matmul_b", be), self.graph.constants[node.inputs[1]]
                window = self._windows.get(node.outputs[0])
                if window is not None:  # only the columns rel_scores reads (_rel_window), packed once each
                    packed = functools.lru_cache(maxsize=16)(
                        lambda lo, hi: pack(np.ascontiguousarray(table[..., lo:hi + 1, :])))

                    def windowed(ins, B, T, **o):
                        lo, hi, _ = window(ins[0].shape[-2])
                        return k(ins[0], packed(lo, hi), m, s, bits, **o)

                    return _with_out(k, windowed)
                b_packed = pack(table)
                return _with_out(k, lambda ins, B, T, **o: k(ins[0], b_packed, m, s, bits, **o))
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], ins[1], m, s, bits, **o))
        if op == "requantize":
            k = get_kernel("requantize", be)
            m, s, bits = C(a("m_i32")), C(a("shift")), a("out_bits")
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], m, s, bits, **o))
        if op == "rescale_add":
            k = get_kernel("rescale_add", be)
            ma, sa, mb, sb = C(a("m_a")), C(a("shift_a")), C(a("m_b")), C(a("shift_b"))
            bits = a("out_bits")
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], ma, sa, ins[1], mb, sb, bits, **o))
        if op == "gelu":
            k = get_kernel("gelu", be)
            kw = {n: a(n) for n in GELU_CONSTS}
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], **kw, **o))
        if op == "lut":
            k = get_kernel("lut", be)
            table = C(a("table"))
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], table, **o))
        if op == "softmax":
            k = get_kernel("softmax", be)
            m, s = a("m_i32"), a("shift")
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], ins[1], m, s, **o))
        if op == "layernorm":
            k = get_kernel("layernorm", be)
            m, s, bias = C(a("m_i32")), C(a("shift")), C(a("bias_i64"))
            em, ee, bits = a("eps_m"), a("eps_e"), a("out_bits")
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], m, s, bias, em, ee, bits, **o))
        if op == "add_layernorm":
            k = get_kernel("add_layernorm", be)
            res = [C(a(n)) for n in ("m_a", "shift_a", "m_b", "shift_b")]
            ln = [C(a(n)) for n in ("m_i32", "shift", "bias_i64")]
            add_bits, em, ee, bits = a("add_bits"), a("eps_m"), a("eps_e"), a("out_bits")
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], res[0], res[1], ins[1], res[2], res[3], add_bits,
                                                          *ln, em, ee, bits, **o))
        if op == "tanh":
            k = get_kernel("tanh", be)
            m, s, bits = a("m_i32"), a("shift"), a("out_bits")
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], m, s, bits, **o))
        if op == "dequantize":
            k = get_kernel("dequantize", be)
            scale, axis = a("scale"), a("axis")
            sc = np.asarray(scale, dtype=np.float32)
            return _Step(lambda ins, B, T: _host(k(_host(ins[0]), sc if sc.ndim else sc.item(), axis)))
        if op in ir.FLOAT_ISLAND_OPS:
            return _Step(_float_island(node, self.graph.constants))
        # ---- integer data movement (host numpy)
        if op == "embedding_lookup":
            table = self.graph.constants[a("table")]
            label = node.label

            def lookup(ins, B, T, out=None):
                ids = ins[0]
                if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
                    bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
                    raise InputError(f"{label}: index {bad} outside the embedding table [0, {table.shape[0]})")
                return np.take(table, ids, axis=0, out=out)

            return _Step(lookup, True)
        if op == "position_ids":
            kind, pad = a("kind"), a("padding_idx")
            if kind == "arange":
                return _Step(lambda ins, B, T: np.broadcast_to(np.arange(T, dtype=np.int64), (B, T)).copy())
            if kind != "padding":
                raise ir.GraphError(f"node {node.label}: unknown position_ids kind {kind!r}")

            def positions(ins, B, T):
                not_pad = (ins[0] != pad).astype(np.int64)
                return np.cumsum(not_pad, axis=1) * not_pad + pad

            return _Step(positions)
        if op == "reshape":
            shape = a("shape")
            return _Step(lambda ins, B, T: _host(ins[0]).reshape(_resolve(shape, B, T)))
        if op == "transpose":
            perm = a("perm")
            if be in available_backends("transpose"):  # (cpu: a parallel copy for the head permutes)
                k = get_kernel("transpose", be)
                return _with_out(k, lambda ins, B, T, **o: k(ins[0], perm, **o))
            return _Step(lambda ins, B, T, out=None: _copy_into(out, np.transpose(_host(ins[0]), perm)), True)
        if op == "select":
            axis, index = a("axis"), a("index")
            return _Step(lambda ins, B, T: np.ascontiguousarray(np.take(_host(ins[0]), index, axis=axis)))
        if op == "cast_int":
            dt = ir.NUMPY_DTYPES[a("to")]
            return _Step(lambda ins, B, T: _host(ins[0]).astype(dt))
        if op == "gather":
            index = self.graph.constants[a("index")]
            k = get_kernel("rel_gather", be)
            index_for = _index_per_length(index, node.label, bool(a("extend", False)))
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], index_for(ins[0].shape[-2]), **o))
        if op == "rel_scores":
            k = get_kernel("rel_scores", be)
            ic, ip = (
                (lambda t, w=self._windows[name]: w(t)[2]) if name in self._windows else
                _index_per_length(self.graph.constants[a(f"{term}_index")], node.label, bool(a(f"{term}_extend")))
                for name, term in zip(node.inputs[1:], ("c2p", "p2c")))
            adds = [[C(a(f"{n}{i}")) for n in ("m_a", "shift_a", "m_b", "shift_b")] + [a(f"bits{i}")] for i in "12"]
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], ins[1], ic(ins[0].shape[-1]), ins[2],
                                                          ip(ins[0].shape[-1]), *adds[0], *adds[1], **o))
        if op == "mask_fill":
            return _Step(lambda ins, B, T, out=None: _mask_fill(_host(ins[0]), _host(ins[1]), out), True)
        if op == "unfold":
            size, pad = a("size"), a("padding")

            def unfold(ins, B, T):
                # out[b, t, j·C + c] = x[b, t + j - pad, c] (zero outside [0, T)): Conv1d as a linear
                x = _host(ins[0])
                n, t, c = x.shape
                xp = np.zeros((n, t + 2 * pad, c), x.dtype)
                xp[:, pad:pad + t] = x
                return np.concatenate([xp[:, j:j + t] for j in range(size)], axis=-1)

            return _Step(unfold)
        if op == "scatter_add":
            index, size = self.graph.constants[a("index")], a("size")
            k = get_kernel("rel_scatter_add", be)
            index_for = _index_per_length(index, node.label, bool(a("extend", False)))
            return _with_out(k, lambda ins, B, T, **o: k(ins[0], index_for(ins[0].shape[-2]), size, **o))
        raise ir.GraphError(f"node {node.label}: the integer runtime has no op {op!r}")

    # ---------------------------------------------------------------- run
    def _inputs(self, input_ids, attention_mask, token_type_ids) -> dict:
        env = prepare_inputs(input_ids, attention_mask, token_type_ids)
        T = env["input_ids"].shape[1]
        if self.max_len is not None and T > self.max_len:
            raise InputError(f"input_ids has sequence length {T}, longer than the {self.max_len} positions this "
                             "model supports (position table / relative-position index): truncate the input")
        return env

    def _execute(self, env: dict, *, keep_all: bool = False, times: dict | None = None,
                 record: list | None = None, plan: BufferPlan | None = None) -> dict:
        """Run the bound steps over ``env``; drops intermediates after their last use unless
        ``keep_all`` (then every value is copied to the host); ``times`` collects seconds per op;
        ``plan`` supplies output buffers; ``record`` collects, per node, the output's
        :class:`OutputRecord` and the inputs it may view (for :func:`plan_buffers`)."""
        B, T = env["input_ids"].shape
        consts = self.graph.constants
        outs = plan.outs if plan is not None else None
        for k, ((node, step), free) in enumerate(zip(self._steps, self._free)):
            ins = [env[i] if i in env else consts[i] for i in node.inputs]
            t0 = time.perf_counter()
            y = step.fn(ins, B, T, out=outs[k]) if outs is not None and outs[k] is not None else step.fn(ins, B, T)
            if times is not None:
                times[node.op] = times.get(node.op, 0.0) + time.perf_counter() - t0
            if record is not None:  # what planning needs, not the array (which must die at its last use)
                host = isinstance(y, np.ndarray)
                record.append((OutputRecord(y.shape, y.dtype, y.flags.c_contiguous) if host else None,
                               tuple(i for i, x in zip(node.inputs, ins) if i not in consts
                                     and host and isinstance(x, np.ndarray) and np.may_share_memory(x, y))))
            env[node.outputs[0]] = _host(y) if keep_all else y
            if not keep_all:
                for i in free + self._unused[k]:
                    env.pop(i, None)
        return env

    def _run_env(self, env: dict, times: dict | None = None) -> tuple[dict, BufferPlan | None]:
        """Run with the buffer plan of this input shape (recording and planning it on first sight)."""
        if not self.plan_buffers:
            return self._execute(env, times=times), None
        key = tuple(env["input_ids"].shape)
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                record: list = []
                env = self._execute(env, times=times, record=record)
                self._plans[key] = plan_buffers(self.graph, [s.takes_out for _, s in self._steps], record, key)
                while len(self._plans) > MAX_PLANS:
                    self._plans.popitem(last=False)
                return env, None  # this call's outputs were freshly allocated
            self._plans.move_to_end(key)
            env = self._execute(env, times=times, plan=plan)
            return {o: (np.array(env[o]) if o in plan.escaping else env[o]) for o in self.graph.outputs}, plan

    def planned_bytes(self, batch: int, seq: int) -> int | None:
        """Bytes of the buffer plan for inputs ``[batch, seq]`` (None until a call at that shape)."""
        plan = self._plans.get((batch, seq))
        return None if plan is None else plan.nbytes

    def run(self, input_ids, attention_mask=None, token_type_ids=None):
        """Run the graph; returns its (first) float32 output, or a tuple for several outputs."""
        env, _ = self._run_env(self._inputs(input_ids, attention_mask, token_type_ids))
        outs = [np.asarray(_host(env[o])) for o in self.graph.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def profile(self, input_ids, attention_mask=None, token_type_ids=None, reps: int = 3) -> dict[str, float]:
        """Median seconds per call spent in each op type over ``reps`` runs (after one warm-up run);
        the kernels' results are host-synchronised like :meth:`run`."""
        self.run(input_ids, attention_mask, token_type_ids)
        per_rep: list[dict[str, float]] = []
        for _ in range(max(1, reps)):
            per_rep.append({})
            self._run_env(self._inputs(input_ids, attention_mask, token_type_ids), times=per_rep[-1])
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


def plan_buffers(graph: ir.Graph, takes_out: list[bool], record: list, shape: tuple[int, int]) -> BufferPlan:
    """Plan output buffers from one recorded run (``record[k] = (OutputRecord | None, inputs its
    output may view)``).

    Node ``k`` gets a buffer when its step takes ``out=``, its recorded output is a C-contiguous
    numpy array and not a graph output.  A value holds its buffer (and a view holds the buffers
    of what it views) from its node until its last reader; a freed buffer is reused by the next
    output that fits (best fit), otherwise a new 64-byte-aligned block is allocated.
    """
    last: dict[str, int] = {}
    for k, n in enumerate(graph.nodes):
        for i in n.inputs:
            last[i] = k
    keep = set(graph.outputs)
    free: list[int] = []  # indices into blocks
    blocks: list[np.ndarray] = []
    refs: dict[int, int] = {}
    roots: dict[str, tuple[int, ...]] = {}
    dying: dict[int, list[str]] = {}
    outs: list = []
    for k, (node, (y, views)) in enumerate(zip(graph.nodes, record)):
        name = node.outputs[0]
        if takes_out[k] and name not in keep and y is not None and y.c_contiguous and y.nbytes:
            need = y.nbytes
            fits = [b for b in free if blocks[b].nbytes >= need]
            if fits:
                b = min(fits, key=lambda i: blocks[i].nbytes)
                free.remove(b)
            else:
                b = len(blocks)
                blocks.append(_aligned_bytes(need))
            outs.append(blocks[b][:need].view(y.dtype).reshape(y.shape))
            roots[name] = (b,)
        else:
            outs.append(None)
            roots[name] = tuple(sorted({b for v in views for b in roots.get(v, ())}))
        for b in roots[name]:
            refs[b] = refs.get(b, 0) + 1
        dying.setdefault(last.get(name, k), []).append(name)  # unread values die at once
        for v in dying.pop(k, []):
            if v in keep:
                continue
            for b in roots.get(v, ()):
                refs[b] -= 1
                if refs[b] == 0:
                    free.append(b)
    escaping = frozenset(o for o in graph.outputs if roots.get(o))
    return BufferPlan(shape, outs, blocks, escaping)


def _aligned_bytes(n: int, align: int = 64) -> np.ndarray:
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n]


def max_sequence_length(graph: ir.Graph) -> int | None:
    """The longest input the graph can take: rows of the position-embedding tables read through
    ``position_ids`` (minus RoBERTa's ``padding_idx + 1`` offset) and of the relative-position
    index tables that do not extend (``extend`` gathers take any length); None when nothing limits it."""
    limits = []
    offset = {}
    for n in graph.nodes:
        if n.op == "position_ids":
            offset[n.outputs[0]] = int(n.attr("padding_idx") or 0) + 1 if n.attr("kind") == "padding" else 0
        elif n.op == "embedding_lookup" and n.inputs[0] in offset:
            limits.append(graph.constants[n.attr("table")].shape[0] - offset[n.inputs[0]])
        elif n.op in ("gather", "scatter_add") and not n.attr("extend", False):
            limits.append(graph.constants[n.attr("index")].shape[0])
        elif n.op == "rel_scores":
            limits += [graph.constants[n.attr(f"{t}_index")].shape[0] for t in ("c2p", "p2c")
                       if not n.attr(f"{t}_extend")]
    return min(limits) if limits else None


def run_integer(graph: ir.Graph, input_ids, attention_mask=None, token_type_ids=None, backend: str = "ref"):
    """One-shot convenience: bind ``graph`` to ``backend`` and run it."""
    return Executor(graph, backend).run(input_ids, attention_mask, token_type_ids)

"""Integer-only ONNX export: intengine's integer IR → standard ONNX ops, bit-exact with ``ref``.

:func:`build_integer_model` translates ``qm.graph`` (stage ``"integer"``) node by node, one
function per IR op (:data:`TRANSLATIONS`, like ``lower.RULES``), into an ONNX graph that stock
onnxruntime (CPUExecutionProvider) runs with exactly the results of ``qm.run(backend="ref")``.
The only float ops are the ``Cast``/``Mul`` of each final ``dequantize``.

Conventions (the specification of every op is its ``*_ref`` kernel in ``intengine.kernels``):

* **Arithmetic shifts.**  ONNX ``BitShift`` takes unsigned types only, so signed values are
  viewed as ``uint64`` two's complement (``Cast`` int→uint64 is modular; ``Add``/``Sub``/``Mul``
  on uint64 wrap mod 2^64, which gives the bits of the signed result).  The rounding shift of the
  kernels, ``R(x, m, s) = floor((x·m + 2^(s-1)) / 2^s)``, is computed as

      r = ((x·m + 2^63 + 2^(s-1)) mod 2^64) >> s   =   R(x, m, s) + 2^(63-s)

  which is exact whenever ``-2^63 < x·m`` and ``x·m + 2^(s-1) < 2^63``: the biased numerator
  is then a true non-negative integer below 2^64 and the offset ``2^63`` is a multiple of 2^s.
  :meth:`_Builder.round_shift` checks that condition at build time from a bound on ``|x|`` (the
  dtype's range, or a bound derived from the kernel's documented overflow analysis) and returns
  ``r`` with its offset ``2^(63-s)``; callers subtract the offset (often folded with other
  constants) and saturate.
* **Non-negative quantities** (i-exp's range reduction, softmax normalisation, isqrt) stay in
  uint64, where ``BitShift`` is a floor and ``Div`` is a floor division.
* **GEMMs**: ``MatMulInteger`` with uint8 activations ``x + 128`` (a wrapping uint8 ``Add`` on
  the int8 bits) and ``a_zero_point = 128``, int8 weights as ``[..., K, N]`` initializers (zero
  point 0), int32 accumulators; u8 softmax probabilities enter with zero point 0.  Checked exact
  on x86 with AVX-512 VNNI / AMX.  onnxruntime documents that its u8×s8 kernels for x86 without
  VNNI (AVX2 ``vpmaddubsw``) can saturate int16 pair sums; for such hosts ``weights="u8"`` stores
  uint8 weights ``w + 128`` with ``b_zero_point = 128`` (the u8×u8 kernels widen to int16 first).
* **Tables.** Elementwise ops of one int8 input (i-GELU, i-tanh, i-exp) become
  a 256-entry ``Gather``, and softmax's i-exp of ``u = max - x`` for int8/int16 scores a
  ``2·2^(bits-1)``-entry one (65536 for int16); the entries are the ``*_ref`` kernels evaluated on
  every possible input, so the lookups are exact by construction (``tables=False`` emits the
  arithmetic instead).  Entries are int32: onnxruntime's Gather is faster on 4-byte elements.
* **Dynamic shapes**: inputs are ``[batch, sequence]``; the ``B``/``T`` symbols of reshapes come
  from ``Shape(input_ids)``; relative-position tables are sliced ``[:T, :T]`` at run time.

Values keep the IR dtype (int8/int16/int32/int64/uint8/bool) at every IR value boundary; int16
is widened to int32 before arithmetic (onnxruntime lacks int16 ``Where``/``Min``/``Max``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ir
from .errors import LoweringError
from .onnx_export import prune_unused
from .kernels.gather import toeplitz_diagonal
from .kernels.gelu import CONST_NAMES as GELU_CONSTS, gelu_ref
from .kernels.layernorm import (
    ISQRT_UPDATES, NARROW_BITS, NARROW_Z_BITS, WIDE_BITS, _eps_min_shift, y_bits, z_bits,
)
from .kernels.softmax import (
    ALPHA_I64, BETA_I64, EXP_HALF, EXP_ONE, POLY_SHIFT, SOFTMAX_NORM_BITS, SOFTMAX_OUT_LEVELS,
    T_FRAC_BITS, Z_ZERO, _exp_core_ref, exp_ref,
)
from .kernels.tanh import tanh_ref

__all__ = ["build_integer_model", "translate_graph", "TRANSLATIONS", "OnnxTranslationError", "OPSET"]

OPSET = 17  # default; 17..21 (ScatterElements reduction="add" needs 16, Shape start/end 15)
IR_VERSIONS = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}  # the IR version that introduced each opset
U64 = np.uint64
I64 = np.int64
TWO63 = 1 << 63
MOD64 = 1 << 64

_NP_OF_IR = {k: np.dtype(v) for k, v in ir.NUMPY_DTYPES.items()}
_BOUND_OF = {np.dtype(np.int8): 1 << 7, np.dtype(np.uint8): 255, np.dtype(np.int16): 1 << 15,
             np.dtype(np.int32): 1 << 31, np.dtype(np.bool_): 1}
_SHORT = {np.dtype(d): n for d, n in ((np.int8, "i8"), (np.uint8, "u8"), (np.int16, "i16"), (np.int32, "i32"),
                                         (np.int64, "i64"), (np.uint64, "u64"), (np.float32, "f32"),
                                         (np.bool_, "bool"))}


class OnnxTranslationError(LoweringError):
    """An integer-IR node cannot be translated to ONNX (names the node and the op)."""


def _onnx_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _container(bits: int) -> np.dtype:
    for w, d in ((8, np.int8), (16, np.int16), (32, np.int32)):
        if bits <= w:
            return np.dtype(d)
    raise OnnxTranslationError(f"no integer container for {bits} bits")


def _map(f, v) -> np.ndarray:
    """``f`` applied to every element of a scalar or vector of (Python or numpy) ints, exactly."""
    a = np.asarray(v, dtype=object)
    return np.array([f(int(t)) for t in a.ravel()], dtype=object).reshape(a.shape)


def _u64(v) -> np.ndarray:
    """Ints (possibly negative or ≥ 2^63) as uint64 two's complement, i.e. mod 2^64."""
    return _map(lambda t: t % MOD64, v).astype(U64)


def _ints(v) -> np.ndarray:
    """A scalar int or an int vector as an int64 array (for bound checks and constant folding)."""
    return np.asarray(v, dtype=I64)


class _Builder:
    """The ONNX graph under construction: nodes, initializers and the IR value → tensor map."""

    def __init__(self, graph: ir.Graph, *, tables: bool = True, weights: str = "s8", opset: int = OPSET):
        if weights not in ("s8", "u8"):
            raise OnnxTranslationError(f"weights must be 's8' or 'u8', got {weights!r}")
        if opset not in IR_VERSIONS:
            raise OnnxTranslationError(f"opset must be one of {sorted(IR_VERSIONS)}, got {opset!r}")
        self.g, self.tables, self.weights, self.opset = graph, tables, weights, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.env: dict[str, str] = {}  # IR value name -> ONNX tensor name
        self._const_keys: dict[tuple, str] = {}
        self._names: set[str] = set()
        self._memo: dict[tuple, str] = {}
        self._transposes: dict[str, tuple[str, tuple[int, ...]]] = {}  # out -> (root, perm)
        self.prefix = "graph"

    # ------------------------------------------------------------------ naming and emission
    def fresh(self, hint: str) -> str:
        base = hint if hint.startswith(self.prefix + "/") else f"{self.prefix}/{hint}"
        name, k = base, 1
        while name in self._names or name in self.g.constants:
            k += 1
            name = f"{base}.{k}"
        self._names.add(name)
        return name

    def op(self, op_type: str, inputs, dtype=None, *, out: str | None = None, hint: str | None = None,
           **attrs) -> str:
        """Append one ONNX node; returns its output name.  ``dtype`` defaults to the first input's."""
        inputs = [i if i is not None else "" for i in inputs]
        if dtype is None:
            dtype = self.dtypes[inputs[0]]
        name = out if out is not None else self.fresh(hint or op_type)
        self._names.add(name)
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        self.dtypes[name] = np.dtype(dtype)
        return name

    def const(self, value, dtype, hint: str = "c", *, name: str | None = None) -> str:
        """An initializer holding ``value`` (deduplicated by dtype, shape and bytes).  Scalars are
        named by value (``u64_128``), others ``<node>/<hint>`` unless ``name`` is given."""
        arr = np.array(np.asarray(value).astype(dtype), order="C")  # (ascontiguousarray makes 0-d 1-d)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_keys:
            if name is None and arr.ndim == 0:
                name = f"{_SHORT[arr.dtype]}_{arr.item()}"
            if name is None or name in self._names or name in self.g.constants:
                name = self.fresh(name or hint)
            self._names.add(name)
            self.inits[name] = numpy_helper.from_array(arr, name)
            self.dtypes[name] = arr.dtype
            self._const_keys[key] = name
        return self._const_keys[key]

    def u64(self, v) -> str:
        return self.const(_u64(v), U64, "u64")

    def i64(self, v) -> str:
        return self.const(np.asarray(v, I64), I64, "i64")

    def get(self, ir_name: str) -> str:
        """The ONNX tensor of an IR value; graph constants become initializers on first use."""
        if ir_name not in self.env:
            if ir_name not in self.g.constants:
                raise OnnxTranslationError(f"internal: IR value {ir_name!r} has no ONNX tensor yet")
            arr = self.g.constants[ir_name]
            self.inits[ir_name] = numpy_helper.from_array(np.ascontiguousarray(arr), ir_name)
            self.dtypes[ir_name] = arr.dtype
            self._names.add(ir_name)
            self.env[ir_name] = ir_name
        return self.env[ir_name]

    def memo(self, key: tuple, make: Callable[[], str]) -> str:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # ------------------------------------------------------------------ elementary helpers
    def cast(self, x: str, dtype) -> str:
        dtype = np.dtype(dtype)
        if self.dtypes[x] == dtype:
            return x
        return self.memo(("cast", x, dtype.str), lambda: self.op("Cast", [x], dtype, to=_onnx_type(dtype)))

    def as_u8(self, x: str) -> str:
        """int8 ``x`` → uint8 ``x + 128`` (modular cast to uint8, wrapping uint8 Add); uint8 stays."""
        if self.dtypes[x] == np.uint8:
            return x
        if self.dtypes[x] != np.int8:
            raise OnnxTranslationError(f"internal: as_u8 expects int8, got {self.dtypes[x]}")
        return self.memo(("u8", x), lambda: self.op("Add", [self.cast(x, np.uint8), self.const(np.uint8(128), np.uint8)],
                                                    hint="plus128"))

    def shape(self, x: str, start: int | None = None, end: int | None = None) -> str:
        attrs = {}
        if start is not None:
            attrs["start"] = start
        if end is not None:
            attrs["end"] = end
        return self.memo(("shape", x, start, end), lambda: self.op("Shape", [x], I64, **attrs))

    def dim(self, sym: str) -> str:
        """1-D int64 ``[1]`` tensor holding the run-time batch (``"B"``) or sequence (``"T"``) size."""
        k = {"B": 0, "T": 1}[sym]
        return self.shape(self.env["input_ids"], k, k + 1)

    def transpose(self, x: str, perm) -> str:
        """Transpose, composing chains of transposes (and dropping identities)."""
        perm = tuple(int(p) for p in perm)
        root, p0 = self._transposes.get(x, (x, tuple(range(len(perm)))))
        composed = tuple(p0[p] for p in perm)
        if composed == tuple(range(len(perm))):
            return root

        def make():
            out = self.op("Transpose", [root], perm=list(composed))
            self._transposes[out] = (root, composed)
            return out

        return self.memo(("transpose", root, composed), make)

    def reduce(self, op_type: str, x: str, axis: int = -1) -> str:
        """Reduction over one axis, kept (ReduceMax/Min take their axes as an input from opset 18)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.i64([axis])], keepdims=1)
        return self.op(op_type, [x], axes=[axis], keepdims=1)

    # ------------------------------------------------------------------ the rounding shift
    def round_shift(self, x: str, m, s, bound: int, x_offset=0) -> tuple[str, np.ndarray]:
        """``R(x, m, s) + 2^(63-s)`` as uint64, and that offset (see the module docstring).

        ``m``, ``s``: ints or int vectors along the last axis; ``bound`` ≥ max ``|x|``.  ``x`` may
        be a uint64 tensor holding ``x + x_offset`` mod 2^64 (e.g. the biased output of a previous
        round_shift): the offset is folded into the rounding constant.  Raises unless
        ``bound·|m| + 2^(s-1) < 2^63``.
        """
        m_a, s_a = _ints(m), _ints(s)
        if np.any(s_a < 1) or np.any(s_a > 62):
            raise OnnxTranslationError(f"{self.prefix}: shift outside [1, 62]")
        worst = int(bound) * int(np.abs(m_a).max()) + (1 << (int(s_a.max()) - 1))
        if worst >= TWO63:
            raise OnnxTranslationError(
                f"{self.prefix}: cannot prove |x·m| + 2^(s-1) < 2^63 (|x| ≤ {bound}, |m| ≤ {np.abs(m_a).max()})")
        v = self.cast(x, U64)
        if not (m_a.ndim == 0 and int(m_a) == 1):
            v = self.op("Mul", [v, self.u64(m_a)], hint="mul_m")
        rnd = _map(lambda t: TWO63 + (1 << (t - 1)), s_a) - np.asarray(x_offset, dtype=object) * m_a.astype(object)
        v = self.op("Add", [v, self.u64(rnd)], hint="bias")
        r = self.op("BitShift", [v, self.u64(s_a)], direction="RIGHT", hint="shr")
        return r, _map(lambda t: 1 << (63 - t), s_a)

    def signed(self, r: str, offset, extra=0) -> str:
        """uint64 ``r - offset + extra`` (two's complement), e.g. to finish :meth:`round_shift`."""
        c = np.asarray(extra, dtype=object) - np.asarray(offset, dtype=object)
        return self.op("Add", [r, self.u64(c)], hint="signed")

    def finish(self, r: str, offset, bits: int) -> str:
        """``clip(r - offset, -Q, Q)`` in the ``bits`` container: ``r`` holds ``v + offset`` (uint64)
        with ``|v| < 2^63``, e.g. from :meth:`round_shift` (``|v| < 2^62``) or a sum of two.

        The clip runs in uint64 (onnxruntime's int64 ``Min``/``Max``/``Clip`` are wrong on values
        outside the int32 range): ``r`` is clipped to ``[o - Q, o + Q]`` and cast, the modular cast
        dropping ``o`` exactly, which needs every offset ``o`` to be a multiple of 2^width of the
        container and ``≥ Q``; other offsets are first moved to ``2^63``."""
        q = (1 << (bits - 1)) - 1
        dtype = _container(bits)
        off = np.asarray(offset, dtype=object)
        width = 8 * dtype.itemsize
        if not all(o % (1 << width) == 0 and o >= q for o in off.ravel()):
            r, off = self.signed(r, off, TWO63), np.asarray(TWO63, dtype=object)
        if off.ndim == 0:
            v = self.op("Clip", [r, self.u64(off - q), self.u64(off + q)], hint="clip")
        else:  # per-channel offsets: Clip takes scalars only
            v = self.op("Min", [self.op("Max", [r, self.u64(off - q)]), self.u64(off + q)], hint="clip")
        return self.cast(v, dtype)

    def requant(self, x: str, m, s, bits: int, bound: int) -> str:
        """``clip(R(x, m, s), -Q, Q)`` in the ``bits`` container (``requantize_ref``)."""
        r, off = self.round_shift(x, m, s, bound)
        return self.finish(r, off, bits)

    def bound(self, x: str) -> int:
        try:
            return _BOUND_OF[self.dtypes[x]]
        except KeyError:
            raise OnnxTranslationError(f"{self.prefix}: no static bound for a {self.dtypes[x]} tensor") from None

    def table(self, x: str, values: np.ndarray, hint: str) -> str:
        """``values[x + 128]`` for int8 ``x`` (``values`` indexed by -128..127): a 256-entry Gather.

        The table is stored rotated so that Gather's negative indices (``-k`` → ``256 - k``)
        address it with the int8 value itself."""
        rotated = np.concatenate([values[128:], values[:128]])
        # int32 entries: onnxruntime's Gather copies one element per index, 2× faster for 4 bytes
        entries = self.const(rotated.astype(np.int32), np.int32, hint)
        return self.cast(self.op("Gather", [entries, self.cast(x, np.int32)], np.int32, axis=0), values.dtype)

    # ------------------------------------------------------------------ bit tricks on small tensors
    def bit_length(self, x: str) -> str:
        """Significant bits of non-negative int64 values (``_bit_length_np``), as uint64: the
        count of ``k ∈ [0, 63)`` with ``2^k ≤ v`` (a broadcast compare against the 63 powers of
        two, summed over that extra axis; meant for ``[..., 1]`` row tensors)."""
        v = self.op("Unsqueeze", [self.cast(x, U64), self.i64([-1])])
        powers = self.const(np.array([1 << k for k in range(63)], dtype=U64), U64, "powers_of_two")
        hits = self.cast(self.op("GreaterOrEqual", [v, powers], np.bool_), I64)
        n = self.op("ReduceSum", [hits, self.i64([-1])], keepdims=0, hint="bit_length")
        return self.cast(n, U64)

    def isqrt(self, n: str) -> str:
        """``⌊√n⌋`` for int64 ``0 ≤ n < 2^63`` (``isqrt_ref``), int64.

        ``isqrt_ref`` itself runs a fixed ``ISQRT_UPDATES`` = 6 Newton updates
        ``x ← min(x, ⌊(x + ⌊n/x⌋)/2⌋)`` from ``x_0 = 2^⌈L/2⌉`` (its docstring proves 6 suffice for
        every ``n < 2^63``); unrolling the same 6 updates reproduces it step for step.  All values
        are non-negative (``x ≤ 2^32``, ``n/x < 2^32``), so uint64 ``Div``/``BitShift`` are floors."""
        nu = self.cast(n, U64)
        half_l = self.op("BitShift", [self.op("Add", [self.bit_length(nu), self.u64(1)]), self.u64(1)],
                         direction="RIGHT")
        x = self.op("BitShift", [self.u64(1), half_l], direction="LEFT", hint="isqrt.x0")
        # n ≤ 1 is selected below; for n ≥ 2 every iterate is ≥ ⌊√n⌋ ≥ 1, so the ref's max(x, 1)
        # guard is the identity there (running on max(n, 1) keeps n = 0 rows harmless too)
        n1 = self.op("Max", [nu, self.u64(1)])
        for _ in range(ISQRT_UPDATES):
            y = self.op("BitShift", [self.op("Add", [x, self.op("Div", [n1, x])]), self.u64(1)], direction="RIGHT")
            x = self.op("Min", [x, y], hint="isqrt.x")
        small = self.op("LessOrEqual", [nu, self.u64(1)], np.bool_)
        return self.op("Where", [small, self.cast(n, I64), self.cast(x, I64)], I64, hint="isqrt")

    def exp_core(self, u: str, m: int, s: int, u_bound: int) -> str:
        """i-exp core ``_exp_core_ref``: ``≈ exp(-u·S)·2^30`` for uint64 ``u`` (``0 ≤ u ≤ u_bound``).

        Every intermediate is non-negative, so it runs in uint64 where shifts are floors:
        ``t = (u·m) >> s``, ``z = t >> 20``, ``f = t - (z << 20) = t & (2^20-1)``,
        ``g·f >> 21 = -ceil(p / 2^21)`` with ``p = (BETA - ((ALPHA·f) >> 20))·f ≥ 0``
        (``ALPHA·f >> 20 < ALPHA < BETA``), ``L = max(2^30 - ceil(p/2^21), 2^29)`` (``ceil(p/2^21)
        < 2^30``), ``e = L >> min(z, 31)``.  Checks ``u_bound·m < 2^63`` (the ref's bound)."""
        if u_bound * int(m) >= TWO63:
            raise OnnxTranslationError(f"{self.prefix}: i-exp input bound {u_bound} · m overflows")
        t = self.op("BitShift", [self.op("Mul", [u, self.u64(m)]), self.u64(s)], direction="RIGHT", hint="exp.t")
        z = self.op("BitShift", [t, self.u64(T_FRAC_BITS)], direction="RIGHT", hint="exp.z")
        f = self.op("Sub", [t, self.op("BitShift", [z, self.u64(T_FRAC_BITS)], direction="LEFT")], hint="exp.f")
        h = self.op("BitShift", [self.op("Mul", [f, self.u64(ALPHA_I64)]), self.u64(T_FRAC_BITS)], direction="RIGHT")
        p = self.op("Mul", [self.op("Sub", [self.u64(BETA_I64), h]), f], hint="exp.p")
        ceil = self.op("BitShift", [self.op("Add", [p, self.u64((1 << POLY_SHIFT) - 1)]), self.u64(POLY_SHIFT)],
                       direction="RIGHT")
        poly = self.op("Max", [self.op("Sub", [self.u64(EXP_ONE), ceil]), self.u64(EXP_HALF)], hint="exp.L")
        return self.op("BitShift", [poly, self.op("Min", [z, self.u64(Z_ZERO)])], direction="RIGHT", hint="exp.e")


# ================================================================================= translations
# Each takes (builder, node) and returns the ONNX tensor standing for node.outputs[0].


def _attr_const(b: _Builder, v):
    """An attr that is an int, or the name of an integer constant vector."""
    if isinstance(v, str):
        return np.asarray(b.g.constants[v]).astype(I64)
    return v


def _weight_t(b: _Builder, wname: str) -> tuple[str, str | None]:
    """The ``[..., K, N]`` initializer of an ``[..., N, K]`` int8 constant (a linear's weight, or
    DeBERTa's ``[h, 2S, d]`` relative tables), and its zero point."""
    def make():
        w = np.ascontiguousarray(np.swapaxes(b.g.constants[wname], -1, -2))
        if b.weights == "u8":  # exact u8×u8 path for AVX2-only hosts
            return b.const((w.astype(np.int16) + 128).astype(np.uint8), np.uint8, name=f"{wname}.T_u8")
        return b.const(w, np.int8, name=f"{wname}.T")

    wt = b.memo(("weight", wname), make)
    zp = b.const(np.uint8(128), np.uint8, "zp128") if b.weights == "u8" else None
    return wt, zp


def _matmul_integer(b: _Builder, a: str, bt: str, b_zp: str | None) -> str:
    """int32 ``(a - zp_a) @ (bt - zp_b)`` with int8 ``a`` entering as uint8 ``a + 128``."""
    if b.dtypes[a] == np.int8:
        ins = [b.as_u8(a), bt, b.const(np.uint8(128), np.uint8, "zp128")]
    elif b.dtypes[a] == np.uint8:
        ins = [a, bt, None]
    else:
        raise OnnxTranslationError(f"{b.prefix}: MatMulInteger operand A is {b.dtypes[a]}")
    if b_zp is not None:
        ins.append(b_zp)
    while ins and ins[-1] is None:
        ins.pop()
    return b.op("MatMulInteger", ins, np.int32, hint="matmul")


def _epilogue(b: _Builder, node: ir.Node, acc: str) -> str:
    """The fused requantization of linear/matmul (int32 accumulators when no multiplier)."""
    m = node.attr("m_i32")
    if m is None:
        return acc
    return b.requant(acc, _attr_const(b, m), _attr_const(b, node.attr("shift")), node.attr("out_bits", 8), 1 << 31)


def tr_linear(b: _Builder, node: ir.Node) -> str:
    """``linear_ref``: ``x·Wᵀ + bias`` (int32), optional requantize epilogue."""
    wt, zp = _weight_t(b, node.attr("weight"))
    acc = _matmul_integer(b, b.get(node.inputs[0]), wt, zp)
    if node.attr("bias") is not None:
        acc = b.op("Add", [acc, b.get(node.attr("bias"))], hint="bias")
    return _epilogue(b, node, acc)


def tr_matmul(b: _Builder, node: ir.Node) -> str:
    """``matmul_ref``: batched ``A·Bᵀ`` (NT layout); a constant B is a weight initializer."""
    a, bname = node.inputs
    if bname in b.g.constants:
        bt, zp = _weight_t(b, bname)
    else:
        rank = len(b.g.value(bname).shape)
        bt = b.transpose(b.get(bname), tuple(range(rank - 2)) + (rank - 1, rank - 2))
        zp = None
        if b.weights == "u8":
            bt, zp = b.as_u8(bt), b.const(np.uint8(128), np.uint8, "zp128")
    return _epilogue(b, node, _matmul_integer(b, b.get(a), bt, zp))


def tr_requantize(b: _Builder, node: ir.Node) -> str:
    """``requantize_ref``."""
    x = b.get(node.inputs[0])
    return b.requant(x, _attr_const(b, node.attr("m_i32")), _attr_const(b, node.attr("shift")),
                     node.attr("out_bits"), b.bound(x))


def tr_rescale_add(b: _Builder, node: ir.Node) -> str:
    """``rescale_add_ref``: ``clip(R(a) + R(b))``; the two offsets fold into one constant."""
    xa, xb = (b.get(i) for i in node.inputs)
    ra, off_a = b.round_shift(xa, _attr_const(b, node.attr("m_a")), _attr_const(b, node.attr("shift_a")), b.bound(xa))
    rb, off_b = b.round_shift(xb, _attr_const(b, node.attr("m_b")), _attr_const(b, node.attr("shift_b")), b.bound(xb))
    total = b.op("Add", [ra, rb], hint="sum")
    return b.finish(total, np.asarray(off_a, dtype=object) + np.asarray(off_b, dtype=object), node.attr("out_bits"))


def _gelu_arith(b: _Builder, x: str, p: dict) -> str:
    """``gelu_ref`` in int64/uint64 arithmetic, returned in the ``out_bits`` container.

    ``a_t``, ``w`` and the output are clipped in uint64 (onnxruntime's int64 ``Min``/``Max``/
    ``Clip`` are wrong on values outside the int32 range, and ``|x| << -t`` reaches 2^55,
    ``R(x·w, out_shift)`` 2^60): ``a_t ≥ 0`` is compared as is, ``w`` and the output through
    :meth:`_Builder.round_shift`'s biased uint64 results ``R + o``, true non-negative integers
    below 2^64, as ``clip(R, -h, h) + o = Clip(R + o, o - h, o + h)``; the offset ``o`` is moved to
    ``2^63`` (``|R| < 2^62``) where ``o < h``; the output's clip is :meth:`_Builder.finish`'s."""
    t, b_int, c_int, w0 = p["in_shift"], p["b_int"], p["c_int"], p["w0"]
    x64 = b.cast(x, I64)
    a = b.cast(b.op("Abs", [x64]), U64)  # |x| ≤ 2^31
    if t < 0:
        a = b.op("BitShift", [a, b.u64(-t)], direction="LEFT", hint="gelu.lsh")  # |x|·2^24 < 2^55
    elif t > 0:
        a = b.op("BitShift", [b.op("Add", [a, b.u64(1 << (t - 1))]), b.u64(t)], direction="RIGHT", hint="gelu.rsh")
    a = b.op("Min", [a, b.u64(-b_int)], hint="gelu.a")  # a_t ≤ -b_int < 2^16
    d = b.op("Add", [b.cast(a, I64), b.i64(b_int)])  # in [b_int, 0]
    poly = b.op("Add", [b.op("Mul", [d, d]), b.i64(c_int)])
    poly = b.op("Mul", [poly, b.op("Sign", [x64])], hint="gelu.poly")  # L, |L| < 2^31
    # w = clip(w0 + R(L·m_erf, shift_erf), 0, 2·w0) = clip(R, -w0, w0) + w0, as uint64 in [0, 2^30]
    r, off = b.round_shift(poly, p["m_erf"], p["shift_erf"], max(abs(b_int * b_int + c_int), -c_int))
    off = int(off)
    if off < w0:  # |R| < 2^62: R + 2^63 stays in (0, 2^64)
        r, off = b.signed(r, off, TWO63), TWO63
    w = b.op("Clip", [r, b.u64(off - w0), b.u64(off + w0)], hint="gelu.wclip")
    w = b.op("Sub", [w, b.u64(off - w0)], hint="gelu.w")
    # out = clip(R(x·w, out_shift), -Q, Q); x·w (|x·w| ≤ 2^61) as uint64 two's complement
    xw = b.op("Mul", [b.cast(x64, U64), w], hint="gelu.xw")
    r, off = b.round_shift(xw, 1, p["out_shift"], b.bound(x) * 2 * w0)
    return b.finish(r, off, p["out_bits"])


def tr_gelu(b: _Builder, node: ir.Node) -> str:
    """``gelu_ref`` (i-GELU): the wide int32 output or a requantized one (``out_bits``
    container), one rounding.  int8 inputs (``tables``): one 256-entry table of ``gelu_ref``."""
    x = b.get(node.inputs[0])
    p = {k: int(node.attr(k)) for k in GELU_CONSTS}
    if b.tables and b.dtypes[x] == np.int8:
        return b.table(x, gelu_ref(np.arange(-128, 128, dtype=np.int8), **p), "gelu.table")
    return _gelu_arith(b, x, p)


def tr_lut(b: _Builder, node: ir.Node) -> str:
    """``lut_ref``: ``table[x + 128]``, a 256-entry Gather."""
    return b.table(b.get(node.inputs[0]), b.g.constants[node.attr("table")], "lut.table")


def tr_tanh(b: _Builder, node: ir.Node) -> str:
    """``tanh_ref``: ``sign(x)·⌊(2Q(2^30-e) + (2^30+e)) / (2(2^30+e))⌋`` with ``e = iexp(|x|)``."""
    x = b.get(node.inputs[0])
    m, s, bits = int(node.attr("m_i32")), int(node.attr("shift")), node.attr("out_bits")
    dtype = _container(bits)
    if b.tables and b.dtypes[x] == np.int8:
        return b.table(x, tanh_ref(np.arange(-128, 128, dtype=np.int8), m, s, bits), "tanh.table")
    q = (1 << (bits - 1)) - 1
    x64 = b.cast(x, I64)
    e = b.exp_core(b.cast(b.op("Abs", [x64]), U64), m, s, 1 << 31)
    den = b.op("Add", [e, b.u64(EXP_ONE)])
    num = b.op("Add", [b.op("Mul", [b.op("Sub", [b.u64(EXP_ONE), e]), b.u64(2 * q)]), den])
    y = b.op("Div", [num, b.op("Mul", [den, b.u64(2)])], hint="tanh.y")  # non-negative: floor
    return b.cast(b.op("Mul", [b.cast(y, I64), b.op("Sign", [x64])]), dtype)


def tr_exp(b: _Builder, node: ir.Node) -> str:
    """``exp_ref``: i-exp of ``-min(x, 0)``, int32 at scale 2^-30."""
    x = b.get(node.inputs[0])
    m, s = int(node.attr("m_i32")), int(node.attr("shift"))
    if b.tables and b.dtypes[x] == np.int8:
        return b.table(x, exp_ref(np.arange(-128, 128, dtype=np.int8), m, s), "exp.table")
    u = b.op("Neg", [b.op("Min", [b.cast(x, I64), b.i64(0)])])
    return b.cast(b.exp_core(b.cast(u, U64), m, s, 1 << 31), np.int32)


def tr_softmax(b: _Builder, node: ir.Node) -> str:
    """``softmax_ref`` over the last axis with a broadcastable keep-mask; uint8 at 1/255.

    ``M`` = max over kept keys (masked entries read a sentinel below every score), ``u = M - x``,
    ``e = iexp(u)`` zeroed at masked keys, ``F = ⌊255·2^54 / max(Σe, 1)⌋`` (one Div per row; a
    fully masked row has ``Σe = 0`` and every ``e = 0``, so ``y = 0`` as in the ref),
    ``y = (e·F + 2^53) >> 54`` (``e·F ≤ 255·2^54``)."""
    x_name, mask_name = node.inputs
    x = b.get(x_name)
    m, s = int(node.attr("m_i32")), int(node.attr("shift"))
    bound = b.bound(x)
    # int8/int16 scores: differences fit int32 (sentinel -2^15-1); int32 scores work in int64
    wide = np.dtype(np.int32) if bound <= 1 << 15 else np.dtype(I64)
    xw = b.cast(x, wide)
    keep = b.get(mask_name)
    if b.dtypes[keep] != np.bool_:
        keep = b.op("Cast", [keep], np.bool_, to=TensorProto.BOOL)
    sentinel = b.const(np.array(-bound - 1, wide), wide, "sentinel")
    row_max = b.reduce("ReduceMax", b.op("Where", [keep, xw, sentinel], wide), -1)
    u = b.op("Sub", [row_max, xw], hint="softmax.u")  # kept keys: 0 ≤ u < 2·bound
    if b.tables and wide == np.int32:
        # i-exp of every u ∈ [0, 2·bound) as a table (65536 entries for int16 scores).  Masked keys
        # give u ∈ [-2·bound, 2·bound) too (x ≥ -bound > sentinel), valid Gather indices whose
        # (wrapped) entries are zeroed below.
        table = _exp_core_ref(np.arange(2 * bound, dtype=I64), m, s).astype(np.int32)
        e = b.op("Gather", [b.const(table, np.int32, "exp.table"), u], axis=0, hint="softmax.exp")
    else:
        e = b.exp_core(b.cast(u, U64), m, s, 2 * bound)
    e = b.op("Where", [keep, b.cast(e, I64), b.i64(0)], I64, hint="softmax.e")  # masked keys → 0
    total = b.reduce("ReduceSum", e, -1)
    num = b.i64(SOFTMAX_OUT_LEVELS << SOFTMAX_NORM_BITS)
    factor = b.op("Div", [num, b.op("Max", [total, b.i64(1)])], hint="softmax.F")
    y = b.op("Add", [b.op("Mul", [e, factor]), b.i64(1 << (SOFTMAX_NORM_BITS - 1))])  # ≤ 255·2^54 + 2^53
    y = b.op("BitShift", [b.cast(y, U64), b.u64(SOFTMAX_NORM_BITS)], direction="RIGHT", hint="softmax.y")
    return b.cast(y, np.uint8)


def tr_layernorm(b: _Builder, node: ir.Node) -> str:
    """``layernorm_ref``: exact centring, per-row shift, eps, isqrt, output profile, folded affine.

    Per row of length ``C`` (``h(s) = ⌊2^(s-1)⌋``, ``>>`` a floor; ``FB``, ``ZB``, ``YB`` as the ref)::

        q = ⌊Σx/C⌋,  r = Σx - q·C,  D = max(max x - q, q - min x)
        sh = max(bit_length(D) - YB, sh_eps),  L = max(-sh, 0),  R = min(max(sh, 0), 62)
        ρ = ⌊(r·2^(L+1) + C) / 2C⌋,  y = ((x - q)·2^L - ρ + h(R)) >> R
        V = Σy² + ⌊eps_m·2^(-eps_e-2·sh)⌋,  std = isqrt(V),  b = bit_length(std),  F = ⌊(2^(b+FB) - 1)/std⌋
        narrow: y ← (y + h(k)) >> k with k = YB - 14, zs = max(b - k - 1, 0);  wide: zs = b
        z = (y·F + h(zs)) >> zs  (narrow: clipped to ±(2^ZB - 1)),  out = clip((z·m + bias) >> shift, ±Q)

    Row quantities are ``[..., 1]`` tensors (int64; uint64 for shift amounts and powers of two).
    ``q``: ``Div`` truncates, so the dividend is made non-negative, ``⌊Σx/C⌋ = (Σx + C·N) div C - N``
    with ``C·N ≥ 2^51 ≥ |Σx|``.  onnxruntime's int64 ``ReduceSum`` goes through double, exact
    only below 2^53: fine for ``Σx``; ``Σy² ≤ 2^62`` is summed as two halves of ``y²``.  Its int64
    ``Max``/``Min``/``Clip`` are wrong on some values outside the int32 range (bit 31 of the low
    word), so large values are compared in uint64.  Full-size work is uint64 two's complement (module
    docstring): a signed floor shift adds ``2^63`` (folded into a row or channel constant),
    shifts, and removes ``2^63 >> s``.  ``z`` is carried as ``z + 2^63`` (the narrow clip is then
    one uint64 ``Clip``); that offset times ``m`` folds into the channel constant.
    """
    x = b.get(node.inputs[0])
    c = int(b.g.value(node.inputs[0]).shape[-1])
    m_vec, s_vec = _ints(_attr_const(b, node.attr("m_i32"))), _ints(_attr_const(b, node.attr("shift")))
    bias = _ints(_attr_const(b, node.attr("bias_i64")))
    eps_m, eps_e, bits = int(node.attr("eps_m")), int(node.attr("eps_e")), int(node.attr("out_bits"))
    narrow = bits <= 8
    yb, fb = y_bits(c), (NARROW_BITS if narrow else WIDE_BITS)
    # |z| ≤ 2^ZB + 2 (the ref's overflow bound): |z·m + bias| < 2^63 makes the final shift exact
    if ((1 << z_bits(bits)) + 2) * int(np.abs(m_vec).max()) + int(np.abs(bias).max()) >= TWO63:
        raise OnnxTranslationError(f"{b.prefix}: cannot prove |z·m + bias| < 2^63")
    if np.any(s_vec < 0) or np.any(s_vec > 62):
        raise OnnxTranslationError(f"{b.prefix}: layernorm shift outside [0, 62]")

    def half(s: str) -> str:  # h(s) = (1 << s) >> 1, uint64
        return b.op("BitShift", [b.op("BitShift", [b.u64(1), s], direction="LEFT"), b.u64(1)], direction="RIGHT")

    # --- row statistics
    x64 = b.cast(x, I64)
    total = b.reduce("ReduceSum", x64)  # |Σx| ≤ 2^51: exact
    n_off = -(-(1 << 51) // c)
    q = b.op("Sub", [b.op("Div", [b.op("Add", [total, b.i64(c * n_off)]), b.i64(c)]), b.i64(n_off)], hint="ln.q")
    r = b.op("Sub", [total, b.op("Mul", [q, b.i64(c)])], hint="ln.r")  # 0 ≤ r < C
    hi = b.cast(b.reduce("ReduceMax", x), I64)
    lo = b.cast(b.reduce("ReduceMin", x), I64)
    # D < 2^33 compared in uint64: onnxruntime's int64 Max/Min/Clip are only trusted on int32-range values
    dev = b.op("Max", [b.cast(b.op("Sub", [hi, q]), U64), b.cast(b.op("Sub", [q, lo]), U64)], hint="ln.D")
    sh = b.op("Sub", [b.cast(b.bit_length(dev), I64), b.i64(yb)])
    sh = b.op("Max", [sh, b.i64(_eps_min_shift(eps_m, eps_e))], hint="ln.sh")  # ≥ -YB: L ≤ 30
    lsh = b.cast(b.op("Max", [b.op("Neg", [sh]), b.i64(0)]), U64)
    rsh = b.cast(b.op("Min", [b.op("Max", [sh, b.i64(0)]), b.i64(62)]), U64)
    pow_l = b.op("BitShift", [b.u64(1), lsh], direction="LEFT", hint="ln.pow_l")
    pow_l64 = b.cast(pow_l, I64)
    rho = b.op("Div", [b.op("Add", [b.op("Mul", [b.op("Mul", [r, pow_l64]), b.i64(2)]), b.i64(c)]),
                       b.i64(2 * c)], hint="ln.rho")  # non-negative: a floor

    # --- y = (x·2^L + [2^63 + h(R) - q·2^L - ρ]) >> R  -  2^63 >> R      (|y| ≤ 2^YB)
    row_sub = b.cast(b.op("Add", [b.op("Mul", [q, pow_l64]), rho]), U64)  # |q·2^L + ρ| < 2^62
    row_add = b.op("Sub", [b.op("Add", [half(rsh), b.u64(TWO63)]), row_sub], hint="ln.row_add")
    shifted = b.op("BitShift", [b.op("Add", [b.op("Mul", [b.cast(x64, U64), pow_l]), row_add]), rsh],
                   direction="RIGHT")
    y = b.op("Sub", [shifted, b.op("BitShift", [b.u64(TWO63), rsh], direction="RIGHT")], hint="ln.y")

    # --- V = Σ(y² >> 30)·2^30 + Σ(y² mod 2^30): both sums < 2^53 (exact in ReduceSum), Σy² ≤ 2^62; std, F
    y2 = b.op("Mul", [y, y], hint="ln.y2")  # ≤ 2^60
    y2_hi = b.op("BitShift", [y2, b.u64(30)], direction="RIGHT")  # Σ ≤ C·2^(2·YB-30) ≤ 2^32
    y2_lo = b.op("Sub", [y2, b.op("BitShift", [y2_hi, b.u64(30)], direction="LEFT")])  # Σ < C·2^30 ≤ 2^50
    var = b.op("Add", [b.op("Mul", [b.reduce("ReduceSum", b.cast(y2_hi, I64)), b.i64(1 << 30)]),
                       b.reduce("ReduceSum", b.cast(y2_lo, I64))], hint="ln.sumsq")
    if eps_m:
        e_tot = b.op("Add", [b.op("Mul", [sh, b.i64(2)]), b.i64(eps_e)])  # ≥ -31 (sh ≥ sh_eps)
        right = b.cast(b.op("Min", [b.op("Max", [e_tot, b.i64(0)]), b.i64(62)]), U64)
        left = b.cast(b.op("Min", [b.op("Max", [b.op("Neg", [e_tot]), b.i64(0)]), b.i64(62)]), U64)
        eps_s = b.op("BitShift", [b.op("BitShift", [b.u64(eps_m), left], direction="LEFT"), right],
                     direction="RIGHT", hint="ln.eps")
        var = b.op("Add", [var, b.cast(eps_s, I64)], hint="ln.var")
    std = b.cast(b.isqrt(var), U64)
    bl = b.bit_length(std)  # ≤ 32
    num = b.op("Sub", [b.op("BitShift", [b.u64(1), b.op("Add", [bl, b.u64(fb)])], direction="LEFT"), b.u64(1)])
    # std == 0 only when every y is 0 (and b = zs = 0), so z = 0 whatever F is
    f = b.op("Div", [num, b.op("Max", [std, b.u64(1)])], hint="ln.F")

    # --- z + 2^63 = (y·F + [2^63 + h(zs)]) >> zs  +  (2^63 - 2^63 >> zs)
    if narrow:
        k = yb - NARROW_BITS  # ≥ 7
        yz, off_y = b.round_shift(y, 1, k, 1 << yb)  # ⌊(y + h(k)) / 2^k⌋ + off_y
        zs = b.op("Sub", [b.op("Max", [bl, b.u64(k + 1)]), b.u64(k + 1)], hint="ln.zs")
    else:
        yz, off_y, zs = y, 0, bl
    z_add = b.op("Add", [half(zs), b.u64(TWO63)])
    if off_y:  # yz·F carries off_y·F
        z_add = b.op("Sub", [z_add, b.op("Mul", [f, b.u64(off_y)])])
    zsh = b.op("BitShift", [b.op("Add", [b.op("Mul", [yz, f]), z_add], hint="ln.yF"), zs], direction="RIGHT")
    z_fix = b.op("Sub", [b.u64(TWO63), b.op("BitShift", [b.u64(TWO63), zs], direction="RIGHT")])
    z = b.op("Add", [zsh, z_fix], hint="ln.z")  # z + 2^63
    if narrow:
        zq = (1 << NARROW_Z_BITS) - 1
        z = b.op("Clip", [z, b.u64(TWO63 - zq), b.u64(TWO63 + zq)], hint="ln.zclip")

    # --- out = clip((z·m + bias) >> shift, ±Q): (z+2^63)·m + [bias + 2^63 - 2^63·m] = z·m + bias + 2^63
    cst = _map(lambda t: t + TWO63, bias) - _map(lambda t: TWO63 * t, m_vec)
    v = b.op("Add", [b.op("Mul", [z, b.u64(m_vec)], hint="ln.zm"), b.u64(cst)], hint="ln.bias")
    out = b.op("BitShift", [v, b.u64(s_vec)], direction="RIGHT", hint="ln.shr")
    return b.finish(out, _map(lambda t: 1 << (63 - t), s_vec), bits)


def tr_embedding_lookup(b: _Builder, node: ir.Node) -> str:
    return b.op("Gather", [b.get(node.attr("table")), b.get(node.inputs[0])], b.g.constants[node.attr("table")].dtype,
                axis=0)


def tr_position_ids(b: _Builder, node: ir.Node) -> str:
    """``arange``: 0..T-1 per row; ``padding``: ``cumsum(ids != pad)·(ids != pad) + pad``."""
    ids = b.get(node.inputs[0])
    kind = node.attr("kind")
    if kind == "arange":
        t = b.op("Squeeze", [b.dim("T"), b.i64([0])])
        rng = b.op("Range", [b.i64(0), t, b.i64(1)], I64)
        return b.op("Expand", [rng, b.shape(ids)])
    if kind == "padding":
        pad = int(node.attr("padding_idx"))
        not_pad = b.cast(b.op("Not", [b.op("Equal", [ids, b.i64(pad)], np.bool_)]), I64)
        pos = b.op("Mul", [b.op("CumSum", [not_pad, b.i64(1)]), not_pad])
        return b.op("Add", [pos, b.i64(pad)])
    raise OnnxTranslationError(f"node {node.label}: unknown position_ids kind {kind!r}")


def tr_reshape(b: _Builder, node: ir.Node) -> str:
    """Reshape to the IR shape: ``0`` copies a symbolic dim in place, one other symbol is ``-1``;
    otherwise the shape is assembled from ``Shape(input_ids)``."""
    x = b.get(node.inputs[0])
    src = tuple(b.g.value(node.inputs[0]).shape)
    shape = tuple(node.attr("shape"))
    dims, free = [], 0
    for i, d in enumerate(shape):
        if isinstance(d, str):
            if i < len(src) and src[i] == d:
                dims.append(0)
                continue
            free += 1
            dims.append(-1)
        else:
            dims.append(int(d))
    if free <= 1:
        target = b.i64(dims)
    else:
        target = b.op("Concat", [b.dim(d) if isinstance(d, str) else b.i64([int(d)]) for d in shape], I64, axis=0)
    return b.op("Reshape", [x, target])


def tr_transpose(b: _Builder, node: ir.Node) -> str:
    return b.transpose(b.get(node.inputs[0]), node.attr("perm"))


def tr_select(b: _Builder, node: ir.Node) -> str:
    """``np.take(x, index, axis)`` with a scalar index (the axis disappears)."""
    return b.op("Gather", [b.get(node.inputs[0]), b.i64(int(node.attr("index")))], axis=int(node.attr("axis")))


def tr_cast_int(b: _Builder, node: ir.Node) -> str:
    return b.cast(b.get(node.inputs[0]), _NP_OF_IR[node.attr("to")])


def _rel_index(b: _Builder, x: str, node: ir.Node, lead_from: str) -> tuple[str, str]:
    """The ``[t, t]`` relative-position index of length ``t = x.shape[-2]`` (as the runtime's
    :func:`~intengine.kernels.gather.index_for_length`), expanded to ``shape(lead_from)[:-1] + [t]``;
    returns (expanded index, t).  A fixed table is sliced; an ``extend`` one is rebuilt from its
    Toeplitz diagonal ``d`` as ``d[clip(i - j, ±(n - 1)) + n - 1]``, which holds for any ``t``."""
    t = b.shape(x, -2, -1)
    index = b.g.constants[node.attr("index")]
    diag = toeplitz_diagonal(index) if node.attr("extend", False) else None
    if diag is None:
        idx = b.op("Slice", [b.get(node.attr("index")), b.i64([0, 0]), b.op("Concat", [t, t], I64, axis=0),
                             b.i64([0, 1])], hint="rel.index")
    else:
        n = index.shape[0]
        pos = b.op("Range", [b.i64(0), b.op("Squeeze", [t, b.i64([0])]), b.i64(1)], I64)
        dist = b.op("Sub", [b.op("Unsqueeze", [pos, b.i64([1])]), b.op("Unsqueeze", [pos, b.i64([0])])])
        dist = b.op("Add", [b.op("Clip", [dist, b.i64(-(n - 1)), b.i64(n - 1)]), b.i64(n - 1)], hint="rel.dist")
        idx = b.op("Gather", [b.const(diag, I64, "rel.diag"), dist], axis=0, hint="rel.index")
    shape = b.op("Concat", [b.shape(lead_from, None, -1), t], I64, axis=0)
    return b.op("Expand", [idx, shape]), t


def tr_gather(b: _Builder, node: ir.Node) -> str:
    """``out[..., i, j] = x[..., i, I[i, j]]`` with ``I = index[:t, :t]`` (runtime's gather)."""
    x = b.get(node.inputs[0])
    idx, _ = _rel_index(b, x, node, x)
    return b.op("GatherElements", [x, idx], axis=-1)


def tr_scatter_add(b: _Builder, node: ir.Node) -> str:
    """``out[..., i, I[i, j]] += x[..., i, j]`` into ``size`` buckets, then ``min(·, 255)`` as uint8.
    Row sums are at most ``t·255 < 2^31`` (int32 accumulators)."""
    x = b.get(node.inputs[0])
    idx, _ = _rel_index(b, x, node, x)
    zshape = b.op("Concat", [b.shape(x, None, -1), b.i64([int(node.attr("size"))])], I64, axis=0)
    zeros = b.op("ConstantOfShape", [zshape], np.int32, value=numpy_helper.from_array(np.zeros(1, np.int32)))
    acc = b.op("ScatterElements", [zeros, idx, b.cast(x, np.int32)], axis=-1, reduction="add", hint="buckets")
    return b.cast(b.op("Min", [acc, b.const(np.int32(255), np.int32, "i32")]), np.uint8)


def tr_mask_fill(b: _Builder, node: ir.Node) -> str:
    """``where(mask, x, 0)`` with a broadcastable bool mask (runtime's mask_fill); dtype kept."""
    x = b.get(node.inputs[0])
    dtype = b.dtypes[x]
    xw = b.cast(x, np.int32) if dtype == np.int16 else x  # (no int16 Where in onnxruntime)
    zero = b.const(np.zeros((), b.dtypes[xw]), b.dtypes[xw])
    return b.cast(b.op("Where", [b.get(node.inputs[1]), xw, zero], b.dtypes[xw]), dtype)


def tr_unfold(b: _Builder, node: ir.Node) -> str:
    """``out[b, t, j·C + c] = x[b, t + j - pad, c]`` (zeros outside the sequence): Pad the
    sequence axis, then concatenate the ``size`` slices ``[j, j + T)``, written with negative ends
    (``j - 2·pad``) so that no run-time length is needed."""
    x = b.get(node.inputs[0])
    size, pad = int(node.attr("size")), int(node.attr("padding"))
    xp = b.op("Pad", [x, b.i64([0, pad, 0, 0, pad, 0])], hint="unfold.pad") if pad else x
    big = np.iinfo(np.int64).max
    parts = [b.op("Slice", [xp, b.i64([j]), b.i64([j - 2 * pad if j < 2 * pad else big]), b.i64([1])],
                  hint=f"unfold.{j}") for j in range(size)]
    return parts[0] if size == 1 else b.op("Concat", parts, axis=-1, hint="unfold")


def tr_dequantize(b: _Builder, node: ir.Node) -> str:
    """The one float op: ``float32(q) · scale`` (``dequantize_ref``), scale per tensor or per channel."""
    x = b.get(node.inputs[0])
    scale = np.asarray(node.attr("scale"), dtype=np.float32)
    axis = node.attr("axis")
    if axis is not None and scale.ndim:
        rank = len(b.g.value(node.inputs[0]).shape)
        ax = axis % rank
        scale = scale.reshape((scale.size,) + (1,) * (rank - 1 - ax))
    f = b.op("Cast", [x], np.float32, to=TensorProto.FLOAT, hint="dequantize.cast")
    s = b.const(scale, np.float32, name=f"{b.prefix}/dequantize.scale")
    return b.op("Mul", [f, s], out=node.outputs[0])


TRANSLATIONS: dict[str, Callable[[_Builder, ir.Node], str]] = {
    "requantize": tr_requantize,
    "rescale_add": tr_rescale_add,
    "linear": tr_linear,
    "matmul": tr_matmul,
    "gelu": tr_gelu,
    "exp": tr_exp,
    "softmax": tr_softmax,
    "layernorm": tr_layernorm,
    "lut": tr_lut,
    "tanh": tr_tanh,
    "embedding_lookup": tr_embedding_lookup,
    "gather": tr_gather,
    "reshape": tr_reshape,
    "transpose": tr_transpose,
    "cast_int": tr_cast_int,
    "position_ids": tr_position_ids,
    "select": tr_select,
    "scatter_add": tr_scatter_add,
    "mask_fill": tr_mask_fill,
    "unfold": tr_unfold,
    "dequantize": tr_dequantize,
}

# ================================================================================= driver

_DIM_NAMES = {"B": "batch", "T": "sequence"}


def _value_info(name: str, dtype, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _onnx_type(dtype), [_DIM_NAMES.get(d, d) for d in shape])


def translate_graph(graph: ir.Graph, *, tables: bool = True, weights: str = "s8", opset: int = OPSET,
                    name: str = "intengine_integer") -> onnx.ModelProto:
    """The ONNX model of an integer-stage graph.  Token inputs (``input_ids``, ``attention_mask``,
    ``token_type_ids``) become int64 ``[batch, sequence]`` inputs (``token_type_ids`` only when
    read); any other graph input keeps its IR dtype.  Outputs keep their IR dtype (float32 after
    a final dequantize)."""
    if graph.stage != "integer":
        raise OnnxTranslationError(f"the integer export takes integer-stage graphs, got stage {graph.stage!r}")
    ir.verify_integer(graph)
    b = _Builder(graph, tables=tables, weights=weights, opset=opset)
    read = {i for n in graph.nodes for i in n.inputs}
    inputs = []
    for name_in in ("input_ids", "attention_mask", "token_type_ids"):
        if name_in not in graph.inputs or (name_in == "token_type_ids" and name_in not in read):
            continue
        inputs.append(_value_info(name_in, I64, ("B", "T")))
        b.dtypes[name_in] = np.dtype(I64)
        b._names.add(name_in)
        b.env[name_in] = name_in
    for extra in graph.inputs:  # other integer inputs (single-op graphs in tests) keep their IR type
        if extra not in b.env and extra in read:
            v = graph.value(extra)
            inputs.append(_value_info(extra, _NP_OF_IR[v.dtype], v.shape))
            b.dtypes[extra] = _NP_OF_IR[v.dtype]
            b._names.add(extra)
            b.env[extra] = extra
    if "attention_mask" in b.env and graph.value("attention_mask").dtype == "bool":
        b.prefix = "attention_mask"
        b.env["attention_mask"] = b.op("Cast", ["attention_mask"], np.bool_, to=TensorProto.BOOL, hint="bool")
    for node in graph.nodes:
        fn = TRANSLATIONS.get(node.op)
        if fn is None:
            raise OnnxTranslationError(
                f"node {node.label}: op {node.op!r} has no ONNX translation (translated ops: {sorted(TRANSLATIONS)})")
        b.prefix = node.label
        out = fn(b, node)
        expected = _NP_OF_IR[graph.value(node.outputs[0]).dtype]
        if b.dtypes[out] != expected:
            raise OnnxTranslationError(
                f"node {node.label}: translation of {node.op!r} produced {b.dtypes[out]}, the IR says {expected}")
        b.env[node.outputs[0]] = out
    outputs = []
    for o in graph.outputs:
        t = b.env[o]
        if t != o:
            b.prefix = o
            t = b.op("Identity", [t], out=o)
        v = graph.value(o)
        outputs.append(_value_info(o, _NP_OF_IR[v.dtype], v.shape))
    # transposes folded away, unused helpers and their constants
    nodes, inits = prune_unused(b.nodes, list(b.inits.values()), list(graph.outputs))
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSIONS[opset],
                             producer_name="intengine")


def build_integer_model(qm, *, opset: int = OPSET, tables: bool = True, weights: str = "s8") -> onnx.ModelProto:
    """The integer-only ONNX model of a :class:`~intengine.quantize.QuantizedModel`.

    Inputs ``input_ids``, ``attention_mask`` (0/1) and, when the graph reads it,
    ``token_type_ids``: int64 ``[batch, sequence]``.  Outputs: the IR outputs (float32, from the
    final dequantize), bit-exact with ``qm.run(..., backend="ref")``.  ``opset``: 17..21.
    ``tables``: int8 elementwise ops and int8/int16 softmax exponentials as exact lookups (else
    arithmetic); ``weights="u8"`` stores uint8 weights for onnxruntime's u8×u8 GEMM on x86 hosts
    without VNNI (see the module docstring).
    Raises :class:`OnnxTranslationError` (a ``LoweringError``) naming the node of an op without a
    translation.
    """
    graph = qm.graph
    name = f"{getattr(qm, 'family', 'model')}_{getattr(qm, 'task', '')}".replace("-", "_")
    return translate_graph(graph, tables=tables, weights=weights, opset=opset, name=f"intengine_{name}_integer")

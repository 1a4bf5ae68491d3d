"""Save and load quantized models: a folder with ``graph.json`` and ``model.safetensors``.

::

    qm = intengine.quantize(model, batches)
    qm.save("out/roberta-int8")                       # == save_quantized(qm, path)
    qm2 = intengine.load_quantized("out/roberta-int8")
    qm2.run(input_ids, attention_mask)                 # bit-identical to qm.run

Folder layout (format ``intengine-quantized``, version :data:`FORMAT_VERSION`):

* ``model.safetensors``: every integer constant of ``qm.graph.constants`` under its graph
  name, dtype and shape kept exactly.
* ``graph.json``: one JSON object::

      {"format": "intengine-quantized", "format_version": 2, "intengine_version": "0.1.0",
       "family": "roberta", "task": "base", "method": "minmax" | null,
       "graph": {"stage": "integer", "inputs": [...], "outputs": [...],
                 "constants": [names, in graph order],
                 "values": [{"name", "dtype", "shape": [int | "B" | "T", ...],
                             "scale": null | float | [float, ...]}, ...],
                 "nodes": [{"op", "inputs", "outputs", "name",
                            "attrs": [[key, value], ...]}, ...]},
       "qparams": {value: {"bits": int, "threshold": float | [...], "shape": [...]}, ...},
       "sha256": {"model.safetensors": hex, "graph.json": hex}}

  Attr values are encoded generically (no per-op code), so that a loaded graph compares equal,
  node for node, to the saved one: JSON arrays are tuples; ``{"$list": [...]}`` a list;
  ``{"$dict": [[k, v], ...]}`` a dict; ``{"$float": "nan" | "inf" | "-inf"}`` a non-finite
  float; numbers keep int vs float (floats are written with ``repr``, which round-trips
  exactly); strings, booleans and null are themselves.  numpy scalars become Python numbers.
  ``sha256["graph.json"]`` covers every other field of the document (canonical JSON: sorted keys,
  no spaces), ``sha256["model.safetensors"]`` the weights file's bytes.

The FP32 graph and weights are not stored: a loaded model has ``fp32_graph = None`` (it runs,
but :func:`intengine.report.error_report` needs the FP32 model).  Saving writes into a temporary
folder beside the target and renames it into place; an existing target is replaced only once the
new folder is complete, and a failed save leaves it untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, ir
from .atomic import write_folder_atomically
from .calibration import QParams
from .errors import IntengineError, QuantizedFormatError

__all__ = ["save_quantized", "load_quantized", "FORMAT", "FORMAT_VERSION", "GRAPH_NAME",
           "WEIGHTS_NAME"]

FORMAT = "intengine-quantized"
FORMAT_VERSION = 3  # 2: i-LayerNorm constants of the two-profile spec; 3: i-GELU with the output scale folded in
GRAPH_NAME = "graph.json"
WEIGHTS_NAME = "model.safetensors"


# ----------------------------------------------------------------------------- attr values


def _enc(v: Any, where: str) -> Any:
    """An attr (or scale) value → JSON-able, reversible by :func:`_dec`."""
    if v is None or isinstance(v, (bool, np.bool_)):
        return None if v is None else bool(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isfinite(f):
            return f
        return {"$float": "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")}
    if isinstance(v, tuple):
        return [_enc(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, list):
        return {"$list": [_enc(x, f"{where}[{i}]") for i, x in enumerate(v)]}
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise QuantizedFormatError(f"cannot save {where}: dict attrs need string keys, got {v!r}")
        return {"$dict": [[k, _enc(x, f"{where}[{k!r}]")] for k, x in v.items()]}
    raise QuantizedFormatError(
        f"cannot save {where}: {type(v).__name__} is not a storable attr value "
        "(expected int, float, str, bool, None, or tuples/lists/dicts of those)"
    )


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _dec(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return tuple(_dec(x, f"{where}[{i}]") for i, x in enumerate(v))
    if isinstance(v, dict) and len(v) == 1:
        (tag, body), = v.items()
        if tag == "$list" and isinstance(body, list):
            return [_dec(x, f"{where}[{i}]") for i, x in enumerate(body)]
        if tag == "$float" and body in _FLOATS:
            return _FLOATS[body]
        if tag == "$dict" and isinstance(body, list) and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in body):
            return {k: _dec(x, f"{where}[{k!r}]") for k, x in body}
    raise _bad(where, "an int, float, string, bool, null, array, or one of {\"$list\": [...]}, "
               "{\"$dict\": [[key, value], ...]}, {\"$float\": \"nan\"|\"inf\"|\"-inf\"}", v)


# ----------------------------------------------------------------------------- save


def _canonical_sha256(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _graph_doc(g: ir.Graph) -> dict:
    values = []
    for v in g.values:
        scale = v.scale
        values.append({
            "name": v.name, "dtype": v.dtype, "shape": [_enc(d, f"value {v.name!r} shape") for d in v.shape],
            "scale": None if scale is None else (
                [_enc(s, f"value {v.name!r} scale") for s in scale] if isinstance(scale, tuple)
                else _enc(scale, f"value {v.name!r} scale")),
        })
    nodes = []
    for n in g.nodes:
        attrs = [[k, _enc(a, f"node {n.label} attr {k!r}")] for k, a in n.attrs]
        nodes.append({"op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs), "name": n.name,
                      "attrs": attrs})
    return {"stage": g.stage, "inputs": list(g.inputs), "outputs": list(g.outputs),
            "constants": list(g.constants), "values": values, "nodes": nodes}


def _qparams_doc(qparams) -> dict:
    out = {}
    for name, qp in qparams.items():
        t = np.asarray(qp.threshold, dtype=np.float64)
        out[str(name)] = {"bits": int(qp.bits), "shape": list(t.shape),
                          "threshold": _enc(float(t) if t.ndim == 0 else tuple(t.ravel().tolist()),
                                            f"qparams {name!r}")}
    return out


def _dump(doc: dict) -> str:
    """graph.json text: compact, one value / node / qparam per line (diff- and grep-friendly)."""

    def j(x):
        return json.dumps(x, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def block(items, indent):
        pad = " " * indent
        return "[\n" + ",\n".join(pad + j(x) for x in items) + "\n" + " " * (indent - 1) + "]" if items else "[]"

    lines = ["{"]
    for k, v in doc.items():
        if k == "graph":
            inner = [f'  {j(gk)}: ' + (block(gv, 3) if gk in ("values", "nodes") else j(gv))
                     for gk, gv in v.items()]
            text = "{\n" + ",\n".join(inner) + "\n }"
        elif k == "qparams":
            text = "{\n" + ",\n".join(f"  {j(qk)}: {j(qv)}" for qk, qv in v.items()) + "\n }" if v else "{}"
        else:
            text = j(v)
        lines.append(f" {j(k)}: {text},")
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_quantized(qm, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``qm`` (a :class:`~intengine.quantize.QuantizedModel`) as a quantized-model folder.

    The folder is built in a temporary folder beside ``path`` and renamed into place.  An existing
    ``path`` is replaced (only after the new folder is complete) when it is empty or a
    quantized-model folder (has ``graph.json``); any other existing folder needs
    ``overwrite=True``.  Returns the folder's path.
    """
    from safetensors.numpy import save_file

    g = getattr(qm, "graph", None)
    if not isinstance(g, ir.Graph):
        raise QuantizedFormatError(f"save_quantized needs a QuantizedModel, got {type(qm).__name__}")
    try:
        ir.verify_lowered(g)
    except ir.GraphError as e:
        raise QuantizedFormatError(f"refusing to save an invalid integer graph: {e}") from e
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise QuantizedFormatError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / GRAPH_NAME).is_file() and not overwrite:
        raise QuantizedFormatError(
            f"{path}: folder exists, is not empty and holds no {GRAPH_NAME} (not a quantized model); "
            "pass overwrite=True to replace it"
        )

    method = getattr(qm, "method", None)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "intengine_version": __version__,
        "family": str(getattr(qm, "family", "?")),
        "task": str(getattr(qm, "task", "?")),
        "method": None if method is None else str(method),
        "graph": _graph_doc(g),
        "qparams": _qparams_doc(getattr(qm, "qparams", None) or {}),
    }
    tensors = {name: np.ascontiguousarray(arr) for name, arr in g.constants.items()}

    path.parent.mkdir(parents=True, exist_ok=True)

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_NAME),
                  metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        with open(tmp / WEIGHTS_NAME, "rb") as f:
            os.fsync(f.fileno())
        doc["sha256"] = {WEIGHTS_NAME: _file_sha256(tmp / WEIGHTS_NAME), GRAPH_NAME: _canonical_sha256(doc)}
        _write_synced(tmp / GRAPH_NAME, _dump(doc).encode("ascii"))

    return write_folder_atomically(path, fill)


# ----------------------------------------------------------------------------- load


def _bad(where: str, expected: str, got: Any) -> QuantizedFormatError:
    text = repr(got)
    if len(text) > 80:
        text = text[:77] + "..."
    return QuantizedFormatError(f"{GRAPH_NAME}: field {where!r}: expected {expected}, got {text}")


class _Fields:
    """Typed field access with the path of the field in error messages."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise _bad(where or "(document)", "a JSON object", obj)
        self.obj, self.where = obj, where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, types, expected: str, optional: bool = False):
        if key not in self.obj:
            if optional:
                return None
            raise QuantizedFormatError(f"{GRAPH_NAME}: missing field {self.path(key)!r} (expected {expected})")
        v = self.obj[key]
        if optional and v is None:
            return None
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in _tuple(types)):
            raise _bad(self.path(key), expected, v)
        return v

    def strings(self, key: str) -> tuple[str, ...]:
        v = self.get(key, list, "a list of strings")
        if not all(isinstance(s, str) for s in v):
            raise _bad(self.path(key), "a list of strings", v)
        return tuple(v)


def _tuple(t):
    return t if isinstance(t, tuple) else (t,)


def _number(v, where: str) -> float:
    if isinstance(v, dict) and set(v) == {"$float"} and v["$float"] in _FLOATS:
        return _FLOATS[v["$float"]]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(where, "a number", v)
    return float(v)


def _parse_value(obj: Any, where: str) -> ir.Value:
    f = _Fields(obj, where)
    name = f.get("name", str, "a string")
    dtype = f.get("dtype", str, f"one of {sorted(ir.DTYPES)}")
    if dtype not in ir.DTYPES:
        raise _bad(f.path("dtype"), f"one of {sorted(ir.DTYPES)}", dtype)
    shape = f.get("shape", list, "a list of ints and symbols")
    if not all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape):
        raise _bad(f.path("shape"), "a list of non-negative ints and symbols (\"B\", \"T\")", shape)
    raw = f.get("scale", (int, float, list, dict), "null, a number or a list of numbers", optional=True)
    if raw is None:
        scale = None
    elif isinstance(raw, list):
        scale = tuple(_number(s, f"{f.path('scale')}[{i}]") for i, s in enumerate(raw))
    else:
        scale = _number(raw, f.path("scale"))
    try:
        return ir.Value(name, dtype, tuple(shape), scale)
    except ir.GraphError as e:
        raise QuantizedFormatError(f"{GRAPH_NAME}: field {where!r}: {e}") from e


def _parse_node(obj: Any, where: str) -> ir.Node:
    f = _Fields(obj, where)
    op = f.get("op", str, "a string")
    inputs, outputs = f.strings("inputs"), f.strings("outputs")
    name = f.get("name", str, "a string")
    raw = f.get("attrs", list, "a list of [key, value] pairs")
    attrs = []
    for i, pair in enumerate(raw):
        w = f"{f.path('attrs')}[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise _bad(w, "a [key, value] pair with a string key", pair)
        attrs.append((pair[0], _dec(pair[1], f"{w}[1]")))
    return ir.Node(op, inputs, outputs, tuple(attrs), name=name)


def _parse_graph(obj: Any) -> tuple[ir.Graph, list[str]]:
    f = _Fields(obj, "graph")
    stage = f.get("stage", str, "'integer'")
    if stage not in ("integer", "mixed"):
        raise _bad("graph.stage", "'integer' or 'mixed' (a lowered graph)", stage)
    inputs, outputs, constants = f.strings("inputs"), f.strings("outputs"), f.strings("constants")
    values = tuple(_parse_value(v, f"graph.values[{i}]")
                   for i, v in enumerate(f.get("values", list, "a list of values")))
    nodes = tuple(_parse_node(n, f"graph.nodes[{i}]")
                  for i, n in enumerate(f.get("nodes", list, "a list of nodes")))
    return ir.Graph(stage, inputs, outputs, nodes, values), list(constants)


def _parse_qparams(obj: Any) -> dict[str, QParams]:
    f = _Fields(obj, "qparams")
    out = {}
    for name in obj:
        q = _Fields(obj[name], f.path(name))
        bits = q.get("bits", int, "an int in [2, 32]")
        shape = q.get("shape", list, "a list of ints")
        raw = q.get("threshold", (int, float, list, dict), "a number or a list of numbers")
        if isinstance(raw, list):
            t = np.array([_number(x, f"{q.path('threshold')}[{i}]") for i, x in enumerate(raw)], dtype=np.float64)
        else:
            t = np.float64(_number(raw, q.path("threshold")))
        try:
            t = t.reshape(shape)
        except (ValueError, TypeError):
            raise _bad(q.path("shape"), f"a shape holding {np.size(t)} threshold(s)", shape) from None
        try:
            out[name] = QParams(t, bits)
        except IntengineError as e:
            raise QuantizedFormatError(f"{GRAPH_NAME}: field {f.path(name)!r}: {e}") from e
    return out


def load_quantized(path: str | os.PathLike):
    """Read a folder written by :func:`save_quantized` into a
    :class:`~intengine.quantize.QuantizedModel` (``fp32_graph`` is None).

    Raises :class:`~intengine.errors.QuantizedFormatError` naming the file and field for: a
    missing folder or file, another ``format`` or ``format_version``, a checksum mismatch (a file
    modified after saving), malformed JSON or fields, constants whose dtype/shape disagree with
    their declared values; the graph must pass :func:`intengine.ir.verify_integer`.
    """
    from safetensors.numpy import load_file

    from .quantize import QuantizedModel

    path = Path(path)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise QuantizedFormatError(f"{path}: {what} (expected a quantized-model folder with "
                                   f"{GRAPH_NAME} and {WEIGHTS_NAME})")
    gpath, wpath = path / GRAPH_NAME, path / WEIGHTS_NAME
    for p in (gpath, wpath):
        if not p.is_file():
            raise QuantizedFormatError(f"{p}: missing (a quantized-model folder holds {GRAPH_NAME} and "
                                       f"{WEIGHTS_NAME}, written by save_quantized)")
    try:
        doc = json.loads(gpath.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise QuantizedFormatError(f"{gpath}: not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise QuantizedFormatError(f"{gpath}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e

    top = _Fields(doc, "")
    fmt = top.get("format", str, f"{FORMAT!r}")
    if fmt != FORMAT:
        raise QuantizedFormatError(f"{gpath}: field 'format' is {fmt!r}, expected {FORMAT!r} "
                                   "(not an intengine quantized model)")
    version = top.get("format_version", int, f"the int {FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise QuantizedFormatError(
            f"{gpath}: field 'format_version': written by intengine format {version}, "
            f"this intengine reads {FORMAT_VERSION} (saved by intengine "
            f"{doc.get('intengine_version', '?')}; this is {__version__})"
        )
    sums = _Fields(top.get("sha256", dict, f"an object with {GRAPH_NAME!r} and {WEIGHTS_NAME!r} hex digests"),
                   "sha256")
    want_g = sums.get(GRAPH_NAME, str, "a SHA-256 hex digest")
    want_w = sums.get(WEIGHTS_NAME, str, "a SHA-256 hex digest")
    try:
        got_g = _canonical_sha256(doc)
    except ValueError as e:  # NaN/Infinity literals are not part of the format
        raise QuantizedFormatError(f"{gpath}: holds a non-JSON number ({e})") from e
    if got_g != want_g:
        raise QuantizedFormatError(
            f"{gpath}: checksum mismatch: the content hashes to {got_g[:16]}..., field "
            f"'sha256.{GRAPH_NAME}' says {want_g[:16]}... (the file was modified after it was written)"
        )
    got_w = _file_sha256(wpath)
    if got_w != want_w:
        raise QuantizedFormatError(
            f"{wpath}: checksum mismatch: the file hashes to {got_w[:16]}..., {GRAPH_NAME} field "
            f"'sha256.{WEIGHTS_NAME}' says {want_w[:16]}... (modified after saving, or from another model)"
        )

    try:
        family = top.get("family", str, "a string")
        task = top.get("task", str, "a string")
        method = top.get("method", str, "a string or null", optional=True)
        top.get("intengine_version", str, "a string")
        graph, const_names = _parse_graph(top.get("graph", dict, "an object"))
        qparams = _parse_qparams(top.get("qparams", dict, "an object"))
    except QuantizedFormatError as e:  # field errors start with the bare file name: give the path
        raise QuantizedFormatError(f"{path}{os.sep}{e}") from e.__cause__

    try:
        arrays = load_file(str(wpath))
    except Exception as e:  # safetensors raises its own error types
        raise QuantizedFormatError(f"{wpath}: not a readable safetensors file ({e})") from e
    missing = [c for c in const_names if c not in arrays]
    extra = sorted(set(arrays) - set(const_names))
    if missing:
        raise QuantizedFormatError(f"{wpath}: missing tensor(s) {missing[:5]} declared in {GRAPH_NAME} "
                                   f"field 'graph.constants'")
    if extra:
        raise QuantizedFormatError(f"{wpath}: tensor(s) {extra[:5]} not declared in {GRAPH_NAME} "
                                   f"field 'graph.constants'")
    declared = {v.name: v for v in graph.values}
    constants = {}
    for c in const_names:
        arr = arrays[c]
        v = declared.get(c)
        if v is None:
            raise QuantizedFormatError(f"{gpath}: constant {c!r} (field 'graph.constants') has no entry in "
                                       "'graph.values'")
        want = (np.dtype(ir.NUMPY_DTYPES[v.dtype]), tuple(v.shape))
        if (arr.dtype, arr.shape) != want:
            raise QuantizedFormatError(
                f"{wpath}: tensor {c!r} is {arr.dtype}{list(arr.shape)}, but {GRAPH_NAME} declares "
                f"{v.dtype}{list(v.shape)} (field 'graph.values', name {c!r})"
            )
        constants[c] = arr
    graph = ir.Graph(graph.stage, graph.inputs, graph.outputs, graph.nodes, graph.values, constants)
    try:
        ir.verify_lowered(graph)
    except ir.GraphError as e:
        raise QuantizedFormatError(f"{gpath}: the stored graph is not a valid integer graph: {e}") from e
    return QuantizedModel(graph, None, qparams, family, task, method=method)

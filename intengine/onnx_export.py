"""Export a quantized model to ONNX and run it with ONNX Runtime.

::

    from intengine.onnx_export import export_onnx, ort_session, ort_run
    export_onnx(qm, "model.onnx")                        # QDQ (default) or format="integer"
    sess = ort_session("model.onnx", threads=2)
    logits = ort_run(sess, input_ids, attention_mask)

* ``format="qdq"``: :func:`intengine.onnx_qdq.build_qdq_model` — the float graph with
  QuantizeLinear/DequantizeLinear pairs (u8 activations at intengine's scales × s8 per-channel
  weights) that ONNX Runtime fuses into integer kernels; portable to any QDQ-aware runtime.
* ``format="integer"``: :func:`intengine.onnx_integer.build_integer_model` — intengine's integer
  program itself.

The file is checked (``onnx.checker``), carries ``metadata_props`` (intengine version, format,
family, task, calibration method, quantization scheme) and is written atomically: the model is
saved into a temporary folder next to ``path`` and renamed into place, so a failed export leaves
nothing behind.  Models above 2 GB keep their weights in ``<name>.data`` next to the file (ONNX
external data).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import onnx

from . import ir
from .errors import ExportError, InputError

__all__ = ["export_onnx", "ort_session", "ort_run", "FORMATS", "EXTERNAL_DATA_THRESHOLD"]

FORMATS = ("qdq", "integer")
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**24  # protobuf's 2 GB limit, with room for the graph itself


def package_version() -> str:
    """intengine's version (model metadata, ``producer_version``)."""
    from . import __version__

    return str(__version__)


def prune_unused(nodes: list, inits: list, outputs: list[str]) -> tuple[list, list]:
    """Drop the nodes none of whose outputs is read (towards ``outputs``), then the
    initializers no kept node reads; node order is kept."""
    live = set(outputs)
    keep = []
    for n in reversed(nodes):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    keep.reverse()
    return keep, [t for t in inits if t.name in live]


def _check_model(qmodel, fmt: str) -> None:
    from .quantize import QuantizedModel

    if not isinstance(qmodel, QuantizedModel):
        raise ExportError(
            f"export_onnx needs a QuantizedModel from intengine.quantize(...), got {type(qmodel).__name__}"
        )
    g = getattr(qmodel, "graph", None)
    if not isinstance(g, ir.Graph) or g.stage != "integer":
        stage = getattr(g, "stage", None)
        raise ExportError(
            f"the QuantizedModel is not lowered: its graph is {type(g).__name__} at stage {stage!r}, "
            "expected an integer-stage graph (intengine.quantize(...))"
        )
    try:
        ir.verify_integer(g)
    except ir.GraphError as exc:
        raise ExportError(f"the QuantizedModel's integer graph is corrupted: {exc}") from exc
    if fmt == "qdq":
        fg = getattr(qmodel, "fp32_graph", None)
        if not isinstance(fg, ir.Graph) or fg.stage != "fp32":
            raise ExportError(
                "format='qdq' translates the model's fp32 graph, and this QuantizedModel has none "
                "(a model loaded without its FP32 graph?); use format='integer' or quantize() again"
            )
        try:
            ir.verify_fp32(fg)
        except ir.GraphError as exc:
            raise ExportError(f"the QuantizedModel's fp32 graph is corrupted: {exc}") from exc
        if not getattr(qmodel, "qparams", None):
            raise ExportError("format='qdq' needs the calibrated ranges (qmodel.qparams), and they are empty")


def build_model(qmodel, format: str = "qdq", *, opset: int = 17) -> onnx.ModelProto:
    """The checked ``onnx.ModelProto`` (with metadata) that :func:`export_onnx` writes."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    _check_model(qmodel, format)
    if format == "qdq":
        from .onnx_qdq import build_qdq_model

        model = build_qdq_model(qmodel, opset=opset)
        scheme = "QDQ: u8 activations (zero point 128 = symmetric int8) x s8 per-channel weights"
    else:
        try:
            from .onnx_integer import build_integer_model
        except ImportError as exc:
            raise ExportError(f"format='integer' is not available in this installation ({exc})") from exc
        import inspect

        kw = {"opset": opset} if "opset" in inspect.signature(build_integer_model).parameters else {}
        model = build_integer_model(qmodel, **kw)
        scheme = "integer-only: intengine's integer program"
    meta = {
        "intengine_version": package_version(),
        "intengine_format": format,
        "family": str(getattr(qmodel, "family", "?")),
        "task": str(getattr(qmodel, "task", "?")),
        # QuantizedModel.method is set by quantize() from its `method=`; None when the ranges
        # were passed in ready-made (or an older QuantizedModel without the field)
        "calibration_method": str(getattr(qmodel, "method", None) or "unknown"),
        "quantization": scheme,
        "inputs": ",".join(i.name for i in model.graph.input),
        "output": model.graph.output[0].name if model.graph.output else "",
    }
    existing = {p.key for p in model.metadata_props}
    for k, v in meta.items():
        if k not in existing:
            model.metadata_props.add(key=k, value=v)
    return model


def _tensor_bytes(model: onnx.ModelProto) -> int:
    n = 0
    for t in model.graph.initializer:
        n += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    return n


def _write_atomic(model: onnx.ModelProto, path: str) -> None:
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    if os.path.isdir(path):
        raise ExportError(f"cannot write the ONNX model to {path!r}: it is a folder")
    if not os.path.isdir(folder):
        raise ExportError(f"cannot write the ONNX model to {path!r}: folder {folder!r} does not exist")
    try:
        tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ExportError(f"cannot write the ONNX model to {path!r}: {exc.strerror or exc}") from exc
    try:
        tmp_model = os.path.join(tmp, name)
        external = _tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
        data_name = name + ".data"
        if external:
            onnx.save_model(model, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, tmp_model)
        onnx.checker.check_model(tmp_model)  # by path: works above 2 GB too
        if external:
            os.replace(os.path.join(tmp, data_name), os.path.join(folder, data_name))
        os.replace(tmp_model, path)
    except OSError as exc:
        raise ExportError(f"cannot write the ONNX model to {path!r}: {exc.strerror or exc}") from exc
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_onnx(qmodel, path, format: str = "qdq", *, opset: int = 17) -> str:
    """Write ``qmodel`` (a :class:`~intengine.quantize.QuantizedModel`) to ``path`` as ONNX.

    ``format``: ``"qdq"`` (default; runs fast on ONNX Runtime's int8 kernels) or ``"integer"``.
    ``opset`` ≥ 17.  Raises :class:`~intengine.errors.ExportError` for a model that is not a
    lowered QuantizedModel (or lacks the fp32 graph a QDQ export needs) and for a path that
    cannot be written; nothing is left at ``path`` then.  Returns the absolute path written.
    """
    model = build_model(qmodel, format, opset=opset)
    if _tensor_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the exported ONNX model fails onnx.checker: {exc}") from exc
    _write_atomic(model, path)
    return os.path.abspath(os.fspath(path))


# ============================================================================ ONNX Runtime


def physical_cores() -> int:
    """Physical cores of this machine (Linux ``/proc/cpuinfo``; else ``os.cpu_count()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            cores, phys, core = set(), None, None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
            if core is not None:
                cores.add((phys, core))
        if cores:
            n = len(cores)
            avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else n
            return max(1, min(n, avail))
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


def ort_session(path, threads: int | None = None, *, optimized_model_path=None, config=None):
    """An ``onnxruntime.InferenceSession`` on the CPU: all graph optimizations (the QDQ → integer
    kernel fusions), ``threads`` intra-op threads (default: the physical cores), sequential
    execution.  ``optimized_model_path``: also save ORT's optimized graph there (to inspect which
    kernels it picked).  ``config``: extra session config entries (e.g.
    ``{"session.intra_op.allow_spinning": "0"}`` when several sessions share the cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else physical_cores()
    so.inter_op_num_threads = 1
    for k, v in (config or {}).items():
        so.add_session_config_entry(str(k), str(v))
    if optimized_model_path is not None:
        so.optimized_model_filepath = os.fspath(optimized_model_path)
    src = path.SerializeToString() if isinstance(path, onnx.ModelProto) else os.fspath(path)
    if not isinstance(path, onnx.ModelProto) and not os.path.isfile(src):
        raise ExportError(f"no ONNX model at {src!r}")
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ort_run(session, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
    """Run an exported model: feeds only the inputs the model declares (int64 ``[B, T]``; a
    missing mask is all ones, missing token types zeros); returns the first output."""
    from .interp import prepare_inputs

    x = prepare_inputs(input_ids, attention_mask, token_type_ids)
    feeds = {}
    for inp in session.get_inputs():
        if inp.name not in x:
            raise InputError(f"the ONNX model declares an input {inp.name!r} that intengine does not know")
        feeds[inp.name] = x[inp.name].astype(np.int64)
    return session.run(None, feeds)[0]

"""``quantize(model, calibration)`` → :class:`QuantizedModel`: capture, calibrate, lower, run.

::

    m = intengine.load_fp32("roberta-tiny", task="sequence-classification")
    qm = quantize(m, random_batches(m, n=8, batch=4, seq=64), method="percentile")
    logits = qm.run(input_ids, attention_mask, backend="cpu")      # float32 numpy
    print(ir.format_graph(qm.graph))                                # the integer program
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from . import ir
from .calibrate import calibrate
from .calibration import QParams
from .capture import capture
from .errors import CalibrationError
from .lower import lower
from .runtime import Executor

__all__ = ["quantize", "QuantizedModel"]



class QuantizedModel:
    """An integer-only program (``.graph``, stage ``"integer"``) plus its fp32 source graph and
    ranges; ``run`` binds the graph to a backend once (weights packed once per backend)."""

    def __init__(self, graph: ir.Graph, fp32_graph: ir.Graph, qparams: Mapping[str, QParams], family: str,
                 task: str, method: str | None = None):
        self.graph, self.fp32_graph, self.qparams = graph, fp32_graph, dict(qparams)
        self.family, self.task, self.method = family, task, method
        self._executors: dict[str, Executor] = {}

    def executor(self, backend: str = "cpu") -> Executor:
        if backend not in self._executors:
            self._executors[backend] = Executor(self.graph, backend)
        return self._executors[backend]

    def run(self, input_ids, attention_mask=None, token_type_ids=None, backend: str = "cpu") -> np.ndarray:
        """Integer inference; returns the float32 output (hidden states or logits) as numpy."""
        return self.executor(backend).run(input_ids, attention_mask, token_type_ids)

    __call__ = run

    def save(self, path, **kwargs):
        """Write this model as a quantized-model folder (:func:`intengine.serialize.save_quantized`)."""
        from .serialize import save_quantized

        return save_quantized(self, path, **kwargs)

    def __repr__(self) -> str:
        return (f"QuantizedModel({self.family}, task={self.task!r}, {len(self.graph.nodes)} integer nodes, "
                f"{len(self.graph.constants)} constants)")


def quantize(model, calibration=None, method: str = "minmax", force_dequant: str = "none", gelu: str = "table",
             **calibrate_options) -> QuantizedModel:
    """Quantize an FP32 module from :func:`intengine.load_fp32` into an integer-only program.

    * ``calibration``: an iterable of batch dicts (``input_ids`` [, ``attention_mask``,
      ``token_type_ids``]) streamed through :func:`intengine.calibrate.calibrate`, e.g.
      ``random_batches(model, 8, 4, 64)`` or ``text_batches(path, tokenizer, 8, 128)``; or the
      ready ``{value: QParams}`` dict that ``calibrate`` returns.  ``None`` or no batches raise
      :class:`~intengine.errors.CalibrationError` (there is no silent default data).
    * ``method``: the observer (``minmax``, ``ema``, ``percentile``, ``mse``, ``entropy``);
      ``calibrate_options`` go to ``calibrate`` (``bits=``, ``percentile=``, ...).  I-BERT
      checkpoints' stored QuantAct ranges are applied as overrides.
    * ``force_dequant``: ``"none"`` (integer-only), or I-BERT's ``"gelu"``, ``"softmax"``,
      ``"layernorm"``, ``"nonlinear"``: those ops run in float between integer tensors (a
      ``"mixed"``-stage graph, for accuracy studies; the ONNX integer export refuses it).
    * ``gelu``: ``"table"`` (int8-input GELUs become 256-entry tables of the exact function) or
      ``"ibert"`` (I-BERT's i-GELU polynomial everywhere); see :func:`intengine.lower.lower`.
    """
    if calibration is None:
        raise CalibrationError(
            "quantize needs calibration data: pass batches (random_batches(model, n, batch, seq), "
            "text_batches(path, tokenizer, batch, seq)) or the QParams dict from calibrate()"
        )
    g = capture(model)
    if isinstance(calibration, Mapping):
        qp = dict(calibration)
    elif isinstance(calibration, Iterable):
        overrides = getattr(model, "calibration_ranges", None) or None
        qp = calibrate(g, calibration, method, overrides=overrides, **calibrate_options)
    else:
        raise CalibrationError(
            f"calibration must be an iterable of batch dicts or a QParams dict, got {type(calibration).__name__}"
        )
    family = str(getattr(model, "family", "?")).rsplit(".", 1)[-1]
    ig = lower(g, qp, family, force_dequant=force_dequant, gelu=gelu)
    return QuantizedModel(ig, g, qp, family, getattr(model, "task", "?"),
                          method=None if isinstance(calibration, Mapping) else method)

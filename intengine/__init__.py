"""intengine: quantization and integer-only inference for transformer encoders."""

import os as _os

# OpenMP threads (numba's ``omp`` layer and torch) sleep instead of spinning when idle, unless the
# user chose otherwise.  With libgomp's default spin-then-sleep, every parallel region ended up
# waiting ~8 ms for a worker that another process had preempted (measured on 2 busy cores:
# 8.0 ms vs 0.45 ms per rescale_add call); on an idle machine both policies measured the same.
# libgomp reads this once, when it is loaded, so it must be set before torch/numba start threads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
from .tokenizer import load_tokenizer  # noqa: E402,F401
from .api import load_fp32, save_hf_folder  # noqa: E402,F401
from .quantize import QuantizedModel, quantize  # noqa: E402,F401
from .serialize import load_quantized, save_quantized  # noqa: E402,F401
from .onnx_export import export_onnx, ort_run, ort_session  # noqa: E402,F401
from . import ir  # noqa: E402,F401

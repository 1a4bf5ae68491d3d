"""intengine: quantization and integer-only inference for transformer encoders."""

__version__ = "0.1.0"
from .tokenizer import load_tokenizer  # noqa: E402,F401
from .api import load_fp32, save_hf_folder  # noqa: E402,F401
from .quantize import QuantizedModel, quantize  # noqa: E402,F401
from .serialize import load_quantized, save_quantized  # noqa: E402,F401
from .onnx_export import export_onnx, ort_run, ort_session  # noqa: E402,F401
from . import ir  # noqa: E402,F401

"""intengine: quantization and integer-only inference for transformer encoders."""

__version__ = "0.1.0"

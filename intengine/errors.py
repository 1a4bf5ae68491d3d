"""Every exception intengine raises on purpose.

All derive from :class:`IntengineError`, so a script can catch that one class.
Messages name the file, tensor, key or field at fault and what was expected.
The kernel errors are defined in ``intengine.kernels.errors`` (the kernels do
not import intengine's core) and re-exported here.
"""

from __future__ import annotations

from .kernels.errors import CalibrationError, IntengineError, KernelError, KernelInputError, UnsupportedKernelError

__all__ = [
    "IntengineError",
    "KernelError",
    "KernelInputError",
    "UnsupportedKernelError",
    "CalibrationError",
    "ConfigError",
    "CheckpointError",
    "TokenizerError",
    "InputError",
]


class ConfigError(IntengineError, ValueError):
    """A model configuration (``config.json`` or a preset) is missing a field or holds a bad value."""


class CheckpointError(IntengineError, ValueError):
    """A checkpoint folder or weights file is missing, unreadable, or does not match the model."""


class TokenizerError(IntengineError, ValueError):
    """Tokenizer files are missing or unreadable, or text cannot be encoded."""


class InputError(IntengineError, ValueError):
    """Inputs to a model (ids, masks, token types) have the wrong dtype, shape or range."""

# Modules add their own exception classes below this line (append only).


class LoweringError(IntengineError, ValueError):
    """An fp32 graph cannot be lowered to integers (names the op, the node and the model family)."""


class QuantizedFormatError(IntengineError, ValueError):
    """A quantized-model folder (``graph.json`` + ``model.safetensors``) is missing, modified,
    malformed or of another format version (names the file, the field and what was expected)."""


class ReportError(IntengineError, ValueError):
    """A per-node error report cannot be computed (e.g. a loaded model has no FP32 graph)."""


class ExportError(IntengineError, ValueError):
    """A model cannot be exported (not a lowered QuantizedModel, missing graph) or the export file
    cannot be written (names the path)."""

"""Integer kernels: numpy references (the specification) beside numba CPU kernels.

Importing this package registers the ``ref`` and ``cpu`` kernels of every op
family; ``registry.get_kernel(op, "cuda")`` loads ``kernels/cuda`` on demand.
"""

from . import gather, gelu, gemm, layernorm, layout, lut, quant, requant, softmax, tanh  # noqa: F401  (registration)
from .registry import BACKENDS, KERNELS, OPS, get_kernel, register  # noqa: F401

"""Integer kernels: numpy references (the specification) beside numba CPU kernels.

Importing this package registers the ``ref`` and ``cpu`` kernels of every op
family; ``registry.get_kernel(op, "cuda")`` loads ``kernels/cuda`` on demand.
"""

from . import quant, requant  # noqa: F401
from .registry import BACKENDS, KERNELS, OPS, get_kernel, register  # noqa: F401

_FAMILIES = ("gemm", "gelu", "softmax", "layernorm", "tanh")
for _name in _FAMILIES:
    try:
        __import__(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # family not written yet
        if _exc.name != f"{__name__}.{_name}":
            raise

"""numba.cuda kernels.  Imported lazily by ``registry.load_cuda()``; importing this
package registers the ``cuda`` backend of every op family that has one."""

from . import requant, quant  # noqa: F401

_OPTIONAL = ("gemm", "gelu", "softmax", "layernorm", "tanh")
for _name in _OPTIONAL:
    try:
        __import__(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # a family without CUDA kernels yet
        if _exc.name != f"{__name__}.{_name}":
            raise

"""The explicit ``(op, backend)`` kernel registry.

Every kernel module registers its functions with ``@register(op, backend)``
next to their definitions; callers fetch them with :func:`get_kernel`.  The
``ref`` backend (numpy) is the specification; ``cpu`` (numba) and ``cuda``
(numba.cuda) must agree with it bit for bit.  CUDA kernels are imported lazily,
on the first ``get_kernel(..., "cuda")``, so that importing intengine never
touches the CUDA driver.
"""

from __future__ import annotations

from typing import Callable

from .errors import UnsupportedKernelError

BACKENDS: tuple[str, ...] = ("ref", "cpu", "cuda")

# The operations of the integer kernel library.  Each name is documented in the
# docstring of its ``*_ref`` function, which is the specification.
OPS: tuple[str, ...] = (
    # quant.py
    "quantize",
    "dequantize",
    # requant.py
    "requantize",
    "rescale_add",
    # gemm.py
    "pack_weight",
    "linear",
    "matmul",
    "pack_matmul_b",
    # gelu.py
    "gelu",
    # softmax.py
    "exp",
    "softmax",
    # layernorm.py
    "isqrt",
    "layernorm",
    "add_layernorm",
    # tanh.py
    "tanh",
    # gather.py
    "rel_gather",
    "rel_scatter_add",
    "rel_scores",
    # lut.py
    "lut",
    # layout.py
    "transpose",
)

KERNELS: dict[tuple[str, str], Callable] = {}

_cuda_state = {"loaded": False, "error": None}


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: record ``fn`` as the kernel for ``(op, backend)``."""
    if op not in OPS:
        raise UnsupportedKernelError(f"cannot register unknown op {op!r}; known ops: {', '.join(OPS)}")
    if backend not in BACKENDS:
        raise UnsupportedKernelError(
            f"cannot register op {op!r} for unknown backend {backend!r}; backends: {', '.join(BACKENDS)}"
        )

    def deco(fn: Callable) -> Callable:
        key = (op, backend)
        if key in KERNELS and KERNELS[key] is not fn:
            raise UnsupportedKernelError(f"kernel {key} registered twice ({KERNELS[key].__qualname__}, {fn.__qualname__})")
        KERNELS[key] = fn
        return fn

    return deco


def load_cuda() -> bool:
    """Import the CUDA kernels once; return whether the ``cuda`` backend is usable.

    Uses a real GPU when numba.cuda finds one, or the numba CUDA simulator when
    the process was started with ``NUMBA_ENABLE_CUDASIM=1``.
    """
    if not _cuda_state["loaded"]:
        _cuda_state["loaded"] = True
        try:
            from numba import cuda

            if not cuda.is_available():
                raise RuntimeError("numba.cuda found no GPU (start Python with NUMBA_ENABLE_CUDASIM=1 for the simulator)")
            from . import cuda as _cuda_kernels  # noqa: F401  (registers the cuda kernels)
        except Exception as exc:  # pragma: no cover - depends on the host
            _cuda_state["error"] = f"{type(exc).__name__}: {exc}"
    return _cuda_state["error"] is None


def cuda_unavailable_reason() -> str | None:
    load_cuda()
    return _cuda_state["error"]


def available_backends(op: str) -> list[str]:
    return [b for b in BACKENDS if (op, b) in KERNELS]


def get_kernel(op: str, backend: str) -> Callable:
    """Return the kernel registered for ``(op, backend)``.

    Raises :class:`UnsupportedKernelError` naming the available backends when
    the pair is missing (or the CUDA backend cannot load on this host).
    """
    if op not in OPS:
        raise UnsupportedKernelError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    if backend not in BACKENDS:
        raise UnsupportedKernelError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if backend == "cuda" and not load_cuda():
        raise UnsupportedKernelError(f"backend 'cuda' is not available for op {op!r}: {_cuda_state['error']}")
    try:
        return KERNELS[(op, backend)]
    except KeyError:
        have = available_backends(op)
        raise UnsupportedKernelError(
            f"no kernel for op {op!r} on backend {backend!r}; available backends for it: {', '.join(have) or 'none'}"
        ) from None

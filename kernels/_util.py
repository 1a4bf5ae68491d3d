"""Small helpers shared by the kernel modules (argument checks, dtype choice)."""

from __future__ import annotations

import functools
import os

import numba
import numpy as np

from .errors import KernelInputError

INT_CONTAINERS = ((8, np.int8), (16, np.int16), (32, np.int32))


# row chunks per parallel kernel call: a few per thread, for balance (a constant, so the hot path
# does not ask numba for the current thread count, ~1 us)
MAX_CHUNKS = 8 * numba.config.NUMBA_NUM_THREADS


def is_int_scalar(v) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def container_for_bits(bits: int) -> type:
    """Smallest signed numpy integer dtype holding a symmetric ``bits``-bit value."""
    if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 32:
        raise KernelInputError(f"out_bits must be an integer in [2, 32], got {bits!r}")
    for width, dtype in INT_CONTAINERS:
        if bits <= width:
            return dtype
    raise AssertionError("unreachable")


def qmax_for_bits(bits: int) -> int:
    """Largest magnitude of a symmetric signed ``bits``-bit integer: 2^(bits-1) - 1."""
    container_for_bits(bits)
    return (1 << (bits - 1)) - 1


def check_int(name: str, arr: np.ndarray, allowed: tuple) -> None:
    if not (hasattr(arr, "dtype") and hasattr(arr, "shape")):
        raise KernelInputError(f"{name} must be an array (numpy or device), got {type(arr).__name__}")
    if arr.dtype not in allowed:  # (a dtype compares equal to its scalar type)
        names = ", ".join(np.dtype(a).name for a in allowed)
        raise KernelInputError(f"{name} must have dtype in ({names}), got {arr.dtype}")


def channel_vector(name: str, value, n: int, dtype) -> np.ndarray:
    """Broadcast a scalar or length-``n`` vector to a contiguous length-``n`` array."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        return np.full(n, arr, dtype=dtype)
    if arr.ndim != 1 or arr.shape[0] not in (1, n):
        raise KernelInputError(f"{name} must be a scalar or a vector of length {n}, got shape {arr.shape}")
    return np.ascontiguousarray(np.broadcast_to(arr, (n,)), dtype=dtype)


def output_array(out, shape, dtype) -> np.ndarray:
    """The kernel's output array: a fresh one, or the caller's ``out`` after checking that it is a
    C-contiguous numpy array of exactly ``shape`` and ``dtype`` (the runtime's planned buffers)."""
    if out is None:
        return np.empty(shape, dtype)
    shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
    if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
            and out.flags.writeable):
        got = (f"{type(out).__name__} {getattr(out, 'dtype', '?')}{tuple(getattr(out, 'shape', ()))}"
               if hasattr(out, "shape") else type(out).__name__)
        raise KernelInputError(f"out must be a writeable C-contiguous numpy array of dtype {dtype.name} and shape "
                               f"{shape}, got {got}")
    return out


def cpu_has(need: tuple[str, ...], disable_var: str | None = None) -> bool:
    """True when numba compiles for a CPU with every LLVM feature in ``need`` (``"avx512f"``...).

    Honours numba's ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` overrides (a portable ``generic``
    build must not contain host-only instructions), else asks LLVM about the host; a set
    ``disable_var`` environment variable (other than ``0``) turns the feature off.  Read once, at
    import, by the modules that dispatch on it.
    """
    if disable_var and os.environ.get(disable_var, "") not in ("", "0"):
        return False
    try:
        from numba.core import config
        import llvmlite.binding as llvm

        if config.CPU_NAME not in (None, "host"):
            feats = str(config.CPU_FEATURES or "").split(",")
            return all(f"+{f}" in feats for f in need)
        host = llvm.get_host_cpu_features()
        return all(bool(host.get(f, False)) for f in need)
    except Exception:  # pragma: no cover - exotic hosts
        return False


def frozen(arr) -> bool:
    """True when ``arr``'s values cannot change under us: a read-only numpy array whose
    base chain is read-only too (or ends in immutable ``bytes``)."""
    while isinstance(arr, np.ndarray):
        if arr.flags.writeable:
            return False
        arr = arr.base
        if arr is None:
            return True
    return isinstance(arr, bytes)


def memo_frozen(maxsize: int = 1024, immutable: tuple = ()):
    """Cache a pure function of kernel constants (validation, padding, derived tables).

    A call is cached only when every argument is None, an integer scalar (keyed by value), a
    :func:`frozen` numpy array or an instance of an ``immutable`` type (keyed by identity; the
    entry keeps the objects alive, so their ids cannot be reused).  Anything else (a writeable
    array that could be mutated between calls, a device array) is recomputed on every call, and
    a call that raises caches nothing.  The runtime passes read-only constants, so each layer's
    arguments are checked once.  At ``maxsize`` entries the cache is emptied.
    """

    def key_of(args):
        """The cache key (ints by value, the rest by identity), None when a value is uncacheable;
        built on every kernel call, so the common types are tested first."""
        key = []
        for v in args:
            t = type(v)
            if t is int or v is None:
                key.append(v)
            elif t is np.ndarray or isinstance(v, np.ndarray):
                if not frozen(v):
                    return None
                key.append((id(v),))
            elif is_int_scalar(v):
                key.append(int(v))
            elif isinstance(v, immutable):
                key.append((id(v),))
            else:
                return None
        return tuple(key)

    def wrap(fn):
        entries: dict = {}

        @functools.wraps(fn)
        def cached(*args):
            key = key_of(args)
            if key is None:
                return fn(*args)
            hit = entries.get(key)
            if hit is not None:
                return hit[1]
            value = fn(*args)
            if len(entries) >= maxsize:
                entries.clear()
            entries[key] = (args, value)
            return value

        cached.cache_clear = entries.clear
        return cached

    return wrap

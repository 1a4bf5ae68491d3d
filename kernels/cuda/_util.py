"""Host/device plumbing shared by the CUDA kernel modules.

Convention: every registered ``cuda`` kernel accepts numpy arrays or numba
device arrays.  If any array argument is already on the device, the result
stays on the device (a device array); otherwise it is copied back and returned
as a numpy array, which is what the bit-exact tests compare.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

THREADS_1D = 256


def is_device(a) -> bool:
    """True for numba device arrays (real or simulated) and CUDA-array-interface objects."""
    return hasattr(a, "copy_to_host") or hasattr(a, "__cuda_array_interface__")


def to_device(a):
    """A device array for ``a`` (no copy when it already is one)."""
    if hasattr(a, "copy_to_host"):
        return a
    if hasattr(a, "__cuda_array_interface__"):  # e.g. a torch CUDA tensor
        return cuda.as_cuda_array(a)
    return cuda.to_device(np.ascontiguousarray(a))


def any_device(*arrays) -> bool:
    return any(a is not None and is_device(a) for a in arrays)


def finish(out_dev, keep_on_device: bool):
    return out_dev if keep_on_device else out_dev.copy_to_host()


def blocks_for(n: int, threads: int = THREADS_1D) -> int:
    return max(1, (n + threads - 1) // threads)

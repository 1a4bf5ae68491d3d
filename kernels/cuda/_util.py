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
    return cuda.is_cuda_array(a)


def to_device(a):
    """A device array for ``a`` (no copy when it already is one)."""
    if is_device(a):
        return a
    return cuda.to_device(np.ascontiguousarray(a))


def any_device(*arrays) -> bool:
    return any(a is not None and is_device(a) for a in arrays)


def finish(out_dev, keep_on_device: bool):
    return out_dev if keep_on_device else out_dev.copy_to_host()


def blocks_for(n: int, threads: int = THREADS_1D) -> int:
    return max(1, (n + threads - 1) // threads)

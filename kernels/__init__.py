"""Integer kernels: numpy references (the specification) beside numba CPU/CUDA kernels."""

"""numba.cuda kernels.  Imported lazily by ``registry.load_cuda()``; importing this
package registers the ``cuda`` backend of every op family."""

from . import gather, gelu, gemm, layernorm, lut, quant, requant, softmax, tanh  # noqa: F401  (registration)

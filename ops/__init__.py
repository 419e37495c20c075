"""Hand-written numpy kernels, one module per family. Adding a family = one line here."""
from rzrt.ops import activation, conv, elementwise, fused, gemm, norm, pool, reduce, shape  # noqa: F401 (registers)
from rzrt.ops import attention, control, conv_transpose, extra, loss, quantize, resize, rnn, sequence, text  # noqa: F401
from rzrt.ops.registry import Kernel, kernel, lookup, registry_scope  # noqa: F401

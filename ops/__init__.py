"""Hand-written numpy kernels, one module per family. Adding a family = one line here."""
from rzrt.ops import (  # noqa: F401  (importing a module registers its kernels)
    activation,
    attention,
    control,
    conv,
    conv_transpose,
    detection,
    elementwise,
    extra,
    fused,
    gemm,
    loss,
    norm,
    pool,
    quantize,
    reduce,
    resize,
    rnn,
    sequence,
    shape,
    text,
)
from rzrt.ops.registry import Kernel, kernel, lookup, registry_scope  # noqa: F401

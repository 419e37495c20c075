"""Fold an inference BatchNormalization into the Conv or Gemm that feeds it.

Before:  y = Conv(x, W, b);  z = BatchNormalization(y, scale, beta, mean, var)
After:   z = Conv(x, W', b')                     (the BN node is gone; W', b' are new initializers)
Conditions (as onnxruntime's): BN in inference mode with one used output; scale, beta, mean, var,
W (and b, if any) are float initializers; y has no other reader and is not a graph output.

    a  = scale / sqrt(var + eps)                 (one factor per output channel)
    W' = W * a   (along the output-channel axis)
    b' = (b - mean) * a + beta
For Gemm (y = alpha * A' B' + beta_c * C) the channels are the columns of B':
    B' columns *= a;   C' = beta_c * C * a + (beta - mean * a);   beta_c' = 1
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.norm import batchnorm_affine
from rzrt.passes.fusion import is_builtin


def fold_batchnorm(graph) -> bool:
    changed = False
    producers, users = graph.producers(), graph.consumers()
    outputs = set(graph.output_names)
    inits = graph.initializers
    taken = graph.value_names()
    for bn in list(graph.nodes):
        if bn.op_type != "BatchNormalization" or bn.domain or bn.attrs.get("training_mode", 0):
            continue
        if any(o for o in bn.outputs[1:]) or len(bn.inputs) < 5:
            continue
        y = bn.inputs[0]
        src = producers.get(y)
        if src is None or src.domain or src.op_type not in ("Conv", "Gemm"):
            continue
        if y in outputs or len(users[y]) != 1 or not is_builtin(graph, bn) or not is_builtin(graph, src):
            continue
        params = [inits.get(n) for n in bn.inputs[1:5]]
        w = inits.get(src.inputs[1]) if len(src.inputs) > 1 else None
        has_bias = len(src.inputs) > 2 and src.inputs[2]
        bias = inits.get(src.inputs[2]) if has_bias else None
        if any(p is None for p in params) or w is None or (has_bias and bias is None):
            continue
        if w.dtype.kind != "f" or any(p.dtype.kind != "f" for p in params):
            continue
        a, b = batchnorm_affine(*params, bn.attrs.get("epsilon", 1e-5))
        if src.op_type == "Conv":
            new_w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
            new_b = (np.zeros_like(a) if bias is None else bias) * a + b
        else:
            if src.attrs.get("transA", 0) not in (0, 1) or w.ndim != 2:
                continue
            new_w = w * (a[:, None] if src.attrs.get("transB", 0) else a[None, :])
            c = bias if bias is not None else np.zeros_like(a)
            new_b = (src.attrs.get("beta", 1.0) * c * a + b).astype(w.dtype)
            src.attrs["beta"] = 1.0
        w_name = graph.fresh_name(f"{src.inputs[1]}_bnfold", taken)
        taken.add(w_name)
        b_name = graph.fresh_name(f"{bn.name}_bias", taken)
        taken.add(b_name)
        inits[w_name], inits[b_name] = new_w.astype(w.dtype), new_b.astype(w.dtype)
        src.inputs = [src.inputs[0], w_name, b_name]
        src.outputs = [bn.outputs[0]]
        graph.remove(bn)
        changed = True
    return changed

"""Fuse SiLU, x * sigmoid(x), into the Conv, Gemm or MatMul that feeds it (EfficientNet's
activation; torch exports it as two nodes).

Before:  y = Conv(x, W, b);  s = Sigmoid(y);  z = Mul(y, s)        (or Mul(s, y))
After:   z = rzrt.FusedConv(x, W, b; activation="Silu")             (applied in place on the output)
Conditions: y is read only by the Sigmoid and the Mul, s only by the Mul, neither is a graph
output, and all three kernels are rzrt's own.

    z = y / (1 + exp(-y))

Alone it saves little (EfficientNet-B0 0.96-1.06x): the same passes run, on cached data. What it
buys is a convolution whose output has one reader, so that rzrt/layout.py can keep EfficientNet's
blocks channels-last.
"""
from __future__ import annotations

from rzrt.passes.fusion import FUSED, as_fused, fusable, is_builtin


def fuse_silu(graph) -> bool:
    changed = False
    producers, users = graph.producers(), graph.consumers()
    outputs = set(graph.output_names)
    for sig in list(graph.nodes):
        if sig.op_type != "Sigmoid" or sig.domain or not sig.inputs:
            continue
        y, s = sig.inputs[0], sig.outputs[0]
        src = producers.get(y)
        if src is None or not fusable(src) or y in outputs or s in outputs:
            continue
        if len(users[s]) != 1 or len(users[y]) != 2:
            continue
        mul = users[s][0]
        if mul.op_type != "Mul" or mul.domain or sorted(mul.inputs) != sorted([y, s]) or mul not in users[y]:
            continue
        if not all(is_builtin(graph, n) for n in (src, sig, mul)):
            continue
        as_fused(graph, src, FUSED.get(src.op_type, src.op_type))
        src.attrs["activation"] = "Silu"
        src.outputs = list(mul.outputs)
        graph.remove(sig, mul)
        changed = True
        producers, users = graph.producers(), graph.consumers()
    return changed

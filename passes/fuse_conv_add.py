"""Fuse a residual Add into the Conv that feeds it (ResNet's shortcut).

Before:  y = Conv(x, W, b);  z = Add(y, r)          (or Add(r, y))
After:   z = rzrt.FusedConv(x, W, b, r)             (Z = r is added in the GEMM's output buffer)
Conditions: y is read only by the Add and is not a graph output; the Conv has no fused
activation yet (the Add comes before any activation).

    z = conv(x) + b + r
"""
from __future__ import annotations

from rzrt.passes.fusion import as_fused, is_builtin


def fuse_conv_add(graph) -> bool:
    changed = False
    producers, users = graph.producers(), graph.consumers()
    outputs = set(graph.output_names)
    for add in list(graph.nodes):
        if add.op_type != "Add" or add.domain or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            continue
        for idx in (0, 1):
            y, other = add.inputs[idx], add.inputs[1 - idx]
            conv = producers.get(y)
            if conv is None or y in outputs or len(users[y]) != 1:
                continue
            plain = conv.op_type == "Conv" and not conv.domain
            fused = conv.op_type == "FusedConv" and conv.domain == "rzrt" and len(conv.inputs) < 4 \
                and not conv.attrs.get("activation")
            if not (plain or fused) or not is_builtin(graph, conv) or not is_builtin(graph, add):
                continue
            as_fused(graph, conv, "FusedConv")
            conv.inputs = conv.inputs[:3] + [""] * (3 - len(conv.inputs)) + [other]
            conv.outputs = list(add.outputs)
            graph.remove(add)
            changed = True
            break
    return changed

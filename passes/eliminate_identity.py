"""Remove nodes that pass their input through unchanged.

Before:  y = Identity(x)            (or inference Dropout, a Reshape to x's own shape, a Cast to x's dtype)
After:   readers of y read x; the node is gone
Conditions: Dropout's mask output is unused and training_mode is absent or a constant false;
Reshape/Cast only when x's static shape/dtype is known and unchanged. When y is a graph
output, the node producing x is renamed to produce y instead (if x has no other reader and
is not itself a graph input, output or initializer); otherwise the node stays.
"""
from __future__ import annotations

import numpy as np

from rzrt.graph import dtype_of


def _passes_through(graph, n) -> bool:
    if n.domain:
        return False
    if n.op_type == "Identity":
        return True
    if n.op_type == "Dropout":
        if any(n.outputs[1:]):
            return False
        mode = n.inputs[2] if len(n.inputs) > 2 else ""
        return not mode or (mode in graph.initializers and not bool(graph.initializers[mode]))
    if n.op_type == "Cast":
        v = graph.value_info.get(n.inputs[0])
        src = graph.initializers.get(n.inputs[0])
        dt = src.dtype if src is not None else (v.dtype if v is not None else None)
        return dt is not None and dt == dtype_of(n.attrs.get("to", 0))
    if n.op_type == "Reshape" and len(n.inputs) > 1 and n.inputs[1] in graph.initializers:
        shape = graph.static_shape(n.inputs[0])
        target = [int(d) for d in np.asarray(graph.initializers[n.inputs[1]]).reshape(-1)]
        if shape is None or len(shape) != len(target):
            return False
        # every target dim must provably equal the input's: 0 copies it (unless allowzero), a number must match
        for d, t in zip(shape, target):
            if t == 0 and not n.attrs.get("allowzero", 0):
                continue
            if not (isinstance(d, int) and d == t):
                return False
        return True
    return False


def eliminate_identity(graph) -> bool:
    changed = False
    outputs = set(graph.output_names)
    for n in list(graph.nodes):
        if not n.inputs or not n.outputs or not _passes_through(graph, n):
            continue
        x, y = n.inputs[0], n.outputs[0]
        if any(y in m.implicit or x in m.implicit for m in graph.nodes):
            continue          # a subgraph reads it by name: renaming would break the subgraph
        if y in outputs:
            producers, users = graph.producers(), graph.consumers()
            src = producers.get(x)
            if src is None or x in outputs or len(users[x]) != 1:
                continue
            src.outputs = [y if o == x else o for o in src.outputs]
        else:
            graph.replace_uses(y, x)
        graph.remove(n)
        changed = True
    return changed

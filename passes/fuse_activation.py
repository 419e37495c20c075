"""Fuse an activation into the Conv, Gemm or MatMul that feeds it.

Before:  y = Conv(x, W, b);  z = Relu(y)
After:   z = rzrt.FusedConv(x, W, b; activation="Relu")     (applied in place on the output)
Conditions: y is read only by the activation and is not a graph output; the activation is one
of Relu, LeakyRelu, Clip (constant bounds), Sigmoid, HardSigmoid, HardSwish, Tanh, and its
kernel is rzrt's own (not a user's override).
"""
from __future__ import annotations

import numpy as np

from rzrt.passes.fusion import FUSED, as_fused, fusable, is_builtin

FLT_MAX = float(np.finfo(np.float32).max)


def _params(graph, act) -> list | None:
    """The activation's parameters as floats, or None if they are not constants."""
    op, a = act.op_type, act.attrs
    if op in ("Relu", "Sigmoid", "HardSwish", "Tanh"):
        return []
    if op == "LeakyRelu":
        return [float(a.get("alpha", 0.01))]
    if op == "HardSigmoid":
        return [float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))]
    if op == "Clip":
        if graph.opsets.get("", 13) < 11:
            return [float(a.get("min", -FLT_MAX)), float(a.get("max", FLT_MAX))]
        bounds = []
        for i in (1, 2):
            name = act.inputs[i] if len(act.inputs) > i else ""
            if not name:    # the absent bound is the input type's limit: Clip's own kernel knows the type
                return None
            if name in graph.initializers and graph.initializers[name].size == 1:
                bounds.append(float(graph.initializers[name].reshape(-1)[0]))
            else:
                return None
        return bounds
    return None


def fuse_activation(graph) -> bool:
    changed = False
    producers, users = graph.producers(), graph.consumers()
    outputs = set(graph.output_names)
    for act in list(graph.nodes):
        if act.domain or not act.inputs:
            continue
        y = act.inputs[0]
        src = producers.get(y)
        if src is None or not fusable(src) or y in outputs or len(users[y]) != 1:
            continue
        params = _params(graph, act)
        if params is None or not is_builtin(graph, act) or not is_builtin(graph, src):
            continue
        as_fused(graph, src, FUSED.get(src.op_type, src.op_type))
        src.attrs["activation"] = act.op_type
        if params:
            src.attrs["activation_params"] = tuple(params)
        src.outputs = list(act.outputs)
        graph.remove(act)
        changed = True
    return changed

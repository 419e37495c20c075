"""Run the nodes whose inputs are all constant once, with rzrt's own kernels.

Before:  y = Op(c1, c2)                (c1, c2 initializers; or a Constant node)
After:   y is an initializer; the node is gone
Conditions: rzrt's own kernel exists (a user's kernel runs at run time, as written); the op is
deterministic (no Random*); the result is not
oversized (more than MAX_ELEMENTS and bigger than its inputs: e.g. an Expand of a scalar);
a kernel that fails keeps the node and warns.
"""
from __future__ import annotations

import warnings

import numpy as np

from rzrt.ops import registry
from rzrt.passes.fusion import is_builtin

NON_DETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}
MAX_ELEMENTS = 1 << 20


def fold_constants(graph) -> bool:
    changed = False
    inits = graph.initializers
    for n in graph.toposort():
        if n.op_type in NON_DETERMINISTIC or any(i and i not in inits for i in n.inputs):
            continue
        k = registry.lookup(n.op_type, n.domain, graph.opsets.get(n.domain))
        if k is None or not is_builtin(graph, n):
            continue
        args = [inits[i] if i else None for i in n.inputs]
        kwargs = {a: v for a, v in n.attrs.items()}
        if "_outputs" in k.context:
            kwargs["_outputs"] = len(n.outputs)
        try:
            res = k.fn(*args, **kwargs)
        except Exception as e:
            warnings.warn(f"fold_constants: kept node {n.name!r} ({n.op_type}): {type(e).__name__}: {e}")
            continue
        res = list(res) if isinstance(res, tuple) else [res]
        if any(not isinstance(r, (np.ndarray, np.generic)) for r in res):
            continue          # sequences and optionals are not initializers
        res = [np.asarray(r) for r in res]
        size_in = sum(a.size for a in args if a is not None)
        if any(r.size > MAX_ELEMENTS and r.size > size_in for r in res):
            continue
        for name, r in zip(n.outputs, res):
            if name:
                inits[name] = np.array(r, copy=True)   # own the data: kernels may return views
        graph.remove(n)
        changed = True
    return changed

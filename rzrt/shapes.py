"""Shapes and dtypes of every value, for concrete input shapes.

For each step in order, the first rule that applies:
  1. all inputs are known values (initializers, or small tensors computed here, such as the
     output of Shape): run the kernel itself, so shape arithmetic (Shape -> Gather -> Concat ->
     Reshape) comes out exact;
  2. the kernel's own shape rule (fused ops, custom ops, and the common built-ins);
  3. onnx's per-node shape inference, given the input types and any known input values.
A value no rule can size stays unknown (None): the plan leaves it to run time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rzrt.graph import _attribute_proto, dtype_of

SMALL = 1 << 16            # values computed at shape time are kept when at most this many elements
NON_DETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}    # (Dropout: random in training mode; never computed here)


def infer_shapes(steps, initializers: dict, feeds: dict, opsets: dict, values: dict | None = None) -> dict:
    """name -> (shape tuple, np.dtype) or None, for every value the steps read or write.
    `values`, if given, receives the values computed here: those that depend on the input shapes
    and the initializers alone (Shape -> Gather -> Concat ...), never on the input data."""
    info = {name: (a.shape, a.dtype) for name, a in initializers.items()}
    info.update(feeds)
    known = {name: a for name, a in initializers.items() if a.size <= SMALL and name not in feeds}
    for step in steps:
        outs = _infer_step(step, info, known, opsets)
        for name, value in zip(step.outputs, outs):
            if name:
                info[name] = value
    if values is not None:
        values.update((n, a) for n, a in known.items() if n not in initializers)
    return info


def _infer_step(step, info, known, opsets) -> list:
    node, k = step.node, step.kernel
    names = [n for n in step.inputs]
    ins = [info.get(n) if n else None for n in names]
    present = [n for n in names if n]
    n_out = len(step.outputs)
    attrs = {a: v for a, v in step.kwargs.items() if not a.startswith("_")}
    # 1. constant inputs, or a shape query: compute the value itself
    if node.op_type not in NON_DETERMINISTIC and (
            all(n in known for n in present) or (node.op_type in ("Shape", "Size") and ins and ins[0])):
        try:
            args = [known.get(n) if n else None for n in names]
            if node.op_type in ("Shape", "Size") and names[0] not in known:
                args[0] = np.empty(ins[0][0], dtype=ins[0][1])   # a stand-in with the right shape
            if sum(int(np.prod(a.shape)) for a in args if a is not None) <= SMALL * 16:
                res = k.fn(*args, **step.kwargs)
                res = list(res) if isinstance(res, tuple) else [res]
                if any(isinstance(r, list) or r is None for r in res):
                    return [None] * n_out          # sequences / optionals: no static shape
                res = [np.asarray(r) for r in res]
                for name, r in zip(step.outputs, res):
                    if name and r.size <= SMALL:
                        known[name] = r
                return [(r.shape, r.dtype) for r in res[:n_out]] + [None] * (n_out - len(res))
        except Exception:
            pass
    if any(i is None for n, i in zip(names, ins) if n):
        return [None] * n_out
    # 2. the kernel's own rule
    if k.shape is not None:
        try:
            res = k.shape(*ins, **attrs)      # (shape, dtype), or a list of them for several outputs
            res = res if isinstance(res, list) else [res]
            return [(tuple(int(d) for d in s), np.dtype(dt)) for s, dt in res][:n_out] + [None] * (n_out - len(res))
        except Exception:
            pass
    # 3. onnx's inference for this one node
    return _onnx_infer(step, ins, known, opsets)


def _onnx_infer(step, ins, known, opsets) -> list:
    node = step.node
    n_out = len(step.outputs)
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(node.domain, 1), node.domain)
    except Exception:
        return [None] * n_out
    try:
        proto = helper.make_node(node.op_type, list(step.inputs), list(step.outputs), domain=node.domain or None)
        proto.attribute.extend(_attribute_proto(node, a, v, opsets.get(node.domain))
                               for a, v in node.attrs.items() if v is not None)
    except Exception:
        return [None] * n_out
    types, data = {}, {}
    for name, i in zip(step.inputs, ins):
        if name and i is not None:
            types[name] = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(i[1]), list(i[0]))
            if name in known:
                data[name] = numpy_helper.from_array(known[name], name)
    try:
        outs = onnx.shape_inference.infer_node_outputs(
            schema, proto, types, data, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    except Exception:
        return [None] * n_out
    res = []
    for name in step.outputs:
        t = outs.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            res.append(None)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
        res.append(None if any(d is None for d in dims) else (tuple(dims), dtype_of(t.tensor_type.elem_type)))
    return res

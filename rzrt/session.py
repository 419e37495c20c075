"""InferenceSession: load -> graph -> kernels -> execute, with onnxruntime's Python API.

    sess = rzrt.InferenceSession("resnet50.onnx")
    (logits,) = sess.run(None, {"input": x})
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rzrt.errors import InputError, ModelError, UnsupportedOpError
from rzrt.executor import Executor, Step, last_uses
from rzrt.graph import Graph, Value
from rzrt.model import load_model
from rzrt.ops import registry


@dataclass(frozen=True)
class NodeArg:
    """What get_inputs()/get_outputs() return, as onnxruntime's NodeArg: name, shape, type."""
    name: str
    shape: list | None
    type: str


@dataclass(frozen=True)
class ModelMetadata:
    producer_name: str
    graph_name: str
    description: str
    custom_metadata_map: dict


class InferenceSession:
    def __init__(self, path_or_bytes, sess_options=None, providers=None, **kwargs):
        del sess_options, providers   # accepted for onnxruntime compatibility; rzrt has one CPU provider
        model = load_model(path_or_bytes)
        self.graph = Graph.from_onnx(model)
        self.graph.lint()
        self._steps = bind_kernels(self.graph)
        self._executor = Executor(self._steps, self.graph.initializers, self.graph.output_names)
        last_uses(self._steps, keep=self.graph.output_names)
        if kwargs:
            raise TypeError(f"InferenceSession got unexpected keyword argument(s) {', '.join(kwargs)}")

    # --- onnxruntime's API -----------------------------------------------------------
    def get_inputs(self) -> list:
        return [_node_arg(v) for v in self.graph.inputs]

    def get_outputs(self) -> list:
        return [_node_arg(v) for v in self.graph.outputs]

    def get_modelmeta(self) -> ModelMetadata:
        g = self.graph
        return ModelMetadata(g.producer, g.name, g.doc, dict(g.metadata))

    def run(self, output_names, input_feed, run_options=None) -> list:
        del run_options
        feeds = self._check_feed(input_feed)
        names = self._check_output_names(output_names)
        results = self._executor.run(feeds)
        return [results[n] for n in names]

    # --- checks ----------------------------------------------------------------------
    def _check_output_names(self, output_names) -> list:
        if output_names is None:
            return self.graph.output_names
        if isinstance(output_names, str):
            output_names = [output_names]
        known = self.graph.output_names
        for n in output_names:
            if n not in known:
                raise InputError(f"unknown output {n!r}; the model's outputs are {', '.join(map(repr, known))}")
        return list(output_names)

    def _check_feed(self, feed) -> dict:
        if not isinstance(feed, dict):
            raise InputError(f"inputs must be a dict {{name: array}}, got {type(feed).__name__}; "
                             f"e.g. sess.run(None, {{{self.graph.inputs[0].name!r}: x}})")
        expected = {v.name: v for v in self.graph.inputs}
        unknown = [k for k in feed if k not in expected]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are "
                             f"{', '.join(_describe(v) for v in self.graph.inputs)}")
        missing = [k for k in expected if k not in feed]
        if missing:
            raise InputError(f"missing input {missing[0]!r} ({_describe(expected[missing[0]])}); "
                             f"got {', '.join(map(repr, feed)) or 'no inputs'}")
        return {name: _check_array(expected[name], a) for name, a in feed.items()}


def _check_array(v: Value, a) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a, dtype=v.dtype)
        except (TypeError, ValueError) as e:
            raise InputError(f"input {v.name!r}: cannot convert {type(a).__name__} to an array "
                             f"of {v.dtype} ({e})") from None
    if v.dtype is not None and a.dtype != v.dtype:
        raise InputError(f"input {v.name!r}: expected dtype {v.dtype} ({v.type_str}), got {a.dtype}; "
                         f"convert with x.astype(np.{v.dtype})")
    if v.shape is not None:
        if a.ndim != len(v.shape):
            raise InputError(f"input {v.name!r}: expected rank {len(v.shape)} with shape {_shape_str(v.shape)}, "
                             f"got rank {a.ndim} with shape {list(a.shape)}")
        for i, (want, got) in enumerate(zip(v.shape, a.shape)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InputError(f"input {v.name!r}: expected shape {_shape_str(v.shape)}, got {list(a.shape)} "
                                 f"(dimension {i} must be {want})")
    return a


def _shape_str(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _describe(v: Value) -> str:
    return f"{v.name!r} ({v.dtype}, {_shape_str(v.shape) if v.shape is not None else 'any shape'})"


def _node_arg(v: Value) -> NodeArg:
    return NodeArg(v.name, list(v.shape) if v.shape is not None else None, v.type_str)


def bind_kernels(graph: Graph) -> list:
    """A Step per node, in topological order; every missing kernel reported at once, at load."""
    steps, missing, problems = [], {}, []
    for node in graph.toposort():
        opset = graph.opsets.get(node.domain)
        k = registry.lookup(node.op_type, node.domain, opset)
        if k is None:
            missing.setdefault((node.domain, node.op_type, opset), []).append(node.name)
            continue
        where = f"node {node.name!r} ({node.qualified_op})"
        try:
            kwargs = k.bind(node.attrs, where)
        except registry.UnsupportedAttributeError as e:
            problems.append(str(e))
            continue
        n_given = len(node.inputs)
        if k.max_inputs is not None and n_given > k.max_inputs:
            problems.append(f"{where} has {n_given} inputs; kernel {k.name} takes at most {k.max_inputs}")
            continue
        if sum(1 for i in node.inputs[:k.min_inputs] if i) < k.min_inputs:
            problems.append(f"{where} has {n_given} input(s); kernel {k.name} needs at least {k.min_inputs}")
            continue
        if "_outputs" in k.context:
            kwargs["_outputs"] = len(node.outputs)
        steps.append(Step(node, k, kwargs, tuple(node.inputs), tuple(node.outputs)))
    if missing:
        raise UnsupportedOpError(missing_ops_message(missing))
    if problems:
        raise ModelError("; ".join(problems))
    return steps


def missing_ops_message(missing: dict) -> str:
    parts = []
    for (domain, op, opset), nodes in missing.items():
        newer = [k.since for k in registry.all_kernels() if k.domain == domain and k.op_type == op]
        why = f", rzrt has it from opset {min(newer)}" if newer else ""
        used = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        parts.append(f"{domain + '.' if domain else ''}{op} (domain {domain or 'ai.onnx'!r}, opset {opset}{why}) "
                     f"used by node(s) {used}")
    domain, op, _ = next(iter(missing))
    fix = (f"@rzrt.register_op({op!r}{', domain=' + repr(domain) if domain else ''}) on a numpy function "
           f"(see README, Custom operators), loaded with --plugin FILE.py")
    return f"no kernel for {len(missing)} operator(s): {'; '.join(parts)}; to add one: {fix}"

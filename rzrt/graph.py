"""Graph IR: what the passes rewrite and the executor runs.

    Value(name, shape, dtype)          a tensor's static description (shape dims: int, str or None)
    Node(op_type, domain, inputs, outputs, attrs, name)
    Graph(nodes, initializers, inputs, outputs, ...)

Built once from the ModelProto: attributes are converted to Python values here, once, not
on every call. Node inputs use "" for an absent optional input, as ONNX does.
The graph computes its own topological order; the file's node order is never trusted.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from rzrt.errors import ModelError


@dataclass
class Value:
    name: str
    shape: tuple | None = None     # None: unknown rank; a dim is an int, a symbolic name (str) or None
    dtype: np.dtype | None = None
    kind: str = "tensor"           # "tensor", or "sequence" / "optional" (passed through as Python values)

    @property
    def type_str(self) -> str:
        return f"tensor({_ONNX_TYPE_NAMES.get(self.dtype, 'unknown')})" if self.dtype is not None else "unknown"


@dataclass(eq=False)
class Node:
    op_type: str
    domain: str = ""
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    name: str = ""
    implicit: list = field(default_factory=list)   # outer values its subgraphs read (appended to inputs)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.qualified_op}, {self.inputs} -> {self.outputs})"

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}.{self.op_type}" if self.domain else self.op_type


@dataclass
class Graph:
    nodes: list
    initializers: dict           # name -> np.ndarray
    inputs: list                 # Value, the graph's real inputs (initializers excluded)
    outputs: list                # Value
    opsets: dict = field(default_factory=lambda: {"": 17})
    value_info: dict = field(default_factory=dict)   # name -> Value, shapes the file declares
    metadata: dict = field(default_factory=dict)
    name: str = "graph"
    ir_version: int = 8
    producer: str = ""
    doc: str = ""

    # --- building -----------------------------------------------------------------
    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> Graph:
        opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        graph = cls.from_graph_proto(model.graph, opsets)
        graph.metadata = {p.key: p.value for p in model.metadata_props}
        graph.ir_version = model.ir_version
        graph.producer = f"{model.producer_name} {model.producer_version}".strip()
        graph.doc = model.doc_string
        return graph

    @classmethod
    def from_graph_proto(cls, g: onnx.GraphProto, opsets: dict) -> Graph:
        """A Graph from a GraphProto: the model's main graph, or a subgraph (If/Loop/Scan body)."""
        inits = {}
        for t in g.initializer:
            inits[t.name] = tensor_to_array(t, f"initializer {t.name!r}")
        for st in g.sparse_initializer:
            inits[st.values.name] = tensor_to_array(st, f"sparse initializer {st.values.name!r}")
        nodes = []
        for i, n in enumerate(g.node):
            name = n.name or f"{n.op_type}_{i}"
            attrs = {a.name: attribute_value(a, f"node {name!r}") for a in n.attribute}
            implicit = []
            for a, v in attrs.items():
                if isinstance(v, onnx.GraphProto):
                    attrs[a] = Body(v, opsets)
                    implicit += [x for x in outer_names(v) if x not in implicit]
            nodes.append(Node(n.op_type, "" if n.domain == "ai.onnx" else n.domain,
                              list(n.input) + implicit, list(n.output), attrs, name, implicit))
        _unique_node_names(nodes)
        value_info = {vi.name: value_from_proto(vi) for vi in list(g.value_info) + list(g.output)}
        return cls(
            nodes=nodes,
            initializers=inits,
            inputs=[value_from_proto(vi) for vi in g.input if vi.name not in inits],
            outputs=[value_from_proto(vi) for vi in g.output],
            opsets=dict(opsets),
            value_info=value_info,
            name=g.name or "graph",
        )

    def to_onnx(self) -> onnx.ModelProto:
        nodes = []
        for n in self.toposort():
            inputs = n.inputs[:len(n.inputs) - len(n.implicit)]
            proto = helper.make_node(n.op_type, inputs, n.outputs, name=n.name, domain=n.domain or None)
            proto.attribute.extend(_attribute_proto(n, k, v, self.opsets.get(n.domain))
                                   for k, v in n.attrs.items() if v is not None)
            nodes.append(proto)
        graph = helper.make_graph(
            nodes, self.name,
            [value_to_proto(v) for v in self.inputs],
            [value_to_proto(v) for v in self.outputs],
            initializer=[numpy_helper.from_array(a, name) for name, a in self.initializers.items()],
        )
        opsets = [helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="rzrt")
        model.ir_version = max(self.ir_version, 7)
        helper.set_model_props(model, self.metadata)
        model.doc_string = self.doc
        return model

    # --- queries ------------------------------------------------------------------
    def producers(self) -> dict:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict:
        users = defaultdict(list)
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users[i].append(n)
        return users

    @property
    def output_names(self) -> list:
        return [v.name for v in self.outputs]

    @property
    def input_names(self) -> list:
        return [v.name for v in self.inputs]

    # --- editing (for the passes) ---------------------------------------------------
    def value_names(self) -> set:
        names = set(self.initializers) | set(self.input_names) | set(self.output_names)
        for n in self.nodes:
            names.update(n.inputs)
            names.update(n.outputs)
        return names

    def fresh_name(self, base: str, taken: set | None = None) -> str:
        """A value name not used anywhere in the graph: base, base_1, base_2, ..."""
        taken = self.value_names() if taken is None else taken
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def replace_uses(self, old: str, new: str) -> None:
        """Every node that read `old` reads `new` instead."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]

    def remove(self, *nodes) -> None:
        dead = {id(n) for n in nodes}
        self.nodes = [n for n in self.nodes if id(n) not in dead]

    def static_shape(self, name: str):
        """The declared shape of a value (dims may be symbolic), or None."""
        if name in self.initializers:
            return self.initializers[name].shape
        for v in self.inputs:
            if v.name == name:
                return v.shape
        v = self.value_info.get(name)
        return v.shape if v is not None else None

    def toposort(self) -> list:
        """Kahn's algorithm, stable with respect to the file's order: of the nodes whose inputs
        are ready, the one written first runs first, so a file already in order keeps its order.
        Raises ModelError on a cycle."""
        produced_by = self.producers()
        position = {id(n): k for k, n in enumerate(self.nodes)}
        indegree = {}
        users = defaultdict(list)
        for n in self.nodes:
            deps = {id(produced_by[i]) for i in n.inputs if i in produced_by}
            indegree[id(n)] = len(deps)
            for d in deps:
                users[d].append(n)
        ready = [position[id(n)] for n in self.nodes if indegree[id(n)] == 0]   # a heap of positions
        heapq.heapify(ready)
        order = []
        while ready:
            n = self.nodes[heapq.heappop(ready)]
            order.append(n)
            for u in users[id(n)]:
                indegree[id(u)] -= 1
                if indegree[id(u)] == 0:
                    heapq.heappush(ready, position[id(u)])
        if len(order) != len(self.nodes):
            stuck = _on_cycles([n for n in self.nodes if indegree[id(n)] > 0], produced_by)
            names = [f"{n.name!r} ({n.op_type})" for n in stuck]
            raise ModelError(f"the graph has a cycle through node(s) {', '.join(names[:8])}"
                             f"{f' and {len(names) - 8} more' if len(names) > 8 else ''}; "
                             "an ONNX graph must be acyclic (no node may depend on its own output)")
        return order

    def lint(self, outer=()) -> None:
        """Raise ModelError for what would break execution: duplicate outputs, dangling inputs, cycles.
        `outer`: names a subgraph may read from the graphs around it."""
        defined = {name: "an outer value" for name in outer}
        for v in self.inputs:
            defined[v.name] = "a graph input"
        for name in self.initializers:
            defined.setdefault(name, "an initializer")
        for n in self.nodes:
            for o in n.outputs:
                if not o:
                    continue
                if o in defined:
                    raise ModelError(f"value {o!r} is produced by node {n.name!r} ({n.op_type}) but is "
                                     f"already {defined[o]}; every value must have exactly one producer")
                defined[o] = f"the output of node {n.name!r}"
        for n in self.nodes:
            for i in n.inputs:
                if i and i not in defined:
                    raise ModelError(f"node {n.name!r} ({n.op_type}) reads {i!r}, which no node, graph input "
                                     f"or initializer produces; the model is incomplete or corrupt")
        for v in self.outputs:
            if v.name not in defined:
                raise ModelError(f"graph output {v.name!r} is produced by no node, graph input or initializer; "
                                 "every graph output must be computed by the graph (the model is incomplete "
                                 "or corrupt)")
        self.toposort()


def _on_cycles(stuck: list, produced_by: dict) -> list:
    """Of the nodes Kahn's algorithm could not place, those on a cycle (or between cycles):
    drop, again and again, every node none of whose outputs is read by another stuck node."""
    alive = {id(n): n for n in stuck}
    while True:
        read = {id(produced_by[i]) for n in alive.values() for i in n.inputs if i in produced_by}
        dead = [k for k in alive if k not in read]
        if not dead:
            return [n for n in stuck if id(n) in alive]
        for k in dead:
            del alive[k]


class Body:
    """A graph-valued attribute (the branches of If, the body of Loop and Scan): compiled once,
    on first use, into steps with rzrt's kernels, and run like a small model."""

    def __init__(self, proto: onnx.GraphProto, opsets: dict):
        self.proto, self.opsets, self._run = proto, opsets, None

    def __call__(self, inputs: list, outer: dict) -> list:
        """Run with the formal inputs (by position) and the outer values it reads (by name)."""
        if self._run is None:
            from rzrt.executor import Executor, last_uses
            from rzrt.session import bind_kernels
            graph = Graph.from_graph_proto(self.proto, self.opsets)
            graph.lint(outer=outer)
            steps = bind_kernels(graph)
            last_uses(steps, keep=graph.output_names)
            self._names = [i.name for i in self.proto.input]
            self._run = Executor(steps, graph.initializers, graph.output_names)
        feeds = dict(outer)
        feeds.update(zip(self._names, inputs))
        out = self._run.run(feeds)
        return [out[n] for n in self._run.output_names]

    def __repr__(self) -> str:
        return f"Body({self.proto.name!r}, {len(self.proto.node)} nodes)"


def outer_names(g: onnx.GraphProto) -> list:
    """The values a subgraph reads from outside itself (its nested subgraphs included), in order."""
    defined = {i.name for i in g.input} | {t.name for t in g.initializer} | \
        {s.values.name for s in g.sparse_initializer} | {o for n in g.node for o in n.output}
    used = []
    for n in g.node:
        names = list(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                names += outer_names(sub)
        used += [x for x in names if x and x not in defined and x not in used]
    return used


def _unique_node_names(nodes) -> None:
    seen = set()
    for n in nodes:
        base, k = n.name, 1
        while n.name in seen:
            n.name = f"{base}_{k}"
            k += 1
        seen.add(n.name)


# --- conversions ------------------------------------------------------------------
_ONNX_TYPE_NAMES = {}
for _code, _np in ((1, "float"), (2, "uint8"), (3, "int8"), (4, "uint16"), (5, "int16"), (6, "int32"),
                   (7, "int64"), (8, "string"), (9, "bool"), (10, "float16"), (11, "double"),
                   (12, "uint32"), (13, "uint64"), (14, "complex64"), (15, "complex128"), (16, "bfloat16")):
    try:   # bfloat16 needs ml_dtypes, which older onnx releases do not bring
        _ONNX_TYPE_NAMES[np.dtype(helper.tensor_dtype_to_np_dtype(_code))] = _np
    except Exception:
        pass


def dtype_of(elem_type: int) -> np.dtype | None:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else None
    except Exception:
        return None


def value_from_proto(vi: onnx.ValueInfoProto) -> Value:
    which = vi.type.WhichOneof("value")
    if which in ("sequence_type", "optional_type", "map_type"):
        return Value(vi.name, None, None, kind=which[:-len("_type")])
    t = vi.type.tensor_type
    shape = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return Value(vi.name, shape, dtype_of(t.elem_type))


def value_to_proto(v: Value) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(v.dtype) if v.dtype is not None else onnx.TensorProto.FLOAT
    return helper.make_tensor_value_info(v.name, elem, list(v.shape) if v.shape is not None else None)


def tensor_to_array(t, what: str) -> np.ndarray:
    try:
        if isinstance(t, onnx.SparseTensorProto):
            values = numpy_helper.to_array(t.values)
            idx = numpy_helper.to_array(t.indices)
            dense = np.zeros(tuple(t.dims), dtype=values.dtype)
            if idx.ndim == 1:
                dense.reshape(-1)[idx] = values
            else:
                dense[tuple(idx.T)] = values
            return dense
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"{what}: cannot read its data ({e}); the file is truncated or corrupt") from None
    return arr


def attribute_value(a: AttributeProto, where: str) -> Any:
    """An attribute as a Python value: int, float, str, tuple of ints/floats, list of str,
    np.ndarray for tensors; raises ModelError for an attribute without a type."""
    if a.type == AttributeProto.UNDEFINED:
        raise ModelError(f"{where}: attribute {a.name!r} has no type (UNDEFINED); expected an int, float, "
                         "string, tensor or a list of them - the file is corrupt or was written incorrectly")
    if a.type == AttributeProto.TENSOR:
        return tensor_to_array(a.t, f"{where}, attribute {a.name!r}")
    if a.type == AttributeProto.SPARSE_TENSOR:
        return tensor_to_array(a.sparse_tensor, f"{where}, attribute {a.name!r}")
    if a.type == AttributeProto.TENSORS:
        return [tensor_to_array(t, f"{where}, attribute {a.name!r}") for t in a.tensors]
    try:
        v = helper.get_attribute_value(a)
    except Exception as e:
        raise ModelError(f"{where}: cannot read attribute {a.name!r} ({e}); the file is corrupt") from None
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode("utf-8", errors="replace") for s in v]
    if a.type in (AttributeProto.INTS, AttributeProto.FLOATS):
        return tuple(v)
    return v


def _attr_for_proto(v):
    if isinstance(v, Body):
        return v.proto
    if isinstance(v, np.ndarray):
        return numpy_helper.from_array(v)
    if isinstance(v, (tuple, list)):
        return [_attr_for_proto(x) for x in v]
    return v


def _attribute_proto(node: Node, name: str, value, opset) -> AttributeProto:
    """The AttributeProto for one converted attribute. An empty list carries no element type,
    so its type comes from the op's schema (INTS, the common case, when there is none)."""
    value = _attr_for_proto(value)
    if isinstance(value, list) and not value:
        attr_type = AttributeProto.INTS
        try:
            schema = onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), node.domain)
            attr_type = AttributeProto.AttributeType.Value(schema.attributes[name].type.name)
        except Exception:
            pass
        return helper.make_attribute(name, value, attr_type=attr_type)
    return helper.make_attribute(name, value)

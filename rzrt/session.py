"""InferenceSession: load -> graph -> kernels -> execute, with onnxruntime's Python API.

    sess = rzrt.InferenceSession("resnet50.onnx")
    (logits,) = sess.run(None, {"input": x})
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np

from rzrt.errors import InputError, ModelError, UnsupportedOpError
from rzrt.executor import Executor, Step, last_uses
from rzrt.graph import Graph, Value
from rzrt.layout import LAYOUT_FLAGS, channels_last_blocks
from rzrt.model import load_model
from rzrt import batch, team
from rzrt.ops import parallel, registry
from rzrt.planner import MemoryPlan, Request, plan
from rzrt.shapes import NON_DETERMINISTIC, infer_shapes


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
    """Load a model once; run it many times.

    level        graph optimisation: 0 off, 1 basic (standard ONNX rewrites), 2 all (fused rzrt ops)
    memory_plan  place every intermediate value in one preallocated arena (plans cached per input shape)
    profile      time every node of every run; session.profile() returns the records
    threads      cores to use (None: all): BLAS's threads, and at batch > 1 the threads that share each
                 convolution's images (rzrt/batch.py; 1: this thread alone, BLAS on one thread)
    processes    run every convolution split across this many processes, one per core, sharing the
                 arena (rzrt/team.py; Linux; 1: this process alone, the default). Then BLAS runs
                 one thread per process, whatever `threads` says, and profile=True runs alone
    custom_ops   kernels for this session only (functions decorated with @rzrt.custom_op or
                 @rzrt.register_op); they win over the global registry here and nowhere else
    """

    def __init__(self, path_or_bytes, sess_options=None, providers=None, *, level: int = 2,
                 memory_plan: bool = True, profile: bool = False, threads: int | None = None,
                 processes: int = 1, custom_ops=None):
        del sess_options, providers   # accepted for onnxruntime compatibility; rzrt has one CPU provider
        self._custom = _session_table(custom_ops)
        with registry.session_kernels(self._custom):
            self._load(path_or_bytes, level)
        self.memory_plan_enabled = memory_plan
        self._runs = {}               # input signature -> Executor with its arena
        self.profiling = profile
        self._records = {"nodes": [], "runs": []}
        self.threads = threads
        self._limit = _thread_limiter(threads)
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise InputError(f"processes must be a positive integer, got {processes!r}")
        self.processes = processes
        self._lock = threading.RLock()

    def _load(self, path_or_bytes, level):
        from rzrt.passes.pipeline import optimize

        model = load_model(path_or_bytes)
        self.graph = Graph.from_onnx(model)
        self.graph.lint()
        bind_kernels(self.graph)      # every missing kernel is reported before any pass runs
        self.pass_report = optimize(self.graph, level)
        self.level = level
        self._steps = bind_kernels(self.graph)
        # weights and attribute tensors are constants: read-only, and kernels may cache what they derive
        for a in [*self.graph.initializers.values(), *(v for s in self._steps for v in s.kwargs.values())]:
            if isinstance(a, np.ndarray):
                registry.mark_constant(a)
        last_uses(self._steps, keep=self.graph.output_names)

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
        with self._lock:      # one arena per input signature: runs from several threads take turns
            ex = self._executor_for(feeds)
            parallel.set_threads(self.threads)
            if isinstance(ex, team.TeamExecutor):        # one BLAS thread per process while the team runs
                for other in self._runs.values():       # workers for one input shape at a time, not one per shape
                    if other is not ex and isinstance(other, team.TeamExecutor) and other.workers:
                        other.close()
                results = ex.run(feeds)
            else:
                with self._limit():
                    results = ex.run(feeds)
        return [results[n] for n in names]

    def profile(self) -> dict:
        """The profiling records so far: {"nodes": [...], "runs": [...]} (profile=True sessions)."""
        if not self.profiling:
            raise InputError("this session was created without profiling; use InferenceSession(..., profile=True)")
        return {"nodes": list(self._records["nodes"]), "runs": list(self._records["runs"])}

    def clear_profile(self) -> None:
        self._records["nodes"].clear()
        self._records["runs"].clear()

    def memory_plan(self, input_shapes: dict | None = None) -> MemoryPlan:
        """The plan for these input shapes ({name: shape}; default: the last run's, else dims of 1)."""
        return self._planned(input_shapes).plan

    def plan_time_nodes(self, input_shapes: dict | None = None) -> list:
        """The nodes the plan for these input shapes computed once, at plan time (shape arithmetic
        on the input shapes and initializers), and no longer runs; level 0 has none."""
        return list(self._planned(input_shapes).folded)

    def channels_last_nodes(self, input_shapes: dict | None = None) -> list:
        """The nodes that read or write channels-last (N, H, W, C) values in the plan for these
        input shapes (rzrt/layout.py's MobileNet blocks); their values' shapes say so."""
        return list(self._planned(input_shapes).channels_last)

    def value_shapes(self, input_shapes: dict | None = None) -> dict:
        """{value name: (shape, dtype) or None} for these input shapes, as the plan sees them."""
        return dict(self._planned(input_shapes).shapes)

    def _planned(self, input_shapes):
        with self._lock:
            if input_shapes is None and self._runs:
                return next(reversed(self._runs.values()))
            feeds = {v.name: np.empty(tuple((input_shapes or {}).get(v.name) or _default_shape(v)), v.dtype)
                     for v in self.graph.inputs}
            return self._executor_for(feeds)

    # --- planning --------------------------------------------------------------------
    def _executor_for(self, feeds: dict) -> Executor:
        arrays = {n: a for n, a in feeds.items() if isinstance(a, np.ndarray)}   # not sequences / optionals
        sig = tuple((n, a.shape, a.dtype.str) for n, a in arrays.items())
        ex = self._runs.get(sig)
        if ex is None:
            with registry.session_kernels(self._custom):
                ex = self._runs[sig] = self._build_executor({n: (a.shape, a.dtype) for n, a in arrays.items()})
        return ex

    def _build_executor(self, feed_info: dict) -> Executor:
        g = self.graph
        values = {}
        shapes = infer_shapes(self._steps, g.initializers, feed_info, g.opsets, values)
        run_steps, folded = self._steps, {}
        if self.level >= 1:           # level 0 runs the graph as exported, every node every run
            run_steps, folded = fold_at_plan_time(self._steps, values)
        kept = {id(s) for s in run_steps}
        folded_nodes = [s.node for s in self._steps if id(s) not in kept]      # computed once, at plan time
        if self.level >= 2:           # MobileNet blocks channels-last where that saves transposes
            shapes = dict(shapes)
            run_steps = channels_last_blocks(run_steps, shapes, g.output_names)
        requests, shares, dynamic, specs = memory_requests(run_steps, shapes, g)
        if not self.memory_plan_enabled:
            requests, shares, specs = [], {}, {}
        mplan = plan(requests, shares, dynamic)
        ranks = team.available(self.processes) if requests and not self.profiling else 1
        arena = team.aligned_bytes(mplan.arena_bytes, shared=ranks > 1) if requests else None
        steps = []
        for s in run_steps:
            s = dataclasses.replace(s)
            name = s.outputs[0] if len(s.outputs) == 1 else None
            if name in specs:
                s.out_spec = specs[name]
                if name in mplan.offsets:
                    s.out = _view(arena, mplan.offsets[name][0], *specs[name])
            if arena is not None:
                s.unplanned = tuple(i for i, o in enumerate(s.outputs) if o and o not in mplan.offsets)
            key = scratch_name(s)
            if key in mplan.offsets:
                off, n = mplan.offsets[key]
                s.scratch = arena[off:off + n]
            steps.append(s)
        if folded:
            last_uses(steps, keep=g.output_names)
        constants = {**g.initializers, **folded}
        sharers = min(batch.ranks_for(self.threads), _images(feed_info)) if batch.SPLIT_IMAGES else 1
        shared = batch.shared_steps(steps, constants, sharers) if sharers > 1 and ranks == 1 else set()
        if self.profiling:            # the run the user gets, clocked: a batch shared as without profiling
            from rzrt.profiler import ProfilingBatchExecutor, ProfilingExecutor
            ex = ProfilingBatchExecutor(steps, constants, g.output_names, arena, sharers, shared, self._records) \
                if shared else ProfilingExecutor(steps, constants, g.output_names, arena, sink=self._records)
        elif ranks > 1:
            ex = team.TeamExecutor(steps, constants, g.output_names, arena, ranks, [v.name for v in g.inputs])
        elif shared:                  # batch > 1: each convolution's images shared among threads
            ex = batch.BatchExecutor(steps, constants, g.output_names, arena, sharers, shared)
        else:
            ex = Executor(steps, constants, g.output_names, arena)
        ex.plan, ex.shapes = mplan, shapes
        ex.folded = folded_nodes
        ex.channels_last = [s.node for s in run_steps if any(s.kwargs.get(f) not in (None, False, -1)
                                                             for f in LAYOUT_FLAGS)]
        return ex

    # --- checks ----------------------------------------------------------------------
    def _check_output_names(self, output_names) -> list:
        if not output_names:          # None or [] : every output, as onnxruntime does
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
            raise InputError(f"missing input {_describe(expected[missing[0]])}; "
                             f"got {', '.join(map(repr, feed)) or 'no inputs'}")
        return {name: _check_array(expected[name], a) for name, a in feed.items()}


def _session_table(custom_ops) -> dict | None:
    """The session's own kernel table from custom_ops=[fn, ...]."""
    if not custom_ops:
        return None
    table = {}
    for fn in custom_ops:
        k = getattr(fn, "rzrt_kernel", None)
        if k is None:
            raise InputError(f"custom_ops takes functions decorated with @rzrt.custom_op(...) or "
                             f"@rzrt.register_op(...); got {getattr(fn, '__name__', type(fn).__name__)!r} without one")
        override = getattr(fn, "rzrt_override", False)
        existing = registry.lookup(k.op_type, k.domain, None)
        if existing is not None and existing.fn is not fn and not override:
            raise InputError(f"custom op {k.domain + '.' if k.domain else ''}{k.op_type} already has a kernel "
                             f"({existing.fn.__module__}.{existing.fn.__qualname__}); use override=True to replace "
                             f"it in this session")
        registry.add(k, table, override=True)
    return table


def _images(feed_info: dict) -> int:
    """The batch: the largest leading dimension among the inputs (1 when none has one)."""
    return max((shape[0] for shape, _ in feed_info.values() if shape), default=1)


def _thread_limiter(threads):
    """A context manager factory limiting BLAS to `threads` while a run lasts (no-op for None)."""
    import contextlib
    if threads is None:
        return contextlib.nullcontext
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer or None, got {threads!r}")
    from rzrt import blas
    return lambda: blas.limited(threads)         # from whichever thread runs (rzrt/blas.py)


def scratch_name(step: Step) -> str:
    return f"{step.node.name}/scratch"


def fold_at_plan_time(steps, values: dict):
    """(steps left to run, {value: array}): a step whose outputs shape inference computed (they
    depend on the input shapes and initializers only: Shape -> Gather -> Unsqueeze -> Concat feeding
    a Reshape) runs once, here, and its outputs become constants of this plan. Only rzrt's own
    deterministic kernels: a user's kernel runs every time, as written."""
    folded, left = {}, []
    for s in steps:
        outs = [o for o in s.outputs if o]
        if outs and all(o in values for o in outs) and s.node.op_type not in NON_DETERMINISTIC \
                and registry.is_rzrt_kernel(s.kernel):
            for o in outs:
                a = np.array(values[o])                  # the plan's own copy, read-only like an initializer
                a.flags.writeable = False
                folded[o] = a
        else:
            left.append(s)
    return left, folded


def memory_requests(steps, shapes: dict, graph: Graph):
    """What the planner must place: (requests, shares, dynamic, out_specs).

    out_specs: output -> (shape, dtype) for every single-output kernel that writes into `out=`
    (graph outputs included: they get a fresh buffer each run, never the arena).
    """
    keep = set(graph.output_names)
    last = {}
    for i, s in enumerate(steps):
        for n in s.inputs:
            if n:
                last[n] = i
    requests, shares, dynamic, specs, planned = [], {}, [], {}, {}
    root, group_end = {}, {}

    def add(name, nbytes, start, end, share=None):
        requests.append(Request(name, nbytes, start, end))
        r = root[share] if share else name
        root[name] = r
        group_end[r] = max(group_end.get(r, end), end)
        if share:
            shares[name] = share

    for i, s in enumerate(steps):
        k = s.kernel
        ins = [shapes.get(n) if n else None for n in s.inputs]
        attrs = {a: v for a, v in s.kwargs.items() if not a.startswith("_") or a in LAYOUT_FLAGS}
        if k.scratch is not None and k.takes_scratch and all(x is not None for n, x in zip(s.inputs, ins) if n):
            try:
                nbytes = k.scratch(*ins, **attrs)
            except Exception:     # inputs the kernel cannot take: it raises its own error when it runs
                nbytes = 0
            if nbytes:
                add(scratch_name(s), nbytes, i, i)
        for j, name in enumerate(s.outputs):
            if not name:
                continue
            info = shapes.get(name)
            # planned: the kernel writes into out=, or returns an array the executor copies into it
            single = (k.takes_out or k.shape is not None) and len(s.outputs) == 1 and info is not None \
                and not np.dtype(info[1]).hasobject     # strings live in Python objects, not the arena
            if name in keep:
                if single:
                    specs[name] = info
                continue
            if k.view and j == 0:
                if s.inputs[0] in planned and info is not None:
                    add(name, _nbytes(info), i, last.get(name, i), share=s.inputs[0])
                    planned[name] = info
                continue      # else a view of an input, an initializer or a run-time value: no bytes
            if not single:
                dynamic.append(name)
                continue
            share = None
            for idx in k.inplace:
                cand = s.inputs[idx] if idx < len(s.inputs) else ""
                if cand in planned and planned[cand] == info and group_end[root[cand]] == i:
                    share = cand
                    break
            add(name, _nbytes(info), i, last.get(name, i), share=share)
            planned[name] = info
            specs[name] = info
    return requests, shares, dynamic, specs


def _nbytes(info) -> int:
    shape, dtype = info
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _view(arena, offset, shape, dtype):
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return arena[offset:offset + n].view(dtype).reshape(shape)


def _default_shape(v: Value) -> tuple:
    if v.shape is None:
        raise InputError(f"input {v.name!r} has no declared shape; pass input_shapes={{{v.name!r}: (...)}}")
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in v.shape)


def _check_array(v: Value, a) -> np.ndarray:
    if v.kind != "tensor":            # sequences and optionals are Python lists / None
        return a
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
    return NodeArg(v.name, list(v.shape) if v.shape is not None else [], v.type_str)


def bind_kernels(graph: Graph) -> list:
    """A Step per node, in topological order; every missing kernel reported at once, at load."""
    steps, missing, problems = [], {}, []
    for node in graph.toposort():
        opset = graph.opsets.get(node.domain, 1 if node.domain else None)   # an unimported custom domain: version 1
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
        if "_outer" in k.context:
            kwargs["_outer"] = tuple(node.implicit)
        if "_memo" in k.context:      # the node's own dict across runs: what a kernel derives once
            kwargs["_memo"] = {}
        steps.append(Step(node, k, kwargs, tuple(node.inputs), tuple(node.outputs)))
    if missing:
        raise UnsupportedOpError(missing_ops_message(missing))
    if problems:
        raise ModelError("; ".join(problems))
    return steps


def missing_ops_message(missing: dict) -> str:
    parts, fixes = [], []
    for (domain, op, opset), nodes in missing.items():
        newer = [k.since for k in registry.all_kernels() if k.domain == domain and k.op_type == op]
        why = f", rzrt has it from opset {min(newer)}" if newer else ""
        used = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        parts.append(f"{domain + '.' if domain else ''}{op} (domain {domain or 'ai.onnx'!r}, opset {opset}{why}) "
                     f"used by node(s) {used}")
        fixes.append(f"@rzrt.register_op({op!r}{', domain=' + repr(domain) if domain else ''}) "
                     f"def {op if op.isidentifier() else 'kernel'}(X, *, attr=default): return ...")
    return (f"no kernel for {len(missing)} operator(s): {'; '.join(parts)}. To add them, put "
            f"{' and '.join(fixes)} in a file and load it with --plugin FILE.py (or import it before the session; "
            f"see README, Custom operators)")

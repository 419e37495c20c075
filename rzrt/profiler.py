"""Per-node timing around the executor, and what to make of it.

ProfilingExecutor is the executor with run_node wrapped in a clock (the kernels know
nothing of it); ProfilingBatchExecutor the same around a batch shared by threads. Records are
plain dicts; the functions below turn them into a per-op-type table, the top nodes, a chrome
trace (chrome://tracing, Perfetto) and FLOP counts.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from rzrt.batch import BatchExecutor
from rzrt.executor import Executor


@dataclass
class ProfilingExecutor(Executor):
    sink: dict = field(default_factory=lambda: {"nodes": [], "runs": []})

    def run(self, feeds: dict) -> dict:
        runs = self.sink["runs"]
        self._run = len(runs)
        start = time.perf_counter_ns()
        try:
            return super().run(feeds)
        finally:
            runs.append({"run": self._run, "start_us": start / 1e3,
                         "dur_us": (time.perf_counter_ns() - start) / 1e3})

    def run_node(self, step, args):
        start = time.perf_counter_ns()
        outs = super().run_node(step, args)
        end = time.perf_counter_ns()
        self.sink["nodes"].append({
            "run": self._run, "node": step.node.name, "op": step.node.qualified_op,
            "start_us": start / 1e3, "dur_us": (end - start) / 1e3,
            "inputs": [_shape(a) for a in args],
            "outputs": [_shape(o) for o in outs],
            "flops": node_flops(step.node.op_type, [_shape(a) for a in args], [_shape(o) for o in outs],
                                step.kwargs),
        })
        return outs


class ProfilingBatchExecutor(ProfilingExecutor, BatchExecutor):
    """A profiled run at batch > 1 shares each convolution's images among threads, as the run
    without profiling does (rzrt/batch.py): a node's time is its wall time, both threads' parts."""

    def __init__(self, steps, constants, output_names, arena, ranks: int, shared: set, sink: dict):
        BatchExecutor.__init__(self, steps, constants, output_names, arena, ranks, shared)
        self.sink = sink


def _shape(value):
    """A tensor's shape as a list; None for sequences (lists) and empty optionals."""
    return list(value.shape) if isinstance(value, np.ndarray) else None


# --- FLOPs ---------------------------------------------------------------------------
def node_macs(op_type: str, in_shapes, out_shapes, attrs) -> int:
    """Multiply-accumulates of the ops that dominate CNNs (Conv, Gemm, MatMul); 0 for the rest.

    Conv:   N * M * prod(out spatial) * (C / group) * prod(kernel)
    Gemm:   rows * cols * inner
    MatMul: prod(batch) * rows * cols * inner
    """
    if not out_shapes or out_shapes[0] is None or not in_shapes or in_shapes[0] is None:
        return 0
    out = out_shapes[0]
    if op_type in ("Conv", "FusedConv") and len(in_shapes) > 1 and in_shapes[1] is not None:
        w = in_shapes[1]
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op_type in ("Gemm", "FusedGemm"):
        a = in_shapes[0]
        inner = a[0] if attrs.get("transA", 0) else a[-1]
        return int(np.prod(out, dtype=np.int64)) * int(inner)
    if op_type in ("MatMul", "FusedMatMul"):
        inner = in_shapes[0][-1] if len(in_shapes[0]) else 1
        return int(np.prod(out, dtype=np.int64)) * int(inner)
    return 0


def node_flops(op_type, in_shapes, out_shapes, attrs) -> int:
    return 2 * node_macs(op_type, in_shapes, out_shapes, attrs)


# --- summaries ----------------------------------------------------------------------------
def by_op_type(records: dict) -> list:
    """[{op, count (nodes per run), ms (per run), share, gflops}] sorted by time, over all runs recorded."""
    runs = max(len(records["runs"]), 1)
    wall = sum(r["dur_us"] for r in records["runs"]) or 1.0
    acc = {}
    for r in records["nodes"]:
        a = acc.setdefault(r["op"], {"op": r["op"], "calls": 0, "us": 0.0, "flops": 0})
        a["calls"] += 1
        a["us"] += r["dur_us"]
        a["flops"] += r["flops"]
    rows = []
    for a in acc.values():
        rows.append({"op": a["op"], "count": a["calls"] // runs, "ms": a["us"] / runs / 1e3,
                     "share": a["us"] / wall, "gflops": a["flops"] / a["us"] / 1e3 if a["flops"] and a["us"] else None})
    return sorted(rows, key=lambda r: -r["ms"])


def by_node(records: dict) -> list:
    """[{node, op, ms (mean per run), share, inputs, outputs, gflops}] sorted by time."""
    runs = max(len(records["runs"]), 1)
    wall = sum(r["dur_us"] for r in records["runs"]) or 1.0
    acc = {}
    for r in records["nodes"]:
        a = acc.setdefault(r["node"], dict(r, us=0.0, calls=0))
        a["us"] += r["dur_us"]
        a["calls"] += 1
    rows = [{"node": a["node"], "op": a["op"], "ms": a["us"] / runs / 1e3, "share": a["us"] / wall,
             "inputs": a["inputs"], "outputs": a["outputs"],
             "gflops": a["flops"] * a["calls"] / a["us"] / 1e3 if a["flops"] else None} for a in acc.values()]
    return sorted(rows, key=lambda r: -r["ms"])


def run_stats(records: dict) -> dict:
    ms = np.array([r["dur_us"] / 1e3 for r in records["runs"]]) if records["runs"] else np.zeros(1)
    kernels = sum(r["dur_us"] for r in records["nodes"]) / 1e3 / max(len(records["runs"]), 1)
    return {"runs": len(records["runs"]), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "kernels_ms": kernels}


def chrome_trace(records: dict) -> dict:
    """One complete ("X") event per node per run, and one per run; times in microseconds."""
    t0 = min((r["start_us"] for r in records["runs"]), default=0.0)
    events = [{"name": f"run {r['run']}", "cat": "run", "ph": "X", "ts": r["start_us"] - t0, "dur": r["dur_us"],
               "pid": 0, "tid": 0} for r in records["runs"]]
    events += [{"name": r["node"], "cat": r["op"], "ph": "X", "ts": r["start_us"] - t0, "dur": r["dur_us"],
                "pid": 0, "tid": 1, "args": {"op": r["op"], "inputs": r["inputs"], "outputs": r["outputs"],
                                             "flops": r["flops"], "run": r["run"]}} for r in records["nodes"]]
    meta = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "runs"}},
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": 1, "args": {"name": "nodes"}}]
    return {"traceEvents": meta + events, "displayTimeUnit": "ms"}


def write_chrome_trace(records: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(chrome_trace(records), f)

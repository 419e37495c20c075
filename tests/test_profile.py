"""rzrt profile / bench / summary, and the profiling API (ResNet-18/50, random weights)."""
from __future__ import annotations

import csv
import io
import json
import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import rzrt
import rzrt.cli.commands  # noqa: F401  (registers the subcommands)
from conftest import export_cached
from rzrt.cli.main import cli
from rzrt.profiler import by_op_type, chrome_trace, run_stats


def invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.stderr)
    return res


def test_profile_totals_add_up_to_wall_time(resnet18_path):
    sess = rzrt.InferenceSession(resnet18_path, profile=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sess.run(None, {"input": x})
    sess.clear_profile()
    t = time.perf_counter()
    for _ in range(5):
        sess.run(None, {"input": x})
    wall_ms = (time.perf_counter() - t) * 1e3 / 5
    rec = sess.profile()
    assert len(rec["runs"]) == 5
    assert len(rec["nodes"]) == 5 * len(sess._steps)
    per_op_ms = sum(r["ms"] for r in by_op_type(rec))
    assert abs(per_op_ms - wall_ms) <= 0.10 * wall_ms, (per_op_ms, wall_ms)
    assert abs(run_stats(rec)["mean_ms"] - wall_ms) <= 0.10 * wall_ms


def test_profile_counts_flops_of_convolutions(resnet18_path):
    sess = rzrt.InferenceSession(resnet18_path, profile=True, level=0)
    sess.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})
    conv1 = next(r for r in sess.profile()["nodes"] if r["op"] == "Conv")
    # the stem: 64 filters of 3x7x7 over a 112x112 output, 2 FLOPs per multiply-add
    assert conv1["flops"] == 2 * 64 * 112 * 112 * 3 * 7 * 7


def test_profile_needs_profiling_on(resnet18_path):
    with pytest.raises(rzrt.InputError, match="profile=True"):
        rzrt.InferenceSession(resnet18_path).profile()


def test_chrome_trace_has_one_event_per_node_per_run(resnet18_path, tmp_path):
    trace = tmp_path / "trace.json"
    res = invoke("profile", resnet18_path, "--runs", 3, "--warmup", 1, "--trace", trace)
    data = json.loads(trace.read_text())
    sess = rzrt.InferenceSession(resnet18_path)
    nodes = [e for e in data["traceEvents"] if e.get("ph") == "X" and e.get("cat") != "run"]
    assert len(nodes) == 3 * len(sess._steps)
    assert all(e["dur"] >= 0 and "ts" in e for e in nodes)
    assert {e["name"] for e in nodes} == {s.node.name for s in sess._steps}
    assert "trace:" in res.output


def test_profile_table_is_readable_in_100_columns(resnet18_path, images):
    out = invoke("profile", resnet18_path, images / "cat.jpg", "--runs", 2, "--warmup", 1).output
    assert max(len(line) for line in out.splitlines()) <= 100
    for needle in ("op type", "FusedConv", "GFLOP/s", "top 15 nodes", "memory plan: arena", "passes:"):
        assert needle in out
    assert "1x64x56x56" in out                      # shapes in -> out for the top nodes


def test_profile_json_and_csv(resnet18_path):
    data = json.loads(invoke("profile", resnet18_path, "--runs", 2, "--json").output)
    assert data["stats"]["runs"] == 2 and data["op_types"] and data["nodes"] and data["memory"]["arena_bytes"] > 0
    rows = list(csv.DictReader(io.StringIO(invoke("profile", resnet18_path, "--runs", 2, "--csv").output)))
    assert len(rows) == len(data["nodes"]) and float(rows[0]["ms"]) > 0


def test_summary_parameters_and_macs():
    path = export_cached("resnet50", "keepbn")
    data = json.loads(invoke("summary", path, "--json").output)
    proto = onnx.load(str(path))
    assert data["totals"]["params"] == sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert abs(data["totals"]["macs"] / 4.1e9 - 1) <= 0.03
    table = invoke("summary", path).output
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "MACs: 4.09 G" in table and "parameters: 25,610,152" in table


def test_bench_table_and_ladder(resnet18_path):
    out = invoke("bench", resnet18_path, "--batch", "1,2", "--runs", 2, "--warmup", 1).output
    lines = [line for line in out.splitlines() if not line.startswith(("BLAS:", "  note:"))]
    assert out.splitlines()[1].startswith("BLAS: ")      # what does the GEMMs, and how
    assert lines[1].split()[:3] == ["batch", "mean", "ms"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2"]
    ladder = invoke("bench", resnet18_path, "--ladder", "--runs", 2, "--warmup", 0).output.splitlines()
    from rzrt.cli.bench import LADDER
    steps = [line for line in ladder if not line.startswith(("BLAS:", "  note:"))][2:]
    assert len(steps) == len(LADDER)
    for (label, _), line in zip(LADDER, steps):
        assert line.startswith(label) and float(line[len(label):].split()[0]) > 0


def test_bench_vs_onnxruntime(resnet18_path):
    out = invoke("bench", resnet18_path, "--runs", 2, "--warmup", 0, "--vs", "onnxruntime", "--settle", 0.05).output
    head, row = [line for line in out.splitlines() if not line.startswith(("BLAS:", "  note:"))][1:3]
    assert "rzrt/onnxruntime" in head and float(row.split()[-1]) > 0
    assert max(len(line) for line in out.splitlines()) <= 100


def test_bad_shape_is_one_line_error(resnet18_path):
    res = CliRunner().invoke(cli, ["profile", str(resnet18_path), "--shape", "1x3xfoo"])
    assert res.exit_code != 0 and "--shape expects" in res.output + res.stderr and "Traceback" not in res.output


def test_chrome_trace_function_shape():
    rec = {"runs": [{"run": 0, "start_us": 10.0, "dur_us": 5.0}],
           "nodes": [{"run": 0, "node": "n", "op": "Relu", "start_us": 11.0, "dur_us": 1.0, "inputs": [[1]],
                      "outputs": [[1]], "flops": 0}]}
    ev = [e for e in chrome_trace(rec)["traceEvents"] if e["ph"] == "X"]
    assert [(e["name"], e["ts"], e["dur"]) for e in ev] == [("run 0", 0.0, 5.0), ("n", 1.0, 1.0)]

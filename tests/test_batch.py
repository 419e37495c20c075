"""rzrt/batch.py: at batch > 1 each convolution's images are shared among threads.

Against a session that runs every step whole (threads=1), with new data every run;
that the worker really took part; BLAS back on every core for the steps not shared and after
the run; a worker's error raised here with the node's name; batch 1 and threads=1 untouched.
"""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper

import rzrt
from rzrt import batch
from rzrt.errors import KernelError
from conftest import rel_err

two_cores = pytest.mark.skipif(batch.ranks_for(None) < 2, reason="sharing a batch needs 2 cores")


def _shape(s, n):
    return (n,) + tuple(s.get_inputs()[0].shape[1:])


def executor(s, n):
    return s._executor_for({s.get_inputs()[0].name: np.zeros(_shape(s, n), np.float32)})


def blas_threads() -> list:
    from threadpoolctl import threadpool_info
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@two_cores
@pytest.mark.parametrize("n", [2, 3, 8])
def test_resnet18_batch_shared_by_threads_matches_whole(resnet18_path, n):
    s, whole = rzrt.InferenceSession(resnet18_path), rzrt.InferenceSession(resnet18_path, threads=1)
    before = blas_threads()
    rng = np.random.default_rng(n)
    for _ in range(3):                                   # new data every run
        x = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        assert rel_err(s.run(None, {"input": x})[0], whole.run(None, {"input": x})[0]) < 1e-5
    ex = executor(s, n)
    assert isinstance(ex, batch.BatchExecutor) and len(ex._workers) == ex.ranks - 1 and ex.shared_steps > 0
    assert blas_threads() == before                      # restored after the run


@two_cores
def test_batch_1_and_one_thread_run_as_before(resnet18_path):
    s = rzrt.InferenceSession(resnet18_path)
    assert not isinstance(executor(s, 1), batch.BatchExecutor)
    one = rzrt.InferenceSession(resnet18_path, threads=1)
    assert not isinstance(executor(one, 4), batch.BatchExecutor)
    assert isinstance(executor(rzrt.InferenceSession(resnet18_path, threads=2), 4), batch.BatchExecutor)


def conv_then_matmul() -> bytes:
    """x (N, 4, 8, 8) -> Conv 3x3 -> Relu -> Probe (a custom op) -> y: one shared step, one not."""
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["r"]),
                      h.make_node("Probe", ["r"], ["y"], domain="test")], "probe",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 4, 8, 8])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)],
                     initializer=[numpy_helper.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "w")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("test", 1)])
    m.ir_version = 8
    return m.SerializeToString()


@two_cores
def test_steps_not_shared_get_blas_on_every_core_and_errors_come_back(monkeypatch):
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)       # share even this small convolution
    seen = []

    @rzrt.custom_op("Probe", domain="test")
    def probe(x):
        seen.append(blas_threads())
        return x.copy()

    before = blas_threads()
    s = rzrt.InferenceSession(conv_then_matmul(), custom_ops=[probe])
    x = np.random.default_rng(1).standard_normal((4, 4, 8, 8)).astype(np.float32)
    want = rzrt.InferenceSession(conv_then_matmul(), custom_ops=[probe], threads=1).run(None, {"x": x})[0]
    assert rel_err(s.run(None, {"x": x})[0], want) < 1e-6
    assert executor(s, 4).shared_steps > 0
    assert seen[-1] == before and blas_threads() == before      # the probe ran with BLAS as it was

    from rzrt.ops import fused
    real = fused.conv

    def fails_in_the_worker(*args, **kw):
        if (kw.get("part") or (0, 1))[0] == 1:
            raise RuntimeError("worker part broke")
        return real(*args, **kw)

    fused.conv = fails_in_the_worker                    # (Conv + Relu run as rzrt.FusedConv)
    try:
        with pytest.raises(KernelError, match="node .*Conv.* failed: RuntimeError: worker part broke"):
            s.run(None, {"x": x})
    finally:
        fused.conv = real
    assert blas_threads() == before
    assert rel_err(s.run(None, {"x": x})[0], want) < 1e-6   # and the next run is right


@two_cores
def test_a_gone_session_stops_its_worker_threads(resnet18_path):
    def workers():
        return sum(t.name == "rzrt-batch" for t in threading.enumerate())

    def settle(n):                                       # a stopped worker takes a moment to end
        for _ in range(200):
            if workers() == n:
                return
            threading.Event().wait(0.01)
    gc.collect()                                         # earlier tests' sessions, and their workers, go
    settle(0)
    start = workers()
    s = rzrt.InferenceSession(resnet18_path)
    s.run(None, {"input": np.zeros((2, 3, 224, 224), np.float32)})
    assert workers() == start + batch.ranks_for(None) - 1
    del s
    gc.collect()
    settle(start)
    assert workers() == start


def chain(middle: str) -> bytes:
    """x (N, 8, 16, 16) -> Conv 3x3 -> <middle> -> Conv 3x3 -> y; middle: Relu (light) or MatMul by a
    (16, 16) constant (BLAS)."""
    rng = np.random.default_rng(2)
    mid = [h.make_node("Relu", ["a"], ["b"])] if middle == "Relu" else [h.make_node("MatMul", ["a", "m"], ["b"])]
    g = h.make_graph([h.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4)] + mid +
                     [h.make_node("Conv", ["b", "w2"], ["y"], pads=[1] * 4)], "chain",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 8, 16, 16])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)],
                     initializer=[numpy_helper.from_array(rng.standard_normal(sh).astype(np.float32), n)
                                  for n, sh in (("w1", (8, 8, 3, 3)), ("w2", (8, 8, 3, 3)), ("m", (16, 16)))])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


@two_cores
@pytest.mark.parametrize("middle,shared", [("Relu", True), ("MatMul", False)])
def test_all_or_none(monkeypatch, middle, shared):
    """The steps are shared all or none: not with a BLAS step among them (it would run on one BLAS
    thread, or park the worker and pay for waking it), nor when the parts are small on average."""
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    m, x = chain(middle), np.random.default_rng(3).standard_normal((4, 8, 16, 16)).astype(np.float32)
    s = rzrt.InferenceSession(m, level=0)
    assert isinstance(executor(s, 4), batch.BatchExecutor) == shared
    assert rel_err(s.run(None, {"x": x})[0], rzrt.InferenceSession(m, level=0, threads=1).run(None, {"x": x})[0]) < 1e-6
    monkeypatch.setattr(batch, "MIN_PART_MS", 1e9)
    assert not isinstance(executor(rzrt.InferenceSession(m, level=0), 4), batch.BatchExecutor)

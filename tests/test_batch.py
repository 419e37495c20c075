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
from rzrt import batch, cores
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


def conv_model() -> bytes:
    """x (N, 8, 16, 16) -> Conv 3x3 -> y."""
    w = np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32)
    g = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)], "m",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 8, 16, 16])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], initializer=[numpy_helper.from_array(w, "w")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def patched(s, x, fn):
    """s's shared step with its kernel function replaced by fn(real, *args, **kwargs)."""
    import dataclasses
    step = executor(s, x.shape[0]).steps[0]
    real = step.kernel.fn
    step.kernel = dataclasses.replace(step.kernel, fn=lambda *a, **kw: fn(real, *a, **kw))
    return lambda: setattr(step, "kernel", dataclasses.replace(step.kernel, fn=real))


@two_cores
def test_errors_of_every_rank_are_taken_in_their_run(monkeypatch):
    """Both ranks fail in one step: the run raises rank 0's error and drops the worker's, which must
    not come back in the next, good run (review finding)."""
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    s, x = rzrt.InferenceSession(conv_model(), level=0), np.ones((4, 8, 16, 16), np.float32)
    want = s.run(None, {"x": x})[0]

    def bad(real, *a, _part=None, **kw):
        raise ValueError(f"bad data seen by rank {_part[0]}")
    undo = patched(s, x, bad)
    with pytest.raises(KernelError, match="rank 0"):
        s.run(None, {"x": x})
    undo()
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], want)


@two_cores
def test_ctrl_c_during_a_shared_step_leaves_the_session_whole(monkeypatch):
    """A Ctrl-C that arrives while the threads share a step is held until the step is done: the run
    raises KeyboardInterrupt, BLAS and the worker are as they were, and the next run is right."""
    import signal
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    s, x = rzrt.InferenceSession(conv_model(), level=0), np.ones((4, 8, 16, 16), np.float32)
    want, before = s.run(None, {"x": x})[0], blas_threads()

    def interrupted(real, *a, _part=None, **kw):
        if _part[0] == 0:
            signal.raise_signal(signal.SIGINT)       # the handler runs in this (the main) thread
        return real(*a, _part=_part, **kw)
    undo = patched(s, x, interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.run(None, {"x": x})
    undo()
    assert blas_threads() == before
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], want)


@two_cores
def test_a_forked_child_runs_the_parents_session(monkeypatch):
    """In a fork (multiprocessing on Linux) the worker threads stayed with the parent: the child
    starts its own instead of waiting for them forever."""
    import os
    import time
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    s, x = rzrt.InferenceSession(conv_model(), level=0), np.ones((4, 8, 16, 16), np.float32)
    want = s.run(None, {"x": x})[0]
    pid = os.fork()
    if pid == 0:
        code = 0 if np.array_equal(s.run(None, {"x": x})[0], want) else 3
        os._exit(code)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


@two_cores
def test_two_sessions_at_once_share_in_turn(monkeypatch):
    """Two sessions run from two threads at once: one shares its batch, the other runs whole while it
    does (BLAS's thread count and the cores are the process's), and BLAS ends as it began."""
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    x = np.random.default_rng(5).standard_normal((4, 8, 16, 16)).astype(np.float32)
    want = rzrt.InferenceSession(conv_model(), level=0, threads=1).run(None, {"x": x})[0]
    sessions = [rzrt.InferenceSession(conv_model(), level=0) for _ in range(2)]
    before, results = blas_threads(), []

    def runs(s):
        for _ in range(30):
            results.append(rel_err(s.run(None, {"x": x})[0], want))
    threads = [threading.Thread(target=runs, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60 and max(results) < 1e-6
    assert blas_threads() == before


@two_cores
def test_a_custom_kernel_may_take_part_without_scratch(monkeypatch):
    """The kernel contract: out= and _part=, no scratch=: a worker passes no scratch either."""
    from rzrt.ops.parallel import share
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)

    @rzrt.custom_op("Twice", domain="test", shape=lambda x: x)
    def twice(x, *, out=None, _part=None):
        lo, hi = share(x.shape[0], _part)
        np.multiply(x[lo:hi], 2, out=out[lo:hi])
        return out
    g = h.make_graph([h.make_node("Twice", ["x"], ["y"], domain="test")], "m",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 4])], [h.make_tensor_value_info("y", TP.FLOAT, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("test", 1)])
    m.ir_version = 8
    s = rzrt.InferenceSession(m.SerializeToString(), custom_ops=[twice])
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], 2 * x)
    assert executor(s, 4).shared_steps > 0


@two_cores
def test_channels_last_depthwise_keeps_its_plan_across_shared_runs(monkeypatch):
    """Each rank's share is a new view every run; the depthwise's kept plan is found by where the
    data is, so it is built once per rank, not every run (and never found for other bytes)."""
    from rzrt.ops import depthwise
    from test_layout import block, f32
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    built = []
    real = depthwise._channels_last_plan
    monkeypatch.setattr(depthwise, "_channels_last_plan", lambda *a, **kw: built.append(1) or real(*a, **kw))
    m, x = block(hw=14), f32(4, 16, 14, 14)
    want = rzrt.InferenceSession(m, threads=1).run(None, {"x": x})[0]
    s = rzrt.InferenceSession(m)
    for _ in range(5):
        assert rel_err(s.run(None, {"x": x})[0], want) < 1e-5
    assert executor(s, 4).shared_steps > 0 and len(built) <= 1 + 2     # threads=1's, then one per rank


@two_cores
def test_after_a_shared_run_no_thread_of_the_process_is_pinned(resnet18_path):
    """The caller is pinned while the worker works, the worker while it is awake; afterwards every
    thread, the parked worker too, may run on every core (a worker made while its maker was pinned
    inherited the one core, and kept it while parked)."""
    import glob
    import os
    mask = os.sched_getaffinity(0)
    s = rzrt.InferenceSession(resnet18_path)
    for _ in range(2):
        s.run(None, {"input": np.zeros((2, 3, 224, 224), np.float32)})
    assert executor(s, 2).shared_steps > 0
    for task in glob.glob("/proc/self/task/*"):
        assert os.sched_getaffinity(int(task.rsplit("/", 1)[1])) == mask


def test_which_unshared_steps_get_blas_back():
    """After the shared steps, the worker is parked and BLAS gets every core back only for a step
    that wants it: a GEMM of a millisecond or more on one core, or an op rzrt does not know; not for
    a classifier's small Gemm (its BLAS threads would then spin into the next run's shared steps)."""
    from types import SimpleNamespace as NS
    from rzrt.batch import _heavy

    def step(op, domain="", **kw):
        return NS(node=NS(op_type=op, domain=domain), kwargs=kw, out_spec=None)
    small = [np.zeros((8, 2048), np.float32), np.zeros((1000, 2048), np.float32)]          # 16 M MACs
    big = [np.zeros((8, 197, 768), np.float32), np.zeros((768, 3072), np.float32)]         # 2.9 G MACs
    assert not _heavy(step("Gemm", transB=1), small) and _heavy(step("MatMul"), big)
    assert not _heavy(step("Relu"), small[:1]) and not _heavy(step("GlobalAveragePool"), small[:1])
    assert _heavy(step("Probe", "test"), small[:1]) and _heavy(step("TopK"), small[:1])


@two_cores
def test_blas_threads_are_set_from_any_thread(monkeypatch):
    """threadpoolctl lets only the thread that first set OpenBLAS's count set it again: after a run
    from the main thread had set it (sharing a batch sets it to 1 and back), threads=1 was ignored in
    a run from another thread (a web server's worker), and sharing a batch there ran whole."""
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    seen = []

    @rzrt.custom_op("Probe", domain="test")
    def probe(x):
        seen.append(blas_threads())
        return x.copy()

    x = np.random.default_rng(2).standard_normal((4, 4, 8, 8)).astype(np.float32)
    before = blas_threads()
    shared, one = (rzrt.InferenceSession(conv_then_matmul(), custom_ops=[probe], threads=t) for t in (None, 1))
    want = one.run(None, {"x": x})[0]
    assert seen.pop() == [1]
    shared.run(None, {"x": x})                           # the main thread sets BLAS (1 and back)
    got = {}

    def elsewhere():
        got["one"] = one.run(None, {"x": x})[0]
        got["one seen"] = seen.pop()
        got["shared"] = shared.run(None, {"x": x})[0]
    steps_before = executor(shared, 4).shared_steps
    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert got["one seen"] == [1]                        # threads=1 took in that thread
    assert rel_err(got["shared"], want) < 1e-6 and executor(shared, 4).shared_steps > steps_before
    assert blas_threads() == before
    one.run(None, {"x": x})                              # and back in the main thread
    assert seen.pop() == [1] and blas_threads() == before


@two_cores
def test_a_profiled_run_shares_its_batch_as_an_unprofiled_one(resnet18_path):
    """profile=True times the run the user gets: at batch > 1 its convolutions are shared too, and
    every node is recorded once per run with its wall time."""
    s = rzrt.InferenceSession(resnet18_path, profile=True)
    whole = rzrt.InferenceSession(resnet18_path, threads=1)
    x = np.random.default_rng(3).standard_normal((4, 3, 224, 224), dtype=np.float32)
    before = blas_threads()
    for _ in range(2):
        assert rel_err(s.run(None, {"input": x})[0], whole.run(None, {"input": x})[0]) < 1e-5
    ex = executor(s, 4)
    assert isinstance(ex, batch.BatchExecutor) and ex.shared_steps > 0
    records = s.profile()
    per_run = len(ex.steps)
    assert len(records["runs"]) == 2 and len(records["nodes"]) == 2 * per_run
    assert {r["run"] for r in records["nodes"]} == {0, 1}
    assert blas_threads() == before


def _affinity_probe():
    """A model whose one step records, per part, which cores its thread may run on."""
    seen = {}

    @rzrt.custom_op("Where", domain="test", shape=lambda x: x)
    def where(x, *, out=None, _part=None):
        import os
        seen[(_part or (0, 1))[0]] = os.sched_getaffinity(0)
        np.copyto(out, x)
        return out
    g = h.make_graph([h.make_node("Where", ["x"], ["y"], domain="test")], "m",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 4])], [h.make_tensor_value_info("y", TP.FLOAT, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("test", 1)])
    m.ir_version = 8
    return rzrt.InferenceSession(m.SerializeToString(), custom_ops=[where]), seen


@two_cores
def test_the_caller_keeps_its_core_and_the_worker_takes_the_others(monkeypatch):
    """The caller is pinned to the core it is on (not to a fixed first core: every process would
    then work on the same two), the worker to the caller's other cores; a caller given one core
    runs alone."""
    import os
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    mask = os.sched_getaffinity(0)
    try:
        for core in sorted(mask)[:2]:                    # sched_getcpu, where a thread may run on one core
            os.sched_setaffinity(0, {core})
            assert cores.current(mask) == core
        os.sched_setaffinity(0, mask)
        s, seen = _affinity_probe()
        x = np.ones((4, 4), np.float32)
        for core in sorted(mask)[:2]:
            monkeypatch.setattr(cores, "current", lambda among, core=core: core)
            seen.clear()
            s.run(None, {"x": x})
            assert seen == {0: {core}, 1: mask - {core}}
        shared = executor(s, 4).shared_steps
        os.sched_setaffinity(0, {sorted(mask)[-1]})      # one core: nothing to share it with
        seen.clear()
        s.run(None, {"x": x})
        assert set(seen) == {0} and executor(s, 4).shared_steps == shared
    finally:
        os.sched_setaffinity(0, mask)


def test_runs_holding_blas_at_once_leave_it_as_it_was():
    """BLAS's count is the process's: runs in two threads hold it at once (a batch shared at 1, a
    threads=1 session), and the count is back when the last lets go, whichever ends first (each
    restoring what it had found left BLAS at 1 when they ended in the other order)."""
    from rzrt import blas
    before = blas.threads_now()
    for order in ((0, 1), (1, 0)):
        tokens = [blas.hold(1), blas.hold(3)]
        assert blas.threads_now() == [3] * len(before)   # the newest holder's count
        blas.release(tokens[order[0]])
        assert blas.threads_now() == [(1, 3)[order[1]]] * len(before)
        blas.release(tokens[order[1]])
        assert blas.threads_now() == before


@two_cores
def test_a_batch_shared_while_another_thread_limits_blas(monkeypatch):
    """A batch shared in this thread (BLAS at 1) while a threads=1 session runs in another, which
    ends last: BLAS is back as it was after both (it was left at 1: the other run restored the 1 it
    had found)."""
    monkeypatch.setattr(batch, "MIN_PART_MS", 0.0)
    inside, probing, shared_done = threading.Event(), threading.Event(), threading.Event()

    @rzrt.custom_op("Hold", domain="test", shape=lambda x: x)
    def hold(x, *, out=None, _part=None):
        if (_part or (0, 1))[0] == 0:                    # rank 0's part: BLAS at 1 for the shared batch
            inside.set()
            probing.wait(10)
        np.copyto(out, x)
        return out

    @rzrt.custom_op("Probe", domain="test")
    def probe(x):
        probing.set()
        shared_done.wait(10)                             # this run ends after the shared one
        return x.copy()

    def model(op, dims):
        g = h.make_graph([h.make_node(op, ["x"], ["y"], domain="test")], "m",
                         [h.make_tensor_value_info("x", TP.FLOAT, dims)], [h.make_tensor_value_info("y", TP.FLOAT, None)])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("test", 1)])
        m.ir_version = 8
        return m.SerializeToString()
    shared = rzrt.InferenceSession(model("Hold", ["N", 4]), custom_ops=[hold])
    limited = rzrt.InferenceSession(model("Probe", [2]), custom_ops=[probe], threads=1)
    before = blas_threads()

    def other():
        inside.wait(10)
        limited.run(None, {"x": np.zeros(2, np.float32)})
    t = threading.Thread(target=other)
    t.start()
    try:
        shared.run(None, {"x": np.ones((4, 4), np.float32)})
    finally:
        shared_done.set()
        t.join()
    assert probing.is_set() and executor(shared, 4).shared_steps > 0
    assert blas_threads() == before

"""rzrt/team.py: convolutions shared among processes (InferenceSession(processes=2)).

Two layers of checks. The kernels' parts: every convolution path, run once per rank into
the same output (each rank with its own dirty scratch), must give what the whole call gives,
in one process, so a wrong share shows up deterministically. Then the team itself: sessions
with processes=2 against processes=1 on real models, and what happens when a worker fails,
dies, or its session goes away.
"""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import rzrt
from rzrt import team
from rzrt.errors import InputError, KernelError, RzrtError
from rzrt.ops.conv import conv, conv_scratch
from conftest import rel_err

needs_team = pytest.mark.skipif(team.available(2) < 2, reason="a team needs fork, CPU affinity and 2 cores")


def relu(t):
    np.maximum(t, 0, out=t)


CASES = {   # name: (X shape, W shape, conv attributes, with residual)
    "1x1 many pixels (columns shared)": ((1, 16, 40, 40), (64, 16, 1, 1), {}, True),
    "1x1 few pixels (channels shared)": ((1, 32, 7, 7), (96, 32, 1, 1), {}, True),
    "1x1 bias in the GEMM": ((1, 8, 33, 33), (64, 8, 1, 1), {}, False),
    "3x3 stride 2, im2col, channels shared": ((1, 8, 32, 32), (24, 8, 3, 3), dict(strides=(2, 2), pads=(1, 1, 1, 1)),
                                              True),
    "7x7 stride 2 stem, im2col, rows shared": ((1, 3, 70, 70), (16, 3, 7, 7), dict(strides=(2, 2), pads=(3, 3, 3, 3)),
                                               False),
    "3x3 Winograd, tile rows shared": ((1, 32, 40, 40), (32, 32, 3, 3), dict(pads=(1, 1, 1, 1)), True),
    "3x3 small map, im2col, channels shared": ((1, 32, 7, 7), (48, 32, 3, 3), dict(pads=(1, 1, 1, 1)), True),
    "depthwise, channels-last kernel": ((1, 24, 28, 28), (24, 1, 3, 3), dict(group=24, pads=(1, 1, 1, 1)), True),
    "depthwise stride 2": ((1, 24, 29, 29), (24, 1, 3, 3), dict(group=24, strides=(2, 2), pads=(1, 1, 1, 1)), False),
    "depthwise, large plane": ((1, 8, 120, 120), (8, 1, 3, 3), dict(group=8, pads=(1, 1, 1, 1)), True),
    "grouped 3x3": ((1, 16, 20, 20), (32, 4, 3, 3), dict(group=4, pads=(1, 1, 1, 1)), True),
    "batch of 3: images shared": ((3, 8, 20, 20), (16, 8, 3, 3), dict(pads=(1, 1, 1, 1)), True),
    "1-D depthwise: rank 0 alone": ((1, 8, 50), (8, 1, 3), dict(group=8, pads=(1, 1)), True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_rank_computes_its_share_and_together_the_whole(name):
    xs, ws, attrs, residual = CASES[name]
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal(xs, dtype=np.float32), rng.standard_normal(ws, dtype=np.float32)
    B = rng.standard_normal(ws[0], dtype=np.float32)
    geo = dict(group=1, kernel_shape=None, pads=None, strides=None, dilations=None, auto_pad="NOTSET") | attrs
    shape = conv(X, W, B, None, None, **geo).shape
    Z = rng.standard_normal(shape, dtype=np.float32) if residual else None
    nbytes = conv_scratch((X.shape, X.dtype), (W.shape, W.dtype), (B.shape, B.dtype), **attrs)
    want = conv(X, W, B, Z, relu, **geo, scratch=np.zeros(nbytes, np.uint8))
    written = []
    for rank in (0, 1):                                  # what each rank writes, alone
        alone = np.full(shape, np.nan, np.float32)
        conv(X, W, B, Z, relu, **geo, out=alone, scratch=np.full(nbytes, 0x7F, np.uint8), part=(rank, 2))
        written.append(np.isfinite(alone))
    assert not (written[0] & written[1]).any(), "both ranks wrote the same outputs"
    assert (written[0] | written[1]).all(), "some outputs were computed by no rank"
    for order in ((1, 0), (0, 1)):                       # together, in either order, the whole
        got = np.full(shape, np.nan, np.float32)
        for rank in order:
            scratch = np.full(nbytes, 0x7F, np.uint8)    # each rank carves its own scratch, dirty
            conv(X, W, B, Z, relu, **geo, out=got, scratch=scratch, part=(rank, 2))
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("n,strides", [(1, (2, 2)), (1, (1, 1)), (2, (2, 2)), (3, (1, 1))])
def test_maxpool_shares_images_or_channels(n, strides):
    from rzrt.ops.pool import MaxPool, _maxpool_scratch
    X = np.random.default_rng(0).standard_normal((n, 6, 15, 15), dtype=np.float32)
    attrs = dict(kernel_shape=(3, 3), strides=strides, pads=(1, 1, 1, 1))
    nbytes = _maxpool_scratch((X.shape, X.dtype), **attrs)
    want = MaxPool(X, **attrs, scratch=np.zeros(nbytes, np.uint8))
    written = []
    for rank in (0, 1):
        alone = np.full(want.shape, np.nan, np.float32)
        MaxPool(X, **attrs, out=alone, scratch=np.full(nbytes, 0x7F, np.uint8), _part=(rank, 2))
        written.append(np.isfinite(alone))
        if rank == 0:
            got = alone
        else:
            got[written[1]] = alone[written[1]]
    assert not (written[0] & written[1]).any() and (written[0] | written[1]).all()
    np.testing.assert_array_equal(got, want)


@needs_team
@pytest.mark.parametrize("batch", [1, 2])
def test_resnet18_with_two_processes_matches_one(resnet18_path, batch):
    one, sess = rzrt.InferenceSession(resnet18_path), rzrt.InferenceSession(resnet18_path, processes=2)
    rng, joined = np.random.default_rng(0), 0
    for _ in range(4):                 # the first run forks; later ones reuse the worker; new data each run
        x = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
        assert rel_err(sess.run(None, {"input": x})[0], one.run(None, {"input": x})[0]) < 1e-5
        ex = sess._executor_for({"input": x})
        joined += int(ex.ctl[team.JOIN]) - ex.gen * team.STEP < len(ex.steps)
    assert joined, "the worker never took part"


@needs_team
@pytest.mark.parametrize("n", [1, 2])
def test_mobilenet_blocks_channels_last_with_two_processes(n):
    """The channels-last paths of rzrt/layout.py (stem, expansion writing the padded input,
    depthwise, projection with residual, global pool) shared by two processes."""
    from test_layout import chain, f32, stem_block
    for m, x in ((chain(n=3, hw=28, strides=[1, 2, 1], pool=True), f32(n, 16, 28, 28)),
                 (stem_block(hw=58), f32(n, 3, 58, 58))):
        want = rzrt.InferenceSession(m).run(None, {"x": x})[0]
        sess = rzrt.InferenceSession(m, processes=2)
        assert sess.channels_last_nodes({"x": x.shape})
        for _ in range(2):
            assert rel_err(sess.run(None, {"x": x})[0], want) < 1e-5


@needs_team
@pytest.mark.parametrize("n", [1, 3])
def test_winograd_links_with_two_processes(n):
    """A Winograd 3x3 writing the next one's padded channels-last input (rzrt/layout.py), shared by
    two processes: tile rows at batch 1; at batch 3 images (1 and 2), each rank keeping the tile size
    the plan chose for all 3 (F(4x4) at 14x14; one image alone would take F(2x2) and read the padded
    input with the wrong geometry)."""
    from test_layout import basic_block, f32
    m, x = basic_block(), f32(n, 32, 14, 14)
    want = rzrt.InferenceSession(m).run(None, {"x": x})[0]
    sess = rzrt.InferenceSession(m, processes=2)
    assert len(sess.channels_last_nodes({"x": x.shape})) == 2
    for _ in range(2):
        assert rel_err(sess.run(None, {"x": x})[0], want) < 1e-5


@needs_team
def test_an_error_in_a_worker_is_raised_here(resnet18_path, monkeypatch):
    from rzrt.ops import conv as conv_module
    real = conv_module.conv

    def failing(*args, **kw):
        part = kw.get("part", args[18] if len(args) > 18 else None)
        if part is not None and part[0] == 1:
            raise ValueError("boom in rank 1")
        return real(*args, **kw)
    monkeypatch.setattr(conv_module, "conv", failing)     # before the fork: the worker has it too
    sess = rzrt.InferenceSession(resnet18_path, processes=2)
    x = np.zeros((1, 3, 224, 224), np.float32)
    with pytest.raises(KernelError, match=r"worker process 1: node '.*' .* failed: ValueError: boom in rank 1"):
        sess.run(None, {"input": x})


@needs_team
def test_a_dead_worker_is_reported_and_a_gone_session_stops_its_worker(resnet18_path):
    x = np.zeros((1, 3, 224, 224), np.float32)
    sess = rzrt.InferenceSession(resnet18_path, processes=2)
    sess.run(None, {"input": x})
    (pid, _), = sess._executor_for({"input": x}).workers
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    with pytest.raises(RzrtError, match="worker process"):
        sess.run(None, {"input": x})

    sess = rzrt.InferenceSession(resnet18_path, processes=2)
    sess.run(None, {"input": x})
    (pid, _), = sess._executor_for({"input": x}).workers
    del sess
    gc.collect()
    with pytest.raises(ChildProcessError):               # reaped: the finalizer waited for it
        os.waitpid(pid, os.WNOHANG)


def test_processes_must_be_a_positive_integer(resnet18_path):
    with pytest.raises(InputError, match="processes must be a positive integer, got 0"):
        rzrt.InferenceSession(resnet18_path, processes=0)


def test_one_process_where_a_team_cannot_run(monkeypatch):
    monkeypatch.setattr(team.sys, "platform", "darwin")
    assert team.available(4) == 1
    assert team.available(1) == 1


@needs_team
def test_a_team_run_leaves_no_thread_of_this_process_pinned(resnet18_path):
    """The caller's thread is pinned to one core while rank 0 works; threads OpenBLAS starts then
    would inherit that (they did: the next plain session ran its GEMMs on one core). Afterwards
    every thread of the process may run on every core it could before."""
    import glob
    mask = os.sched_getaffinity(0)
    x = np.zeros((1, 3, 224, 224), np.float32)
    plain, shared = rzrt.InferenceSession(resnet18_path), rzrt.InferenceSession(resnet18_path, processes=2)
    for s in (plain, shared, plain, shared, plain):
        s.run(None, {"input": x})
    for task in glob.glob("/proc/self/task/*"):
        assert os.sched_getaffinity(int(task.rsplit("/", 1)[1])) == mask


@needs_team
def test_a_forked_child_cannot_run_its_parents_team_session(resnet18_path):
    """Its arena is shared memory: a fork of the caller (multiprocessing) running it would write
    into the parent's arena, and its workers' pipes lead to the parent's workers."""
    x = np.zeros((1, 3, 224, 224), np.float32)
    sess = rzrt.InferenceSession(resnet18_path, processes=2)
    sess.run(None, {"input": x})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sess.run(None, {"input": x})
            os.write(w, b"ran")
        except RzrtError as e:
            os.write(w, str(e).encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert "in a forked child, create a new session" in os.read(r, 1000).decode()
    assert sess.run(None, {"input": x})[0].shape == (1, 1000)


@needs_team
def test_one_input_shape_at_a_time_has_workers(resnet18_path):
    """Each input shape has its own plan and arena, so its own workers; switching shapes stops
    the previous shape's workers (a model fed many shapes must not leave a process per shape)."""
    sess, one = rzrt.InferenceSession(resnet18_path, processes=2), rzrt.InferenceSession(resnet18_path)
    plans, rng = {}, np.random.default_rng(0)
    for n in (1, 2, 1, 3, 1):
        x = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        want = one.run(None, {"input": x})[0]
        assert rel_err(sess.run(None, {"input": x})[0], want) < 1e-5
        plans[n] = sess._executor_for({"input": x})
        assert [k for k, ex in plans.items() if ex.workers] == [n]


@needs_team
def test_after_a_failed_run_the_next_one_is_right(resnet18_path, monkeypatch):
    """Rank 0 fails mid-run (here: at its 10th step) and the caller runs again at once with new
    data: no worker may still be writing the failed run's shares into the arena."""
    one, sess = rzrt.InferenceSession(resnet18_path), rzrt.InferenceSession(resnet18_path, processes=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    sess.run(None, {"input": x})                         # forks the worker (before the patch below)
    steps = sess._executor_for({"input": x}).steps
    real = team.TeamExecutor.run_step

    def failing(self, step, env):
        if self.rank == 0 and step is steps[10]:
            raise RuntimeError("rank 0 fails")
        return real(self, step, env)
    for _ in range(5):
        monkeypatch.setattr(team.TeamExecutor, "run_step", failing)
        with pytest.raises(RuntimeError, match="rank 0 fails"):
            sess.run(None, {"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)})
        monkeypatch.setattr(team.TeamExecutor, "run_step", real)
        x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        assert rel_err(sess.run(None, {"input": x})[0], one.run(None, {"input": x})[0]) < 1e-5


@needs_team
def test_a_team_with_the_thread_pool_on(resnet18_path, monkeypatch):
    """The worker is forked from a process whose thread pool (ops/parallel.py) has threads; the
    fork has none, so it must start its own (it waited forever on the parent's before)."""
    from rzrt.ops import parallel
    monkeypatch.setattr(parallel, "SPLIT", True)
    parallel.split(lambda lo, hi: None, 4)               # the pool exists, with its threads
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    want = rzrt.InferenceSession(resnet18_path).run(None, {"input": x})[0]
    assert rel_err(rzrt.InferenceSession(resnet18_path, processes=2).run(None, {"input": x})[0], want) < 1e-5


@needs_team
def test_a_forked_child_exiting_leaves_its_parents_workers_alone(resnet18_path):
    x = np.zeros((1, 3, 224, 224), np.float32)
    sess = rzrt.InferenceSession(resnet18_path, processes=2)
    sess.run(None, {"input": x})
    pid = os.fork()
    if pid == 0:
        import atexit
        atexit._run_exitfuncs()                           # what a normal exit runs: finalizers among them
        os._exit(0)
    os.waitpid(pid, 0)
    assert sess.run(None, {"input": x})[0].shape == (1, 1000)


def custom_then_neg(op: str) -> bytes:
    """x (N, 1) int64 -> `op` (a custom op, domain test) -> w -> Neg -> y: w is planned in the
    arena, so the team shares the custom op (a graph output alone would not be)."""
    from onnx import TensorProto as TP, helper as h
    g = h.make_graph([h.make_node(op, ["x"], ["w"], domain="test"), h.make_node("Neg", ["w"], ["y"])], "m",
                     [h.make_tensor_value_info("x", TP.INT64, ["N", 1])], [h.make_tensor_value_info("y", TP.INT64, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("test", 1)])
    m.ir_version = 8
    return m.SerializeToString()


@needs_team
def test_rank_0_keeps_its_core_and_the_worker_takes_the_others(monkeypatch):
    """While a run lasts rank 0 is pinned to the core it is on and the worker process to rank 0's
    other cores (not to fixed first cores: two processes with a team would both work on them)."""
    from rzrt import cores
    from rzrt.ops.parallel import share

    @rzrt.custom_op("Where", domain="test", shape=lambda x: x)
    def where(x, *, out=None, _part=None):          # each rank's rows: the cores it may run on, as bits
        lo, hi = share(x.shape[0], _part)
        out[lo:hi] = sum(1 << c for c in os.sched_getaffinity(0))
        return out
    s = rzrt.InferenceSession(custom_then_neg("Where"), custom_ops=[where], processes=2)
    mask = os.sched_getaffinity(0)
    bits = lambda cs: sum(1 << c for c in cs)      # noqa: E731
    for core in sorted(mask)[:2] * 2:                # the core rank 0 finds itself on, run after run
        monkeypatch.setattr(cores, "current", lambda among, core=core: core)
        for _ in range(50):                          # until the worker joins a run (it may be asleep)
            y = -s.run(None, {"x": np.zeros((4, 1), np.int64)})[0].ravel()     # (w is in the arena)
            if y[-1] != y[0]:
                break
        assert list(y) == [bits({core})] * 2 + [bits(mask - {core})] * 2
    assert os.sched_getaffinity(0) == mask


@needs_team
def test_a_ctrl_c_while_rank_0_pins_itself_leaves_it_unpinned(monkeypatch):
    """Python raises a Ctrl-C right after the system call it came in: one that came while rank 0
    pinned itself used to skip the unpin (its result was never stored), and the caller stayed on
    one core for good."""
    import signal
    from rzrt.ops.parallel import share

    @rzrt.custom_op("Ones", domain="test", shape=lambda x: x)
    def ones(x, *, out=None, _part=None):
        lo, hi = share(x.shape[0], _part)
        out[lo:hi] = 1
        return out
    s = rzrt.InferenceSession(custom_then_neg("Ones"), custom_ops=[ones], processes=2)
    x = np.zeros((4, 1), np.int64)
    s.run(None, {"x": x})
    mask, real, armed = os.sched_getaffinity(0), os.sched_setaffinity, [True]

    def set_then_interrupted(pid, cs):
        real(pid, cs)
        if armed[0] and len(cs) == 1:
            armed[0] = False
            os.kill(os.getpid(), signal.SIGINT)        # the Ctrl-C lands right after the pin
    monkeypatch.setattr(os, "sched_setaffinity", set_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        s.run(None, {"x": x})
    monkeypatch.setattr(os, "sched_setaffinity", real)
    assert not armed[0] and os.sched_getaffinity(0) == mask
    assert list(-s.run(None, {"x": x})[0].ravel()) == [1] * 4      # and the team still runs

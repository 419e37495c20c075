"""Bugs found in review, each pinned by a model that failed before its fix; onnxruntime is the oracle."""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper

import rzrt

rng = np.random.default_rng(7)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def model(nodes, inputs, outputs, inits=None, opset=17):
    g = h.make_graph(nodes, "g", inputs, outputs,
                     initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def vi(name, shape, dt=TP.FLOAT):
    return h.make_tensor_value_info(name, dt, shape)


def oracle(m, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def agree(m, feeds, levels=(0, 1, 2), runs=2):
    want = oracle(m, feeds)
    for level in levels:
        for plan in (True, False):
            s = rzrt.InferenceSession(m, level=level, memory_plan=plan)
            for _ in range(runs):
                got = s.run(None, {k: v.copy() for k, v in feeds.items()})
                for w, g in zip(want, got):
                    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"level {level} plan {plan}")


def test_sequence_of_arena_views_is_copied():
    """SplitToSequence returns views of a planned value whose bytes are reused before SequenceAt reads them."""
    m = model([h.make_node("Exp", ["x"], ["a"]),
               h.make_node("SplitToSequence", ["a", "sp"], ["seq"], axis=0),
               h.make_node("Neg", ["x"], ["b"]), h.make_node("Exp", ["b"], ["c"]),
               h.make_node("SequenceAt", ["seq", "i"], ["s1"]),
               h.make_node("ReduceSum", ["c"], ["cs"], keepdims=0), h.make_node("Add", ["s1", "cs"], ["y"])],
              [vi("x", [4, 6])], [vi("y", None)], {"sp": np.array([2, 2], np.int64), "i": np.array(1, np.int64)})
    agree(m, {"x": f32(4, 6)})


def test_runtime_weights_are_not_served_stale_winograd_filters():
    """A Conv whose weights are computed at run time (here W * s) must see this run's weights."""
    m = model([h.make_node("Mul", ["W", "s"], ["Ws"]), h.make_node("Conv", ["x", "Ws"], ["y"], pads=[1, 1, 1, 1])],
              [vi("x", [1, 32, 8, 8]), vi("s", [1])], [vi("y", None)], {"W": f32(32, 32, 3, 3)})
    s = rzrt.InferenceSession(m, level=0)
    x = f32(1, 32, 8, 8)
    for scale in (1.0, 2.0, -3.0):
        feeds = {"x": x, "s": np.array([scale], np.float32)}
        np.testing.assert_allclose(s.run(None, feeds)[0], oracle(m, feeds)[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_outputs_are_the_callers_own(level):
    """Writing into an output must not change the model: outputs that are initializers (after
    constant folding) or views of a feed are copies, as in onnxruntime."""
    m = model([h.make_node("Add", ["c", "c"], ["y"]), h.make_node("Reshape", ["x", "shape"], ["z"])],
              [vi("x", [2, 3])], [vi("y", None), vi("z", None)],
              {"c": f32(3), "shape": np.array([6], np.int64)})
    s = rzrt.InferenceSession(m, level=level)
    x = f32(2, 3)
    y, z = s.run(None, {"x": x})
    first = y.copy()
    y[:] = 99
    assert not np.shares_memory(z, x)
    np.testing.assert_array_equal(s.run(None, {"x": x})[0], first)


def test_concurrent_runs_on_one_session():
    """Several threads calling run() on one session (onnxruntime allows it) get their own results."""
    W = (f32(16, 16, 3, 3) * 0.1).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(4):
        nodes += [h.make_node("Conv", [prev, "W"], [f"c{i}"], pads=[1, 1, 1, 1]), h.make_node("Tanh", [f"c{i}"], [f"t{i}"])]
        prev = f"t{i}"
    m = model(nodes, [vi("x", [1, 16, 16, 16])], [vi(prev, None)], {"W": W})
    xs = [f32(1, 16, 16, 16) for _ in range(4)]
    want = [oracle(m, {"x": x})[0] for x in xs]
    s = rzrt.InferenceSession(m)
    errors = []

    def job(k):
        for _ in range(5):
            errors.append(float(np.abs(s.run(None, {"x": xs[k]})[0] - want[k]).max()))

    threads = [threading.Thread(target=job, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 20 and max(errors) < 1e-4


def test_average_pool_same_padding_counts_pads():
    m = model([h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                           auto_pad="SAME_UPPER", count_include_pad=1)],
              [vi("x", [1, 2, 6, 7])], [vi("y", None)])
    agree(m, {"x": f32(1, 2, 6, 7)})


def test_conv_add_whose_residual_broadcasts_the_output_up():
    m = model([h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]), h.make_node("Add", ["y", "r"], ["z"])],
              [vi("x", [1, 3, 6, 6]), vi("r", [2, 4, 6, 6])], [vi("z", None)], {"W": f32(4, 3, 3, 3)})
    agree(m, {"x": f32(1, 3, 6, 6), "r": f32(2, 4, 6, 6)})


@pytest.mark.parametrize("z_shape, w_shape", [((1, 16, 32, 32), (16, 8, 3, 3)),   # one map for every image
                                               ((2, 1, 32, 32), (16, 8, 3, 3)),   # one plane for every channel
                                               ((1, 8, 32, 32), (8, 1, 3, 3))])   # depthwise
def test_a_residual_that_broadcasts_is_expanded_in_the_arena(z_shape, w_shape):
    """Conv + Add of a residual smaller than the output (fused into one step): it is expanded to
    the output's shape once per run; into the planned scratch, not a new array every run."""
    import tracemalloc
    group = {"group": 8} if w_shape[1] == 1 else {}
    m = model([h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], **group),
               h.make_node("Add", ["y", "r"], ["z"]), h.make_node("Relu", ["z"], ["o"])],
              [vi("x", [2, 8, 32, 32]), vi("r", list(z_shape))], [vi("o", None)], {"W": f32(*w_shape)})
    feeds = {"x": f32(2, 8, 32, 32), "r": f32(*z_shape)}
    agree(m, feeds)
    s = rzrt.InferenceSession(m)
    assert [st.node.op_type for st in s._steps] == ["FusedConv"]
    s.run(None, feeds)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        s.run(None, feeds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes = 2 * w_shape[0] * 32 * 32 * 4
    assert peak - base < out_bytes + out_bytes // 2      # the output handed back, nothing more of its size


def test_string_tensors_stay_out_of_the_arena():
    m = model([h.make_node("Concat", ["a", "b"], ["c"], axis=0), h.make_node("Identity", ["c"], ["d"]),
               h.make_node("Concat", ["d", "a"], ["y"], axis=0)],
              [vi("a", [2], TP.STRING), vi("b", [1], TP.STRING)], [vi("y", None, TP.STRING)])
    a, b = np.array(["x", "y"], dtype=object), np.array(["z"], dtype=object)
    for plan in (True, False):
        got = rzrt.InferenceSession(m, level=0, memory_plan=plan).run(None, {"a": a, "b": b})[0]
        assert got.tolist() == ["x", "y", "z", "x", "y"]


def test_input_smaller_than_the_kernel_is_a_clear_error():
    m = model([h.make_node("Conv", ["x", "W"], ["y"])], [vi("x", [1, 3, "H", "W"])], [vi("y", None)],
              {"W": np.ones((4, 3, 3, 3), np.float32)})
    with pytest.raises(rzrt.KernelError, match="smaller than the kernel"):
        rzrt.InferenceSession(m).run(None, {"x": np.ones((1, 3, 2, 2), np.float32)})


def test_sequences_in_errors_and_profiles():
    m = model([h.make_node("SplitToSequence", ["x", "sp"], ["seq"], axis=0), h.make_node("SequenceAt", ["seq", "i"], ["y"])],
              [vi("x", [5, 3]), vi("i", [], TP.INT64)], [vi("y", None)], {"sp": np.array([2, 3], np.int64)})
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    s = rzrt.InferenceSession(m, level=0, profile=True)
    np.testing.assert_array_equal(s.run(None, {"x": x, "i": np.array(1, np.int64)})[0], x[2:])
    assert [r["outputs"] for r in s.profile()["nodes"]] == [[None], [[3, 3]]]
    with pytest.raises(rzrt.KernelError, match=r"sequence of 2 float32\[2, 3\].*out of range"):
        s.run(None, {"x": x, "i": np.array(7, np.int64)})


def test_float16_convolution_skips_winograd():
    """F(4x4, 3x3)'s transforms lose too many bits in float16: im2col keeps the error at float16's level."""
    x, W = f32(1, 32, 8, 8), f32(32, 32, 3, 3) * 0.1
    m = model([h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
              [vi("x", [1, 32, 8, 8], TP.FLOAT16)], [vi("y", None, TP.FLOAT16)], {"W": W.astype(np.float16)})
    got = rzrt.InferenceSession(m).run(None, {"x": x.astype(np.float16)})[0].astype(np.float32)
    want = oracle(model([h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                        [vi("x", [1, 32, 8, 8])], [vi("y", None)], {"W": W.astype(np.float16).astype(np.float32)}),
                  {"x": x.astype(np.float16).astype(np.float32)})[0]
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-3


def test_read_only_weights_from_the_caller_are_not_cached():
    """Only the session's own constants get their Winograd filters cached: a caller's read-only
    view of data that changes must give this run's result (in this session and a new one)."""
    m = model([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
              [vi("x", [2, 32, 8, 8]), vi("w", [32, 32, 3, 3])], [vi("y", None)])
    x, base = f32(2, 32, 8, 8), f32(32, 32, 3, 3)
    w = base.view()
    w.flags.writeable = False
    s = rzrt.InferenceSession(m)
    s.run(None, {"x": x, "w": w})
    base *= -3
    for sess in (s, rzrt.InferenceSession(m)):
        np.testing.assert_allclose(sess.run(None, {"x": x, "w": w})[0], oracle(m, {"x": x, "w": base})[0],
                                   rtol=1e-4, atol=1e-3)


def test_session_weights_are_packed_once():
    from rzrt.ops import winograd
    m = model([h.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])], [vi("x", [1, 32, 24, 24])], [vi("y", None)],
              {"W": f32(32, 32, 3, 3)})
    s = rzrt.InferenceSession(m, level=0)
    s.run(None, {"x": f32(1, 32, 24, 24)})
    W = s.graph.initializers["W"]
    assert (id(W), 4) in winograd._packed and not W.flags.writeable


@pytest.mark.parametrize("level", [0, 2])
def test_outputs_are_distinct_and_writable(level):
    """y and Identity(y) as two outputs are two arrays; a Constant's value comes back writable."""
    c = h.make_tensor("c", TP.FLOAT, [2], [1.0, 2.0])
    m = model([h.make_node("Relu", ["x"], ["a"]), h.make_node("Identity", ["a"], ["b"]),
               h.make_node("Constant", [], ["k"], value=c), h.make_node("Identity", ["k"], ["kk"])],
              [vi("x", [2, 3])], [vi("a", None), vi("b", None), vi("kk", None)])
    s = rzrt.InferenceSession(m, level=level)
    a, b, kk = s.run(None, {"x": f32(2, 3)})
    assert not np.shares_memory(a, b)
    kk[0] = 99                                            # writable, and the model keeps its constant
    np.testing.assert_array_equal(s.run(None, {"x": f32(2, 3)})[2], [1.0, 2.0])


@pytest.mark.parametrize("dtype,tp", [(np.float32, TP.FLOAT), (np.float64, TP.DOUBLE), (np.float16, TP.FLOAT16)])
@pytest.mark.parametrize("bounds", [("lo",), ("", "hi"), ()])
def test_clip_absent_bound_is_the_types_limit(dtype, tp, bounds):
    """An absent Clip bound (opset 11+) is the input type's lowest / largest value: +-inf clamp to
    the largest finite values, float64 keeps values beyond float32's range, fused after a Conv or not."""
    x = np.array([np.inf, -np.inf, 2, -1e300 if dtype == np.float64 else -2], dtype).reshape(1, 1, 1, 4)
    inits = {"W": np.ones((1, 1, 1, 1), dtype), "lo": np.array(-0.5, dtype), "hi": np.array(0.5, dtype)}
    io = [vi("X", [1, 1, 1, 4], tp)], [vi("Y", [1, 1, 1, 4], tp)]
    alone = model([h.make_node("Clip", ["X", *bounds], ["Y"])], *io, inits)
    after_conv = model([h.make_node("Conv", ["X", "W"], ["c"]), h.make_node("Clip", ["c", *bounds], ["Y"])],
                       *io, inits)                  # W = 1: the Conv is the identity
    want = oracle(alone, {"X": x})[0]               # (onnxruntime has no float64 Conv)
    for m in (alone, after_conv):
        for level in (0, 2):
            got = rzrt.InferenceSession(m, level=level).run(None, {"X": x})[0]
            np.testing.assert_array_equal(got, want, err_msg=f"level {level}")


def _flatten_by_shape_model(extra_outputs=()):
    """y = Reshape(x, [Shape(x)[0], -1]) with the target built by Shape -> Gather -> Unsqueeze ->
    Concat, as torch exports a flatten with a dynamic batch; `s` (the shape) may be an output too."""
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             h.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             h.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             h.make_node("Reshape", ["x", "target"], ["y"])]
    inits = {"zero": np.array(0, np.int64), "zero1": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    outputs = [vi("y", None)] + [vi(o, None, TP.INT64) for o in extra_outputs]
    return model(nodes, [vi("x", ["N", 3, 4, 5])], outputs, inits)


@pytest.mark.parametrize("level", [1, 2])
def test_shape_arithmetic_runs_once_per_plan(level):
    """Shape -> Gather -> Unsqueeze -> Concat depends on the input's shape alone: each plan (one per
    input shape) computes it once and runs only the Reshape. Batch 2 and batch 5 each get their own."""
    m = _flatten_by_shape_model()
    s = rzrt.InferenceSession(m, level=level)
    for n in (2, 5, 2):
        x = f32(n, 3, 4, 5)
        (y,) = s.run(None, {"x": x})
        np.testing.assert_array_equal(y, x.reshape(n, -1))
        assert sorted(node.op_type for node in s.plan_time_nodes({"x": (n, 3, 4, 5)})) == \
            ["Concat", "Gather", "Shape", "Unsqueeze"]
    assert rzrt.InferenceSession(m, level=0).plan_time_nodes({"x": (2, 3, 4, 5)}) == []   # level 0: as exported
    agree(m, {"x": f32(3, 3, 4, 5)})


def test_plan_time_values_as_outputs_are_the_callers_own():
    """A shape computed at plan time and asked for as an output: a fresh, writable array each run."""
    s = rzrt.InferenceSession(_flatten_by_shape_model(extra_outputs=("s",)))
    _, a = s.run(None, {"x": f32(2, 3, 4, 5)})
    np.testing.assert_array_equal(a, [2, 3, 4, 5])
    a[0] = 99
    _, b = s.run(None, {"x": f32(2, 3, 4, 5)})
    np.testing.assert_array_equal(b, [2, 3, 4, 5])
    assert a.flags.writeable and b.flags.writeable


def test_a_users_kernel_is_never_folded():
    """A user's kernel on values known at plan time (here the input's shape) runs at every run, as
    written (it may count, log, ...); the Shape before it is folded."""
    calls = []

    def counted(X):
        calls.append(1)
        return X + 1

    m = model([h.make_node("Shape", ["x"], ["s"]), h.make_node("Counted", ["s"], ["y"], domain="com.example")],
              [vi("x", [2, 3])], [vi("y", None, TP.INT64)])
    p = __import__("onnx").load_from_string(m)
    p.opset_import.append(h.make_opsetid("com.example", 1))
    with rzrt.registry_scope():
        rzrt.register_op("Counted", domain="com.example")(counted)
        s = rzrt.InferenceSession(p.SerializeToString())
        s.run(None, {"x": f32(2, 3)})          # plans (shape inference calls it too)
        before = len(calls)
        for _ in range(3):
            np.testing.assert_array_equal(s.run(None, {"x": f32(2, 3)})[0], [3, 4])
        assert [n.op_type for n in s.plan_time_nodes()] == ["Shape"]
    assert len(calls) - before == 3


def test_fold_constants_leaves_a_users_kernel_alone():
    """fold_constants runs rzrt's own kernels only: a user's kernel on an initializer stays a node."""
    m = model([h.make_node("Counted", ["k"], ["k1"], domain="com.example"), h.make_node("Add", ["x", "k1"], ["y"])],
              [vi("x", [2])], [vi("y", None)], {"k": np.ones(2, np.float32)})
    p = __import__("onnx").load_from_string(m)
    p.opset_import.append(h.make_opsetid("com.example", 1))
    with rzrt.registry_scope():
        rzrt.register_op("Counted", domain="com.example")(lambda X: X + 1)
        s = rzrt.InferenceSession(p.SerializeToString(), level=2)
        assert "Counted" in [n.op_type for n in s.graph.nodes]
        np.testing.assert_allclose(s.run(None, {"x": np.zeros(2, np.float32)})[0], [2, 2])


def test_training_dropout_on_a_constant_is_not_folded():
    """Dropout in training mode draws a new mask every run, even on a constant input: plan time must
    not freeze one draw (nor fold_constants)."""
    m = model([h.make_node("Dropout", ["k", "ratio", "train"], ["d"]), h.make_node("Add", ["x", "d"], ["y"])],
              [vi("x", [64])], [vi("y", None)],
              {"k": np.ones(64, np.float32), "ratio": np.array(0.5, np.float32), "train": np.array(True)})
    s = rzrt.InferenceSession(m)
    x = np.zeros(64, np.float32)
    draws = {s.run(None, {"x": x})[0].tobytes() for _ in range(6)}
    assert len(draws) > 1 and s.plan_time_nodes() == []

"""rzrt/layout.py: a MobileNet block (1x1 -> small-plane depthwise -> 1x1) keeps its inner values
channels-last; outputs equal the plain run (level 0) and onnxruntime, and only private values change."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP, helper as h, numpy_helper

import rzrt
from conftest import rel_err

rng = np.random.default_rng(3)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def model(name, nodes, inits, c, hw, outputs, extra=()) -> bytes:
    """An opset-17 model of x (N, c, hw, hw) -> outputs, with these initializers (and tensors)."""
    g = h.make_graph(nodes, name, [h.make_tensor_value_info("x", TP.FLOAT, ["N", c, hw, hw])],
                     [h.make_tensor_value_info(v, TP.FLOAT, None) for v in outputs],
                     initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()] + list(extra))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def block(c=16, e=48, hw=14, stride=1, residual=True, extra_outputs=(), act_e=True, bias_e=True, k=3):
    """x -> 1x1 (c->e) + Clip -> depthwise 3x3 (stride) + Clip -> 1x1 (e->c) [+ x] -> y."""
    clip = [h.make_tensor("lo", TP.FLOAT, [], [0.0]), h.make_tensor("hi", TP.FLOAT, [], [6.0])]
    nodes = [h.make_node("Conv", ["x", "we"] + (["be"] if bias_e else []), ["e0"])]
    nodes += [h.make_node("Clip", ["e0", "lo", "hi"], ["e"])] if act_e else [h.make_node("Identity", ["e0"], ["e"])]
    nodes += [h.make_node("Conv", ["e", "wd", "bd"], ["d0"], group=e, pads=[k // 2] * 4, strides=[stride] * 2),
              h.make_node("Clip", ["d0", "lo", "hi"], ["d"]),
              h.make_node("Conv", ["d", "wp", "bp"], ["p"])]
    nodes += [h.make_node("Add", ["p", "x"], ["y"])] if residual and stride == 1 else [h.make_node("Identity", ["p"], ["y"])]
    inits = {"we": f32(e, c, 1, 1), "be": f32(e), "wd": f32(e, 1, k, k), "bd": f32(e), "wp": f32(c, e, 1, 1),
             "bp": f32(c)}
    return model("block", nodes, inits, c, hw, ("y",) + tuple(extra_outputs), clip)


def agrees_with_level_0(m, x):
    """(level-2 session, its outputs), checked against the plain run (level 0), output by output."""
    s = rzrt.InferenceSession(m, level=2)
    got, want = s.run(None, {"x": x}), rzrt.InferenceSession(m, level=0).run(None, {"x": x})
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())
    return s, got


def e_layout(n, hw, stride=1, k=3, e=48):
    """The expansion's output as planned: (N, H, W, C), or from PADDED_MIN_PIXELS the depthwise's
    padded image in column phases (N, Hp, s, width, C), which the expansion writes directly."""
    from rzrt.layout import PADDED_MIN_PIXELS
    from rzrt.ops.depthwise import padded_shape
    if hw * hw < PADDED_MIN_PIXELS:
        return (n, hw, hw, e)
    p = k // 2
    return padded_shape((n, e, hw, hw), (k, k), (stride, stride), (1, 1), (p, p), (p, p))


def layouts(sess, shape):
    """{value: shape} of the block's inner values in the plan for this input shape."""
    vs = sess.value_shapes({"x": shape})
    return {name: vs[name][0] for name in vs if name in ("e", "d", "e0", "d0")}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("hw,stride,k", [(14, 1, 3), (7, 1, 3), (14, 2, 3), (9, 2, 3), (28, 1, 3), (40, 2, 3),
                                         (40, 1, 3), (15, 2, 5), (11, 1, 5)])
@pytest.mark.parametrize("memory_plan", [True, False])
def test_block_runs_channels_last_and_agrees(n, hw, stride, k, memory_plan):
    m = block(hw=hw, stride=stride, k=k)
    x = f32(n, 16, hw, hw)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    plain = rzrt.InferenceSession(m, level=0).run(None, {"x": x})[0]
    s = rzrt.InferenceSession(m, level=2, memory_plan=memory_plan)
    for _ in range(2):
        got = s.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)
    inner = [v for v in layouts(s, x.shape).values()]
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    assert e_layout(n, hw, stride, k) in inner and (n, ho, ho, 48) in inner, inner     # both links channels-last
    assert s.plan_time_nodes() == []                     # relaid-out steps still run (not "folded")
    relaid = s.channels_last_nodes({"x": x.shape})                 # the expansion, the depthwise, the projection
    assert len(relaid) == 3 and all(node.op_type.endswith("Conv") for node in relaid)


@pytest.mark.parametrize("bias_e,act_e", [(False, False), (False, True), (True, False)])
def test_block_variants(bias_e, act_e):
    """The channels-last expansion with and without its bias (in the GEMM) and activation (per band)."""
    m = block(hw=20, stride=2, bias_e=bias_e, act_e=act_e)
    x = f32(2, 16, 20, 20)
    want = rzrt.InferenceSession(m, level=0).run(None, {"x": x})[0]
    s = rzrt.InferenceSession(m, level=2)
    np.testing.assert_allclose(s.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    assert (2, 20, 20, 48) in layouts(s, x.shape).values()


def test_values_seen_outside_stay_nchw():
    """The expansion's output is also a graph output: that link stays NCHW; the other one still goes."""
    x = f32(2, 16, 14, 14)
    s, (_, e) = agrees_with_level_0(block(extra_outputs=("e",)), x)
    assert e.shape == (2, 48, 14, 14)
    shapes = layouts(s, x.shape)
    assert shapes["e"] == (2, 48, 14, 14) and shapes["d"] == (2, 14, 14, 48)


def test_when_blocks_stay_nchw():
    """A 40x40 depthwise goes channels-last with both links (48 channels), not with one (the
    expansion is also an output), nor with too few channels per pixel (24); level 1 never changes
    layouts."""
    assert e_layout(1, 40) in layouts(rzrt.InferenceSession(block(hw=40), level=2), (1, 16, 40, 40)).values()
    assert set(layouts(rzrt.InferenceSession(block(hw=40, extra_outputs=("e",)), level=2),
                       (1, 16, 40, 40)).values()) == {(1, 48, 40, 40)}
    assert set(layouts(rzrt.InferenceSession(block(e=24, hw=40), level=2), (1, 16, 40, 40)).values()) == \
        {(1, 24, 40, 40)}
    assert set(layouts(rzrt.InferenceSession(block(hw=14), level=1), (1, 16, 14, 14)).values()) == \
        {(1, 48, 14, 14)}


def test_scratch_is_planned_for_the_layout_that_runs():
    """The linked depthwise's scratch is sized from its logical NCHW shape: its padded (H, W, C) copy
    and output fit exactly where the plan put them (a too small piece would fail to reshape)."""
    from rzrt.ops.conv import conv_scratch
    n, c, hw = 2, 48, 40
    geo = dict(group=c, pads=[1, 1, 1, 1], strides=[2, 2])
    nbytes = conv_scratch(((n, hw, hw, c), np.dtype(np.float32)), ((c, 1, 3, 3), np.dtype(np.float32)),
                          _nhwc_in=True, _nhwc_out=True, **geo)
    # the padded image in 2 column phases of 21 columns, the output, and a second output for the phase sum
    assert nbytes == (42 * 2 * 21 * c * 4 + 63) // 64 * 64 + 2 * ((20 * 20 * c * 4 + 63) // 64 * 64)
    assert conv_scratch(((n, hw, hw, c), np.dtype(np.float32)), ((16, c, 1, 1), np.dtype(np.float32)),
                        _nhwc_in=True) == 0


def se_block(c=16, e=48, hw=14, stride=1, silu=True, gate_first=True, extra_outputs=()):
    """EfficientNet's block: 1x1 + SiLU -> depthwise + SiLU -> squeeze-excitation (pool, 1x1 + ReLU,
    1x1 + Sigmoid, Mul) -> 1x1. SiLU as torch exports it (Sigmoid, Mul), or ReLU."""
    def act(x, y):
        if silu:
            return [h.make_node("Sigmoid", [x], [x + "_s"]), h.make_node("Mul", [x, x + "_s"], [y])]
        return [h.make_node("Relu", [x], [y])]
    nodes = [h.make_node("Conv", ["x", "we", "be"], ["e0"])] + act("e0", "e")
    nodes += [h.make_node("Conv", ["e", "wd", "bd"], ["d0"], group=e, pads=[1, 1, 1, 1], strides=[stride] * 2)]
    nodes += act("d0", "d")
    nodes += [h.make_node("GlobalAveragePool", ["d"], ["sq"]), h.make_node("Conv", ["sq", "w1", "b1"], ["s1"]),
              h.make_node("Relu", ["s1"], ["s2"]), h.make_node("Conv", ["s2", "w2", "b2"], ["s3"]),
              h.make_node("Sigmoid", ["s3"], ["gate"]),
              h.make_node("Mul", ["gate", "d"] if gate_first else ["d", "gate"], ["z"]),
              h.make_node("Conv", ["z", "wp", "bp"], ["y"])]
    inits = {"we": f32(e, c, 1, 1), "be": f32(e), "wd": f32(e, 1, 3, 3), "bd": f32(e), "w1": f32(8, e, 1, 1),
             "b1": f32(8), "w2": f32(e, 8, 1, 1), "b2": f32(e), "wp": f32(c, e, 1, 1), "bp": f32(c)}
    return model("se", nodes, inits, c, hw, ("y",) + tuple(extra_outputs))


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("hw,stride,n", [(14, 1, 1), (28, 2, 2), (40, 1, 1)])
def test_squeeze_excitation_block_runs_channels_last(silu, gate_first, hw, stride, n):
    """The depthwise output stays (H, W, C) through the pool and the gate's Mul to the projection."""
    m = se_block(hw=hw, stride=stride, silu=silu, gate_first=gate_first)
    x = f32(n, 16, hw, hw)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    s = rzrt.InferenceSession(m, level=2)
    for _ in range(2):         # (vs onnxruntime up to 1.5e-5 of the scale over 150 draws; level 0 1.2e-5)
        np.testing.assert_allclose(s.run(None, {"x": x})[0], want, rtol=1e-4, atol=5e-5 * np.abs(want).max())
    np.testing.assert_allclose(s.run(None, {"x": x})[0], rzrt.InferenceSession(m, level=0).run(None, {"x": x})[0],
                               rtol=1e-5, atol=5e-5 * np.abs(want).max())
    vs = s.value_shapes({"x": x.shape})
    ho = (hw - 1) // stride + 1
    assert vs["z"][0] == (n, ho, ho, 48) and vs["sq"][0] == (n, 48, 1, 1)


def test_squeeze_excitation_seen_outside_stays_nchw():
    """The gated value is also a graph output: the depthwise output and the product stay NCHW."""
    x = f32(1, 16, 14, 14)
    s, _ = agrees_with_level_0(se_block(extra_outputs=("z",)), x)
    assert s.value_shapes({"x": x.shape})["z"][0] == (1, 48, 14, 14)


def chain(n=3, c=16, e=48, hw=14, strides=None, pool=False, extra_outputs=(), relu_between=False):
    """x -> n MobileNet blocks (a residual Add wherever stride 1 keeps the shape: all but the first,
    which widens c -> c) [-> GlobalAveragePool] -> y. Block i reads a{i} and writes a{i+1}."""
    strides = strides or [1] * n
    clip = [h.make_tensor("lo", TP.FLOAT, [], [0.0]), h.make_tensor("hi", TP.FLOAT, [], [6.0])]
    nodes, inits = [], {}
    for i, s in enumerate(strides):
        a, b = f"a{i}" if i else "x", f"a{i + 1}"
        nodes += [h.make_node("Conv", [a, f"we{i}", f"be{i}"], [f"e0{i}"]),
                  h.make_node("Clip", [f"e0{i}", "lo", "hi"], [f"e{i}"]),
                  h.make_node("Conv", [f"e{i}", f"wd{i}", f"bd{i}"], [f"d0{i}"], group=e, pads=[1] * 4,
                              strides=[s, s]),
                  h.make_node("Clip", [f"d0{i}", "lo", "hi"], [f"d{i}"]),
                  h.make_node("Conv", [f"d{i}", f"wp{i}", f"bp{i}"], [f"p{i}" if i and s == 1 else b])]
        if i and s == 1:
            nodes.append(h.make_node("Add", [f"p{i}", a], [b]))
        if relu_between and i == 0:
            nodes.append(h.make_node("Relu", [b], ["r"]))
            extra_outputs = tuple(extra_outputs) + ("r",)
        inits.update({f"we{i}": f32(e, c, 1, 1) / 4, f"be{i}": f32(e), f"wd{i}": f32(e, 1, 3, 3) / 3,
                      f"bd{i}": f32(e), f"wp{i}": f32(c, e, 1, 1) / 7, f"bp{i}": f32(c)})    # ~unit gain per block
    last = f"a{n}"
    if pool:
        nodes.append(h.make_node("GlobalAveragePool", [last], ["y"]))
    else:
        nodes.append(h.make_node("Identity", [last], ["y"]))
    return model("chain", nodes, inits, c, hw, ("y",) + tuple(extra_outputs), clip)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("hw,strides,pool", [(14, [1, 1, 2], False), (28, [1, 1, 1], True), (28, [1, 2, 1], True),
                                             (20, [1, 1, 1, 2], False)])
def test_chain_between_blocks_runs_channels_last(n, hw, strides, pool):
    """A projection whose readers all take (H, W, C) (the next expansion, the next projection's
    residual, a global pool) writes it; the residual adds in that layout. Outputs equal the plain
    run and onnxruntime."""
    m = chain(len(strides), hw=hw, strides=strides, pool=pool)
    x = f32(n, 16, hw, hw)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    plain = rzrt.InferenceSession(m, level=0).run(None, {"x": x})[0]
    s = rzrt.InferenceSession(m, level=2)
    for _ in range(2):
        got = s.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    vs = s.value_shapes({"x": x.shape})
    sizes = [hw]
    for st in strides:
        sizes.append((sizes[-1] - 1) // st + 1)
    for i in range(1, len(strides) + (1 if pool else 0)):       # between blocks (and into the pool)
        assert vs[f"a{i}"][0] == (n, sizes[i], sizes[i], 16), (i, vs[f"a{i}"])
    if not pool:                                         # the graph output stays NCHW
        assert vs["y"][0] == (n, 16, sizes[-1], sizes[-1])


def test_chain_stays_nchw_where_it_does_not_pay_or_is_seen():
    """Below CHAIN_MIN_PIXELS (7x7), when the value is a graph output, when another op reads it, or
    when it is the residual of a block whose output stays NCHW (here the graph output), a projection
    writes NCHW; the blocks themselves stay linked."""
    from rzrt.layout import CHAIN_MIN_PIXELS
    assert 7 * 7 < CHAIN_MIN_PIXELS <= 14 * 14
    for m, x in [(chain(3, hw=7, strides=[1, 1, 2]), f32(1, 16, 7, 7)),
                 (chain(3, hw=14, strides=[1, 1, 2], extra_outputs=("a1",)), f32(1, 16, 14, 14)),
                 (chain(3, hw=14, strides=[1, 1, 2], relu_between=True), f32(1, 16, 14, 14)),
                 (chain(2, hw=14), f32(1, 16, 14, 14))]:
        s, _ = agrees_with_level_0(m, x)
        vs = s.value_shapes({"x": x.shape})
        assert vs["a1"][0] == x.shape and vs["d0"][0] == x.shape[:1] + x.shape[2:] + (48,)


def stem_block(cin=3, c=32, hw=30, stride=2, k=3):
    """x -> k x k conv (stride) + Clip (a stem) -> depthwise 3x3 + Clip -> 1x1 -> y."""
    clip = [h.make_tensor("lo", TP.FLOAT, [], [0.0]), h.make_tensor("hi", TP.FLOAT, [], [6.0])]
    nodes = [h.make_node("Conv", ["x", "ws", "bs"], ["s0"], strides=[stride] * 2, pads=[k // 2] * 4),
             h.make_node("Clip", ["s0", "lo", "hi"], ["s"]),
             h.make_node("Conv", ["s", "wd", "bd"], ["d0"], group=c, pads=[1] * 4),
             h.make_node("Clip", ["d0", "lo", "hi"], ["d"]),
             h.make_node("Conv", ["d", "wp", "bp"], ["y"])]
    inits = {"ws": f32(c, cin, k, k) / 4, "bs": f32(c), "wd": f32(c, 1, 3, 3) / 3, "bd": f32(c),
             "wp": f32(16, c, 1, 1) / 6, "bp": f32(16)}
    return model("stem", nodes, inits, cin, hw, ("y",), clip)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("hw,stride", [(30, 2), (31, 2), (20, 1)])
def test_stem_writes_channels_last_for_its_depthwise(n, hw, stride):
    """A stem (a strided 3x3 run by im2col) feeding a depthwise writes (H, W, C) with the transposed
    GEMM, so the depthwise runs linked; a 3x3 that Winograd runs (stride 1, 32 channels in) does not."""
    m = stem_block(hw=hw, stride=stride)
    x = f32(n, 3, hw, hw)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    s, (got,) = agrees_with_level_0(m, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    ho = (hw - 1) // stride + 1
    assert s.value_shapes({"x": x.shape})["s"][0] == (n, ho, ho, 32)
    wino = stem_block(cin=32, hw=20, stride=1)
    s, _ = agrees_with_level_0(wino, f32(n, 32, 20, 20))
    assert s.value_shapes({"x": (n, 32, 20, 20)})["s"][0] == (n, 32, 20, 20)


@pytest.mark.parametrize("act,params", [("Sigmoid", {}), ("Clip", {"lo": 0.5, "hi": 6.0}), ("Relu", {}),
                                        ("Clip", {"lo": -1.0, "hi": 1.0})])
def test_expansion_writes_padded_input_only_when_act_of_zero_is_zero(act, params):
    """From 28x28 an expansion writes its depthwise's padded input, its padding slots computed as
    act(0): only for activations that map 0 to 0 (not Sigmoid, not Clip from 0.5)."""
    inits = {"we": f32(48, 16, 1, 1) / 4, "be": f32(48), "wd": f32(48, 1, 3, 3) / 3, "bd": f32(48),
             "wp": f32(16, 48, 1, 1) / 7, "bp": f32(16), "lo": np.array(params.get("lo", 0), np.float32),
             "hi": np.array(params.get("hi", 6), np.float32)}
    a = [h.make_node("Clip", ["e0", "lo", "hi"], ["e"])] if act == "Clip" else [h.make_node(act, ["e0"], ["e"])]
    nodes = [h.make_node("Conv", ["x", "we", "be"], ["e0"])] + a + [
        h.make_node("Conv", ["e", "wd", "bd"], ["d"], group=48, pads=[1] * 4, strides=[2, 2]),
        h.make_node("Conv", ["d", "wp", "bp"], ["y"])]
    m = model("act", nodes, inits, 16, 28, ("y",))
    x = f32(2, 16, 28, 28)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    s, (got,) = agrees_with_level_0(m, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    padded = act == "Relu" or params.get("lo") == -1.0
    assert (s.value_shapes({"x": x.shape})["e"][0] == e_layout(2, 28, stride=2)) == padded


def test_single_channel_3x3_is_not_a_depthwise():
    """A 3x3 convolution of one channel (group 1 = C = M) between 1x1 convolutions is a plain
    convolution, as the kernels see it: the plan must not link it as a depthwise (found by fuzzing:
    it failed, or ran as a 1x1, reading channels-last)."""
    nodes = [h.make_node("Conv", ["x", "we"], ["e"]), h.make_node("Relu", ["e"], ["r"]),
             h.make_node("Conv", ["r", "wd"], ["d"], pads=[1, 1, 1, 1]), h.make_node("Conv", ["d", "wp"], ["y"])]
    m = model("one", nodes, {"we": f32(1, 5, 1, 1), "wd": f32(1, 1, 3, 3), "wp": f32(4, 1, 1, 1)}, 5, 6, ("y",))
    x = f32(2, 5, 6, 6)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    s, (got,) = agrees_with_level_0(m, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert s.channels_last_nodes({"x": x.shape}) == []


def basic_block(c=32, residual=True, extra_outputs=(), stride2=False, seen=False):
    """ResNet-18's block: x -> 3x3 + ReLU -> a -> 3x3 [+ x] + ReLU -> y (seen: a also goes to a Relu)."""
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["a0"], pads=[1] * 4), h.make_node("Relu", ["a0"], ["a"]),
             h.make_node("Conv", ["a", "w2", "b2"], ["c"], pads=[1] * 4, strides=[2, 2] if stride2 else [1, 1])]
    nodes += [h.make_node("Add", ["c", "x"], ["c1"])] if residual and not stride2 else \
        [h.make_node("Identity", ["c"], ["c1"])]
    nodes += [h.make_node("Relu", ["c1"], ["y"])]
    nodes += [h.make_node("Relu", ["a"], ["seen"])] if seen else []
    inits = {"w1": f32(c, c, 3, 3) / 8, "b1": f32(c), "w2": f32(c, c, 3, 3) / 8, "b2": f32(c)}
    return model("basic", nodes, inits, c, "H", ("y",) + tuple(extra_outputs) + (("seen",) if seen else ()))


def winograd_padded(n, c, hw):
    from rzrt.layout import _winograd_padded
    from rzrt.ops import winograd
    m = winograd.tile_size((n, c, hw, hw), (c, c, 3, 3), 1, None, None, None, [1] * 4, "NOTSET", np.float32)
    return _winograd_padded((n, c, hw, hw), m)


@pytest.mark.parametrize("n,hw", [(1, 28), (2, 14), (1, 30), (3, 10), (1, 17)])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("memory_plan", [True, False])
def test_winograd_writes_the_next_winograds_padded_input(n, hw, residual, memory_plan):
    """3x3 -> 3x3, both by Winograd: the first writes the second's zero-padded channels-last input
    (N, H', 1, W', C) itself (no NCHW scatter, no padding copy), the second reads it as it is and
    writes NCHW (with the residual). Whole and partial tiles (30, 17), F(4x4) and F(2x2)."""
    m = basic_block(residual=residual)
    x = f32(n, 32, hw, hw)
    want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    plain = rzrt.InferenceSession(m, level=0).run(None, {"x": x})[0]
    s = rzrt.InferenceSession(m, level=2, memory_plan=memory_plan)
    for _ in range(2):                                   # the padding is zeroed on every run, not once
        got = s.run(None, {"x": x})[0]
        assert rel_err(got, want) < 1e-4 and rel_err(got, plain) < 1e-4     # Winograd reassociates: 1e-4
        x = f32(n, 32, hw, hw) * 3
        want = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        plain = rzrt.InferenceSession(m, level=0).run(None, {"x": x})[0]
    assert s.value_shapes({"x": x.shape})["a"][0] == winograd_padded(n, 32, hw)
    assert len(s.channels_last_nodes({"x": x.shape})) == 2


@pytest.mark.parametrize("kind", ["seen", "output", "stride2", "small"])
def test_winograd_link_only_between_private_winograds(kind):
    """No link when the value is read by another node too or is a graph output, when the second
    convolution is no Winograd (stride 2), or when neither is (too few tiles: 6x6 at batch 1)."""
    m = basic_block(seen=kind == "seen", extra_outputs=("a",) if kind == "output" else (), stride2=kind == "stride2")
    hw = 6 if kind == "small" else 14
    x = f32(1, 32, hw, hw)
    s, _ = agrees_with_level_0(m, x)
    assert s.value_shapes({"x": x.shape})["a"][0] == (1, 32, hw, hw)
    assert s.channels_last_nodes({"x": x.shape}) == []

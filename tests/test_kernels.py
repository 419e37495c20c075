"""Each kernel against an oracle nobody here wrote: onnx's ReferenceEvaluator, and torch for
pooling edge cases (ceil_mode, count_include_pad), on random shapes including odd ones."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import rzrt

RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def single_node_model(op, inputs: dict, attrs=None, opset=17, n_outputs=1, consts=None):
    """A one-node model: graph inputs = `inputs` (name -> array), constant inputs = `consts`."""
    consts = consts or {}
    names = list(inputs) + list(consts)
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_onnxruntime(model, inputs):
    import onnxruntime as ort
    model = onnx.shape_inference.infer_shapes(model)   # ort wants typed outputs
    for o in model.graph.output:
        if not o.type.HasField("tensor_type"):
            o.CopyFrom(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString()).run(None, inputs)


def check(op, inputs: dict, attrs=None, opset=17, n_outputs=1, consts=None, rtol=1e-5, atol=1e-5, oracle="onnx"):
    """rzrt against onnx's ReferenceEvaluator (oracle="onnx") or onnxruntime (oracle="ort"),
    the latter where the evaluator is known wrong (noted at the call)."""
    model = single_node_model(op, inputs, attrs, opset, n_outputs, consts)
    want = (ReferenceEvaluator(model).run if oracle == "onnx" else lambda _, f: run_onnxruntime(model, f))(None, inputs)
    got = rzrt.InferenceSession(model).run(None, inputs)
    for g, w in zip(got, want):
        assert g.shape == w.shape, f"{op}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{op}: dtype {g.dtype} != {w.dtype}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


# --- convolution ------------------------------------------------------------------
CONV_CASES = {
    "3x3 pad 1": ((1, 3, 7, 7), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "stride 2 odd sizes": ((2, 4, 9, 11), (6, 4, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "asymmetric pads": ((1, 2, 8, 5), (3, 2, 3, 2), dict(pads=[0, 1, 2, 0], strides=[2, 1])),
    "dilation 2": ((1, 3, 10, 9), (2, 3, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "dilation + stride": ((2, 3, 11, 12), (4, 3, 3, 2), dict(dilations=[2, 3], strides=[3, 2])),
    "groups 2": ((2, 4, 6, 6), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "groups 4, stride 2": ((1, 8, 7, 7), (8, 2, 3, 3), dict(group=4, strides=[2, 2])),
    "depthwise": ((2, 5, 7, 6), (5, 1, 3, 3), dict(group=5, pads=[1, 1, 1, 1])),
    "depthwise stride 2 odd": ((1, 6, 9, 11), (6, 1, 5, 5), dict(group=6, strides=[2, 2], pads=[2, 2, 2, 2])),
    "depthwise dilated": ((1, 4, 9, 9), (4, 1, 3, 3), dict(group=4, dilations=[2, 2])),
    "depth multiplier 2": ((1, 3, 6, 6), (6, 1, 3, 3), dict(group=3)),
    "depthwise stride 3, rectangular, asymmetric pads": ((2, 3, 13, 10), (3, 1, 4, 2),
                                                         dict(group=3, strides=[3, 2], pads=[2, 0, 1, 1])),
    "depthwise stride 2, dilation 3": ((1, 4, 15, 14), (4, 1, 3, 3), dict(group=4, strides=[2, 2], dilations=[3, 2])),
    "depthwise SAME_UPPER stride 2": ((1, 4, 7, 8), (4, 1, 3, 3), dict(group=4, auto_pad="SAME_UPPER", strides=[2, 2])),
    "depthwise pads larger than the kernel": ((1, 2, 4, 4), (2, 1, 3, 3), dict(group=2, pads=[3, 1, 2, 4])),
    "depthwise 1-D": ((2, 3, 10), (3, 1, 3), dict(group=3, pads=[1, 1])),
    "depthwise 3-D": ((1, 2, 4, 5, 6), (2, 1, 3, 3, 3), dict(group=2, pads=[1, 1, 1, 1, 1, 1])),
    "1x1": ((2, 8, 5, 5), (4, 8, 1, 1), {}),
    "1x1 stride 2": ((1, 8, 7, 7), (4, 8, 1, 1), dict(strides=[2, 2])),
    "SAME_UPPER stride 2": ((1, 2, 7, 8), (3, 2, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "SAME_LOWER": ((1, 2, 6, 7), (3, 2, 4, 4), dict(auto_pad="SAME_LOWER")),
    "VALID stride 3": ((1, 2, 10, 10), (3, 2, 3, 3), dict(auto_pad="VALID", strides=[3, 3])),
    "1-D": ((2, 3, 10), (4, 3, 3), dict(strides=[2], pads=[1, 0])),
    "1-D grouped dilated": ((1, 4, 12), (4, 2, 3), dict(group=2, dilations=[2])),
    "3-D": ((1, 2, 5, 6, 7), (3, 2, 2, 3, 3), dict(pads=[0, 1, 1, 1, 0, 1])),
    "kernel_shape given": ((1, 3, 5, 5), (2, 3, 3, 3), dict(kernel_shape=[3, 3])),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case, bias):
    xs, ws, attrs = CONV_CASES[case]
    inputs = {"X": rand(*xs), "W": rand(*ws)}
    if bias:
        inputs["B"] = rand(ws[0])
    check("Conv", inputs, attrs, rtol=1e-4, atol=1e-4)



DEPTHWISE_2D = [case for case, (xs, ws, a) in CONV_CASES.items() if len(xs) == 4 and a.get("group", 1) == xs[1] == ws[0]]


@pytest.mark.parametrize("case", DEPTHWISE_2D)
def test_depthwise_channels_last_in_and_out(case):
    """The channels-last kernel reading and writing (N, H, W, C) (rzrt/layout.py's links), with its
    column phases, on every 2-D depthwise case: the same as the plain convolution, transposed."""
    from rzrt.ops.conv import Conv, conv
    xs, ws, attrs = CONV_CASES[case]
    x, w, b = rand(2, *xs[1:]), rand(*ws), rand(ws[0])
    want = Conv(x, w, b, **attrs)
    relu = lambda y: np.maximum(y, 0, out=y)      # noqa: E731
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for nhwc_in, nhwc_out in [(True, True), (True, False), (False, True)]:
        got = conv(xn if nhwc_in else x, w, b, None, relu, **attrs, nhwc_in=nhwc_in, nhwc_out=nhwc_out)
        np.testing.assert_allclose(got.transpose(0, 3, 1, 2) if nhwc_out else got, np.maximum(want, 0),
                                   rtol=1e-5, atol=1e-5, err_msg=f"in {nhwc_in} out {nhwc_out}")


DENSE_2D = {case: v for case, v in CONV_CASES.items() if len(v[0]) == 4 and v[2].get("group", 1) == 1}
DENSE_2D["1x1 padded"] = ((1, 4, 5, 6), (3, 4, 1, 1), dict(pads=[1, 0, 2, 1]))     # im2col, not the 1x1 GEMM


@pytest.mark.parametrize("case", DENSE_2D)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_conv_writes_channels_last(case, bias):
    """A plain convolution run by im2col writing (N, H, W, M) (a stem linked to its depthwise by
    rzrt/layout.py): the transposed GEMM, bias in it or added after, activation per band."""
    from rzrt.ops.conv import Conv, conv
    xs, ws, attrs = DENSE_2D[case]
    x, w, b = rand(2, *xs[1:]), rand(*ws), rand(ws[0]) if bias else None
    relu = lambda y: np.maximum(y, 0, out=y)      # noqa: E731
    got = conv(x, w, b, None, relu, **attrs, nhwc_out=True)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), np.maximum(Conv(x, w, b, **attrs), 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", DEPTHWISE_2D)
@pytest.mark.parametrize("bias,nhwc_in", [(True, False), (False, True)])
def test_expansion_writes_the_depthwise_padded_input(case, bias, nhwc_in):
    """A 1x1 expansion writing its depthwise's padded image in column phases (pad_out; zero rows of
    [X^T | 1] in the padding slots give act(0) = 0) and the depthwise reading it as is (padded_in),
    on every 2-D depthwise case, with and without the expansion's bias, from NCHW and NHWC: the plain
    convolutions."""
    from rzrt.ops.conv import Conv, conv
    from rzrt.ops.conv import conv_geometry
    from rzrt.ops.depthwise import padded_shape
    xs, ws, attrs = CONV_CASES[case]
    if attrs.get("group") != ws[0]:                     # a depth multiplier: not an expansion's reader
        return
    n, c, h, w = 2, 4, xs[2], xs[3]
    x, we, be = rand(n, c, h, w), rand(ws[0], c, 1, 1), rand(ws[0]) if bias else None
    wd, bd = rand(*ws), rand(ws[0])
    relu6 = lambda y: np.clip(y, 0, 6, out=y)      # noqa: E731
    want = np.clip(Conv(np.clip(Conv(x, we, be), 0, 6), wd, bd, **attrs), 0, 6)
    k, s, d, pb, pe, _ = conv_geometry((n, ws[0], h, w), ws, attrs.get("kernel_shape"), attrs.get("strides"),
                                       attrs.get("dilations"), attrs.get("pads"), attrs.get("auto_pad", "NOTSET"))
    ps = padded_shape((n, ws[0], h, w), k, s, d, pb, pe)
    garbage = np.full(ps, np.nan, np.float32)           # every slot must be written
    e = conv(np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc_in else x, we, be, None, relu6, out=garbage,
             nhwc_in=nhwc_in, nhwc_out=True, pad_out=(pb[0], pb[1]) + ps[1:4])
    got = conv(e, wd, bd, None, relu6, **attrs, nhwc_in=True, padded_in=(h, w))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_depthwise_plan_kept_across_runs():
    """The channels-last depthwise keeps its plan (views of X, Y and the scratch) in the node's memo:
    a second run reads X's new values, weights that are not constants are tiled again each run,
    the scratch's border is zeroed again, and inputs that change every run do not pile up."""
    from rzrt.ops.conv import Conv, conv
    x, w, b = rand(2, 32, 9, 9), rand(32, 1, 3, 3), rand(32)
    xn, y, memo = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.empty((2, 9, 9, 32), np.float32), {}
    geo = dict(group=32, pads=[1, 1, 1, 1])
    scratch = np.full(1 << 20, 255, np.uint8)                # garbage where the zero border goes
    for _ in range(3):
        conv(xn, w, b, None, None, **geo, out=y, scratch=scratch, nhwc_in=True, nhwc_out=True, memo=memo)
        np.testing.assert_allclose(y.transpose(0, 3, 1, 2), Conv(xn.transpose(0, 3, 1, 2), w, b, **geo),
                                   rtol=1e-5, atol=1e-5)
        xn *= -1.5                                           # new values in the same arrays
        w += 0.25
        scratch.fill(255)
    assert len(memo) == 1
    for _ in range(20):
        conv(rand(2, 9, 9, 32), w, b, None, None, **geo, out=y, scratch=scratch, nhwc_in=True, nhwc_out=True,
             memo=memo)
    assert 1 <= len(memo) <= 4
    memo.clear()                                             # without a scratch (no memory plan): nothing kept
    conv(xn, w, b, None, None, **geo, out=y, nhwc_in=True, nhwc_out=True, memo=memo)
    assert memo == {}


@pytest.mark.parametrize("n,c,m,hw", [(1, 24, 144, 14), (2, 144, 24, 9), (1, 32, 16, 37), (1, 32, 16, 70),
                                      (2, 96, 96, 5), (1, 64, 200, 3)])
@pytest.mark.parametrize("bias,residual", [(True, True), (True, False), (False, True), (False, False)])
def test_pointwise_channels_last(n, c, m, hw, bias, residual):
    """1x1 convolutions reading and/or writing (N, H, W, C) (rzrt/layout.py's blocks and chains):
    the bias in the GEMM (expansions) or added after (repeated along rows when the channels are
    few, with a remainder of rows), the residual in the output's layout, bands of NHWC_ROWS pixels:
    the plain convolution, transposed."""
    from rzrt.ops.conv import Conv, conv
    x, w, b, z = rand(n, c, hw, hw), rand(m, c, 1, 1), rand(m) if bias else None, rand(n, m, hw, hw)
    want = np.maximum(Conv(x, w, b) + (z if residual else 0), 0)
    relu = lambda y: np.maximum(y, 0, out=y)      # noqa: E731
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))     # noqa: E731
    for nhwc_in, nhwc_out in [(True, True), (True, False), (False, True)]:
        zz = (nhwc(z) if nhwc_out else z) if residual else None
        got = conv(nhwc(x) if nhwc_in else x, w, b, zz, relu, nhwc_in=nhwc_in, nhwc_out=nhwc_out)
        np.testing.assert_allclose(got.transpose(0, 3, 1, 2) if nhwc_out else got, want,
                                   rtol=1e-5, atol=1e-5, err_msg=f"in {nhwc_in} out {nhwc_out}")


@pytest.mark.parametrize("layout", ["planar", "channels-last"])
@pytest.mark.parametrize("case", DEPTHWISE_2D)
def test_depthwise_both_layouts(case, layout, monkeypatch):
    """2-D depthwise runs planar or, on small planes, channels-last (CHANNELS_LAST_PIXELS): each
    layout on every 2-D depthwise case, plain against onnx's reference and fused (bias, residual,
    ReLU) against the plain result, one image and two."""
    from rzrt.ops import depthwise
    from rzrt.ops.fused import FusedConv
    monkeypatch.setattr(depthwise, "CHANNELS_LAST_PIXELS", 0 if layout == "planar" else 1 << 30)
    xs, ws, attrs = CONV_CASES[case]
    for n in (1, 2):
        x, w, b = rand(n, *xs[1:]), rand(*ws), rand(ws[0])
        (y,) = check("Conv", {"X": x, "W": w, "B": b}, attrs, rtol=1e-4, atol=1e-4)
        z = rand(*y.shape)
        np.testing.assert_allclose(FusedConv(x, w, b, z, activation="Relu", **attrs), np.maximum(y + z, 0),
                                   rtol=1e-5, atol=1e-5)

# --- pooling ------------------------------------------------------------------------
POOL_CASES = {
    "resnet stem": ((1, 3, 12, 12), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "2x2 stride 2 odd": ((2, 2, 7, 9), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "ceil_mode odd": ((1, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "ceil_mode + pads": ((1, 2, 10, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "ceil_mode last window dropped": ((1, 1, 5, 5), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "asymmetric pads": ((1, 2, 6, 7), dict(kernel_shape=[3, 2], pads=[1, 0, 0, 1])),
    "1-D": ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "3-D": ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 2, 3], strides=[2, 2, 2])),
    # stride 1 runs as flat passes over the padded tensor (pool._flat_passes)
    "stride 1, 3x3, pads 1": ((2, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
    "stride 1, ceil_mode, uneven pads": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], pads=[1, 0, 2, 1], ceil_mode=1)),
    "stride 1, 3-D": ((1, 2, 4, 5, 6), dict(kernel_shape=[2, 3, 2], pads=[0, 1, 1, 1, 1, 0])),
    "stride 1, 1-D, no pads": ((3, 2, 9), dict(kernel_shape=[4])),
}


def _torch_pool(op, x, attrs, count_include_pad=0):
    import torch
    import torch.nn.functional as F
    rank = x.ndim - 2
    k = attrs["kernel_shape"]
    s = attrs.get("strides", [1] * rank)
    p = attrs.get("pads", [0] * 2 * rank)
    if p[:rank] != p[rank:]:
        return None   # torch has symmetric pads only
    t = torch.from_numpy(x)
    if op == "MaxPool":
        f = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return f(t, k, s, p[:rank], attrs.get("dilations", [1] * rank), ceil_mode=bool(attrs.get("ceil_mode"))).numpy()
    f = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    return f(t, k, s, p[:rank], ceil_mode=bool(attrs.get("ceil_mode")), count_include_pad=bool(count_include_pad)).numpy()


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_maxpool(case):
    xs, attrs = POOL_CASES[case]
    x = rand(*xs)
    (got,) = check("MaxPool", {"X": x}, attrs, oracle="ort")    # onnx's evaluator fails on uneven pads in 3-D
    want = _torch_pool("MaxPool", x, attrs)
    if want is not None:
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("xs,attrs", [
    ((1, 2, 9, 10), dict(kernel_shape=[3, 3], dilations=[2, 2], strides=[1, 2], pads=[1, 1, 1, 1])),
    # no tap reads the input for every output (tap 0 misses o < 2, tap 1 misses o > 2)
    ((2, 3, 4), dict(kernel_shape=[2], dilations=[3], pads=[2, 2])),
    ((1, 2, 4, 5), dict(kernel_shape=[2, 2], dilations=[3, 3], strides=[1, 2], pads=[2, 2, 2, 2])),
    ((1, 2, 8, 9), dict(kernel_shape=[3, 3], dilations=[2, 1], pads=[2, 1, 2, 1])),    # stride 1: flat passes
])
def test_maxpool_dilations(xs, attrs):
    x = rand(*xs) - 3          # all negative: a padding zero would win
    (got,) = check("MaxPool", {"X": x}, attrs)       # against onnx's reference
    if max(attrs["pads"]) <= min(attrs["kernel_shape"]) // 2:     # torch allows no more padding
        np.testing.assert_allclose(got, _torch_pool("MaxPool", x, attrs))


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_averagepool(case, count_include_pad):
    """torch is the reference here: onnx's evaluator and torch disagree on ceil_mode windows."""
    xs, attrs = POOL_CASES[case]
    x = rand(*xs)
    attrs = dict(attrs, count_include_pad=count_include_pad)
    got = rzrt.InferenceSession(single_node_model("AveragePool", {"X": x}, attrs)).run(None, {"X": x})[0]
    want = _torch_pool("AveragePool", x, attrs, count_include_pad)
    if want is None or attrs.get("ceil_mode") is None:
        ref = ReferenceEvaluator(single_node_model("AveragePool", {"X": x}, attrs)).run(None, {"X": x})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    if want is not None:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 4, 9), (1, 2, 3, 4, 5)])
def test_global_pool(op, shape):
    # onnx's evaluator reduces the wrong axes in GlobalMaxPool for non-4-D inputs
    check(op, {"X": rand(*shape)}, oracle="ort" if op == "GlobalMaxPool" else "onnx")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (8, 64, 7, 7), (1, 4, 9), (0, 3, 4, 4)])
def test_global_average_pool_layouts(shape, dtype):
    """GlobalAveragePool as a GEMV with 1/size (float32 and up; np.mean for float16 and empty
    inputs), reading NCHW or channels-last (rzrt/layout.py): the float64 mean."""
    from rzrt.ops.pool import GlobalAveragePool
    x = rand(*shape, dtype=dtype)
    want = x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    tol = 1e-3 if dtype == np.float16 else 1e-6
    got = GlobalAveragePool(x)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    if x.ndim == 4:
        got = GlobalAveragePool(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), _nhwc_in=True)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# --- normalisation, matrix products ----------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 4), (1, 2, 3, 4, 5)])
def test_batchnorm(shape):
    c = shape[1]
    consts = {"scale": rand(c), "B": rand(c), "mean": rand(c), "var": np.abs(rand(c)) + 0.5}
    check("BatchNormalization", {"X": rand(*shape)}, dict(epsilon=1e-3), consts=consts)


@pytest.mark.parametrize("shape,axis", [((2, 5, 5, 8), -1), ((2, 3, 4, 6), 1), ((3, 197, 64), 2), ((4, 6), 0)])
def test_layernorm(shape, axis):
    """LayerNormalization (rows of the trailing axes: a GEMV for the means, one pass for the squares),
    all three outputs, against onnx's reference."""
    x = rand(*shape) * 3 + 1
    norm = shape[axis % len(shape):]
    check("LayerNormalization", {"X": x}, dict(axis=axis, epsilon=1e-5), n_outputs=3,
          consts={"Scale": rand(*norm), "B": rand(*norm)})


@pytest.mark.parametrize("transA,transB", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (), (5,), (1, 5), (3, 5)])
def test_gemm(transA, transB, c_shape):
    a = rand(4, 3) if transA else rand(3, 4)
    b = rand(5, 4) if transB else rand(4, 5)
    inputs = {"A": a, "B": b}
    if c_shape is not None:
        inputs["C"] = rand(*c_shape)
    check("Gemm", inputs, dict(alpha=0.7, beta=1.3, transA=transA, transB=transB))


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                                   ((2, 1, 3, 4), (5, 4, 6)), ((4,), (4,)), ((2, 3, 5, 4), (4, 6))])
def test_matmul(sa, sb):
    check("MatMul", {"A": rand(*sa), "B": rand(*sb)})


def test_matmul_stack_times_matrix_is_one_gemm():
    """A (..., K) @ B (K, N) runs as one GEMM on A's rows: also for a transposed A and into out=."""
    from rzrt.ops.gemm import MatMul
    a, b = rand(3, 5, 2, 4).transpose(0, 2, 1, 3), rand(4, 6)
    np.testing.assert_allclose(MatMul(a, b), np.matmul(a, b), rtol=1e-6)
    out = np.empty((3, 2, 5, 6), np.float32)
    assert MatMul(a, b, out=out) is out
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-6)


@pytest.mark.parametrize("equation,shapes", [
    ("bghid,bghjd->bghij", [(1, 2, 3, 5, 4), (1, 2, 3, 6, 4)]),       # MaxViT's attention scores
    ("bghij,bghjd->bghid", [(1, 2, 3, 5, 6), (1, 2, 3, 6, 4)]),       # ... and values
    ("ij,jk", [(3, 4), (4, 5)]),                                       # implicit output
    ("ij,kj->ki", [(3, 4), (5, 4)]),                                   # output transposed
    ("ij,ij->", [(3, 4), (3, 4)]),                                     # full contraction
    ("i,j->ij", [(3,), (4,)]),                                         # outer product
    ("bij,jk->bki", [(2, 3, 4), (4, 5)]),
    ("abc,cd->d", [(2, 3, 4), (4, 5)]),                                # a and b summed away first
    ("ii->i", [(3, 3)]),                                               # one operand: numpy's einsum
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),                        # three operands: numpy's einsum
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),                    # ellipsis: numpy's einsum
])
def test_einsum(equation, shapes):
    inputs = {f"x{i}": rand(*s) for i, s in enumerate(shapes)}
    check("Einsum", inputs, dict(equation=equation), rtol=1e-5, atol=1e-5)


# --- elementwise ------------------------------------------------------------------------
BROADCASTS = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((1, 3, 1, 1), (2, 3, 5, 5))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", BROADCASTS)
def test_binary(op, sa, sb):
    b = rand(*sb)
    if op == "Div":
        b = np.where(np.abs(b) < 0.1, 1, b).astype(np.float32)
    check(op, {"A": rand(*sa), "B": b})


def test_div_integers_truncate():
    a = np.array([7, -7, 7, -7], dtype=np.int64)
    b = np.array([2, 2, -2, -2], dtype=np.int64)
    check("Div", {"A": a, "B": b})


def test_sum_variadic():
    check("Sum", {"a": rand(2, 3), "b": rand(3), "c": rand(1, 3)})
    check("Sum", {"a": rand(2, 3)})


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Neg", "Erf"])
def test_unary(op):
    x = rand(3, 4, 5) * 4
    check(op, {"X": x}, rtol=1e-5, atol=1e-6)


def test_erf_float32_against_math_erf(monkeypatch):
    """Erf in float32 is a rational fit on chunks (ERF_CHUNK): within 5e-7 of math.erf over [-6, 6],
    saturating to +-1, NaN kept; the same through chunks of 1000, in place, on a transposed view,
    and in float16."""
    import math
    from rzrt.ops import elementwise as E
    x = np.concatenate([np.linspace(-6, 6, 200_001), [0.0, -0.0, 1e-30, -1e-8, 30, -30, np.inf, -np.inf]])
    x = x.astype(np.float32)
    want = np.array([math.erf(float(v)) for v in x])
    got = E.Erf(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-7)
    np.testing.assert_allclose(got[x != 0] / want[x != 0], 1, atol=5e-7)           # tiny inputs too
    assert np.isnan(E.Erf(np.array([np.nan], np.float32)))[0]
    monkeypatch.setattr(E, "ERF_CHUNK", 1000)
    y = x.copy()
    assert E.Erf(y, out=y) is y
    np.testing.assert_array_equal(y, got)
    t = x[:60_000].reshape(300, 200).T
    np.testing.assert_array_equal(E.Erf(t), got[:60_000].reshape(300, 200).T)
    np.testing.assert_allclose(E.Erf(x.astype(np.float16)), want.astype(np.float16), atol=1e-3)
    check("Erf", {"X": rand(5, 7) * 3}, rtol=0, atol=5e-7)
    # Gelu = x/2 (1 + erf(x / sqrt 2)): erf's absolute error (under 4.5e-7) times |x|/2, so up to
    # ~2e-6 for the |x| < 10 drawn here (in the far negative tail that is a large relative error)
    check("Gelu", {"X": rand(5, 7) * 3}, opset=20, rtol=1e-6, atol=3e-6)


def test_silu_fused_activation(monkeypatch):
    """The fused SiLU, x / (1 + exp(-x)) in chunks: against float64, extremes and NaN included, in
    place, on a strided view, across chunk edges (CHUNK patched), and inside a FusedConv."""
    from rzrt.ops import activation as A
    from rzrt.ops.conv import Conv
    from rzrt.ops.fused import FusedConv
    monkeypatch.setattr(A, "CHUNK", 1000)
    x = (rand(3, 2500) * 8).astype(np.float32)
    x[0, :5] = [-100, 100, np.nan, -np.inf, np.inf]
    with np.errstate(over="ignore", invalid="ignore"):
        want = x / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(A.Silu(x), want, rtol=1e-6, atol=1e-38)
    y = x.copy()
    assert A.Silu(y, out=y) is y
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-38)
    np.testing.assert_allclose(A.Silu(x[:, ::3]), want[:, ::3], rtol=1e-6, atol=1e-38)
    xc, w, b = rand(2, 4, 9, 9), rand(6, 4, 3, 3), rand(6)
    c = Conv(xc, w, b, pads=[1, 1, 1, 1]).astype(np.float64)
    np.testing.assert_allclose(FusedConv(xc, w, b, activation="Silu", pads=[1, 1, 1, 1]), c / (1 + np.exp(-c)),
                               rtol=1e-5, atol=1e-5)


def test_sigmoid_extremes():
    x = np.array([-1000, -100, -20, 0, 20, 100, 1000], dtype=np.float32)
    check("Sigmoid", {"X": x}, atol=1e-7)


@pytest.mark.parametrize("opset,attrs,consts", [
    (6, dict(min=-0.5, max=0.7), {}),
    (11, {}, {"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
    (13, {}, {"lo": np.array(-0.2, np.float32)}),
])
def test_clip(opset, attrs, consts):
    check("Clip", {"X": rand(3, 4)}, attrs, opset=opset, consts=consts)


def test_clip_max_only():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Clip", ["X", "", "hi"], ["y"])], "t",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 4])],
        [helper.make_value_info("y", onnx.TypeProto())],
        initializer=[onnx.numpy_helper.from_array(np.array(0.3, np.float32), "hi")]),
        opset_imports=[helper.make_opsetid("", 13)])
    x = rand(3, 4)
    np.testing.assert_array_equal(rzrt.InferenceSession(model).run(None, {"X": x})[0], np.minimum(x, 0.3))


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax(opset, axis):
    """Opset 11 flattens to 2-D at `axis`; opset 13 normalises along `axis` only."""
    # onnx's evaluator applies opset-13 semantics at every opset; onnxruntime follows the spec
    check("Softmax", {"X": rand(2, 3, 4)}, dict(axis=axis), opset=opset, rtol=1e-5, atol=1e-6,
          oracle="ort" if opset < 13 else "onnx")


# --- shape and data movement --------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis):
    check("Flatten", {"X": rand(2, 3, 4, 5)}, dict(axis=axis))


@pytest.mark.parametrize("target,allowzero", [((6, -1), 0), ((0, 0, -1), 0), ((-1,), 0), ((2, 0, 4), 0),
                                              ((2, 3, 4, 1, 1), 1)])
def test_reshape(target, allowzero):
    check("Reshape", {"X": rand(2, 3, 4)}, dict(allowzero=allowzero), opset=14,
          consts={"shape": np.array(target, dtype=np.int64)})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [(2, 3, 4), (2, 3, 4)]
    shapes = [tuple(s if i != axis % 3 else s + k for i, s in enumerate(sh)) for k, sh in enumerate(shapes)]
    check("Concat", {"a": rand(*shapes[0]), "b": rand(*shapes[1]), "c": rand(*shapes[0])}, dict(axis=axis))


def test_identity_and_constant():
    check("Identity", {"X": rand(2, 3)})
    t = onnx.numpy_helper.from_array(rand(2, 3), "c")
    check("Constant", {}, dict(value=t))
    check("Constant", {}, dict(value_floats=[1.0, 2.5]))
    check("Constant", {}, dict(value_int=7))


@pytest.mark.parametrize("opset,axes_as_input", [(13, False), (18, True)])
@pytest.mark.parametrize("axes,keepdims", [((1,), 1), ((0, 2), 0), ((-1,), 1), (None, 0)])
def test_reducemean(opset, axes_as_input, axes, keepdims):
    attrs = dict(keepdims=keepdims)
    consts = {}
    if axes is not None:
        if axes_as_input:
            consts = {"axes": np.array(axes, dtype=np.int64)}
        else:
            attrs["axes"] = list(axes)
    check("ReduceMean", {"X": rand(2, 3, 4)}, attrs, opset=opset, consts=consts)


@pytest.mark.parametrize("opset", [7, 13])
def test_dropout_inference(opset):
    x = rand(3, 4)
    got = rzrt.InferenceSession(single_node_model("Dropout", {"X": x}, opset=opset, n_outputs=2)).run(None, {"X": x})
    np.testing.assert_array_equal(got[0], x)
    assert got[1].dtype == bool and got[1].all()


# --- the fused convolution (what fuse_conv_add + fuse_activation write) -------------------
@pytest.mark.parametrize("xs,ws,attrs", [
    ((2, 16, 40, 40), (300, 16, 1, 1), {}),                                   # 1x1 in several output bands
    ((2, 8, 9, 9), (12, 8, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),    # im2col bands
    ((1, 8, 30, 30), (8, 4, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),         # grouped
    ((2, 6, 8, 8), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1])),           # depthwise
])
@pytest.mark.parametrize("z_shape", ["same", "broadcast", None])
def test_fused_conv_is_conv_plus_residual_plus_activation(xs, ws, attrs, z_shape):
    from rzrt.ops.conv import Conv
    from rzrt.ops.fused import FusedConv
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    y = Conv(x, w, b, **attrs)
    z = None if z_shape is None else (rand(*y.shape) if z_shape == "same" else rand(1, y.shape[1], 1, 1))
    want = np.maximum(y + (0 if z is None else z), 0)
    np.testing.assert_allclose(FusedConv(x, w, b, z, activation="Relu", **attrs), want, rtol=1e-5, atol=1e-5)
    clip = FusedConv(x, w, b, z, activation="Clip", activation_params=(-0.5, 0.5), **attrs)
    np.testing.assert_allclose(clip, np.clip(y + (0 if z is None else z), -0.5, 0.5), rtol=1e-5, atol=1e-5)


def test_im2col_in_row_bands_with_a_partial_last_band(monkeypatch):
    """The im2col matrix is built a band of output rows at a time (COLS_BYTES): 2 rows per band
    over 17 output rows leaves a 1-row band at the end; bias, residual and activation per band."""
    from rzrt.ops import conv as C
    from rzrt.ops.fused import FusedConv
    x, w, b = rand(2, 8, 33, 33), rand(12, 8, 3, 3), rand(12)
    monkeypatch.setattr(C, "COLS_BYTES", 8 * 9 * 17 * 4 * 2)
    assert C.band_rows(8 * 9, (17, 17), 4) == 2 and C.images_per_gemm(2, 8 * 9, 17 * 17, 4, 1) == 1
    attrs = dict(pads=[1, 1, 1, 1], strides=[2, 2])
    model = single_node_model("Conv", {"X": x, "W": w, "B": b}, attrs)
    want = ReferenceEvaluator(model).run(None, {"X": x, "W": w, "B": b})[0]
    z = rand(*want.shape)
    np.testing.assert_allclose(FusedConv(x, w, b, z, activation="Relu", **attrs), np.maximum(want + z, 0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ws,attrs", [
    ((40, 8, 1, 1), {}),                                                   # 1x1, 5x expansion: input copied under ones
    ((40, 8, 1, 1), dict(pads=[1, 2, 0, 1])),                              # ... padded: the copy is the padded size
    ((12, 8, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2])),              # im2col: the ones row is free
    ((12, 8, 1, 1), {}),                                                   # 1x1 without expansion: bias pass
])
@pytest.mark.parametrize("weights", ["initializers", "inputs"])
def test_bias_in_the_gemm(ws, attrs, weights):
    """[W | B] @ [cols; 1] = W @ cols + B: the same as onnx's reference, for the session's constant
    weights (packed once, kept) and for weights fed as inputs, the same arrays changed in place
    between runs (packed at every run)."""
    from rzrt.ops import conv as C
    x, w, b = rand(2, 8, 33, 33), rand(*ws), rand(ws[0])
    assert C.bias_in_gemm(8, ws[0], 1, True, ws[2] == 1) == (ws[0] >= 32 or ws[2] > 1)
    feeds = {"X": x} if weights == "initializers" else {"X": x, "W": w, "B": b}
    model = single_node_model("Conv", feeds, attrs, consts={"W": w, "B": b} if weights == "initializers" else None)
    sess = rzrt.InferenceSession(model)
    for step in range(2):
        if weights == "inputs" and step == 1:
            w += 1
            b -= 1
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wide_bytes", [8 << 20, 3 * 72 * 16 * 4])
def test_small_outputs_share_one_gemm_across_images(wide_bytes, monkeypatch):
    """At batch > 1, an im2col convolution with a small output puts several images side by side
    into one GEMM (a partial group at the end included): same as onnx's reference."""
    from rzrt.ops import conv as C
    from rzrt.ops.fused import FusedConv
    monkeypatch.setattr(C, "WIDE_BYTES", wide_bytes)
    assert C.images_per_gemm(5, 8 * 9, 16, 4, 1) == (5 if wide_bytes > 1e6 else 3)
    x, w, b = rand(5, 8, 8, 8), rand(12, 8, 3, 3), rand(12)
    attrs = dict(pads=[1, 1, 1, 1], strides=[2, 2])
    model = single_node_model("Conv", {"X": x, "W": w, "B": b}, attrs)
    want = ReferenceEvaluator(model).run(None, {"X": x, "W": w, "B": b})[0]
    got = rzrt.InferenceSession(model).run(None, {"X": x, "W": w, "B": b})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    z = rand(*want.shape)
    np.testing.assert_allclose(FusedConv(x, w, b, z, activation="Relu", **attrs), np.maximum(want + z, 0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(FusedConv(x, w, **attrs), want - b.reshape(-1, 1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xs,m", [((2, 32, 16, 16), 4), ((1, 48, 14, 14), 2), ((2, 32, 14, 18), 4), ((1, 40, 13, 11), 2),
                                  ((8, 32, 7, 7), 4), ((3, 32, 5, 9), 2), ((1, 32, 50, 46), 4)])
def test_winograd_convolution(xs, m):
    """3x3 stride-1 pad-1 convolutions go through Winograd F(m x m, 3 x 3), partial tiles at the
    bottom and right included: same result as im2col."""
    from rzrt.ops import conv as C, winograd
    from rzrt.ops.fused import FusedConv
    w = rand(36, xs[1], 3, 3)
    attrs = dict(pads=[1, 1, 1, 1])
    assert winograd.tile_size(xs, w.shape, 1, None, None, None, [1, 1, 1, 1], "NOTSET", np.float32) == m
    assert winograd.tile_size(xs, w.shape, 1, None, None, None, [1, 1, 1, 1], "NOTSET", np.float16) == 0
    assert winograd.tile_size((1,) + xs[1:2] + (7, 7), w.shape, 1, None, None, None, [1, 1, 1, 1], "NOTSET",
                              np.float32) == 0     # 16 tiles at most: too few
    x, b = rand(*xs), rand(36)
    model = single_node_model("Conv", {"X": x, "W": w, "B": b}, attrs)
    want = ReferenceEvaluator(model).run(None, {"X": x, "W": w, "B": b})[0]
    got = rzrt.InferenceSession(model).run(None, {"X": x, "W": w, "B": b})[0]

    def rel(a, b):       # the error relative to the output's scale, as the models are judged
        return np.abs(a - b).max() / np.abs(b).max()
    assert rel(got, want) < 1e-5
    C.WINOGRAD = False
    try:
        direct = C.Conv(x, w, b, **attrs)
    finally:
        C.WINOGRAD = True
    assert rel(got, direct) < 1e-5
    z = rand(*direct.shape)
    assert rel(FusedConv(x, w, b, z, activation="Relu", **attrs), np.maximum(direct + z, 0)) < 1e-5
    # no residual: bias and activation are applied to the output tiles before they are written
    clip = FusedConv(x, w, b, None, activation="Clip", activation_params=(-0.5, 0.5), **attrs)
    assert np.abs(clip - np.clip(direct, -0.5, 0.5)).max() / np.abs(direct).max() < 1e-5
    no_bias = FusedConv(x, w, None, None, activation="Relu", **attrs)
    assert rel(no_bias, np.maximum(direct - b.reshape(-1, 1, 1), 0)) < 1e-5
    # channels-last in and out (rzrt/layout.py), a residual with an NCHW output
    relu = np.maximum(direct, 0)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    both = FusedConv(xl, w, b, None, activation="Relu", **attrs, _nhwc_in=True, _nhwc_out=True)
    assert both.shape == relu.transpose(0, 2, 3, 1).shape and rel(both, relu.transpose(0, 2, 3, 1)) < 1e-5
    assert rel(FusedConv(x, w, b, None, activation="Relu", **attrs, _nhwc_out=True), relu.transpose(0, 2, 3, 1)) < 1e-5
    assert rel(FusedConv(xl, w, b, z, activation="Relu", **attrs, _nhwc_in=True), np.maximum(direct + z, 0)) < 1e-5
    with pytest.raises(ValueError, match="residual into a channels-last Winograd"):
        FusedConv(xl, w, b, z.transpose(0, 2, 3, 1), **attrs, _nhwc_in=True, _nhwc_out=True)


@pytest.mark.parametrize("ws,attrs", [((8, 8, 3, 3), {"strides": [2, 2]}), ((8, 1, 3, 3), {"group": 8}),
                                      ((8, 8, 1, 1), {}), ((32, 32, 3, 3), {"pads": [1, 1, 1, 1]})])
def test_conv_split_across_threads(ws, attrs, monkeypatch):
    """With parallel.SPLIT on (off by default), the im2col copies, depthwise taps and epilogues
    split across threads give the same result."""
    from rzrt.ops import parallel
    from rzrt.ops.fused import FusedConv
    x, w, b = rand(2, ws[0] if "group" in attrs else ws[1], 40, 40), rand(*ws), rand(ws[0])
    want = FusedConv(x, w, b, None, activation="Relu", **attrs)
    monkeypatch.setattr(parallel, "SPLIT", True)
    parallel.set_threads(2)
    try:
        got = FusedConv(x, w, b, None, activation="Relu", **attrs)
    finally:
        parallel.set_threads(None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

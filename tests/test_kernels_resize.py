"""ConvTranspose, Resize, GridSample, MaxPool's indices and MaxUnpool against torch, on random
shapes including odd ones; each model runs through rzrt.InferenceSession (shape rules, plan)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import rzrt

torch = pytest.importorskip("torch")
F = torch.nn.functional

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def run(op, inputs: dict, attrs=None, consts=None, opset=19, n_outputs=1):
    """One node through rzrt: graph inputs `inputs`, initializers `consts` (name -> array)."""
    consts = consts or {}
    names = list(inputs) + [k if v is not None else "" for k, v in consts.items()]   # "": an absent input
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items() if v is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    got = rzrt.InferenceSession(model).run(None, inputs)
    return got if n_outputs > 1 else got[0]


def close(got, want, tol=1e-4):
    want = want.detach().numpy() if hasattr(want, "detach") else want
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# --- ConvTranspose --------------------------------------------------------------------------
# (x shape, w shape, group, stride, pad, output_padding, dilation)
CT_CASES = {
    "1d stride 2": ((2, 3, 7), (3, 4, 3), 1, 2, 1, 1, 1),
    "2d basic": ((1, 3, 5, 5), (3, 2, 3, 3), 1, 1, 0, 0, 1),
    "2d stride 2 odd": ((2, 4, 7, 9), (4, 5, 3, 3), 1, 2, 1, 1, 1),
    "2d stride 2 kernel 4 (dcgan)": ((1, 8, 4, 4), (8, 4, 4, 4), 1, 2, 1, 0, 1),
    "2d groups": ((2, 6, 5, 6), (6, 2, 3, 3), 3, 2, 1, 1, 1),
    "2d depthwise": ((1, 4, 6, 5), (4, 1, 3, 3), 4, 2, 0, 1, 1),
    "2d dilation": ((1, 2, 5, 7), (2, 3, 3, 2), 1, (2, 1), (2, 0), (1, 0), (2, 3)),
    "2d rect stride": ((1, 3, 4, 6), (3, 2, 2, 5), 1, (3, 2), (0, 2), (2, 1), 1),
    "3d": ((1, 2, 3, 4, 5), (2, 3, 3, 2, 3), 1, 2, 1, 1, 1),
    "2d several row bands": ((2, 16, 41, 64), (16, 32, 3, 3), 2, 2, 1, 1, 1),   # columns > COLS_BYTES
}


@pytest.mark.parametrize("case", CT_CASES)
def test_conv_transpose_vs_torch(case):
    xs, ws, group, stride, pad, opad, dil = CT_CASES[case]
    r = len(xs) - 2
    tup = lambda v: (v,) * r if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, pad, opad, dil = tup(stride), tup(pad), tup(opad), tup(dil)
    X, W, B = rand(*xs), rand(*ws), rand(ws[1] * group)
    want = getattr(F, f"conv_transpose{r}d")(torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(B),
                                             stride=stride, padding=pad, output_padding=opad, groups=group,
                                             dilation=dil)
    got = run("ConvTranspose", {"x": X}, dict(group=group, strides=list(stride), pads=list(pad) * 2,
                                              output_padding=list(opad), dilations=list(dil)),
              consts={"w": W, "b": B})
    close(got, want)


def test_conv_transpose_asymmetric_pads_and_output_shape():
    """Asymmetric pads crop torch's unpadded result; output_shape/SAME_UPPER pick the same window."""
    X, W = rand(2, 3, 5, 6), rand(3, 4, 3, 3)
    full = F.conv_transpose2d(torch.from_numpy(X), torch.from_numpy(W), stride=2, output_padding=1).numpy()
    got = run("ConvTranspose", {"x": X}, dict(strides=[2, 2], pads=[0, 2, 1, 0], output_padding=[1, 1]),
              consts={"w": W})
    close(got, full[:, :, 0:full.shape[2] - 1, 2:])
    # full is 12 x 14; asking for 10 x 13 pads (1, 0) at the start and (1, 1) at the end
    got = run("ConvTranspose", {"x": X}, dict(strides=[2, 2], output_padding=[1, 1], output_shape=[10, 13]),
              consts={"w": W})
    close(got, full[:, :, 1:11, 1:14])
    got = run("ConvTranspose", {"x": X}, dict(strides=[2, 2], auto_pad="SAME_UPPER"), consts={"w": W})
    close(got, full[:, :, 0:10, 0:12])


# --- Resize ---------------------------------------------------------------------------------

def resize(X, mode, *, scales=None, sizes=None, **attrs):
    consts = {"roi": None,
              "scales": None if scales is None else np.array([1, 1] + list(scales), np.float32),
              "sizes": None if sizes is None else np.array(list(X.shape[:2]) + list(sizes), np.int64)}
    return run("Resize", {"x": X}, dict(mode=mode, **attrs), consts=consts)


SHAPES = [(1, 2, 5, 7), (2, 3, 8, 8), (1, 1, 3, 11)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [(2.0, 2.0), (3.0, 1.5), (0.5, 0.5), (0.6, 1.7)])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_half_pixel_vs_torch(shape, scale, mode):
    X = rand(*shape)
    if min(int(n * s) for n, s in zip(shape[2:], scale)) < 2:
        pytest.skip("torch and ONNX place a 1-pixel output differently")
    want = F.interpolate(torch.from_numpy(X), scale_factor=scale, mode="bilinear" if mode == "linear" else "bicubic",
                         align_corners=False)
    got = resize(X, mode, scales=scale, coordinate_transformation_mode="half_pixel")
    close(got, want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [(9, 13), (4, 5), (6, 3)])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_align_corners_vs_torch(shape, size, mode):
    X = rand(*shape)
    want = F.interpolate(torch.from_numpy(X), size=size, mode="bilinear" if mode == "linear" else "bicubic",
                         align_corners=True)
    got = resize(X, mode, sizes=size, coordinate_transformation_mode="align_corners")
    close(got, want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [(2.0, 2.0), (3.0, 2.0), (0.5, 0.5)])
def test_resize_nearest_vs_torch(shape, scale):
    X = rand(*shape)
    want = F.interpolate(torch.from_numpy(X), scale_factor=scale, mode="nearest")
    got = resize(X, "nearest", scales=scale, coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    close(got, want, tol=0)


@pytest.mark.parametrize("size", [(10, 14), (4, 4), (7, 9)])
def test_resize_nearest_exact_vs_torch(size):
    X = rand(1, 2, 5, 7)
    want = F.interpolate(torch.from_numpy(X), size=size, mode="nearest-exact")
    got = resize(X, "nearest", sizes=size, coordinate_transformation_mode="half_pixel",
                 nearest_mode="round_prefer_ceil")
    close(got, want, tol=0)


@pytest.mark.parametrize("size", [(5, 4), (3, 7), (8, 6)])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_antialias_vs_torch(size, mode):
    """torch's antialiasing keeps only the taps inside the image: ONNX's exclude_outside=1."""
    X = rand(2, 3, 17, 13)
    want = F.interpolate(torch.from_numpy(X), size=size, mode="bilinear" if mode == "linear" else "bicubic",
                         align_corners=False, antialias=True)
    got = resize(X, mode, sizes=size, antialias=1, exclude_outside=1, cubic_coeff_a=-0.5 if mode == "cubic" else -0.75)
    close(got, want)


def test_resize_integer_input_rounds():
    X = RNG.integers(0, 255, (1, 3, 5, 6)).astype(np.uint8)
    got = resize(X, "linear", scales=(2.0, 2.0))
    want = F.interpolate(torch.from_numpy(X.astype(np.float32)), scale_factor=2, mode="bilinear")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.clip(np.rint(want.numpy()), 0, 255))


# --- GridSample -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample_vs_torch(mode, padding_mode, align_corners):
    X = rand(2, 3, 5, 7)
    grid = (RNG.uniform(-1.4, 1.4, (2, 4, 6, 2))).astype(np.float32)
    want = F.grid_sample(torch.from_numpy(X), torch.from_numpy(grid), mode=mode, padding_mode=padding_mode,
                         align_corners=bool(align_corners))
    got = run("GridSample", {"x": X, "grid": grid}, dict(mode=mode, padding_mode=padding_mode,
                                                         align_corners=align_corners), opset=16)
    close(got, want)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_grid_sample_3d_vs_torch(mode):
    X = rand(1, 2, 4, 5, 6)
    grid = RNG.uniform(-1.2, 1.2, (1, 3, 4, 5, 3)).astype(np.float32)
    want = F.grid_sample(torch.from_numpy(X), torch.from_numpy(grid), mode="bilinear" if mode == "linear" else mode,
                         padding_mode="border", align_corners=False)
    got = run("GridSample", {"x": X, "grid": grid}, dict(mode=mode, padding_mode="border"), opset=20)
    close(got, want)


# --- MaxPool indices and MaxUnpool ------------------------------------------------------------

@pytest.mark.parametrize("shape,k,s,p", [((2, 3, 7, 9), 3, 2, 1), ((1, 2, 6, 6), 2, 2, 0), ((1, 1, 5, 8), (2, 3), 1, 0)])
def test_maxpool_indices_vs_torch(shape, k, s, p):
    from rzrt.ops.conv_transpose import maxpool_with_indices
    X = rand(*shape)
    ks = [k, k] if isinstance(k, int) else list(k)
    Y, I = maxpool_with_indices(X, kernel_shape=ks, strides=[s, s], pads=[p] * 4)
    want, wi = F.max_pool2d(torch.from_numpy(X), ks, s, p, return_indices=True)
    close(Y, want, tol=0)
    plane = shape[2] * shape[3]                      # torch numbers within each (n, c) plane
    offset = (np.arange(shape[0] * shape[1]) * plane).reshape(shape[0], shape[1], 1, 1)
    np.testing.assert_array_equal(I - offset, wi.numpy())


def test_maxunpool_with_output_size_vs_torch():
    X = rand(1, 2, 5, 5)
    y, wi = F.max_pool2d(torch.from_numpy(X), 2, 2, return_indices=True)
    want = F.max_unpool2d(y, wi, 2, 2, output_size=(5, 5))
    offset = (np.arange(2) * 25).reshape(1, 2, 1, 1)
    got = run("MaxUnpool", {"x": y.numpy(), "i": wi.numpy() + offset}, dict(kernel_shape=[2, 2], strides=[2, 2]),
              consts={"shape": np.array([1, 2, 5, 5], np.int64)})
    close(got, want, tol=0)

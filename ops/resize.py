"""Resampling: Resize and Upsample, GridSample, AffineGrid, RoiAlign, CenterCropPad.

Resize is separable. Along one axis of input length n, output position y reads the input at
    x = T(y)                                   the coordinate transformation (half_pixel, ...)
and is a weighted sum of the taps around x, the edge pixel standing in for anything outside:
    Y[.., y, ..] = sum_i w((i - x) * s) * X[.., clamp(i, 0, n - 1), ..] / sum_i w((i - x) * s)
with w the linear (hat) or cubic (Keys) kernel; s = 1, or the scale when antialiasing a
downscale, which stretches the kernel over more input pixels. An N-D resize is one such pass
per resized axis, each pass a handful of gathers of whole hyperplanes (np.take) scaled by
per-position weights: no loop over pixels. Nearest is a single gather, i = round(x).

GridSample reads at arbitrary points, so it is not separable, but its interpolation still
factors per axis: each point has a few taps and weights per axis, and the output is the sum
over tap combinations (2^r for linear, 4^r for cubic) of the weights' product times a gather.
RoiAlign (avg) is separable again: per RoI, Y[c] = Ay @ X[c] @ Ax^T with Ay, Ax the bins'
averaged bilinear weights.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from rzrt.ops.registry import kernel


# --- 1-D resampling kernels ---------------------------------------------------------------

def _hat(d):
    """Linear interpolation's kernel: 1 - |d| on [-1, 1]."""
    return np.maximum(0.0, 1.0 - np.abs(d))


def _keys(d, a):
    """Keys' cubic convolution kernel with coefficient a (-0.75 as in PyTorch, -0.5 as in TF)."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1               # |d| <= 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a           # 1 < |d| < 2
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _source_coords(mode, n_out, n_in, scale, length, roi):
    """x_original of every output position along one axis (float64).

    `length` is the target length scale * n_in, fractional when it comes from a scale;
    align_corners and tf_crop_and_resize divide by it, as onnx's reference does.
    """
    y = np.arange(n_out, dtype=np.float64)
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":           # half_pixel about the centre of the input
        offset = n_in / 2 * (1 - n_out / length)
        return offset + (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out)
    if mode == "align_corners":
        return y * (n_in - 1) / (length - 1) if length != 1 else np.zeros(n_out)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_half_pixel_for_nn":           # opset 11 only
        return (y + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if length == 1:
            return np.full(n_out, (end - start) * (n_in - 1) / 2 + start * (n_in - 1))
        return start * (n_in - 1) + y * (end - start) * (n_in - 1) / (length - 1)
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest(x, rule):
    """The input index nearest to each x under the model's rounding rule."""
    lo = np.floor(x)
    frac = x - lo
    if rule == "round_prefer_floor":
        idx = lo + (frac > 0.5)
    elif rule == "round_prefer_ceil":
        idx = lo + (frac >= 0.5)
    elif rule == "floor":
        idx = lo
    elif rule == "ceil":
        idx = np.ceil(x)
    else:
        raise ValueError(f"unknown nearest_mode {rule!r}")
    return idx.astype(np.intp)


def _taps(x, mode, stretch, a):
    """(indices, weights), each (len(x), T): the taps of the linear or cubic kernel around each x.

    base = ceil(x) - 1 is the pixel left of x (one left of it when x is a whole number, so the
    ratio x - base is in (0, 1], as in onnx's reference) and the taps run symmetrically about
    it; `stretch` < 1 widens the kernel by 1/stretch (antialiasing).
    """
    base = np.ceil(x) - 1
    ratio = x - base
    support = 1 if mode == "linear" else 2
    first = math.floor(-support / stretch) + 1
    offsets = np.arange(first, 2 - first)
    d = (offsets[None, :] - ratio[:, None]) * stretch
    w = _hat(d) if mode == "linear" else _keys(d, a)
    return base.astype(np.intp)[:, None] + offsets, w


def _resize_axis(X, axis, n_out, scale, length, roi, *, mode, ctm, nearest_mode, cubic_coeff_a,
                 exclude_outside, extrapolation_value, antialias):
    """One separable pass: X resampled to n_out along `axis`."""
    n_in = X.shape[axis]
    x = _source_coords(ctm, n_out, n_in, scale, length, roi)
    if mode == "nearest":
        Y = np.take(X, np.clip(_nearest(x, nearest_mode), 0, n_in - 1), axis=axis)
    elif mode in ("linear", "cubic"):
        idx, w = _taps(x, mode, min(scale, 1.0) if antialias else 1.0, cubic_coeff_a)
        if exclude_outside:
            w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = (w / np.where(total == 0, 1.0, total)).astype(X.dtype)
        idx = np.clip(idx, 0, n_in - 1)
        bshape = (n_out,) + (1,) * (X.ndim - axis - 1)
        Y = np.take(X, idx[:, 0], axis=axis)
        Y *= w[:, 0].reshape(bshape)
        tap = np.empty_like(Y)
        for t in range(1, idx.shape[1]):
            np.take(X, idx[:, t], axis=axis, out=tap)
            tap *= w[:, t].reshape(bshape)
            Y += tap
    else:
        raise ValueError(f"Resize mode must be nearest, linear or cubic, got {mode!r}")
    if ctm == "tf_crop_and_resize":
        outside = (x < 0) | (x > n_in - 1)
        if outside.any():
            Y[(slice(None),) * axis + (outside,)] = extrapolation_value
    return Y


def _present(t):
    return t is not None and np.size(t) > 0


def resize(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
           nearest_mode="round_prefer_floor"):
    """Resize (every opset) on numpy: the per-axis sizes, then one separable pass per axis."""
    r = X.ndim
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    roi = np.asarray(roi, dtype=np.float64).ravel() if _present(roi) else None
    out, scale, length = list(X.shape), [1.0] * r, [float(n) for n in X.shape]
    if _present(sizes):
        sizes = [int(v) for v in np.asarray(sizes).ravel()]
        if keep_aspect_ratio_policy == "stretch":
            for a, n in zip(axes, sizes):
                out[a], scale[a], length[a] = n, n / X.shape[a], float(n)
        else:
            pick = {"not_larger": min, "not_smaller": max}.get(keep_aspect_ratio_policy)
            if pick is None:
                raise ValueError(f"unknown keep_aspect_ratio_policy {keep_aspect_ratio_policy!r}")
            s = pick(n / X.shape[a] for a, n in zip(axes, sizes))
            for a in axes:
                out[a], scale[a], length[a] = int(s * X.shape[a] + 0.5), s, s * X.shape[a]
    elif _present(scales):
        for a, s in zip(axes, np.asarray(scales, dtype=np.float64).ravel()):
            out[a], scale[a], length[a] = int(math.floor(s * X.shape[a])), float(s), s * X.shape[a]
    else:
        raise ValueError("Resize needs either scales or sizes")

    work = np.result_type(X.dtype, np.float32) if X.dtype.kind == "f" else np.dtype(np.float64)
    Y = X if mode == "nearest" else X.astype(work, copy=False)
    crop = coordinate_transformation_mode == "tf_crop_and_resize"
    # shrinking axes first: every later pass then reads less
    for a in sorted(axes, key=lambda a: out[a] / max(X.shape[a], 1)):
        if out[a] == X.shape[a] and scale[a] == 1.0 and not crop:
            continue                                  # identity along this axis
        i = axes.index(a)                             # roi lists [starts..., ends...] in `axes` order
        a_roi = (roi[i], roi[len(axes) + i]) if roi is not None else (0.0, 1.0)
        Y = _resize_axis(Y, a, out[a], scale[a], length[a], a_roi, mode=mode,
                         ctm=coordinate_transformation_mode, nearest_mode=nearest_mode,
                         cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                         extrapolation_value=extrapolation_value, antialias=antialias)
    if Y.dtype == X.dtype:
        return Y if Y is not X else X.copy()
    if X.dtype.kind in "iu":                        # round and saturate, as onnx casts back
        info = np.iinfo(X.dtype)
        return np.clip(np.rint(Y), info.min, info.max).astype(X.dtype)
    return Y.astype(X.dtype)


@kernel("Resize", since=10)
def Resize_10(X, scales, *, mode="nearest"):
    """Opset 10: like Upsample, asymmetric coordinates, nearest rounds down (as onnx's version
    converter maps it to opset 11)."""
    return resize(X, None, scales, None, coordinate_transformation_mode="asymmetric", mode=mode,
                  nearest_mode="floor")


@kernel("Resize", since=13)     # 13: roi and scales optional, tf_half_pixel_for_nn gone
@kernel("Resize", since=11)
def Resize_11(X, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode="half_pixel",
              cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, mode="nearest",
              nearest_mode="round_prefer_floor"):
    return resize(X, roi, scales, sizes, coordinate_transformation_mode=coordinate_transformation_mode,
                  cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                  extrapolation_value=extrapolation_value, mode=mode, nearest_mode=nearest_mode)


@kernel("Resize", since=19)     # 19: coordinate_transformation_mode half_pixel_symmetric
@kernel("Resize", since=18)     # 18: antialias, axes, keep_aspect_ratio_policy
def Resize_18(X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
              coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
              extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
              nearest_mode="round_prefer_floor"):
    return resize(X, roi, scales, sizes, antialias=antialias, axes=axes,
                  coordinate_transformation_mode=coordinate_transformation_mode, cubic_coeff_a=cubic_coeff_a,
                  exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
                  keep_aspect_ratio_policy=keep_aspect_ratio_policy, mode=mode, nearest_mode=nearest_mode)


def _upsample(X, scales, mode):
    mode = "linear" if mode == "bilinear" else mode
    return resize(X, None, scales, None, coordinate_transformation_mode="asymmetric", mode=mode,
                  nearest_mode="floor")


@kernel("Upsample", since=7)
def Upsample_7(X, *, mode="nearest", scales=None):
    """out = floor(in * scale); x = y / scale, nearest rounding down."""
    return _upsample(X, scales, mode)


@kernel("Upsample", since=9)
def Upsample_9(X, scales, *, mode="nearest"):
    return _upsample(X, scales, mode)


# --- GridSample -----------------------------------------------------------------------------

def _reflect(x, lo, hi):
    """Fold x into [lo, hi] by reflecting off the borders as often as it takes (x = -3.5 on
    [-1, 1] -> 1.5 -> 0.5)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below = x < lo
    past = np.where(below, lo - x, x - hi)            # distance beyond the nearer border
    n = np.floor(past / span)
    rem = past - n * span
    even = n % 2 == 0
    folded = np.where(below == even, lo + rem, hi - rem)
    return np.where(below | (x > hi), folded, x).astype(x.dtype)


def _axis_taps(x, mode):
    """Per-axis taps [(index array, weight array)] of nearest, linear or cubic interpolation at x."""
    if mode == "nearest":
        return [(np.trunc(x).astype(np.intp), None)]
    lo = np.floor(x)
    t = x - lo
    lo = lo.astype(np.intp)
    if mode == "linear":
        return [(lo, 1 - t), (lo + 1, t)]
    a = -0.75
    return [(lo - 1, _keys(t + 1, a)), (lo, _keys(t, a)), (lo + 1, _keys(1 - t, a)), (lo + 2, _keys(2 - t, a))]


def sample_points(X, coords, mode="linear", padding_mode="zeros", bounds=None):
    """Interpolate X (N, C, *S) at P points per image: coords[a] (N, P) is the position along
    spatial axis a, in pixels. Returns (N, C, P).

    Taps outside the image read 0 (zeros), the nearest edge pixel (border), or their
    reflection off bounds[a] = (lo, hi) (reflection).
    """
    N, C, *S = X.shape
    flat = X.reshape(N, C, -1)
    per_axis = []
    for a, x in enumerate(coords):
        taps = []
        for idx, w in _axis_taps(x, mode):
            if padding_mode == "zeros":
                inside = (idx >= 0) & (idx < S[a])
                w = inside.astype(x.dtype) if w is None else w * inside
            elif padding_mode == "reflection":
                idx = np.trunc(_reflect(idx.astype(np.float64), *bounds[a])).astype(np.intp)
            taps.append((np.clip(idx, 0, S[a] - 1), w))
        per_axis.append(taps)
    place = [math.prod(S[a + 1:]) for a in range(len(S))]          # row-major strides of the image
    Y = np.zeros((N, C, coords[0].shape[1]), dtype=X.dtype)
    for combo in itertools.product(*per_axis):
        where = sum(idx * p for (idx, _), p in zip(combo, place))
        vals = np.take_along_axis(flat, where[:, None, :], axis=2)
        weights = [w for _, w in combo if w is not None]
        if weights:
            vals = vals * math.prod(weights)[:, None, :].astype(X.dtype)
        Y += vals
    return Y


def _grid_sample(X, grid, mode, padding_mode, align_corners):
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    N, C, *S = X.shape
    r = len(S)
    out_sp = grid.shape[1:-1]
    g = grid.reshape(N, -1, r)
    coords, bounds = [], []
    for a, n in enumerate(S):
        v = g[:, :, r - 1 - a]                       # the grid lists the innermost axis first
        # -1 and 1 are the centres of the corner pixels (align_corners) or their outer edges
        x = (v + 1) / 2 * (n - 1) if align_corners else ((v + 1) * n - 1) / 2
        if mode == "nearest":
            x = np.rint(x)                           # halfway rounds to even, as PyTorch
        lo, hi = (0.0, n - 1.0) if align_corners else (-0.5, n - 0.5)
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"GridSample padding_mode must be zeros, border or reflection, got {padding_mode!r}")
        outside = (x < lo) | (x > hi)
        if padding_mode == "border" and mode != "cubic":   # cubic clamps each tap instead (torch, onnxruntime)
            x = np.where(outside, np.clip(x, 0, n - 1), x)
        elif padding_mode == "reflection":
            x = np.where(outside, _reflect(x.astype(np.float64), lo, hi), x).astype(x.dtype)
        coords.append(x)
        bounds.append((lo, hi))
    Y = sample_points(X, coords, mode, padding_mode, bounds)
    return Y.reshape((N, C) + tuple(out_sp))


def _grid_sample_shape(x, grid, **_):
    (xs, dt), (gs, _) = x, grid
    return (xs[0], xs[1]) + tuple(gs[1:-1]), dt


@kernel("GridSample", since=16, shape=_grid_sample_shape)
def GridSample_16(X, grid, *, align_corners=0, mode="bilinear", padding_mode="zeros"):
    return _grid_sample(X, grid, mode, padding_mode, align_corners)


@kernel("GridSample", since=20, shape=_grid_sample_shape)
def GridSample_20(X, grid, *, align_corners=0, mode="linear", padding_mode="zeros"):
    """N-D: X (N, C, D1..Dr), grid (N, D1_out..Dr_out, r) in [-1, 1], innermost axis first."""
    return _grid_sample(X, grid, mode, padding_mode, align_corners)


# --- AffineGrid -----------------------------------------------------------------------------

def _base_coords(n, align_corners):
    """n evenly spaced positions in [-1, 1]: pixel centres, the corner ones on +-1 with align_corners."""
    if n == 1 and align_corners:
        return np.zeros(1)
    return np.linspace(-1, 1, n) if align_corners else (2 * np.arange(n) + 1) / n - 1


@kernel("AffineGrid", since=20)
def AffineGrid(theta, size, *, align_corners=0):
    """grid[n, *p] = theta[n] @ (x, y[, z], 1): the affine map of every output pixel's position."""
    spatial = [int(v) for v in np.asarray(size).ravel()[2:]]
    axes = [_base_coords(n, align_corners) for n in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")                  # one array per axis, outermost first
    homo = np.stack(list(mesh)[::-1] + [np.ones(spatial)], axis=-1)   # (.., r + 1): innermost axis first
    grid = np.einsum("...k,njk->n...j", homo, theta.astype(np.float64))
    return grid.astype(theta.dtype)


# --- CenterCropPad --------------------------------------------------------------------------

@kernel("CenterCropPad", since=18)
def CenterCropPad(input_data, shape, *, axes=None):
    """Crop the centre (start rounded down) or zero-pad around it (extra pixel at the end)."""
    r = input_data.ndim
    axes = list(range(r)) if axes is None else [int(a) % r for a in axes]
    new_shape, src, dst = list(input_data.shape), [slice(None)] * r, [slice(None)] * r
    for a, want in zip(axes, np.asarray(shape).ravel()):
        have, want = input_data.shape[a], int(want)
        new_shape[a] = want
        if want < have:
            start = (have - want) // 2
            src[a] = slice(start, start + want)
        elif want > have:
            start = (want - have) // 2
            dst[a] = slice(start, start + have)
    Y = np.zeros(new_shape, dtype=input_data.dtype)
    Y[tuple(dst)] = input_data[tuple(src)]
    return Y


# --- RoiAlign -------------------------------------------------------------------------------

def _roi_axis(start, extent, bins, grid, n):
    """Bilinear taps of the grid x grid sample points of each bin along one axis.

    Returns (lo, hi, w_lo, w_hi), each (bins, grid): points beyond [-1, n] weigh 0, points
    before 0 read pixel 0, and points past the last pixel read it alone.
    """
    size = extent / bins
    pts = start + np.arange(bins)[:, None] * size + (np.arange(grid)[None, :] + 0.5) * size / grid
    inside = (pts >= -1.0) & (pts <= n)
    p = np.maximum(pts, 0.0)
    lo = np.floor(p).astype(np.intp)
    edge = lo >= n - 1
    lo = np.where(edge, n - 1, lo)
    hi = np.where(edge, n - 1, lo + 1)
    frac = np.where(edge, 0.0, p - lo)
    return lo, hi, (1 - frac) * inside, frac * inside


def _dense(lo, hi, w_lo, w_hi, n):
    """The (bins, n) matrix averaging each bin's sample points' bilinear weights."""
    bins, grid = lo.shape
    A = np.zeros((bins, n))
    rows = np.repeat(np.arange(bins), grid)
    np.add.at(A, (rows, lo.ravel()), w_lo.ravel())
    np.add.at(A, (rows, hi.ravel()), w_hi.ravel())
    return A / max(grid, 1)


def _roi_align(X, rois, batch_indices, *, half_pixel, mode, output_height, output_width, sampling_ratio,
               spatial_scale):
    N, C, H, W = X.shape
    R = rois.shape[0]
    Y = np.zeros((R, C, output_height, output_width), dtype=X.dtype)
    shift = 0.5 if half_pixel else 0.0
    for i in range(R):
        x0, y0, x1, y1 = (float(v) * spatial_scale - shift for v in rois[i])
        h, w = y1 - y0, x1 - x0
        if not half_pixel:                              # malformed RoIs are forced to 1x1
            h, w = max(h, 1.0), max(w, 1.0)
        gh = int(sampling_ratio) if sampling_ratio > 0 else math.ceil(h / output_height)
        gw = int(sampling_ratio) if sampling_ratio > 0 else math.ceil(w / output_width)
        gh, gw = max(gh, 0), max(gw, 0)
        ys = _roi_axis(y0, h, output_height, gh, H)
        xs = _roi_axis(x0, w, output_width, gw, W)
        img = X[int(batch_indices[i])]
        if mode == "avg":
            Ay = _dense(*ys, H).astype(X.dtype)
            Ax = _dense(*xs, W).astype(X.dtype)
            Y[i] = Ay @ img @ Ax.T
        elif mode == "max":
            if gh == 0 or gw == 0:
                continue
            # max over sample points of the largest weighted corner (onnxruntime's definition)
            corners = [img[:, yi[:, :, None, None], xi[None, None, :, :]]
                       * (wy[:, :, None, None] * wx[None, None, :, :]).astype(X.dtype)
                       for yi, wy in ((ys[0], ys[2]), (ys[1], ys[3]))
                       for xi, wx in ((xs[0], xs[2]), (xs[1], xs[3]))]
            Y[i] = np.max(np.maximum.reduce(corners), axis=(2, 4))
        else:
            raise ValueError(f"RoiAlign mode must be avg or max, got {mode!r}")
    return Y


def _roi_align_shape(x, rois, batch_indices, *, output_height=1, output_width=1, **_):
    (xs, dt), (rs, _) = x, rois
    return (rs[0], xs[1], output_height, output_width), dt


@kernel("RoiAlign", since=10, shape=_roi_align_shape)
def RoiAlign_10(X, rois, batch_indices, *, mode="avg", output_height=1, output_width=1, sampling_ratio=0,
                spatial_scale=1.0):
    """Opset 10: no half-pixel shift of the input coordinates ('output_half_pixel')."""
    return _roi_align(X, rois, batch_indices, half_pixel=False, mode=mode, output_height=output_height,
                      output_width=output_width, sampling_ratio=sampling_ratio, spatial_scale=spatial_scale)


@kernel("RoiAlign", since=16, shape=_roi_align_shape)
def RoiAlign_16(X, rois, batch_indices, *, coordinate_transformation_mode="half_pixel", mode="avg",
                output_height=1, output_width=1, sampling_ratio=0, spatial_scale=1.0):
    """Y[r, c, i, j] = mean over bin (i, j)'s sample points of bilinear(X[b_r, c], point)."""
    return _roi_align(X, rois, batch_indices, half_pixel=coordinate_transformation_mode == "half_pixel",
                      mode=mode, output_height=output_height, output_width=output_width,
                      sampling_ratio=sampling_ratio, spatial_scale=spatial_scale)

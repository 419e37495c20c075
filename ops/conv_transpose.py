"""Transposed convolution as GEMM + col2im, and its relatives: Col2Im, DeformConv, LpPool,
MaxUnpool, and MaxPool's indices.

ConvTranspose is the gradient of Conv with respect to its input: every input pixel scatters
a copy of the filter, scaled by its value, into the output,
    Y[n, m, i*s + j*d - pb] += sum_c X[n, c, i] * W[c, m, j]
so it runs as one GEMM that makes every (m, j) contribution of every input pixel,
    cols[(m, j), i] = W.reshape(C, M*K).T @ X[n].reshape(C, L)
followed by col2im, the transpose of im2col: for each kernel tap j, one strided add of
cols[:, j] into the output. Groups split C and M into G blocks (one GEMM each); the GEMM runs a
band of input rows at a time so the columns stay small.
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.conv import band_rows
from rzrt.ops.registry import kernel
from rzrt.ops.resize import sample_points
from rzrt.ops.window import Carver, geometry, offsets, pad, prod, scratch_bytes


def _per_axis(v, rank, default):
    return (default,) * rank if v is None or len(v) == 0 else tuple(int(x) for x in v)


def col2im_add(cols, Y, kernel_shape, strides, dilations, pads_begin, first_block=None):
    """Y[..., b*s + j*d - pb] += cols[..., j, b]: scatter-add column blocks into an image.

    cols is (*lead, *kernel, *blocks) and Y (*lead, *image); taps landing outside Y are
    dropped. first_block is the global index of cols' first block (for a band of rows).
    """
    r = len(kernel_shape)
    blocks = cols.shape[cols.ndim - r:]
    image = Y.shape[Y.ndim - r:]
    first = first_block or (0,) * r
    for j in np.ndindex(*kernel_shape):
        src, dst = [], []
        for a in range(r):
            s, off = strides[a], j[a] * dilations[a] - pads_begin[a]    # block b lands on b*s + off
            lo = max(first[a], -(off // s))                             # ceil(-off / s): first b >= 0
            hi = min(first[a] + blocks[a] - 1, (image[a] - 1 - off) // s)
            if lo > hi:
                break
            src.append(slice(lo - first[a], hi - first[a] + 1))
            dst.append(slice(lo * s + off, hi * s + off + 1, s))
        else:
            Y[(Ellipsis,) + tuple(dst)] += cols[(Ellipsis,) + j + tuple(src)]


# --- ConvTranspose --------------------------------------------------------------------------

def convtranspose_geometry(x_shape, w_shape, auto_pad="NOTSET", dilations=None, kernel_shape=None,
                           output_padding=None, output_shape=None, pads=None, strides=None):
    """-> (kernel, strides, dilations, pads_begin, out_spatial).

    The full extent of one axis is (n - 1)*s + (k - 1)*d + 1 + output_padding; the output is
    that minus the pads, or output_shape with the pads made up to fit (total = full - out,
    the odd one at the end for SAME_UPPER, at the start otherwise).
    """
    spatial = tuple(x_shape[2:])
    r = len(spatial)
    k = _per_axis(kernel_shape, r, 1) if kernel_shape else tuple(w_shape[2:])
    s, d = _per_axis(strides, r, 1), _per_axis(dilations, r, 1)
    op = _per_axis(output_padding, r, 0)
    p = _per_axis(pads, 2 * r, 0)
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    full = [(n - 1) * s[i] + (k[i] - 1) * d[i] + 1 + op[i] for i, n in enumerate(spatial)]
    if output_shape is not None and len(output_shape):
        out = [int(v) for v in output_shape][-r:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [n * s[i] for i, n in enumerate(spatial)]
    else:
        out = None
    if out is not None:
        total = [f - o for f, o in zip(full, out)]
        pb = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
    elif auto_pad == "VALID":
        pb, out = [0] * r, full
    else:
        pb = list(p[:r])
        out = [f - p[i] - p[i + r] for i, f in enumerate(full)]
    if any(o < 1 for o in out):
        raise ValueError(f"ConvTranspose output would be {out}: check pads/output_shape")
    return k, s, d, tuple(pb), tuple(out)


def _ct_shape(x, w, *rest, group=1, **attrs):
    (xs, dt), (ws, _) = x, w
    *_, out = convtranspose_geometry(xs, ws, **attrs)
    return (xs[0], ws[1] * group) + out, dt


def _ct_scratch(x, w, *rest, group=1, **attrs):
    (xs, dt), (ws, _) = x, w
    k, *_ = convtranspose_geometry(xs, ws, **attrs)
    mk = ws[1] * group * prod(k)
    size = np.dtype(dt).itemsize
    return scratch_bytes(((mk, band_rows(mk, xs[2:], size) * prod(xs[3:])), size))


@kernel("ConvTranspose", since=1, shape=_ct_shape, scratch=_ct_scratch)
def ConvTranspose(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None, out=None, scratch=None):
    N, C, *isp = X.shape
    if W.shape[0] != C or C % group:
        raise ValueError(f"input has {C} channels but the weights are {list(W.shape)} with group {group}")
    k, s, d, pb, osp = convtranspose_geometry(X.shape, W.shape, auto_pad, dilations, kernel_shape,
                                              output_padding, output_shape, pads, strides)
    k = tuple(W.shape[2:])
    Cg, Mg, K = C // group, W.shape[1], prod(k)
    M = Mg * group
    Y = out if out is not None else np.empty((N, M) + osp, dtype=np.result_type(X, W))
    Y.fill(0)
    Wt = W.reshape(group, Cg, Mg * K).transpose(0, 2, 1)             # (G, Mg*K, Cg): a view
    inner = prod(isp[1:])
    rows = band_rows(M * K, isp, Y.dtype.itemsize)
    band = Carver(scratch).take((group, Mg * K, rows * inner), Y.dtype)
    for n in range(N):
        x = X[n].reshape(group, Cg, -1)
        for r0 in range(0, isp[0], rows):
            r1 = min(isp[0], r0 + rows)
            cols = band[:, :, :(r1 - r0) * inner]
            for g in range(group):                                   # 2-D GEMMs go to BLAS
                np.matmul(Wt[g], x[g, :, r0 * inner:r1 * inner], out=cols[g])
            col2im_add(cols.reshape((M,) + k + (r1 - r0,) + tuple(isp[1:])), Y[n], k, s, d, pb,
                       first_block=(r0,) + (0,) * (len(isp) - 1))
    if B is not None:
        Y += B.reshape((M,) + (1,) * len(osp))
    return Y


# --- Col2Im ---------------------------------------------------------------------------------

@kernel("Col2Im", since=18)
def Col2Im(input, image_shape, block_shape, *, dilations=None, pads=None, strides=None):
    """(N, C*K, L) column blocks -> (N, C, *image): the inverse layout of im2col, overlaps summed."""
    image = tuple(int(v) for v in np.asarray(image_shape).ravel())
    k = tuple(int(v) for v in np.asarray(block_shape).ravel())
    r = len(image)
    s, d, p = _per_axis(strides, r, 1), _per_axis(dilations, r, 1), _per_axis(pads, 2 * r, 0)
    blocks = tuple((image[a] + p[a] + p[a + r] - (k[a] - 1) * d[a] - 1) // s[a] + 1 for a in range(r))
    N, CK, L = input.shape
    if CK % prod(k) or L != prod(blocks):
        raise ValueError(f"Col2Im input {list(input.shape)} does not fit blocks {list(k)} over "
                         f"image {list(image)} ({prod(blocks)} positions)")
    C = CK // prod(k)
    Y = np.zeros((N, C) + image, dtype=input.dtype)
    col2im_add(input.reshape((N, C) + k + blocks), Y, k, s, d, p[:r])
    return Y


# --- DeformConv -----------------------------------------------------------------------------

def _deform_shape(x, w, offset, *rest, **_):
    (xs, dt), (ws, _), (os_, _) = x, w, offset
    return (xs[0], ws[0]) + tuple(os_[2:]), dt


@kernel("DeformConv", since=19, shape=_deform_shape)
def DeformConv(X, W, offset, B=None, mask=None, *, dilations=None, group=1, kernel_shape=None,
               offset_group=1, pads=None, strides=None):
    """Conv whose taps read X off the grid: tap j of output o samples (bilinearly, 0 outside)
        p = o*s - pb + j*d + offset[n, g, j, :, o],   scaled by mask[n, g, j, o],
    so im2col becomes a gather at those points, and the GEMM is Conv's."""
    N, C, *S = X.shape
    r = len(S)
    M = W.shape[0]
    k = _per_axis(kernel_shape, r, 1) if kernel_shape else tuple(W.shape[2:])
    s, d, p = _per_axis(strides, r, 1), _per_axis(dilations, r, 1), _per_axis(pads, 2 * r, 0)
    osp = tuple(offset.shape[2:])
    K, L, G, OG = prod(k), prod(osp), group, offset_group
    off = offset.reshape(N, OG, K, r, L)
    taps = np.stack(np.meshgrid(*[np.arange(n) for n in k], indexing="ij"), -1).reshape(K, r)
    outs = np.stack(np.meshgrid(*[np.arange(n) for n in osp], indexing="ij"), -1).reshape(L, r)
    coords = []
    for a in range(r):
        grid = taps[:, a, None] * d[a] + outs[None, :, a] * s[a] - p[a]       # (K, L) on the regular grid
        coords.append((grid + off[:, :, :, a, :]).reshape(N * OG, K * L).astype(X.dtype))
    cols = sample_points(X.reshape((N * OG, C // OG) + tuple(S)), coords, "linear", "zeros")
    if mask is not None:
        cols = cols * mask.reshape(N * OG, 1, K * L)
    cols = cols.reshape(N, G, (C // G) * K, L)                            # rows (c, j), as im2col's
    Wg = W.reshape(G, M // G, (C // G) * K)
    Y = np.empty((N, G, M // G, L), dtype=X.dtype)
    for n in range(N):
        for g in range(G):
            np.matmul(Wg[g], cols[n, g], out=Y[n, g])
    Y = Y.reshape((N, M) + osp)
    if B is not None:
        Y += B.reshape((M,) + (1,) * r)
    return Y


# --- LpPool ---------------------------------------------------------------------------------

def _lp_geometry(x_shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
    r = len(x_shape) - 2
    s, d = _per_axis(strides, r, 1), _per_axis(dilations, r, 1)
    pb, pe, osp, extra = geometry(x_shape[2:], kernel_shape, s, d, pads, auto_pad, ceil_mode)
    return tuple(kernel_shape), s, d, pb, tuple(e + x for e, x in zip(pe, extra)), osp


def _lp_shape(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
              strides=None, **_):
    xs, dt = x
    *_, osp = _lp_geometry(xs, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    return tuple(xs[:2]) + osp, dt


@kernel("LpPool", since=1, shape=_lp_shape)
def LpPool(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, p=2, pads=None,
           strides=None, out=None):
    """Y[n, c, o] = (sum_j |Xpad[n, c, o*s + j*d]|^p)^(1/p), the padding being zeros."""
    k, s, d, pb, end, osp = _lp_geometry(X.shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    Xp = pad(X, pb, end, value=0)
    Y = out if out is not None else np.empty(X.shape[:2] + osp, dtype=X.dtype)
    Y.fill(0)
    for _, view in offsets(Xp, k, s, d, osp):
        Y += view * view if p == 2 else np.abs(view) ** p
    return np.sqrt(Y, out=Y) if p == 2 else np.power(Y, 1.0 / p, out=Y)


# --- MaxUnpool ------------------------------------------------------------------------------

def _unpool_spatial(x_shape, kernel_shape, pads, strides):
    r = len(x_shape) - 2
    s, p = _per_axis(strides, r, 1), _per_axis(pads, 2 * r, 0)
    return tuple((n - 1) * s[i] - p[i] - p[i + r] + kernel_shape[i] for i, n in enumerate(x_shape[2:]))


def _unpool_shape(x, i, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    if output_shape is not None:
        raise ValueError("the output shape is a value")     # onnx's inference reads it
    xs, dt = x
    return tuple(xs[:2]) + _unpool_spatial(xs, kernel_shape, pads, strides), dt


@kernel("MaxUnpool", since=9, shape=_unpool_shape)
def MaxUnpool(X, I, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    """Zeros, with each X value put back at its flat index I into the output (of output_shape,
    when given, as onnxruntime and torch do; onnx's reference indexes the inferred shape)."""
    if output_shape is not None and np.size(output_shape):
        shape = tuple(int(v) for v in np.asarray(output_shape).ravel())
    else:
        shape = tuple(X.shape[:2]) + _unpool_spatial(X.shape, kernel_shape, pads, strides)
    Y = np.zeros(prod(shape), dtype=X.dtype)
    Y[I.ravel()] = X.ravel()
    return Y.reshape(shape)


# --- MaxPool's second output ----------------------------------------------------------------

def _lowest(dtype):
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def maxpool_with_indices(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
                         storage_order=0, strides=None):
    """MaxPool with its Indices output: (Y, I), I[n, c, o] the flat index into X of the window's
    maximum (the first one, in row-major tap order, on ties). storage_order=1 numbers the
    spatial positions column-major (h + w*H + ...), the batch and channel offsets as before."""
    r = X.ndim - 2
    k, s, d, pb, end, osp = _lp_geometry(X.shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    S = X.shape[2:]
    Xp = pad(X, pb, end, value=_lowest(X.dtype))
    place = [prod(S[a + 1:]) for a in range(r)] if not storage_order else [prod(S[:a]) for a in range(r)]
    Y = np.full(X.shape[:2] + osp, _lowest(X.dtype), dtype=X.dtype)
    I = np.zeros(X.shape[:2] + osp, dtype=np.int64)
    seen = np.zeros(osp, dtype=bool)
    for j, view in offsets(Xp, k, s, d, osp):
        # the input position each window's j-th tap reads, per axis, broadcast over the output grid
        pos = [(np.arange(osp[a]) * s[a] - pb[a] + j[a] * d[a]).reshape((-1,) + (1,) * (r - 1 - a))
               for a in range(r)]
        valid = np.ones(osp, dtype=bool)
        for a, q in enumerate(pos):
            valid &= (q >= 0) & (q < S[a])
        flat = sum(q * place[a] for a, q in enumerate(pos))
        take = valid & (~seen | (view > Y))
        np.copyto(Y, view, where=take)
        np.copyto(I, np.broadcast_to(flat, osp), where=take)
        seen |= valid
    I += (np.arange(X.shape[0] * X.shape[1]) * prod(S)).reshape(X.shape[:2] + (1,) * r)
    return Y, I

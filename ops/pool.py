"""Pooling: a reduction over each sliding window.

    MaxPool:  Y[n, c, o] = max_j  Xpad[n, c, o*s + j*d]          (padding is -inf)
    AvgPool:  Y[n, c, o] = sum_j  Xpad[n, c, o*s + j*d] / count[o]

The reduction runs tap by tap, one axis at a time (max and box sums are separable): K1 + K2
vectorised maximum/add passes over shifted views, rather than K1 * K2 or one reduction over a
strided 2K-dimensional view. At stride 1 the passes run over the whole padded tensor as flat 1-D
views, shifted by a row or a column (_flat_passes): one long loop each instead of many short rows.
`count` is the number of taps inside the input (count_include_pad=0) or inside the
input plus the model's pads (count_include_pad=1); ceil_mode's extra end padding never
counts, as in PyTorch.
"""
from __future__ import annotations

import functools

import numpy as np

from rzrt.ops.parallel import share
from rzrt.ops.registry import kernel
from rzrt.ops.window import Carver, geometry, offsets, pad, prod, scratch_bytes


def _pool_geometry(x_shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode):
    rank = len(x_shape) - 2
    s = tuple(strides) if strides is not None else (1,) * rank
    d = tuple(dilations) if dilations is not None else (1,) * rank
    pb, pe, osp, extra = geometry(x_shape[2:], kernel_shape, s, d, pads, auto_pad, ceil_mode)
    return tuple(kernel_shape), s, d, pb, pe, osp, extra


def _pool_shape(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
                strides=None, **_):
    xs, dt = x
    *_, osp, _ = _pool_geometry(xs, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    return xs[:2] + osp, dt


def _pool_scratch(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
                  strides=None, **_):
    """The padded input (when there is padding), then AveragePool's per-axis partial results; with
    stride 1, the padded input and one more buffer of its size (_flat_passes)."""
    xs, dt = x
    _, s, _, pb, pe, osp, extra = _pool_geometry(xs, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    size = np.dtype(dt).itemsize
    padded = xs[:2] + tuple(n + b + e + x for n, b, e, x in zip(xs[2:], pb, pe, extra))
    if all(v == 1 for v in s):
        return scratch_bytes((padded, size), (padded, size))
    pieces = [(padded, size)] if any(pb) or any(pe) or any(extra) else []
    pieces += [(xs[:2] + osp[:i + 1] + padded[3 + i:], size) for i in range(len(osp) - 1)]
    return scratch_bytes(*pieces)


def _lowest(dtype):
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def _maxpool_scratch(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
                     strides=None, **_):
    """MaxPool's per-axis partial results (it reads the input unpadded); with stride 1, the padded
    input and one more buffer of its size (_maxpool_flat)."""
    xs, dt = x
    _, s, _, pb, pe, osp, extra = _pool_geometry(xs, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    size = np.dtype(dt).itemsize
    if all(v == 1 for v in s):
        padded = xs[:2] + tuple(n + b + e + x for n, b, e, x in zip(xs[2:], pb, pe, extra))
        return scratch_bytes((padded, size), (padded, size))
    return scratch_bytes(*[(xs[:2] + osp[:i + 1] + xs[3 + i:], size) for i in range(len(osp) - 1)])


def tap_outputs(j, s, d, pb, n_in, n_out) -> range:
    """The outputs o whose tap j reads inside the input: 0 <= o*s + j*d - pb < n_in."""
    lo = max(0, -(-(pb - j * d) // s))
    return range(lo, max(lo, min(n_out, (n_in - 1 - j * d + pb) // s + 1)))


@kernel("MaxPool", since=1, shape=_pool_shape, scratch=_maxpool_scratch)
def MaxPool(X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
            storage_order=0, strides=None, out=None, scratch=None, _outputs=1, _part=None):
    if _outputs > 1:     # the optional Indices output: see conv_transpose.maxpool_with_indices
        from rzrt.ops.conv_transpose import maxpool_with_indices
        return maxpool_with_indices(X, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                                    kernel_shape=kernel_shape, pads=pads, storage_order=storage_order, strides=strides)
    k, s, d, pb, pe, osp, extra = _pool_geometry(X.shape, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    Y = out if out is not None else np.empty(X.shape[:2] + osp, dtype=X.dtype)
    if _part is not None:                    # rzrt/team.py: this process's images, or with one, its channels
        lo, hi = share(X.shape[0] if X.shape[0] > 1 else X.shape[1], _part)
        cut = (slice(lo, hi),) if X.shape[0] > 1 else (slice(None), slice(lo, hi))
        if lo < hi:                          # (both cuts leave X and Y contiguous, as the passes want)
            MaxPool(X[cut], auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations, kernel_shape=kernel_shape,
                    pads=pads, storage_order=storage_order, strides=strides, out=Y[cut], scratch=scratch)
        return Y
    mem = Carver(scratch)
    if all(v == 1 for v in s):
        return _flat_passes(X, k, d, pb, tuple(e + x for e, x in zip(pe, extra)), osp, Y, mem, _lowest(X.dtype),
                            np.maximum)
    # max is separable: the window's max is the max over one axis of the maxima over the others,
    # so K1 + K2 passes replace K1 * K2. Padding never wins a max, so a tap only visits the outputs
    # whose window it reads inside the input: no padded copy of X.
    cur = X
    for axis in range(len(osp)):
        dst = Y if axis == len(osp) - 1 else mem.take(cur.shape[:2 + axis] + (osp[axis],) + cur.shape[3 + axis:],
                                                        X.dtype)
        lead = (slice(None),) * (2 + axis)
        outs = [tap_outputs(j, s[axis], d[axis], pb[axis], cur.shape[2 + axis], osp[axis]) for j in range(k[axis])]
        whole = [j for j, o in enumerate(outs) if len(o) == osp[axis]]
        if not whole:                                    # some window lies in the padding alone
            dst.fill(_lowest(X.dtype))
        for j in sorted(range(k[axis]), key=lambda j: j not in whole[:1]):   # a whole tap first: a copy
            o = outs[j]
            if not o:
                continue
            first = o.start * s[axis] + j * d[axis] - pb[axis]
            src = cur[lead + (slice(first, first + (len(o) - 1) * s[axis] + 1, s[axis]),)]
            part = dst[lead + (slice(o.start, o.stop),)]
            if whole and j == whole[0]:
                np.copyto(part, src)
            else:
                np.maximum(part, src, out=part)
        cur = dst
    return Y


def _flat_passes(X, k, d, pb, pe, osp, Y, mem, fill, op):
    """A stride-1 pool: X padded once with `fill`, then along each axis op (maximum, add) of the
    whole padded tensor with itself shifted by j*d rows (or columns) of it, as flat 1-D views: one
    long inner loop per pass where the separable passes ran rows of 7-28 values (GoogLeNet's 3x3
    max pools, 512 channels at 14x14: 349 -> 164 us). The shifts run past rows and planes into
    values no output reads; Y is the valid corner."""
    shape = X.shape[:2] + tuple(n + b + e for n, b, e in zip(X.shape[2:], pb, pe))
    P, A = mem.take(shape, X.dtype), mem.take(shape, X.dtype)
    P.fill(fill)
    P[(slice(None),) * 2 + tuple(slice(b, b + n) for b, n in zip(pb, X.shape[2:]))] = X
    cur, nxt = P.reshape(-1), A.reshape(-1)
    size = cur.size
    for axis in range(len(k)):
        if k[axis] == 1:
            continue
        step = prod(shape[3 + axis:]) * d[axis]              # one unit of this axis in the flat array
        size -= (k[axis] - 1) * step
        op(cur[:size], cur[step:step + size], out=nxt[:size])
        for j in range(2, k[axis]):
            op(nxt[:size], cur[j * step:j * step + size], out=nxt[:size])
        cur, nxt = nxt, cur
    np.copyto(Y, cur.reshape(shape)[(slice(None),) * 2 + tuple(slice(0, o) for o in osp)])
    return Y


@kernel("AveragePool", since=1, shape=_pool_shape, scratch=_pool_scratch)
def AveragePool(X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                kernel_shape=None, pads=None, strides=None, out=None, scratch=None):
    k, s, d, pb, pe, osp, extra = _pool_geometry(X.shape, kernel_shape, strides, dilations, pads,
                                                 auto_pad, ceil_mode)
    end = tuple(e + x for e, x in zip(pe, extra))
    mem = Carver(scratch)
    counts = _counts(X.shape[2:], k, s, d, pb, pe, extra, bool(count_include_pad), osp, X.dtype.str)
    if all(v == 1 for v in s):
        Y = out if out is not None else np.empty(X.shape[:2] + osp, dtype=X.dtype)
        _flat_passes(X, k, d, pb, end, osp, Y, mem, 0, np.add)
        Y /= counts
        return Y
    Xp = X
    if any(pb) or any(end):
        shape = X.shape[:2] + tuple(n + b + e for n, b, e in zip(X.shape[2:], pb, end))
        Xp = pad(X, pb, end, value=0, out=mem.take(shape, X.dtype))
    Y = out if out is not None else np.empty(X.shape[:2] + osp, dtype=X.dtype)
    # a box sum is separable too: sum over one axis at a time, K1 + K2 passes instead of K1 * K2
    cur = Xp
    for axis in range(len(osp)):
        dst = Y if axis == len(osp) - 1 else mem.take(cur.shape[:2 + axis] + (osp[axis],) + cur.shape[3 + axis:],
                                                        X.dtype)
        lead = (slice(None),) * (2 + axis)
        for j in range(k[axis]):
            first = j * d[axis]
            src = cur[lead + (slice(first, first + (osp[axis] - 1) * s[axis] + 1, s[axis]),)]
            if j == 0:
                np.copyto(dst, src)
            else:
                dst += src
        cur = dst
    Y /= counts
    return Y


@functools.lru_cache(maxsize=256)
def _counts(spatial, k, s, d, pb, pe, extra, include_pad, osp, dtype) -> np.ndarray:
    """count[o]: the taps of window o that land on the input (or on the model's own pads), in the
    pool's dtype (made once: no cast per run)."""
    inside = np.ones((1, 1) + tuple(spatial), dtype=np.float64)
    if include_pad:               # the model's pads, explicit or from auto_pad, count
        inside = pad(inside, pb, pe, value=1.0)
        mask = pad(inside, (0,) * len(pb), extra)
    else:
        mask = pad(inside, pb, tuple(e + x for e, x in zip(pe, extra)))
    count = np.zeros((1, 1) + tuple(osp))
    for _, view in offsets(mask, k, s, d, osp):
        count += view
    count = count.astype(dtype)
    count.flags.writeable = False
    return count


def _global_shape(x):
    xs, dt = x
    return xs[:2] + (1,) * (len(xs) - 2), dt


@functools.lru_cache(maxsize=64)
def _mean_weights(size: int, dtype) -> np.ndarray:
    w = np.full(size, 1 / size, dtype)
    w.flags.writeable = False
    return w


@kernel("GlobalAveragePool", since=1, shape=_global_shape)
def GlobalAveragePool(X, *, out=None, _nhwc_in=False):
    """The mean over the spatial axes, as a matrix-vector product with a vector of 1/size: BLAS's
    GEMV runs 6-12x faster than np.mean's reduction over short rows (1280 channels of 7x7: 37.5 ->
    5.6 us). _nhwc_in: X is channels-last (N, H, W, C) (rzrt/layout.py). Half precision keeps
    np.mean, which adds up in float32."""
    n = X.shape[0]
    c, spatial = (X.shape[-1], X.shape[1:-1]) if _nhwc_in else (X.shape[1], X.shape[2:])
    p = prod(spatial)
    Y = out if out is not None else np.empty((n, c) + (1,) * (X.ndim - 2), X.dtype)
    if X.dtype.kind != "f" or X.dtype.itemsize < 4 or X.size == 0:
        np.mean(X, axis=tuple(range(1, X.ndim - 1)) if _nhwc_in else tuple(range(2, X.ndim)),
                out=Y.reshape(n, c))
    elif _nhwc_in:                                       # (N, P, C): 1/P (P,) @ X[i] (P, C)
        np.matmul(_mean_weights(p, X.dtype), X.reshape(n, p, c), out=Y.reshape(n, c))
    else:                                                # (N*C, P) @ 1/P (P,)
        np.matmul(X.reshape(n * c, p), _mean_weights(p, X.dtype), out=Y.reshape(n * c))
    return Y


@kernel("GlobalMaxPool", since=1, shape=_global_shape)
def GlobalMaxPool(X, *, out=None):
    axes = tuple(range(2, X.ndim))
    return np.max(X, axis=axes, keepdims=True, out=out)

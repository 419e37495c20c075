"""Convolution as im2col + matmul.

    Y[n, m, o] = B[m] + sum_{c, j} W[m, c, j] * Xpad[n, c, o*s + j*d]

im2col lays the windows of one image out as the columns of a matrix
cols[(c, j), o], so the whole convolution is one GEMM:  Y[n] = W.reshape(M, C*K) @ cols.
With groups, channels split into G blocks and the GEMM is batched over them.
Depthwise convolution (one input channel per group) skips im2col: it sums K shifted
views of the input, each scaled by one tap of the filter.
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel
from rzrt.ops.window import geometry, offsets, pad, prod, windows


def conv_geometry(x_shape, w_shape, kernel_shape, strides, dilations, pads, auto_pad):
    rank = len(w_shape) - 2
    kernel_shape = tuple(kernel_shape) if kernel_shape is not None else tuple(w_shape[2:])
    strides = tuple(strides) if strides is not None else (1,) * rank
    dilations = tuple(dilations) if dilations is not None else (1,) * rank
    pb, pe, out, _ = geometry(x_shape[2:], kernel_shape, strides, dilations, pads, auto_pad)
    return kernel_shape, strides, dilations, pb, pe, out


def _conv_shape(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                pads=None, strides=None):
    (xs, dt), (ws, _) = x, w
    *_, out = conv_geometry(xs, ws, kernel_shape, strides, dilations, pads, auto_pad)
    return (xs[0], ws[0]) + out, dt


@kernel("Conv", since=1, shape=_conv_shape)
def Conv(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None, out=None):
    n, c = X.shape[:2]
    m = W.shape[0]
    if c != W.shape[1] * group:
        raise ValueError(f"input has {c} channels but weights expect {W.shape[1]} x group {group}")
    k, s, d, pb, pe, osp = conv_geometry(X.shape, W.shape, kernel_shape, strides, dilations, pads, auto_pad)
    Y = out if out is not None else np.empty((n, m) + osp, dtype=np.result_type(X, W))
    Xp = pad(X, pb, pe)
    if group > 1 and group == c == m:
        _depthwise(Xp, W, k, s, d, osp, Y)
    else:
        _im2col_gemm(Xp, W, group, k, s, d, osp, Y)
    if B is not None:
        Y += B.reshape((m,) + (1,) * len(osp))
    return Y


def _im2col_gemm(Xp, W, group, k, s, d, osp, Y):
    n, c = Xp.shape[:2]
    m, ck, L = W.shape[0], W.shape[1] * prod(k), prod(osp)
    one_by_one = all(x == 1 for x in k) and all(x == 1 for x in s)
    wins = None if one_by_one else windows(Xp, k, s, d, osp)   # (N, C, *k, *out), a view
    Wg = W.reshape(group, m // group, ck)
    for i in range(n):
        cols = Xp[i].reshape(c, L) if one_by_one else wins[i].reshape(c * prod(k), L)  # the im2col copy
        y = Y[i].reshape(group, m // group, L)
        np.matmul(Wg, cols.reshape(group, ck, L), out=y)


def _depthwise(Xp, W, k, s, d, osp, Y):
    c = Xp.shape[1]
    taps = W.reshape(c, prod(k))
    bshape = (c,) + (1,) * len(osp)
    tmp = np.empty_like(Y)
    Y.fill(0)
    for t, (_, view) in enumerate(offsets(Xp, k, s, d, osp)):
        np.multiply(view, taps[:, t].reshape(bshape), out=tmp)
        Y += tmp

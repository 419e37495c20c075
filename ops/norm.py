"""Normalisation.

    BatchNormalization (inference):  y = (x - mean) / sqrt(var + eps) * scale + B
computed as one multiply-add per element:  y = x * a + b,  a = scale / sqrt(var + eps),  b = B - mean * a.
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _channel(v, ndim):
    return v.reshape((-1,) + (1,) * (ndim - 2))


def _same_shape(x, *rest, **_):
    return x


def batchnorm_affine(scale, B, mean, var, epsilon):
    """(a, b) with BN(x) = x * a + b, in float64 for accuracy then cast back."""
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
    b = B.astype(np.float64) - mean.astype(np.float64) * a
    return a.astype(scale.dtype), b.astype(scale.dtype)


@kernel("BatchNormalization", since=6, shape=_same_shape, inplace=0)
def BatchNormalization(X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, spatial=1,
                       is_test=0, training_mode=0, out=None):
    if training_mode:
        axes = (0,) + tuple(range(2, X.ndim))
        mean, var = X.mean(axis=axes), X.var(axis=axes)
        Y = (X - _channel(mean, X.ndim)) / np.sqrt(_channel(var, X.ndim) + epsilon) \
            * _channel(scale, X.ndim) + _channel(B, X.ndim)
        running_mean = input_mean * momentum + mean * (1 - momentum)
        running_var = input_var * momentum + var * (1 - momentum)
        return Y.astype(X.dtype), running_mean.astype(X.dtype), running_var.astype(X.dtype)
    a, b = batchnorm_affine(scale, B, input_mean, input_var, epsilon)
    Y = np.multiply(X, _channel(a, X.ndim), out=out)
    Y += _channel(b, X.ndim)
    return Y


@kernel("InstanceNormalization", since=6, shape=_same_shape)
def InstanceNormalization(X, scale, B, *, epsilon=1e-5, out=None):
    axes = tuple(range(2, X.ndim))
    mean = X.mean(axis=axes, keepdims=True)
    var = X.var(axis=axes, keepdims=True)
    Y = np.subtract(X, mean, out=out)
    Y *= 1 / np.sqrt(var + epsilon)
    Y *= _channel(scale, X.ndim)
    Y += _channel(B, X.ndim)
    return Y


@kernel("LayerNormalization", since=17)
def LayerNormalization(X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """y = (x - mean) / sqrt(var + eps) * Scale + B over the axes from `axis` on.
    Also returns Mean and InvStdDev (the optional outputs), computed in float32 (stash_type=1)."""
    axis = axis % X.ndim
    xf = X.astype(np.float32) if stash_type == 1 and X.dtype != np.float64 else X
    k = int(np.prod(X.shape[axis:], dtype=np.int64))
    lead = X.shape[:axis] + (1,) * (X.ndim - axis)
    if k == 0 or xf.size == 0:
        nan = np.full(lead, np.nan, xf.dtype)
        return np.empty(X.shape, X.dtype), nan, nan
    x = xf.reshape(-1, k)                                    # one row per normalised group
    mean = x @ np.full(k, 1 / k, x.dtype)                    # row means as one GEMV
    d = np.subtract(x, mean[:, None])
    inv_std = np.einsum("ij,ij->i", d, d)                    # sum of squares, one pass, no temporary
    inv_std /= k
    inv_std += epsilon
    np.sqrt(inv_std, out=inv_std)
    np.reciprocal(inv_std, out=inv_std)
    d *= inv_std[:, None]
    Y = d.reshape(X.shape)
    Y *= Scale
    if B is not None:
        Y += B
    return Y.astype(X.dtype, copy=False), mean.reshape(lead), inv_std.reshape(lead)


@kernel("LRN", since=1, shape=_same_shape)
def LRN(X, *, alpha=1e-4, beta=0.75, bias=1.0, size=None):
    """y = x / (bias + alpha / size * sum of x^2 over `size` neighbouring channels) ^ beta"""
    c = X.shape[1]
    sq = np.square(X)
    lo, hi = (size - 1) // 2, size // 2   # onnx: floor((size-1)/2) before, ceil((size-1)/2) after
    padded = np.zeros((X.shape[0], c + size - 1) + X.shape[2:], dtype=X.dtype)
    padded[:, lo:lo + c] = sq
    csum = np.cumsum(padded, axis=1)
    csum = np.concatenate([np.zeros_like(csum[:, :1]), csum], axis=1)
    window = csum[:, size:size + c] - csum[:, :c]
    del hi
    return (X / (bias + alpha / size * window) ** beta).astype(X.dtype)

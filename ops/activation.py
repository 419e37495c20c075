"""Activations: elementwise non-linearities, and softmax along an axis."""
from __future__ import annotations

import numpy as np

from rzrt.ops.elementwise import erf, erf_float32
from rzrt.ops.registry import kernel


def _same(x, *rest, **_):
    return x


@kernel("Relu", since=6, shape=_same, inplace=0)
def Relu(X, *, out=None):
    """y = max(x, 0)"""
    if X.dtype.kind == "f":     # the same, NaN kept: numpy's clip loop runs ~4x faster than maximum
        return X.clip(0, np.inf, out=out)         # with a scalar (measured, numpy 2.4, AVX-512)
    return np.maximum(X, 0, out=out, dtype=X.dtype)


@kernel("LeakyRelu", since=6, shape=_same, inplace=0)
def LeakyRelu(X, *, alpha=0.01, out=None):
    """y = x if x >= 0 else alpha * x"""
    return np.multiply(X, np.where(X >= 0, 1, alpha).astype(X.dtype), out=out)


@kernel("PRelu", since=7, shape=_same)
def PRelu(X, slope):
    """y = x if x >= 0 else slope * x (slope broadcast to x)"""
    return np.where(X >= 0, X, X * slope).astype(X.dtype)


@kernel("Sigmoid", since=6, shape=_same, inplace=0)
def Sigmoid(X, *, out=None):
    """y = 1 / (1 + exp(-x))   (exp(-x) = inf for x << 0 gives the right limit, 0)"""
    Y = np.negative(X, out=out)
    with np.errstate(over="ignore"):
        np.exp(Y, out=Y)
    Y += 1
    return np.reciprocal(Y, out=Y)


@kernel("HardSigmoid", since=6, shape=_same, inplace=0)
def HardSigmoid(X, *, alpha=0.2, beta=0.5, out=None):
    """y = clip(alpha * x + beta, 0, 1)"""
    Y = np.multiply(X, alpha, out=out, dtype=X.dtype)
    Y += X.dtype.type(beta)
    return Y.clip(0, 1, out=Y)


@kernel("HardSwish", since=14, shape=_same, inplace=0)
def HardSwish(X, *, out=None):
    """y = x * clip(x / 6 + 1/2, 0, 1)"""
    h = HardSigmoid(X, alpha=1 / 6, beta=0.5)
    return np.multiply(X, h, out=out)


CHUNK = 1 << 18     # elements per round of passes (a 1 MB temporary): 16K-64K were slower, call overhead


def chunked(X, out, fn):
    """Y = f(X) a chunk at a time, fn(x, t, y) computing a chunk's y with t as its temporary:
    one small temporary instead of one the size of X."""
    Y = out if out is not None else np.empty_like(X)
    if not (X.flags.c_contiguous and Y.flags.c_contiguous):
        fn(X, np.empty_like(X), Y)
        return Y
    x, y = X.reshape(-1), Y.reshape(-1)
    t = np.empty(min(x.size, CHUNK), X.dtype)
    for lo in range(0, x.size, CHUNK):
        xc = x[lo:lo + CHUNK]
        fn(xc, t[:xc.size], y[lo:lo + CHUNK])
    return Y


def _silu(x, t, y):
    """x / (1 + exp(-x)): the same values as x * sigmoid(x) without the reciprocal pass
    (a band of 4096 x 96: 445 -> 278 us)"""
    np.negative(x, out=t)
    with np.errstate(over="ignore", invalid="ignore"):      # -inf / inf: NaN, as -inf * sigmoid(-inf) is
        np.exp(t, out=t)
        t += 1
        np.divide(x, t, out=y)


def Silu(X, *, out=None):
    """y = x * sigmoid(x) (the fused activation passes/fuse_silu.py makes)"""
    return chunked(X, out, _silu)


@kernel("Tanh", since=6, shape=_same, inplace=0)
def Tanh(X, *, out=None):
    return np.tanh(X, out=out)


@kernel("Softplus", since=1, shape=_same)
def Softplus(X):
    """y = log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) to avoid overflow"""
    return (np.maximum(X, 0) + np.log1p(np.exp(-np.abs(X)))).astype(X.dtype)


@kernel("Softsign", since=1, shape=_same)
def Softsign(X):
    return X / (1 + np.abs(X))


@kernel("Mish", since=18, shape=_same)
def Mish(X):
    """y = x * tanh(softplus(x))"""
    return (X * np.tanh(Softplus(X))).astype(X.dtype)


@kernel("Elu", since=6, shape=_same)
def Elu(X, *, alpha=1.0):
    return np.where(X > 0, X, alpha * np.expm1(np.minimum(X, 0))).astype(X.dtype)


@kernel("Celu", since=12, shape=_same)
def Celu(X, *, alpha=1.0):
    return (np.maximum(X, 0) + np.minimum(0, alpha * np.expm1(X / alpha))).astype(X.dtype)


@kernel("Selu", since=6, shape=_same)
def Selu(X, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return (gamma * np.where(X > 0, X, alpha * np.expm1(np.minimum(X, 0)))).astype(X.dtype)


@kernel("ThresholdedRelu", since=10, shape=_same)
def ThresholdedRelu(X, *, alpha=1.0):
    return np.where(X > alpha, X, 0).astype(X.dtype)


@kernel("Gelu", since=20, shape=_same)
def Gelu(X, *, approximate="none"):
    """y = x/2 * (1 + erf(x / sqrt 2)); approximate='tanh': x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"""
    if approximate != "tanh" and X.dtype in (np.float32, np.float16):
        x = X.astype(np.float32)
        y = erf_float32(x * np.float32(1 / np.sqrt(2)))
        y += 1
        y *= x
        y *= 0.5
        return y.astype(X.dtype, copy=False)
    x = X.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    else:
        y = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    return y.astype(X.dtype)


@kernel("Clip", since=6, shape=_same, inplace=0)
def Clip_6(X, *, min=-3.4028234663852886e38, max=3.4028234663852886e38, out=None):
    return X.clip(min, max, out=out)     # the method: np.clip's wrappers cost 1 us a call, half of a small clip


@kernel("Clip", since=11, shape=_same, inplace=0)
def Clip(X, min=None, max=None, *, out=None):
    """y = min(max(x, min), max); an absent bound is the type's lowest / largest value, so for
    floats +-inf clamp to the largest finite values (as onnxruntime does)"""
    lo = None if min is None else min.item()
    hi = None if max is None else max.item()
    if X.dtype.kind == "f":     # both bounds given: also numpy's fast clip loop
        limits = np.finfo(X.dtype)
        lo, hi = limits.min if lo is None else lo, limits.max if hi is None else hi
    elif lo is None and hi is None:    # integers: nothing to clamp
        return X.copy() if out is None else np.copyto(out, X) or out
    return X.clip(lo, hi, out=out)


def _softmax(X, axis, out=None, log=False):
    """softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x)   (shifted so exp never overflows)"""
    Y = np.subtract(X, X.max(axis=axis, keepdims=True), out=out)
    if log:
        Y -= np.log(np.exp(Y).sum(axis=axis, keepdims=True))
        return Y
    np.exp(Y, out=Y)
    Y /= Y.sum(axis=axis, keepdims=True)
    return Y


def _coerced_2d(fn, X, axis, out):
    """Opset < 13: inputs are flattened to 2-D at `axis` and normalised along the second dimension."""
    axis = axis % X.ndim if X.ndim else 0
    x2 = X.reshape(int(np.prod(X.shape[:axis])), -1)
    return fn(x2, 1, None if out is None else out.reshape(x2.shape)).reshape(X.shape)


@kernel("Softmax", since=1, shape=_same)
def Softmax_1(X, *, axis=1, out=None):
    return _coerced_2d(_softmax, X, axis, out)


@kernel("Softmax", since=13, shape=_same, inplace=0)
def Softmax(X, *, axis=-1, out=None):
    return _softmax(X, axis, out)


@kernel("LogSoftmax", since=1, shape=_same)
def LogSoftmax_1(X, *, axis=1):
    return _coerced_2d(lambda x, a, o: _softmax(x, a, o, log=True), X, axis, None)


@kernel("LogSoftmax", since=13, shape=_same)
def LogSoftmax(X, *, axis=-1):
    return _softmax(X, axis, log=True)


@kernel("Hardmax", since=13, shape=_same)
def Hardmax(X, *, axis=-1):
    Y = np.zeros_like(X)
    np.put_along_axis(Y, np.expand_dims(X.argmax(axis=axis), axis), 1, axis=axis)
    return Y

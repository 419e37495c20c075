"""Assorted ops that fit no bigger family, grouped by theme:

    scans         CumSum, CumProd: running sum / product along an axis (exclusive, reverse)
    selection     TopK, Unique, Compress, ReverseSequence, EyeLike, Scatter
    linear alg.   Einsum, Det
    elementwise   Shrink, BitCast
    normalising   LpNormalization, MeanVarianceNormalization, GroupNormalization
    signal        HannWindow, HammingWindow, BlackmanWindow, DFT, STFT
    random        Bernoulli, RandomUniform(Like), RandomNormal(Like)

Complex tensors in DFT/STFT are real tensors with a trailing axis of 2 (real, imaginary);
a trailing axis of 1 is a real signal. The random ops draw from a numpy Generator seeded by
the `seed` attribute when there is one (so a seeded node repeats itself), else from fresh entropy.
"""
from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from rzrt.ops.registry import kernel
from rzrt.ops.shape import ScatterElements


def _int(v) -> int:
    return int(np.asarray(v).reshape(-1)[0])


def _dtype(tensor_type, default):
    """numpy dtype of an ONNX TensorProto type attribute (None / 0: `default`)."""
    return np.dtype(tensor_dtype_to_np_dtype(tensor_type)) if tensor_type else np.dtype(default)


# ---- scans ---------------------------------------------------------------------------------------

def _scan(ufunc, x, axis, exclusive, reverse):
    a = _int(axis) % x.ndim
    y = np.flip(x, a) if reverse else x
    y = ufunc.accumulate(y, axis=a, dtype=x.dtype)
    if exclusive:   # shift by one along the axis, the op's identity coming in first
        first = np.full_like(np.take(y, [0], axis=a), ufunc.identity)
        y = np.concatenate([first, np.take(y, np.arange(y.shape[a] - 1), axis=a)], axis=a)
    return np.flip(y, a) if reverse else y


@kernel("CumSum", since=11)
def CumSum(x, axis, *, exclusive=0, reverse=0):
    """y[i] = sum_{j <= i} x[j] along axis (j < i if exclusive; j >= i if reverse)"""
    return _scan(np.add, x, axis, exclusive, reverse)


@kernel("CumProd", since=26)
def CumProd(x, axis, *, exclusive=0, reverse=0):
    """y[i] = prod_{j <= i} x[j] along axis (j < i if exclusive; j >= i if reverse)"""
    return _scan(np.multiply, x, axis, exclusive, reverse)


# ---- selection -----------------------------------------------------------------------------------

def _topk(X, k, axis, largest):
    a = axis % X.ndim
    if largest:
        # a stable ascending sort of the flipped axis, read backwards: descending, and equal
        # values keep the lower index first, as the spec asks
        order = X.shape[a] - 1 - np.flip(np.argsort(np.flip(X, a), axis=a, kind="stable"), a)
    else:
        order = np.argsort(X, axis=a, kind="stable")
    idx = np.take(order, np.arange(k), axis=a)
    return np.take_along_axis(X, idx, axis=a), idx.astype(np.int64)


@kernel("TopK", since=1)
def TopK_1(X, *, axis=-1, k):
    return _topk(X, k, axis, True)


@kernel("TopK", since=10)
def TopK_10(X, K, *, axis=-1):
    return _topk(X, _int(K), axis, True)


@kernel("TopK", since=11)
def TopK(X, K, *, axis=-1, largest=1, sorted=1):
    """The K largest (smallest) along axis, in order; ties: the lower index first. sorted=0 sorts too."""
    return _topk(X, _int(K), axis, largest)


@kernel("Unique", since=11)
def Unique(X, *, axis=None, sorted=1):
    """Unique values (or slices along axis): Y, first-occurrence indices, inverse indices, counts."""
    y, first, inverse, counts = np.unique(X if axis is not None else X.reshape(-1), return_index=True,
                                          return_inverse=True, return_counts=True, axis=axis)
    inverse = inverse.reshape(-1)
    if not sorted:   # in order of first occurrence
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=0 if axis is None else axis)
        first, inverse, counts = first[order], rank[inverse], counts[order]
    return y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)


@kernel("Compress", since=9)
def Compress(input, condition, *, axis=None):
    """The slices along axis (elements of the flattened input, without axis) where condition is true"""
    return np.compress(condition.reshape(-1).astype(bool), input, axis=axis)


@kernel("ReverseSequence", since=10)
def ReverseSequence(input, sequence_lens, *, batch_axis=1, time_axis=0):
    """Per batch entry b, the first sequence_lens[b] steps along time_axis reversed; the rest as they were"""
    def along(v, axis):
        return v.reshape([-1 if i == axis else 1 for i in range(input.ndim)])
    t = along(np.arange(input.shape[time_axis]), time_axis)
    n = along(sequence_lens.astype(np.int64), batch_axis)
    return np.take_along_axis(input, np.where(t < n, n - 1 - t, t), axis=time_axis)


@kernel("EyeLike", since=9)
def EyeLike(input, *, dtype=None, k=0):
    """Ones on diagonal k of a matrix shaped like input, zeros elsewhere"""
    return np.eye(*input.shape, k=k, dtype=_dtype(dtype, input.dtype))


@kernel("Scatter", since=9)
def Scatter(data, indices, updates, *, axis=0):
    """Deprecated alias of ScatterElements (without reduction)"""
    return ScatterElements(data, indices, updates, axis=axis)


# ---- linear algebra ------------------------------------------------------------------------------

def _wide(x):
    """float32 for types numpy's linear algebra lacks (float16, bfloat16)."""
    return x if x.dtype in (np.float32, np.float64) or x.dtype.kind in "iuc" else x.astype(np.float32)


@kernel("Einsum", since=12)
def Einsum(*Inputs, equation):
    """Sums of products over the repeated subscripts of `equation`. Two operands are one batched
    GEMM (attention's 'bhid,bhjd->bhij': 1.7 ms -> a BLAS call); anything else is numpy's einsum."""
    xs = list(map(_wide, Inputs))
    y = _einsum_as_matmul(equation, *xs) if len(xs) == 2 else None
    if y is None:
        y = np.einsum(equation, *xs, optimize=len(xs) > 2)
    return np.asarray(y).astype(Inputs[0].dtype, copy=False)


def _einsum_as_matmul(equation, A, B):
    """C[batch, m, n] = sum_k A[batch, m, k] B[batch, k, n], with each subscript sorted into its role:
    in A, B and the output: batch; in A and B only: k (summed); in one operand and the output: m or n;
    in one operand only: summed over first. None for ellipses, repeated subscripts or broadcast sizes."""
    eq = equation.replace(" ", "")
    lhs, out = eq.split("->") if "->" in eq else (eq, None)
    if "." in eq or lhs.count(",") != 1:
        return None
    a, b = lhs.split(",")
    if out is None:                                   # implicit output: the subscripts seen once, sorted
        out = "".join(sorted(c for c in set(a + b) if (a + b).count(c) == 1))
    if any(len(set(x)) != len(x) for x in (a, b, out)) or len(a) != A.ndim or len(b) != B.ndim:
        return None
    size = {}
    for x, s in ((a, A.shape), (b, B.shape)):
        for c, n in zip(x, s):
            if size.setdefault(c, n) != n:
                return None
    only_a = tuple(i for i, c in enumerate(a) if c not in b and c not in out)
    only_b = tuple(i for i, c in enumerate(b) if c not in a and c not in out)
    if only_a:
        A, a = A.sum(axis=only_a), "".join(c for i, c in enumerate(a) if i not in only_a)
    if only_b:
        B, b = B.sum(axis=only_b), "".join(c for i, c in enumerate(b) if i not in only_b)
    batch = [c for c in out if c in a and c in b]
    k = [c for c in a if c in b and c not in out]
    m = [c for c in out if c in a and c not in b]
    n = [c for c in out if c in b and c not in a]
    if len(batch) + len(m) + len(n) != len(out):
        return None
    dims = lambda cs: int(np.prod([size[c] for c in cs], dtype=np.int64))     # noqa: E731
    a3 = A.transpose([a.index(c) for c in batch + m + k]).reshape(dims(batch), dims(m), dims(k))
    b3 = B.transpose([b.index(c) for c in batch + k + n]).reshape(dims(batch), dims(k), dims(n))
    order = batch + m + n
    c = np.matmul(a3, b3).reshape([size[x] for x in order])
    return c.transpose([order.index(x) for x in out])


@kernel("Det", since=11)
def Det(X):
    """Determinant of each square matrix in the last two axes"""
    return np.asarray(np.linalg.det(_wide(X))).astype(X.dtype)


# ---- elementwise ---------------------------------------------------------------------------------

@kernel("Shrink", since=9)
def Shrink(input, *, bias=0.0, lambd=0.5):
    """y = x + bias if x < -lambd; x - bias if x > lambd; else 0"""
    y = np.where(input < -lambd, input + bias, np.where(input > lambd, input - bias, 0))
    return y.astype(input.dtype)


@kernel("BitCast", since=26)
def BitCast(input, *, to):
    """The same bytes (little endian) read as type `to`, of the same width"""
    return np.asarray(input, order="C").view(_dtype(to, input.dtype))


# ---- normalisation -------------------------------------------------------------------------------

@kernel("LpNormalization", since=1)
def LpNormalization(input, *, axis=-1, p=2):
    """y = x / ||x||_p along axis (0 where the norm is 0)"""
    norm = np.sum(np.abs(input) ** p, axis=axis, keepdims=True) ** (1.0 / p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm == 0, 0, input / norm).astype(input.dtype)


@kernel("MeanVarianceNormalization", since=9)
def MeanVarianceNormalization(X, *, axes=(0, 2, 3)):
    """y = (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), moments over axes"""
    axes = tuple(axes)
    mean = X.mean(axis=axes, keepdims=True)
    std = np.sqrt(np.maximum((X * X).mean(axis=axes, keepdims=True) - mean * mean, 0))
    return ((X - mean) / (std + 1e-9)).astype(X.dtype)


def _group_norm(X, num_groups, epsilon, stash):
    n, c = X.shape[:2]
    x = X.astype(stash).reshape(n, num_groups, -1)
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + epsilon)).reshape(X.shape).astype(X.dtype)


def _per_channel(v, X):
    return v.reshape((-1,) + (1,) * (X.ndim - 2))


@kernel("GroupNormalization", since=18)
def GroupNormalization_18(X, scale, bias, *, epsilon=1e-5, num_groups):
    """As opset 21, but scale and bias hold one value per group"""
    per = X.shape[1] // num_groups
    s, b = (_per_channel(np.repeat(v, per), X) for v in (scale, bias))
    return (_group_norm(X, num_groups, epsilon, np.float32) * s + b).astype(X.dtype)


@kernel("GroupNormalization", since=21)
def GroupNormalization(X, scale, bias, *, epsilon=1e-5, num_groups, stash_type=1):
    """y = scale[c] * (x - mean_g) / sqrt(var_g + epsilon) + bias[c]; moments per instance and group
    of channels, computed in stash_type"""
    y = _group_norm(X, num_groups, epsilon, _dtype(stash_type, np.float32))
    return (y * _per_channel(scale, X) + _per_channel(bias, X)).astype(X.dtype)


# ---- signal --------------------------------------------------------------------------------------

def _window(size, periodic, output_datatype, coefficients):
    """w[n] = sum_i a_i cos(2 pi i n / N), N = size (periodic) or size - 1 (symmetric)"""
    size = _int(size)
    n = np.arange(size, dtype=np.float64)
    big_n = size if periodic else size - 1
    w = sum(a * np.cos(2 * np.pi * i * n / big_n) for i, a in enumerate(coefficients))
    return np.asarray(w, dtype=np.float64).astype(_dtype(output_datatype, np.float32))


@kernel("HannWindow", since=17)
def HannWindow(size, *, output_datatype=1, periodic=1):
    """w[n] = 0.5 - 0.5 cos(2 pi n / N)"""
    return _window(size, periodic, output_datatype, (0.5, -0.5))


@kernel("HammingWindow", since=17)
def HammingWindow(size, *, output_datatype=1, periodic=1):
    """w[n] = 25/46 - 21/46 cos(2 pi n / N)"""
    return _window(size, periodic, output_datatype, (25 / 46, -21 / 46))


@kernel("BlackmanWindow", since=17)
def BlackmanWindow(size, *, output_datatype=1, periodic=1):
    """w[n] = 0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)"""
    return _window(size, periodic, output_datatype, (0.42, -0.5, 0.08))


def _complex(x):
    """[..., 1] real or [..., 2] (real, imaginary) -> complex [...], single precision for float32 and below
    (numpy's FFT then runs in single precision too)"""
    z = np.empty(x.shape[:-1], np.complex128 if x.dtype == np.float64 else np.complex64)
    z.real = x[..., 0]
    z.imag = x[..., 1] if x.shape[-1] == 2 else 0
    return z


def _realify(z, dtype):
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def _dft(x, dft_length, axis, inverse, onesided):
    a = axis % x.ndim
    z = _complex(x)
    if inverse and onesided:   # the first n/2 + 1 bins of a real signal's spectrum -> that signal
        n = _int(dft_length) if dft_length is not None else 2 * (x.shape[a] - 1)
        return np.fft.irfft(z, n=n, axis=a)[..., None].astype(x.dtype)
    n = _int(dft_length) if dft_length is not None else x.shape[a]
    y = np.fft.ifft(z, n=n, axis=a) if inverse else np.fft.fft(z, n=n, axis=a)
    if onesided:
        y = np.take(y, np.arange(n // 2 + 1), axis=a)
    return _realify(y, x.dtype)


@kernel("DFT", since=17)
def DFT_17(input, dft_length=None, *, axis=1, inverse=0, onesided=0):
    return _dft(input, dft_length, axis, inverse, onesided)


@kernel("DFT", since=20)
def DFT(input, dft_length=None, axis=None, *, inverse=0, onesided=0):
    """y[k] = sum_n x[n] exp(-2 pi j k n / N) along axis (inverse: exp(+...) / N); onesided keeps k <= N/2"""
    return _dft(input, dft_length, -2 if axis is None else _int(axis), inverse, onesided)


@kernel("STFT", since=17)
def STFT(signal, frame_step, window=None, frame_length=None, *, onesided=1):
    """DFT of each window-weighted frame: frames start every frame_step samples, frame_length long.
    [batch, length, 1|2] -> [batch, frames, bins, 2], bins = frame_length // 2 + 1 if onesided"""
    length = _int(frame_length) if frame_length is not None else (
        window.shape[0] if window is not None else signal.shape[1])
    z = _complex(signal)
    frames = np.lib.stride_tricks.sliding_window_view(z, length, axis=1)[:, ::_int(frame_step)]
    if window is not None:
        frames = frames * window
    y = np.fft.fft(frames, axis=-1)
    if onesided:
        y = y[..., :length // 2 + 1]
    return _realify(y, signal.dtype)


# ---- random --------------------------------------------------------------------------------------

def _rng(seed):
    return np.random.default_rng(None if seed is None else int(seed))


@kernel("Bernoulli", since=15)
def Bernoulli(input, *, dtype=None, seed=None):
    """y = 1 with probability input, else 0"""
    return (_rng(seed).random(input.shape) < input).astype(_dtype(dtype, input.dtype))


@kernel("RandomUniform", since=1)
def RandomUniform(*, dtype=1, high=1.0, low=0.0, seed=None, shape):
    """Samples from U[low, high) of the given shape"""
    return _rng(seed).uniform(low, high, tuple(shape)).astype(_dtype(dtype, np.float32))


@kernel("RandomNormal", since=1)
def RandomNormal(*, dtype=1, mean=0.0, scale=1.0, seed=None, shape):
    """Samples from N(mean, scale^2) of the given shape"""
    return _rng(seed).normal(mean, scale, tuple(shape)).astype(_dtype(dtype, np.float32))


@kernel("RandomUniformLike", since=1)
def RandomUniformLike(input, *, dtype=None, high=1.0, low=0.0, seed=None):
    """RandomUniform shaped like input, of its type unless dtype says otherwise"""
    return _rng(seed).uniform(low, high, input.shape).astype(_dtype(dtype, input.dtype))


@kernel("RandomNormalLike", since=1)
def RandomNormalLike(input, *, dtype=None, mean=0.0, scale=1.0, seed=None):
    """RandomNormal shaped like input, of its type unless dtype says otherwise"""
    return _rng(seed).normal(mean, scale, input.shape).astype(_dtype(dtype, input.dtype))

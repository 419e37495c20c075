"""Elementwise math with numpy (multidirectional) broadcasting."""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel
from rzrt.ops.window import Carver, prod, scratch_bytes


def _broadcast_shape(*xs):
    return np.broadcast_shapes(*(s for s, _ in xs if s is not None)), xs[0][1]


def _bool_shape(*xs):
    return _broadcast_shape(*xs)[0], np.dtype(bool)


def _same(x, *rest, **_):
    return x


def _binary(name, ufunc, since=1, shape=_broadcast_shape, inplace=(0, 1)):
    def fn(A, B, *, out=None):
        return ufunc(A, B, out=out)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Y = {ufunc.__name__}(A, B), broadcast"
    kernel(name, since=since, shape=shape, inplace=inplace)(fn)
    return fn


Add = _binary("Add", np.add, since=7)
Sub = _binary("Sub", np.subtract, since=7)


@kernel("Mul", since=7, shape=_broadcast_shape, inplace=(0, 1))
def Mul(A, B, *, out=None, _nhwc_gate=-1):
    """Y = multiply(A, B), broadcast. _nhwc_gate (rzrt/layout.py, a squeeze-excitation block): the
    other operand is channels-last (N, H, W, C) and this one, a gate (N, C, 1, 1), scales its channels."""
    if _nhwc_gate >= 0:
        g = (A, B)[_nhwc_gate]
        g = g.reshape(g.shape[0], 1, 1, g.shape[1])
        A, B = (g, B) if _nhwc_gate == 0 else (A, g)
    return np.multiply(A, B, out=out)


Equal = _binary("Equal", np.equal, since=7, shape=_bool_shape, inplace=())
Less = _binary("Less", np.less, since=7, shape=_bool_shape, inplace=())
Greater = _binary("Greater", np.greater, since=7, shape=_bool_shape, inplace=())
LessOrEqual = _binary("LessOrEqual", np.less_equal, since=12, shape=_bool_shape, inplace=())
GreaterOrEqual = _binary("GreaterOrEqual", np.greater_equal, since=12, shape=_bool_shape, inplace=())
And = _binary("And", np.logical_and, since=7, shape=_bool_shape, inplace=())
Or = _binary("Or", np.logical_or, since=7, shape=_bool_shape, inplace=())
Xor = _binary("Xor", np.logical_xor, since=7, shape=_bool_shape, inplace=())
BitwiseAnd = _binary("BitwiseAnd", np.bitwise_and, since=18)
BitwiseOr = _binary("BitwiseOr", np.bitwise_or, since=18)
BitwiseXor = _binary("BitwiseXor", np.bitwise_xor, since=18)


@kernel("Div", since=7, shape=_broadcast_shape, inplace=(0, 1))
def Div(A, B, *, out=None):
    """Y = A / B; integer division truncates toward zero, like C."""
    if np.issubdtype(A.dtype, np.integer):
        q = np.trunc(A.astype(np.float64) / B).astype(A.dtype)
        return q if out is None else np.copyto(out, q) or out
    return np.divide(A, B, out=out)


@kernel("Mod", since=10, shape=_broadcast_shape)
def Mod(A, B, *, fmod=0):
    """fmod=0: sign of the divisor (Python %); fmod=1: sign of the dividend (C fmod)."""
    return (np.fmod(A, B) if fmod else np.mod(A, B)).astype(A.dtype)


@kernel("Pow", since=7, shape=_broadcast_shape)
def Pow(X, Y):
    return np.power(X, Y.astype(X.dtype) if X.dtype.kind == "f" else Y).astype(X.dtype)


@kernel("BitShift", since=11, shape=_broadcast_shape)
def BitShift(X, Y, *, direction="LEFT"):
    return np.left_shift(X, Y) if direction == "LEFT" else np.right_shift(X, Y)


def _variadic(name, ufunc, since):
    def fn(*xs, out=None):
        if len(xs) == 1:
            return xs[0].copy() if out is None else np.copyto(out, xs[0]) or out
        y = ufunc(xs[0], xs[1], out=out if out is not None and out.shape == np.broadcast_shapes(
            xs[0].shape, xs[1].shape) else None)
        for x in xs[2:]:
            y = ufunc(y, x)
        if out is not None and y is not out:
            np.copyto(out, y)
            return out
        return y
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Y = {ufunc.__name__} of all inputs, broadcast"
    kernel(name, since=since, shape=_broadcast_shape)(fn)
    return fn


Sum = _variadic("Sum", np.add, 8)
Max = _variadic("Max", np.maximum, 8)
Min = _variadic("Min", np.minimum, 8)


@kernel("Mean", since=8, shape=_broadcast_shape)
def Mean(*xs):
    return (Sum(*xs) / len(xs)).astype(xs[0].dtype)


def _unary(name, f, since=6, doc=None, inplace=0):
    def fn(X, *, out=None):
        return f(X, out=out)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc or f"Y = {getattr(f, '__name__', name)}(X)"
    kernel(name, since=since, shape=_same, inplace=inplace)(fn)
    return fn


Abs = _unary("Abs", np.absolute)
Neg = _unary("Neg", np.negative)
Exp = _unary("Exp", np.exp)
Log = _unary("Log", np.log)
Sqrt = _unary("Sqrt", np.sqrt)
Floor = _unary("Floor", np.floor)
Ceil = _unary("Ceil", np.ceil)
Sin = _unary("Sin", np.sin, 7)
Cos = _unary("Cos", np.cos, 7)
Tan = _unary("Tan", np.tan, 7)
Asin = _unary("Asin", np.arcsin, 7)
Acos = _unary("Acos", np.arccos, 7)
Atan = _unary("Atan", np.arctan, 7)
Sinh = _unary("Sinh", np.sinh, 9)
Cosh = _unary("Cosh", np.cosh, 9)
Asinh = _unary("Asinh", np.arcsinh, 9)
Acosh = _unary("Acosh", np.arccosh, 9)
Atanh = _unary("Atanh", np.arctanh, 9)
Not = _unary("Not", np.logical_not, 1)
BitwiseNot = _unary("BitwiseNot", np.invert, 18)
Round = _unary("Round", np.round, 11, "Y = round half to even (X)")   # numpy rounds half to even, as onnx does


@kernel("Reciprocal", since=6, shape=_same, inplace=0)
def Reciprocal(X, *, out=None):
    return np.divide(1, X, out=out, dtype=X.dtype)


@kernel("Sign", since=9, shape=_same)
def Sign(X):
    return np.sign(X)


@kernel("IsNaN", since=9)
def IsNaN(X):
    return np.isnan(X)


@kernel("IsInf", since=10)
def IsInf(X, *, detect_negative=1, detect_positive=1):
    return (np.isposinf(X) & bool(detect_positive)) | (np.isneginf(X) & bool(detect_negative))


def _erf_scratch(x, **_):
    shape, dtype = x
    if np.dtype(dtype) not in (np.float32, np.float16):
        return 0
    return scratch_bytes(*[((min(prod(shape), ERF_CHUNK),), 4)] * 4)


@kernel("Erf", since=9, shape=_same, inplace=0, scratch=_erf_scratch)
def Erf(X, *, out=None, scratch=None):
    if X.dtype in (np.float32, np.float16):
        return erf_float32(X, out, Carver(scratch))
    y = erf(X).astype(X.dtype)
    if out is None:
        return y
    np.copyto(out, y)
    return out


# erf(x) ~ x P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf(4) rounds to 1 in float32): the rational
# minimax fit Eigen and XLA use for float32, within 4.5e-7 (7 ulp) of math.erf over [-6, 6].
ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
         -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
         -1.42647390514189e-02)
ERF_CHUNK = 1 << 18     # elements per round of passes (1 MB temporaries); 16K-64K were slower (call overhead)


def erf_float32(X, out=None, mem=None):
    """erf in float32 (half precision computes in float32 too): Horner's rule, 16 numpy passes over
    chunks of ERF_CHUNK elements, instead of ~60 float64 passes over the whole array (the float64
    path below): ConvNeXt's 1x56x56x384 GELU, 112 -> 4 ms."""
    y = out if out is not None and out.flags.c_contiguous else np.empty(X.shape, X.dtype)
    x, r = X.reshape(-1), y.reshape(-1)          # r is a view of y: y is C-contiguous
    n = min(x.size, ERF_CHUNK)
    mem = mem or Carver(None)
    c, x2, p, q = (mem.take((n,), np.float32) for _ in range(4))
    for lo in range(0, x.size, ERF_CHUNK):
        hi = min(x.size, lo + ERF_CHUNK)
        c_, x2_, p_, q_ = c[:hi - lo], x2[:hi - lo], p[:hi - lo], q[:hi - lo]
        np.clip(x[lo:hi], -4, 4, out=c_)
        np.multiply(c_, c_, out=x2_)
        np.multiply(x2_, np.float32(ERF_P[0]), out=p_)
        for a in ERF_P[1:-1]:
            p_ += np.float32(a)
            p_ *= x2_
        p_ += np.float32(ERF_P[-1])
        p_ *= c_
        np.multiply(x2_, np.float32(ERF_Q[0]), out=q_)
        for b in ERF_Q[1:-1]:
            q_ += np.float32(b)
            q_ *= x2_
        q_ += np.float32(ERF_Q[-1])
        np.divide(p_, q_, out=r[lo:hi], casting="same_kind")
    if out is not None and y is not out:
        np.copyto(out, y)
        return out
    return y


def erf(x):
    """erf in float64: Taylor series near 0, Numerical Recipes' Chebyshev erfc elsewhere.

    erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))      for |x| < 0.5 (16 terms: exact to 1e-16)
    erfc(z) = t * exp(-z^2 + P(t)),  t = 1 / (1 + z/2)                for |x| >= 0.5 (error < 1.2e-7 of erfc)
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    erfc = t * np.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    far = np.where(x >= 0, 1.0 - erfc, erfc - 1.0)
    x2, term, series = x * x, x.copy(), x.copy()
    for n in range(1, 16):
        term = term * -x2 / n
        series = series + term / (2 * n + 1)
    return np.where(z < 0.5, series * (2 / np.sqrt(np.pi)), far)


@kernel("Where", since=9, shape=lambda c, x, y: _broadcast_shape(c, x, y)[:1] + (x[1],))
def Where(condition, X, Y):
    return np.where(condition, X, Y)

"""Reductions over axes: ReduceMean, ReduceSum, ... and ArgMax/ArgMin.

Before opset 18 (13 for ReduceSum) the axes are an attribute; from then on an optional input.
No axes means all axes, unless noop_with_empty_axes, which makes the op an identity.
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _axes(axes, ndim, noop):
    if axes is None or np.asarray(axes).size == 0:
        return () if noop else None
    return tuple(int(a) % ndim for a in np.asarray(axes).reshape(-1))


REDUCTIONS = {
    "ReduceMean": lambda x, a, k: np.mean(x, axis=a, keepdims=k),
    "ReduceSum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "ReduceMax": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "ReduceMin": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k)),
    "ReduceSumSquare": lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k),
    "ReduceLogSum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)),
    "ReduceLogSumExp": lambda x, a, k: _logsumexp(x, a, k),
}
AXES_INPUT_SINCE = {"ReduceSum": 13}


def _logsumexp(x, axes, keepdims):
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    y = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axes if axes is not None else tuple(range(x.ndim)))


NATIVE_OUT = {"ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}


def _reduce(name, f, x, axes, keepdims, noop, out=None):
    a = _axes(axes, x.ndim, noop)
    if a == ():
        return x if out is None else np.copyto(out, x) or out
    if out is not None and name in NATIVE_OUT and x.size:
        return NATIVE_OUT[name](x, axis=a, keepdims=bool(keepdims), out=out)
    if x.size == 0 and name in ("ReduceMax", "ReduceMin", "ReduceLogSumExp"):
        shape = [1 if (a is None or i in a) else n for i, n in enumerate(x.shape)]
        if x.dtype == bool:
            fill = name == "ReduceMin"        # the identity of or / and
        elif x.dtype.kind in "iu":
            fill = np.iinfo(x.dtype).min if name == "ReduceMax" else np.iinfo(x.dtype).max
        else:
            fill = np.inf if name == "ReduceMin" else -np.inf
        y = np.full(shape, fill, dtype=x.dtype)
        return y if keepdims else y.reshape([n for i, n in enumerate(x.shape) if not (a is None or i in a)])
    with np.errstate(divide="ignore"):
        return np.asarray(f(x, a, bool(keepdims))).astype(x.dtype)


def _make(name, f):
    def with_attr(data, *, axes=None, keepdims=1, out=None):
        return _reduce(name, f, data, axes, keepdims, False, out)

    def with_input(data, axes=None, *, keepdims=1, noop_with_empty_axes=0, out=None):
        return _reduce(name, f, data, axes, keepdims, noop_with_empty_axes, out)

    for fn, suffix in ((with_attr, "_1"), (with_input, "")):
        fn.__name__ = fn.__qualname__ = name + suffix
    kernel(name, since=1)(with_attr)
    kernel(name, since=AXES_INPUT_SINCE.get(name, 18))(with_input)


for _name, _f in REDUCTIONS.items():
    _make(_name, _f)


def _arg(f, data, axis, keepdims, select_last_index):
    if select_last_index:
        flipped = np.flip(data, axis=axis)
        y = data.shape[axis] - 1 - f(flipped, axis=axis)
    else:
        y = f(data, axis=axis)
    y = y.astype(np.int64)
    return np.expand_dims(y, axis) if keepdims else y


@kernel("ArgMax", since=1)
def ArgMax(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmax, data, axis, keepdims, select_last_index)


@kernel("ArgMin", since=1)
def ArgMin(data, *, axis=0, keepdims=1, select_last_index=0):
    return _arg(np.argmin, data, axis, keepdims, select_last_index)

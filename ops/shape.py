"""Shape and data-movement ops: they rearrange, select or create values without arithmetic."""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _ints(t) -> list[int]:
    return [int(v) for v in np.asarray(t).reshape(-1)]


@kernel("Identity", since=1, view=True)
def Identity(X):
    return X


@kernel("Constant", since=1)
def Constant(*, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             value_string=None, value_strings=None, sparse_value=None):
    if value is not None:
        return value
    if value_float is not None:
        return np.array(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.array(value_floats, dtype=np.float32)
    if value_int is not None:
        return np.array(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.array(value_ints, dtype=np.int64)
    if value_string is not None:
        return np.array(value_string, dtype=object)
    if value_strings is not None:
        return np.array(value_strings, dtype=object)
    if sparse_value is not None:
        return sparse_value
    raise ValueError("Constant has no value attribute")


@kernel("Dropout", since=1)
def Dropout_1(X, *, ratio=0.5, is_test=0, consumed_inputs=None, seed=None):
    return X, np.ones(X.shape, dtype=bool)


@kernel("Dropout", since=12)
def Dropout(X, ratio=None, training_mode=None, *, seed=None):
    """Inference: y = x and mask = 1. Training mode zeroes elements with probability `ratio`."""
    if training_mode is not None and bool(training_mode) and (ratio is None or float(ratio) > 0):
        r = 0.5 if ratio is None else float(ratio)
        mask = np.random.default_rng(seed).uniform(size=X.shape) >= r
        return (X * mask / (1 - r)).astype(X.dtype), mask
    return X, np.ones(X.shape, dtype=bool)


def _flatten_shape(x, *, axis=1):
    s, dt = x
    axis = axis + len(s) if axis < 0 else axis
    return (int(np.prod(s[:axis])), int(np.prod(s[axis:]))), dt


@kernel("Flatten", since=1, shape=_flatten_shape, view=True)
def Flatten(X, *, axis=1):
    axis = axis + X.ndim if axis < 0 else axis
    return X.reshape(int(np.prod(X.shape[:axis])), -1)


def reshape_target(in_shape, shape, allowzero=0):
    """Resolve 0 (copy the input's dim, unless allowzero) and -1 (inferred) in a Reshape target."""
    shape = _ints(shape)
    out = [in_shape[i] if d == 0 and not allowzero else d for i, d in enumerate(shape)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(in_shape)) // known if known else 0
    if int(np.prod(out)) != int(np.prod(in_shape)):
        raise ValueError(f"cannot reshape {tuple(in_shape)} to {tuple(shape)}")
    return tuple(out)


@kernel("Reshape", since=5, view=True)
def Reshape(data, shape, *, allowzero=0):
    return data.reshape(reshape_target(data.shape, shape, allowzero))


@kernel("Reshape", since=1, view=True)
def Reshape_1(data, *, shape=None, consumed_inputs=None):
    return data.reshape(reshape_target(data.shape, shape))


def _concat_shape(*xs, axis):
    shapes = [s for s, _ in xs]
    axis = axis % len(shapes[0])
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out), xs[0][1]


@kernel("Concat", since=4, shape=_concat_shape)
def Concat(*inputs, axis, out=None):
    return np.concatenate(inputs, axis=axis, out=out)


@kernel("Shape", since=1)
def Shape(data, *, start=0, end=None):
    return np.array(data.shape[start:end], dtype=np.int64)


@kernel("Size", since=1)
def Size(data):
    return np.array(data.size, dtype=np.int64)


@kernel("Transpose", since=1)
def Transpose(data, *, perm=None, out=None):
    y = np.transpose(data, perm)
    if out is not None:
        np.copyto(out, y)
        return out
    return np.ascontiguousarray(y)


@kernel("Cast", since=6)
def Cast(input, *, to, saturate=1, round_mode="up"):
    """y = x converted to `to`; into float8, saturate=1 clamps out-of-range values to the largest finite."""
    return cast_to(input, TENSOR_DTYPES[to], saturate, round_mode)


@kernel("CastLike", since=15)
def CastLike(input, target_type, *, saturate=1, round_mode="up"):
    return cast_to(input, target_type.dtype, saturate, round_mode)


def to_e8m0(x, dt, saturate=1, round_mode="up"):
    """float8 E8M0 is an exponent alone, 2^(e - 127): keep float32's exponent, rounded by its mantissa
    (up: any fraction; nearest: guard bit and (rest or odd exponent); down: none); NaN/Inf -> 0xFF."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.uint16)
    mant = bits & 0x7FFFFF
    special = e == 0xFF
    if round_mode == "up":
        inc = mant > 0
    elif round_mode == "nearest":
        inc = ((mant & 0x400000) > 0) & (((mant & 0x3FFFFF) > 0) | (e > 0))
    else:
        inc = np.zeros(e.shape, dtype=bool)
    inc &= ~special
    if saturate:
        inc &= e != 0xFE
    return np.where(special, 0xFF, e + inc).astype(np.uint8).view(dt)


def cast_to(x, dt, saturate=1, round_mode="up"):
    if dt.name == "float8_e8m0fnu":
        return to_e8m0(x, dt, saturate, round_mode)
    if dt == np.dtype(object):
        return np.vectorize(lambda v: str(v) if not isinstance(v, bytes) else v.decode())(x).astype(object)
    if x.dtype == object:
        return x.astype(np.float64).astype(dt)
    if saturate and dt.name.startswith("float8_e") and "m0" not in dt.name:
        import ml_dtypes
        lim = float(ml_dtypes.finfo(dt).max)
        xf = x.astype(np.float32)
        return np.clip(xf, -lim, lim).astype(dt)      # infinities too: onnx's cases saturate them
    return x.astype(dt)


def _axes_param(axes, ndim):
    return sorted(a % ndim for a in _ints(axes))


@kernel("Unsqueeze", since=1, view=True)
def Unsqueeze_1(data, *, axes):
    return Unsqueeze(data, np.array(axes))


@kernel("Unsqueeze", since=13, view=True)
def Unsqueeze(data, axes):
    ndim = data.ndim + len(_ints(axes))
    return np.expand_dims(data, tuple(_axes_param(axes, ndim)))


@kernel("Squeeze", since=1, view=True)
def Squeeze_1(data, *, axes=None):
    return Squeeze(data, None if axes is None else np.array(axes))


@kernel("Squeeze", since=13, view=True)
def Squeeze(data, axes=None):
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(_axes_param(axes, data.ndim)))


@kernel("Gather", since=1)
def Gather(data, indices, *, axis=0):
    return np.take(data, np.where(indices < 0, indices + data.shape[axis], indices), axis=axis)


@kernel("GatherElements", since=11)
def GatherElements(data, indices, *, axis=0):
    idx = np.where(indices < 0, indices + data.shape[axis], indices)
    return np.take_along_axis(data, idx, axis=axis)


@kernel("GatherND", since=11)
def GatherND(data, indices, *, batch_dims=0):
    b = batch_dims
    batch_shape = data.shape[:b]
    nb = int(np.prod(batch_shape))
    d = data.reshape((nb,) + data.shape[b:])
    idx = indices.reshape((nb, -1, indices.shape[-1]))
    k = indices.shape[-1]
    res = np.stack([d[i][tuple(idx[i].T)] for i in range(nb)])
    return res.reshape(indices.shape[:-1] + data.shape[b + k:])


@kernel("ScatterND", since=11)
def ScatterND(data, indices, updates, *, reduction="none"):
    y = data.copy()
    idx = indices.reshape(-1, indices.shape[-1])
    upd = updates.reshape((idx.shape[0],) + updates.shape[indices.ndim - 1:])
    for i, ix in enumerate(idx):
        t = tuple(ix)
        if reduction == "add":
            y[t] += upd[i]
        elif reduction == "mul":
            y[t] *= upd[i]
        elif reduction == "max":
            y[t] = np.maximum(y[t], upd[i])
        elif reduction == "min":
            y[t] = np.minimum(y[t], upd[i])
        else:
            y[t] = upd[i]
    return y


@kernel("ScatterElements", since=11)
def ScatterElements(data, indices, updates, *, axis=0, reduction="none"):
    y = data.copy()
    idx = np.where(indices < 0, indices + data.shape[axis], indices)
    full = list(np.indices(idx.shape, sparse=True))
    full[axis] = idx
    ufunc = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}.get(reduction)
    if ufunc is None:
        y[tuple(full)] = updates
    else:
        ufunc.at(y, tuple(full), updates)
    return y


@kernel("Expand", since=8)
def Expand(input, shape):
    target = np.broadcast_shapes(input.shape, tuple(_ints(shape)))
    return np.array(np.broadcast_to(input, target))


@kernel("Tile", since=6)
def Tile(input, repeats):
    return np.tile(input, _ints(repeats))


@kernel("Range", since=11)
def Range(start, limit, delta):
    """start + i * delta for i in 0 .. max(ceil((limit - start) / delta), 0) - 1"""
    s, lim, d = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
    n = max(int(np.ceil((float(lim) - float(s)) / float(d))), 0)
    return (s + np.arange(n, dtype=np.float64 if start.dtype.kind == "f" else np.int64) * d).astype(start.dtype)


@kernel("ConstantOfShape", since=9)
def ConstantOfShape(input, *, value=None):
    v = np.zeros(1, dtype=np.float32) if value is None else value
    return np.full(tuple(_ints(input)), v.reshape(-1)[0], dtype=v.dtype)


@kernel("Slice", since=1)
def Slice_1(data, *, starts, ends, axes=None):
    return Slice(data, np.array(starts), np.array(ends), None if axes is None else np.array(axes))


@kernel("Slice", since=10)
def Slice(data, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else [a % data.ndim for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * data.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        n = data.shape[a]
        # clamp like the spec: huge values (INT64_MAX) mean "to the end"
        s = max(-n - 1, min(n, s))
        e = max(-n - 1, min(n, e))
        if st > 0:
            s, e = (s + n if s < 0 else s), (e + n if e < 0 else e)
            s, e = max(0, s), max(0, e)
        else:
            s = s + n if s < 0 else min(s, n - 1)
            e = e + n if e < 0 else e
            e = None if e < 0 else e
        index[a] = slice(s, e, st)
    return data[tuple(index)].copy()


def _split_sizes(n, split, num_outputs, outputs):
    if split is not None:
        return _ints(split)
    k = num_outputs or outputs
    size = -(-n // k)
    return [size] * (k - 1) + [n - size * (k - 1)]


@kernel("Split", since=2)
def Split_2(input, *, axis=0, split=None, _outputs=1):
    return Split(input, None if split is None else np.array(split), axis=axis, _outputs=_outputs)


@kernel("Split", since=13)
def Split(input, split=None, *, axis=0, num_outputs=None, _outputs=1):
    """Equal parts (the last one smaller) unless `split` gives the sizes; `_outputs` is the node's output count."""
    sizes = _split_sizes(input.shape[axis], split, num_outputs, _outputs)
    return tuple(np.split(input, np.cumsum(sizes)[:-1], axis=axis))


@kernel("Pad", since=2)
def Pad_2(data, *, mode="constant", pads, value=0.0):
    return Pad(data, np.array(pads), np.array(value, dtype=data.dtype), mode=mode)


@kernel("Pad", since=11)
def Pad(data, pads, constant_value=None, axes=None, *, mode="constant"):
    pads = _ints(pads)
    axes = list(range(data.ndim)) if axes is None else [a % data.ndim for a in _ints(axes)]
    k = len(axes)
    width = [(0, 0)] * data.ndim
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + k])
    # negative pads crop
    crop = tuple(slice(-b if b < 0 else 0, (data.shape[a] + e) if e < 0 else None)
                 for a, (b, e) in enumerate(width))
    data = data[crop]
    width = [(max(0, b), max(0, e)) for b, e in width]
    if mode == "constant":
        v = 0 if constant_value is None or constant_value.size == 0 else constant_value.reshape(-1)[0]
        return np.pad(data, width, mode="constant", constant_values=v)
    return np.pad(data, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


@kernel("OneHot", since=9)
def OneHot(indices, depth, values, *, axis=-1):
    d = int(np.asarray(depth).reshape(-1)[0])
    idx = np.where(indices < 0, indices + d, indices).astype(np.int64)
    axis = axis % (indices.ndim + 1)
    hot = np.expand_dims(idx, axis) == np.arange(d).reshape([-1 if i == axis else 1 for i in range(indices.ndim + 1)])
    return np.where(hot, values[1], values[0]).astype(values.dtype)


@kernel("NonZero", since=9)
def NonZero(X):
    return np.array(np.nonzero(X), dtype=np.int64)


@kernel("Trilu", since=14)
def Trilu(input, k=None, *, upper=1):
    kk = 0 if k is None else int(k)
    return np.triu(input, kk) if upper else np.tril(input, kk)


@kernel("DepthToSpace", since=13)
def DepthToSpace(input, *, blocksize, mode="DCR"):
    b, c, h, w = input.shape
    s = blocksize
    if mode == "DCR":
        t = input.reshape(b, s, s, c // (s * s), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = input.reshape(b, c // (s * s), s, s, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (s * s), h * s, w * s)


@kernel("SpaceToDepth", since=13)
def SpaceToDepth(input, *, blocksize, mode="DCR"):
    """Blocks of s x s pixels become channels: DCR orders them (row, col, channel), CRD (channel, row, col)."""
    b, c, h, w = input.shape
    s = blocksize
    t = input.reshape(b, c, h // s, s, w // s, s)
    t = t.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else t.transpose(0, 1, 3, 5, 2, 4)
    return t.reshape(b, c * s * s, h // s, w // s)


TENSOR_DTYPES = {}


def _init_dtypes():
    from onnx import TensorProto, helper
    for name, code in TensorProto.DataType.items():
        if name in ("UNDEFINED",):
            continue
        try:
            TENSOR_DTYPES[code] = np.dtype(helper.tensor_dtype_to_np_dtype(code))
        except Exception:
            pass


_init_dtypes()

"""Linear quantization: real values <-> small integers (or float8 / float4) through a scale and zero point.

    quantize    q = saturate(round_half_even(x / scale) + zero_point)
    dequantize  x = (q - zero_point) * scale

The scale's shape sets the granularity: a scalar (per tensor), a 1-D vector along `axis`
(per axis), or x's shape with dimension `axis` divided into blocks of `block_size` (blocked).
The zero point's type is the quantized type (uint8 when there is none, or `output_dtype`).
Integer types saturate to their range; float8 types saturate to +-max when `saturate` is set
(without it, out-of-range values become inf or NaN as the type allows).
The integer ops (QLinearMatMul, QLinearConv, ConvInteger, MatMulInteger) accumulate
(q - zero_point) products exactly and requantize the result with the combined scale.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto
from onnx.helper import np_dtype_to_tensor_dtype, tensor_dtype_to_np_dtype

from rzrt.ops.conv import Conv
from rzrt.ops.registry import kernel

INT_RANGE = {
    TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7),
    TensorProto.UINT2: (0, 3), TensorProto.INT2: (-2, 1),
}
FLOAT_MAX = {
    TensorProto.FLOAT8E4M3FN: 448.0, TensorProto.FLOAT8E4M3FNUZ: 240.0,
    TensorProto.FLOAT8E5M2: 57344.0, TensorProto.FLOAT8E5M2FNUZ: 57344.0,
    TensorProto.FLOAT4E2M1: 6.0,
}


def _along(v, shape, axis, block_size=0):
    """Scale or zero point `v` reshaped (or, for blocks, repeated) to broadcast against x of `shape`."""
    if v.size == 1:
        return v.reshape(())
    axis %= len(shape)
    if block_size:
        return np.repeat(v, block_size, axis=axis).take(range(shape[axis]), axis=axis)
    return v.reshape([-1 if i == axis else 1 for i in range(len(shape))])


def _tensor_type(dtype) -> int:
    return np_dtype_to_tensor_dtype(np.dtype(dtype))


def quantize(x, scale, zero_point=None, *, axis=1, saturate=1, block_size=0, output_dtype=0, precision=0):
    qtype = _tensor_type(zero_point.dtype) if zero_point is not None else output_dtype or TensorProto.UINT8
    qdtype = tensor_dtype_to_np_dtype(qtype)
    calc = tensor_dtype_to_np_dtype(precision) if precision else scale.dtype
    y = x.astype(calc) / _along(scale, x.shape, axis, block_size).astype(calc)
    zp = 0 if zero_point is None else _along(zero_point, x.shape, axis, block_size).astype(np.float64)
    if qtype in INT_RANGE:
        return np.clip(np.rint(y) + zp, *INT_RANGE[qtype]).astype(qdtype)
    y = y.astype(np.float32) + zp
    if saturate or qtype == TensorProto.FLOAT4E2M1:     # float4 has no inf / NaN: it always saturates
        y = np.clip(y, -FLOAT_MAX[qtype], FLOAT_MAX[qtype])
    return y.astype(qdtype)


def dequantize(x, scale, zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    out = tensor_dtype_to_np_dtype(output_dtype) if output_dtype else scale.dtype
    calc = np.float64 if out == np.float64 or x.dtype == np.int32 else np.float32   # int32 needs 53 bits
    q = x.astype(calc)
    if zero_point is not None:
        q = q - _along(zero_point, x.shape, axis, block_size).astype(calc)
    return (q * _along(scale, x.shape, axis, block_size).astype(calc)).astype(out)


@kernel("QuantizeLinear", since=10)
def QuantizeLinear_10(x, y_scale, y_zero_point=None):
    return quantize(x, y_scale, y_zero_point)


@kernel("QuantizeLinear", since=13)
def QuantizeLinear_13(x, y_scale, y_zero_point=None, *, axis=1):
    return quantize(x, y_scale, y_zero_point, axis=axis)


@kernel("QuantizeLinear", since=19)
def QuantizeLinear_19(x, y_scale, y_zero_point=None, *, axis=1, saturate=1):
    return quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate)


@kernel("QuantizeLinear", since=21)
def QuantizeLinear_21(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, saturate=1):
    return quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate, block_size=block_size,
                    output_dtype=output_dtype)


@kernel("QuantizeLinear", since=23)
def QuantizeLinear(x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, precision=0,
                   saturate=1):
    """y = saturate(round(x / y_scale) + y_zero_point); the division in `precision` (default: y_scale's type)"""
    return quantize(x, y_scale, y_zero_point, axis=axis, saturate=saturate, block_size=block_size,
                    output_dtype=output_dtype, precision=precision)


@kernel("DequantizeLinear", since=10)
def DequantizeLinear_10(x, x_scale, x_zero_point=None):
    return dequantize(x, x_scale, x_zero_point)


@kernel("DequantizeLinear", since=13)
def DequantizeLinear_13(x, x_scale, x_zero_point=None, *, axis=1):
    return dequantize(x, x_scale, x_zero_point, axis=axis)


@kernel("DequantizeLinear", since=21)
def DequantizeLinear_21(x, x_scale, x_zero_point=None, *, axis=1, block_size=0):
    return dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size)


@kernel("DequantizeLinear", since=23)
def DequantizeLinear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """y = (x - x_zero_point) * x_scale, of type output_dtype (default: x_scale's type)"""
    return dequantize(x, x_scale, x_zero_point, axis=axis, block_size=block_size, output_dtype=output_dtype)


@kernel("DynamicQuantizeLinear", since=11)
def DynamicQuantizeLinear(x):
    """uint8 over [min(x, 0), max(x, 0)]: scale = (hi - lo) / 255, zero_point = round(-lo / scale)"""
    lo = np.float32(min(0.0, x.min(initial=0.0)))
    hi = np.float32(max(0.0, x.max(initial=0.0)))
    scale = np.float32((hi - lo) if hi != lo else 1.0) / np.float32(255)
    zero_point = np.clip(np.rint(-lo / scale), 0, 255)
    y = np.clip(np.rint(x / scale) + zero_point, 0, 255).astype(np.uint8)
    return y, np.array(scale, np.float32), np.array(zero_point, np.uint8)


def _requantize(acc, multiplier, zero_point):
    """saturate(round(acc * multiplier) + zero_point) in zero_point's integer type."""
    lo, hi = INT_RANGE[_tensor_type(zero_point.dtype)]
    return np.clip(np.rint(acc * multiplier) + zero_point.astype(np.float64), lo, hi).astype(zero_point.dtype)


def _rows(v, ndim):
    """A per-row vector of the left matmul operand, as a column that broadcasts over K."""
    return v[..., None] if v.ndim == 1 and v.size > 1 and ndim >= 2 else v


@kernel("QLinearMatMul", since=10)
def QLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    """y = saturate(round((a - a_zp) @ (b - b_zp) * a_scale * b_scale / y_scale) + y_zp)"""
    qa = a.astype(np.float64) - _rows(a_zero_point, a.ndim).astype(np.float64)
    qb = b.astype(np.float64) - b_zero_point.astype(np.float64)
    # the scales multiply in their own type, as the spec's TS says; the exact int product in float64
    multiplier = (_rows(a_scale, a.ndim) * b_scale / y_scale).astype(np.float64)
    return _requantize(np.matmul(qa, qb), multiplier, y_zero_point)


def _per_channel(v, ndim):
    """A per-output-channel vector (M,) as (M, 1, ..., 1) of `ndim` axes (a scalar stays a scalar):
    against a weight (M, C, k...) with ndim = W.ndim, against an output (N, M, o...) with ndim = Y.ndim - 1."""
    return v.reshape(()) if v.size == 1 else v.reshape((-1,) + (1,) * (ndim - 1))


def _conv_int(x, w, x_zero_point, w_zero_point, **attrs):
    """Conv of (x - x_zp) and (w - w_zp), exact: integer products summed in float64 (exact below 2**53)."""
    qx = x.astype(np.float64) - (0 if x_zero_point is None else x_zero_point.astype(np.float64).reshape(()))
    qw = w.astype(np.float64) - (0 if w_zero_point is None else _per_channel(w_zero_point, w.ndim).astype(np.float64))
    return Conv(qx, qw, **attrs)


@kernel("ConvInteger", since=10)
def ConvInteger(x, w, x_zero_point=None, w_zero_point=None, *, auto_pad="NOTSET", dilations=None, group=1,
                kernel_shape=None, pads=None, strides=None):
    """y = Conv(x - x_zero_point, w - w_zero_point) in int32"""
    return _conv_int(x, w, x_zero_point, w_zero_point, auto_pad=auto_pad, dilations=dilations, group=group,
                     kernel_shape=kernel_shape, pads=pads, strides=strides).astype(np.int32)


@kernel("QLinearConv", since=10)
def QLinearConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B=None, *,
                auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    """y = saturate(round((Conv(x - x_zp, w - w_zp) + B) * x_scale * w_scale / y_scale) + y_zp)"""
    acc = _conv_int(x, w, x_zero_point, w_zero_point, auto_pad=auto_pad, dilations=dilations, group=group,
                    kernel_shape=kernel_shape, pads=pads, strides=strides)
    if B is not None:
        acc += _per_channel(B, acc.ndim - 1)
    multiplier = _per_channel((x_scale * w_scale / y_scale).astype(np.float64), acc.ndim - 1)
    return _requantize(acc, multiplier, y_zero_point.reshape(()))

"""rzrt-domain fused ops, written by the fusing passes: the base op computes into the output
buffer, then the residual Z is added and the activation applied there, in place.

    FusedConv(X, W, B, Z) = act(Conv(X, W, B) + Z)
    FusedGemm(A, B, C)    = act(Gemm(A, B, C))
    FusedMatMul(A, B)     = act(A @ B)
"""
from __future__ import annotations

import functools

import numpy as np

from rzrt.ops.activation import Clip_6, HardSigmoid, HardSwish, LeakyRelu, Relu, Sigmoid, Silu, Tanh
from rzrt.ops.conv import conv, conv_scratch, conv_shape
from rzrt.ops.gemm import Gemm, MatMul, gemm_shape, matmul_shape
from rzrt.ops.registry import kernel

ACTIVATIONS = {
    "Relu": lambda y: Relu(y, out=y),
    "Sigmoid": lambda y: Sigmoid(y, out=y),
    "Silu": lambda y: Silu(y, out=y),                                 # y * sigmoid(y): passes/fuse_silu.py
    "Tanh": lambda y: Tanh(y, out=y),
    "HardSwish": lambda y: HardSwish(y, out=y),
    "LeakyRelu": lambda y, alpha: LeakyRelu(y, alpha=alpha, out=y),
    "HardSigmoid": lambda y, alpha, beta: HardSigmoid(y, alpha=alpha, beta=beta, out=y),
    "Clip": lambda y, lo, hi: Clip_6(y, min=lo, max=hi, out=y),
}


@functools.lru_cache(maxsize=256)
def in_place(activation: str, params: tuple = ()):
    """The activation as one call, y -> act(y) in place, made once per name and parameters (the
    fused kernels call it per band: the chain of lambdas before cost 0.4-0.7 us a call)."""
    if activation == "Clip":
        lo, hi = params
        return lambda y: y.clip(lo, hi, out=y)
    fn = ACTIVATIONS[activation]
    return (lambda y: fn(y, *params)) if params else fn


def activate(Y, activation: str, params=()):
    """Apply the named activation to Y in place."""
    if activation:
        ACTIVATIONS[activation](Y, *params)
    return Y


def fused_conv_shape(x, w, b=None, z=None, **attrs):
    shape, dt = conv_shape(x, w, **attrs)
    return (np.broadcast_shapes(shape, z[0]) if z is not None else shape), dt


@kernel("FusedConv", domain="rzrt", since=1, shape=fused_conv_shape, scratch=conv_scratch)
def FusedConv(X, W, B=None, Z=None, *, activation="", activation_params=(), auto_pad="NOTSET", dilations=None,
              group=1, kernel_shape=None, pads=None, strides=None, out=None, scratch=None, _nhwc_in=False,
              _nhwc_out=False, _memo=None, _pad_out=None, _padded_in=None, _part=None):
    act = in_place(activation, tuple(activation_params)) if activation else None
    geo = dict(auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
               strides=strides)
    if _nhwc_in or _nhwc_out:                      # channels-last in or out: rzrt/layout.py
        return conv(X, W, B, Z, act, **geo, out=out, scratch=scratch, nhwc_in=_nhwc_in, nhwc_out=_nhwc_out,
                    memo=_memo, pad_out=_pad_out, padded_in=_padded_in, part=_part)
    if Z is not None:
        y_shape, _ = conv_shape((X.shape, X.dtype), (W.shape, W.dtype), **geo)
        if np.broadcast_shapes(y_shape, Z.shape) != y_shape:   # Z broadcasts the output up: add it after
            if _part is not None and _part[0] != 0:           # (rank 0 alone: see rzrt/team.py)
                return out
            Y = np.add(conv(X, W, B, None, None, **geo, scratch=scratch), Z, out=out)
            return activate(Y, activation, activation_params)
    return conv(X, W, B, Z, act, **geo, out=out, scratch=scratch, part=_part)


@kernel("FusedGemm", domain="rzrt", since=1, shape=gemm_shape)
def FusedGemm(A, B, C=None, *, activation="", activation_params=(), alpha=1.0, beta=1.0, transA=0, transB=0,
              out=None):
    Y = Gemm(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB, out=out)
    return activate(Y, activation, activation_params)


@kernel("FusedMatMul", domain="rzrt", since=1, shape=matmul_shape)
def FusedMatMul(A, B, *, activation="", activation_params=(), out=None):
    return activate(MatMul(A, B, out=out), activation, activation_params)

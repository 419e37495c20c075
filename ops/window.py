"""Sliding-window geometry shared by convolution and pooling.

For one spatial axis of size `n`, kernel `k`, stride `s`, dilation `d`, pads `pb`/`pe`:
    effective kernel  ke  = (k - 1) * d + 1
    output size       out = floor((n + pb + pe - ke) / s) + 1      (ceil with ceil_mode)
Window `o` reads input positions  o*s - pb + j*d  for j in 0..k-1.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided


def _per_axis(v, rank: int, default: int) -> tuple:
    if v is None:
        return (default,) * rank
    return tuple(int(x) for x in v)


def geometry(spatial, kernel_shape, strides=None, dilations=None, pads=None, auto_pad="NOTSET",
             ceil_mode=False):
    """-> (pads_begin, pads_end, out_spatial, extra_end).

    extra_end is padding past pads_end that ceil_mode needs so the last window fits;
    it is not part of the model's padding (AveragePool does not count it).
    """
    rank = len(spatial)
    k = _per_axis(kernel_shape, rank, 1)
    s = _per_axis(strides, rank, 1)
    d = _per_axis(dilations, rank, 1)
    p = _per_axis(pads, 2 * rank, 0)
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    pb, pe, out, extra = [], [], [], []
    for i, n in enumerate(spatial):
        ke = (k[i] - 1) * d[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-n // s[i])
            total = max(0, (o - 1) * s[i] + ke - n)
            small, big = total // 2, total - total // 2
            b, e = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        elif auto_pad == "VALID":
            b = e = 0
            o = (n - ke) // s[i] + 1
        elif auto_pad == "NOTSET":
            b, e = p[i], p[i + rank]
            span = n + b + e - ke
            if ceil_mode:
                o = -(-span // s[i]) + 1
                if (o - 1) * s[i] >= n + b:   # the last window would start in the end padding
                    o -= 1
            else:
                o = span // s[i] + 1
        else:
            raise ValueError(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {auto_pad!r}")
        if o < 1:
            raise ValueError(f"spatial axis {i}: input {n} with pads ({b}, {e}) is smaller than "
                             f"the kernel's extent {ke}")
        pb.append(b)
        pe.append(e)
        out.append(o)
        extra.append(max(0, (o - 1) * s[i] + ke - (n + b + e)))
    return tuple(pb), tuple(pe), tuple(out), tuple(extra)


def pad(x: np.ndarray, begin, end, value=0, out=None) -> np.ndarray:
    """Pad the spatial axes (all but the first two) of x; returns x itself when no padding."""
    if not any(begin) and not any(end):
        return x
    shape = x.shape[:2] + tuple(n + b + e for n, b, e in zip(x.shape[2:], begin, end))
    xp = np.full(shape, value, dtype=x.dtype) if out is None else out.reshape(shape)
    if out is not None:
        xp.fill(value)
    inner = (slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(begin, x.shape[2:]))
    xp[inner] = x
    return xp


def windows(xp: np.ndarray, kernel, strides, dilations, out_spatial) -> np.ndarray:
    """A read-only view (N, C, *kernel, *out) of padded xp: [n, c, j.., o..] = xp[n, c, o*s + j*d ..]."""
    rank = len(kernel)
    st = xp.strides
    shape = xp.shape[:2] + tuple(kernel) + tuple(out_spatial)
    strides_ = st[:2] + tuple(st[2 + i] * dilations[i] for i in range(rank)) \
        + tuple(st[2 + i] * strides[i] for i in range(rank))
    return as_strided(xp, shape, strides_, writeable=False)


def offsets(xp: np.ndarray, kernel, strides, dilations, out_spatial):
    """Yield (kernel index, view of xp (N, C, *out)) for each kernel offset: the window's j-th tap."""
    for j in np.ndindex(*kernel):
        sl = tuple(slice(j[i] * dilations[i], j[i] * dilations[i] + (out_spatial[i] - 1) * strides[i] + 1,
                         strides[i]) for i in range(len(kernel)))
        yield j, xp[(slice(None), slice(None)) + sl]


class Carver:
    """Hands out typed views of consecutive, aligned pieces of one scratch buffer (or fresh
    arrays when there is none), so a kernel's temporaries live in the planned arena."""

    def __init__(self, scratch: np.ndarray | None):
        self.buf, self.used = scratch, 0

    def take(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        if self.buf is None:
            return np.empty(shape, dtype)
        n = prod(shape) * dtype.itemsize
        if self.used + n > self.buf.size:
            raise ValueError(f"scratch of {self.buf.size} bytes cannot hold {shape} {dtype} after {self.used} bytes; "
                             f"the kernel's scratch= rule and its takes disagree")
        view = np.ndarray(shape, dtype, buffer=self.buf, offset=self.used)    # one call: kernels take often
        self.used += (n + 63) // 64 * 64
        return view


def scratch_bytes(*pieces) -> int:
    """Bytes a Carver needs for these (shape, itemsize) pieces, each 64-byte aligned."""
    return sum((prod(shape) * itemsize + 63) // 64 * 64 for shape, itemsize in pieces)


def prod(xs) -> int:
    return math.prod(map(int, xs))

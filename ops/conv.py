"""Convolution as im2col + matmul.

    Y[n, m, o] = B[m] + sum_{c, j} W[m, c, j] * Xpad[n, c, o*s + j*d]

im2col lays the windows of one image out as the columns of a matrix
cols[(c, j), o], so the whole convolution is one GEMM:  Y[n] = W.reshape(M, C*K) @ cols.
With groups, channels split into G blocks and the GEMM is batched over them.
A 1x1 stride-1 convolution needs no im2col at all: cols is the image itself.
The columns are built a band of output rows at a time (about COLS_BYTES each), so the
im2col matrix stays small and in cache while the GEMM writes straight into its slice of Y.
Depthwise convolution (one input channel per group) skips im2col: in 2-D, depthwise.py
stacks the shifted views of each channel and sums them with one small matmul per kernel row;
in 1-D and 3-D, each shifted view is scaled by its tap and added.
The bias rides in the GEMM where that saves a pass over the output: [W | B] @ [cols; 1...1].
The padded input and the im2col band live in the planned scratch buffer.
"""
from __future__ import annotations

import functools
import weakref

import numpy as np

from rzrt.ops import depthwise, registry, winograd
from rzrt.ops.parallel import share, split
from rzrt.ops.registry import kernel
from rzrt.ops.window import Carver, geometry, offsets, pad, prod, scratch_bytes, windows


COLS_BYTES = 1 << 22   # 4 MB: AVX-512 BLAS wants wide GEMMs more than a cache-sized im2col band. Against 1 MB,
                       # interleaved: ResNet-50's stem 3.16 -> 2.76 ms (b1), its 128-channel strided 3x3 2.21 -> 1.84
WINOGRAD = True        # 3x3 stride-1 convolutions by Winograd's F(4x4, 3x3) / F(2x2, 3x3); see winograd.py


def band_rows(ck: int, osp, itemsize: int) -> int:
    """Output rows (along the first spatial axis) per im2col band."""
    row = ck * prod(osp[1:]) * itemsize
    return max(1, min(osp[0], COLS_BYTES // max(row, 1)))


def conv_geometry(x_shape, w_shape, kernel_shape, strides, dilations, pads, auto_pad):
    """-> (kernel, strides, dilations, pads_begin, pads_end, out_spatial), all tuples.
    Remembered per shapes and attributes: a model asks the same few questions at every run."""
    return _conv_geometry(tuple(x_shape), tuple(w_shape), _ints(kernel_shape), _ints(strides), _ints(dilations),
                          _ints(pads), auto_pad)


def _ints(v):
    return None if v is None else tuple(map(int, v))


@functools.lru_cache(maxsize=4096)
def _conv_geometry(x_shape, w_shape, kernel_shape, strides, dilations, pads, auto_pad):
    rank = len(w_shape) - 2
    kernel_shape = tuple(kernel_shape) if kernel_shape is not None else tuple(w_shape[2:])
    strides = tuple(strides) if strides is not None else (1,) * rank
    dilations = tuple(dilations) if dilations is not None else (1,) * rank
    pb, pe, out, _ = geometry(x_shape[2:], kernel_shape, strides, dilations, pads, auto_pad)
    return kernel_shape, strides, dilations, pb, pe, out


def conv_shape(x, w, *rest, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
               strides=None, **_):
    (xs, dt), (ws, _) = x, w
    *_, out = conv_geometry(xs, ws, kernel_shape, strides, dilations, pads, auto_pad)
    return (xs[0], ws[0]) + out, dt


def _pointwise(k, s, pb, pe) -> bool:
    return all(x == 1 for x in k) and all(x == 1 for x in s) and not any(pb) and not any(pe)


def _is_depthwise(c, m, group, w_shape):
    return group > 1 and group == c == m and w_shape[1] == 1


def conv_scratch(x, w, *rest, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
                 strides=None, _nhwc_in=False, _nhwc_out=False, _pad_out=None, _padded_in=None, **_):
    (xs, dt), (ws, _) = x, w
    if _padded_in:                                   # x is the padded, phased image of an (H, W) one
        xs = (xs[0], xs[-1]) + tuple(_padded_in)
    elif _nhwc_in:                                   # x is (N, H, W, C): its logical shape is NCHW
        xs = (xs[0], xs[-1]) + tuple(xs[1:-1])
    k, s, d, pb, pe, osp = conv_geometry(xs, ws, kernel_shape, strides, dilations, pads, auto_pad)
    size = np.dtype(dt).itemsize
    wm = winograd.tile_size(xs, ws, group, kernel_shape, strides, dilations, pads, auto_pad, dt) if WINOGRAD else 0
    if _nhwc_in or _nhwc_out:                        # rzrt/layout.py's links: depthwise or a plain 1x1 GEMM
        if wm:                                       # Winograd between 1x1 convolutions: its pad copy unless
            pe = tuple(e + x for e, x in zip(pe, winograd.extra_pad(xs, wm)))     # the input came padded
            padded = [] if _padded_in else [((xs[0], xs[2] + 1 + pe[0], xs[3] + 1 + pe[1], xs[1]), size)]
            return scratch_bytes(*padded, *winograd.scratch_pieces(xs, ws, wm, size))
        if _is_depthwise(xs[1], ws[0], group, ws):
            return scratch_bytes(*depthwise.channels_last_pieces(xs, k, s, d, pb, pe, osp, size, bool(_padded_in)))
        has_bias = len(rest) > 0 and rest[0] is not None
        if _pad_out:                                 # [X^T | 1] over every slot of the phased rows
            return scratch_bytes(((xs[2], _pad_out[3], _pad_out[4], xs[1] + has_bias), size))
        if not _pointwise(k, s, pb, pe):             # a dense convolution by im2col, writing (H, W, C)
            ck = xs[1] * prod(k)
            padded = [(xs[:2] + tuple(n + b + e for n, b, e in zip(xs[2:], pb, pe)), size)] if any(pb) or any(pe) \
                else []
            return scratch_bytes(*padded, ((ck + 1, band_rows(ck, osp, size) * prod(osp[1:])), size))
        ones = _nhwc_out and nhwc_bias_in_gemm(xs[1], ws[0], has_bias)
        return scratch_bytes((((prod(osp), xs[1] + 1)), size)) if ones else 0   # [X^T | 1]
    z = rest[1] if len(rest) > 1 else None
    expanded = [((xs[0], ws[0]) + tuple(osp), size)] if z is not None and tuple(z[0]) != (xs[0], ws[0]) + tuple(osp) \
        else []                                      # a residual that broadcasts, expanded (see conv)
    if _is_depthwise(xs[1], ws[0], group, ws) and len(k) == 2:
        return scratch_bytes(*expanded, *depthwise.scratch_pieces(xs, k, s, d, pb, pe, osp, size))
    pieces = expanded
    if wm:
        pe = tuple(e + x for e, x in zip(pe, winograd.extra_pad(xs, wm)))
    if any(pb) or any(pe):
        pieces.append((xs[:2] + tuple(n + b + e for n, b, e in zip(xs[2:], pb, pe)), size))
    if _is_depthwise(xs[1], ws[0], group, ws):
        pieces.append(((xs[0], ws[0]) + osp, size))
    elif wm:
        pieces += winograd.scratch_pieces(xs, ws, wm, size)
    elif not (all(x == 1 for x in k) and all(x == 1 for x in s)):
        ck, nb = xs[1] * prod(k), images_per_gemm(xs[0], xs[1] * prod(k), prod(osp), size, group)
        if nb > 1:
            pieces += [((ck * nb * prod(osp),), size), ((ws[0] * nb * prod(osp),), size)]
        else:
            pieces.append(((ck + 1, band_rows(ck, osp, size) * prod(osp[1:])), size))    # + the ones row
    elif bias_in_gemm(xs[1], ws[0], group, len(rest) > 0 and rest[0] is not None, True):
        pieces.append(((xs[1] + 1, prod(osp)), size))            # the input under a ones row
    return scratch_bytes(*pieces)


TEAM_PIXELS = 1024      # output pixels per image below which a team (rzrt/team.py) shares an im2col GEMM's
                        # output channels (each rank then builds the whole im2col matrix), not its rows


WIDE_PIXELS = 256       # output pixels per image below which images share one GEMM (batch > 1)
WIDE_BYTES = 8 << 20    # at most this much im2col matrix for the images that share it


def images_per_gemm(n: int, ck: int, pixels: int, itemsize: int, group: int) -> int:
    """Images whose im2col columns go side by side into one GEMM. A 7x7 or 14x14 output makes
    thin GEMMs (49 or 196 columns) that BLAS runs slowly; at batch 8 the strided 3x3 of
    ResNet-50's last stage took 16.7 ms one image at a time, 12.1 ms eight at a time."""
    if n == 1 or group != 1 or pixels >= WIDE_PIXELS:
        return 1
    return max(1, min(n, WIDE_BYTES // (ck * pixels * itemsize)))


@kernel("Conv", since=1, shape=conv_shape, scratch=conv_scratch)
def Conv(X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None, out=None, scratch=None, _nhwc_in=False, _nhwc_out=False, _memo=None, _pad_out=None,
         _padded_in=None, _part=None):
    return conv(X, W, B, None, None, auto_pad, dilations, group, kernel_shape, pads, strides, out, scratch,
                _nhwc_in, _nhwc_out, _memo, _pad_out, _padded_in, _part)


def conv(X, W, B, Z, act, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
         out=None, scratch=None, nhwc_in=False, nhwc_out=False, memo=None, pad_out=None, padded_in=None, part=None,
         winograd_m=None):
    """Y = act(conv(X, W) + B + Z); B, Z and act are applied band by band while the band is in cache.
    nhwc_in / nhwc_out: X / Y are channels-last (N, H, W, C), for the 1x1 and small-plane depthwise
    convolutions of a MobileNet block and for 3x3 -> 3x3 Winograd links (rzrt/layout.py decides).
    memo: a dict kept with the node across runs (the session's `_memo`), where a kernel may keep
    what it derives from the shapes and buffers. pad_out / padded_in: a convolution writes the
    padded image the next one reads (a 1x1 expansion its depthwise's, column-phased: see
    _pointwise_padded; a Winograd 3x3 the next 3x3's). part = (rank, ranks): compute only this
    worker's share of Y (rzrt/team.py): its images when there are several, else its output rows or
    channels, whichever the path splits best; a path that cannot split (1-D and 3-D depthwise) runs
    whole on rank 0. winograd_m: the tile size chosen for the whole batch (a worker's share of the
    images keeps it: the padded layout and the planned scratch were made for it)."""
    if padded_in:                                    # (N, Hp, s, width, C) holding an (H, W) image
        xshape = (X.shape[0], X.shape[-1]) + tuple(padded_in)
    else:                                            # the logical NCHW shape
        xshape = (X.shape[0], X.shape[-1]) + X.shape[1:-1] if nhwc_in else X.shape
    n, c = xshape[:2]
    m = W.shape[0]
    if c != W.shape[1] * group:
        raise ValueError(f"input has {c} channels but the weights expect {W.shape[1]} x group {group}")
    k, s, d, pb, pe, osp = conv_geometry(xshape, W.shape, kernel_shape, strides, dilations, pads, auto_pad)
    if out is not None:
        Y = out
    else:
        Y = np.empty((n,) + tuple(pad_out[2:]) + (m,) if pad_out else ((n,) + osp + (m,)) if nhwc_out
                     else ((n, m) + osp), dtype=np.result_type(X, W))
    if winograd_m is not None:
        wm = winograd_m
    else:
        wm = winograd.tile_size(xshape, W.shape, group, kernel_shape, strides, dilations, pads, auto_pad,
                                X.dtype) if WINOGRAD else 0
    if part is not None and n > 1:                   # several images: each worker its own
        lo, hi = share(n, part)
        if lo < hi:
            zs = Z[lo:hi] if Z is not None and Z.ndim == Y.ndim and Z.shape[0] == n else Z
            conv(X[lo:hi], W, B, zs, act, auto_pad, dilations, group, kernel_shape, pads, strides, Y[lo:hi],
                 scratch, nhwc_in, nhwc_out, memo, pad_out, padded_in, winograd_m=wm)
        return Y
    mem = Carver(scratch)
    if nhwc_in or nhwc_out:
        if wm:                                       # a ResNet block's 3x3 between its 1x1 convolutions
            _winograd_nhwc(X, W, B, Z, act, wm, xshape, pe, Y, mem, nhwc_in, nhwc_out, padded_in, pad_out, part)
        elif _is_depthwise(c, m, group, W.shape):
            if nhwc_out and Z is not None:
                raise ValueError("a residual into a channels-last depthwise output is not supported")
            depthwise.depthwise2d_channels_last(X, W, B, Z, act, k, s, d, pb, pe, osp, Y, mem, nhwc_in, nhwc_out,
                                                memo, padded_in, part)
        elif not _pointwise(k, s, pb, pe):                  # a dense convolution (a stem) writing (H, W, C)
            if nhwc_in or group != 1 or Z is not None:
                raise ValueError("only a 1x1 or depthwise convolution reads channels-last or adds a residual to it")
            Xp = pad(X, pb, pe, out=mem.take(X.shape[:2] + tuple(a + b + e for a, b, e in zip(X.shape[2:], pb, pe)),
                                             X.dtype)) if any(pb) or any(pe) else X
            _im2col_gemm(Xp, W, B, None, act, 1, k, s, d, osp, Y, mem, nhwc_out=True, part=part)
        elif pad_out:
            _pointwise_padded(X, W, B, act, Y, nhwc_in, pad_out, mem, part)
        else:
            if nhwc_out and Z is not None and Z.shape != Y.shape:
                raise ValueError(f"a channels-last output takes a residual of its own shape {list(Y.shape)}, "
                                 f"got {list(Z.shape)}")
            _pointwise_nhwc(X, W, B, Z, act, Y, nhwc_in, nhwc_out, mem, part)
        return Y
    if Z is not None and Z.shape != Y.shape:       # a broadcast residual: expanded once, in the scratch
        Z = _expanded(Z, Y, mem)
    if _is_depthwise(c, m, group, W.shape) and len(k) == 2:
        depthwise.depthwise2d(X, W, B, Z, act, k, s, d, pb, pe, osp, Y, mem, memo, part)
        return Y
    if wm:                                         # zeros below and right up to whole tiles
        pe = tuple(e + x for e, x in zip(pe, winograd.extra_pad(X.shape, wm)))
    if part is not None and _is_depthwise(c, m, group, W.shape):
        if part[0] != 0:                           # a 1-D or 3-D depthwise: rank 0 alone
            return Y
        part = None
    Xp = X
    if wm:                                         # Winograd gathers its tiles from a channels-last copy
        Xp = winograd.pad_channels_last(X, pe, mem)
    elif any(pb) or any(pe):
        Xp = pad(X, pb, pe, out=mem.take(X.shape[:2] + tuple(a + b + e for a, b, e in zip(X.shape[2:], pb, pe)),
                                         X.dtype))
    if _is_depthwise(c, m, group, W.shape):          # 1-D and 3-D; 2-D went to depthwise.py
        _depthwise(Xp, W, k, s, d, osp, Y, mem)
        for i in range(n):
            _finish(Y[i].reshape(1, m, -1), B, Z, act, i, slice(None))
    elif wm:
        _winograd_nchw(Xp, W, B, Z, act, wm, Y, mem, part)
    else:
        _im2col_gemm(Xp, W, B, Z, act, group, k, s, d, osp, Y, mem, part=part)
    return Y


def _winograd_nhwc(X, W, B, Z, act, wm, xshape, pe, Y, mem, nhwc_in, nhwc_out, padded_in, pad_out, part):
    """Winograd with X or Y channels-last (rzrt/layout.py links it to the 1x1 convolutions around it).
    X: the padded (N, H', W', C) image the convolution before wrote (padded_in), or (N, H, W, C),
    padded here by a plain copy. Y: (N, H, W, K), or with pad_out the next Winograd convolution's
    padded input (N, H', 1, W', K), whose border is zeroed here. A residual Z needs an NCHW Y."""
    n, c, h, w = xshape
    pe = tuple(e + x for e, x in zip(pe, winograd.extra_pad(xshape, wm)))
    if padded_in:
        Xp = X.reshape(n, h + 1 + pe[0], w + 1 + pe[1], c)
    else:
        Xp = winograd.pad_channels_last(X, pe, mem, nhwc_in)
    if not nhwc_out:
        _winograd_nchw(Xp, W, B, Z, act, wm, Y, mem, part)
        return
    if Z is not None:
        raise ValueError("a residual into a channels-last Winograd output is not supported")
    if pad_out:                                          # the next 3x3 reads (N, H', W', K), zeros around
        oh, ow = h, w                                    # (3x3, stride 1, pad 1: the output is the input's size)
        Yp = Y.reshape(n, pad_out[2], pad_out[4], -1)
        if part is None or part[0] == 0:
            winograd.zero_border(Yp, oh, ow)
        Y = Yp[:, 1:1 + oh, 1:1 + ow]
    winograd.conv3x3(Xp, W, wm, Y, mem, epilogue=lambda t: _finish_tiles(t, B, act), part=part, channels_last=True)


def _winograd_nchw(Xp, W, B, Z, act, wm, Y, mem, part):
    """Winograd into an NCHW Y: bias and activation on the output tiles while they are in cache, or
    with a residual, the whole epilogue on each band of Y's rows once written."""
    if Z is None:
        winograd.conv3x3(Xp, W, wm, Y, mem, epilogue=lambda t: _finish_tiles(t, B, act), part=part)
        return
    m = W.shape[0]
    winograd.conv3x3(Xp, W, wm, Y, mem, part=part,
                     finish=lambda i, cols: _finish(Y[i].reshape(1, m, -1)[:, :, cols], B, Z, act, i, cols))


NHWC_ROWS = 4096     # pixels per GEMM band of a channels-last 1x1 output: its epilogue runs in cache


def _pointwise_nhwc(X, W, B, Z, act, Y, nhwc_in, nhwc_out, mem, part=None):
    """A 1x1 convolution with X or Y channels-last: the same GEMM, one operand transposed
    (BLAS reads the transpose in place): Y[i] (L, M) = X[i] (C, L)^T @ W^T, or Y[i] = W @ X[i] (L, C)^T.
    Writing channels-last, an expansion's bias rides in the GEMM, [X^T | 1] @ [W^T; B]; a
    projection's is added with the residual Z (then channels-last too). The GEMM runs in bands of
    NHWC_ROWS pixels so the epilogue finds each band in cache. part: this worker's pixels
    (channels-last out) or output channels (planar out)."""
    n, m = Y.shape[0], W.shape[0]
    W2 = W.reshape(m, -1)
    c = W2.shape[1]
    L = Y[0].size // m
    ones = nhwc_out and nhwc_bias_in_gemm(c, m, B is not None)
    if ones:
        xt = mem.take((L, c + 1), X.dtype)                           # [X^T | 1], one image at a time
        xt[:, c] = 1
    for i in range(n):
        x = X[i].reshape(-1, c).T if nhwc_in else X[i].reshape(c, -1)        # (C, L)
        if nhwc_out:
            lo, hi = share(L, part)
            y = Y[i].reshape(-1, m)[lo:hi]
            z = None if Z is None else Z[i].reshape(-1, m)[lo:hi]
            if ones:
                Wt = weights_with_bias_transposed(W, B)
                xt[lo:hi, :c] = x.T[lo:hi]
                rows = xt[lo:hi]
            else:
                Wt, rows = weights_transposed(W), x.T[lo:hi]
            _gemm_bands(rows, Wt, y, None if ones else B, z, act)
        else:
            y = Y[i].reshape(1, m, -1)
            Zb = Z if Z is None or Z.shape == Y.shape else np.broadcast_to(Z, Y.shape)
            if part is None:
                np.matmul(W2, x, out=y[0])
                _finish(y, B, Zb, act, i, slice(None))
                continue
            lo, hi = share(m, part)                                  # a team: this rank's output channels
            np.matmul(W2[lo:hi], x, out=y[0, lo:hi])
            _finish_part(y[:, lo:hi], None if B is None else B[lo:hi],
                         None if Zb is None else Zb[i].reshape(1, m, -1)[:, lo:hi], act)


def _pointwise_padded(X, W, B, act, Y, nhwc_in, pad_out, mem, part=None):
    """A 1x1 expansion writing the image its depthwise reads, padded and split into column phases,
    Y (N, Hp, s, width, M) (depthwise.column_phases), so the depthwise copies nothing: the GEMM runs
    over every slot of the image's rows, the padding slots with an all-zero row of [X^T | 1], whose
    output, act(0), is 0 (rzrt/layout.py makes sure). The padding rows above and below are zeroed.
    It computes (s*width - W)/W more rows (2-7% from 28x28 up) and saves the depthwise's copy.
    part: this worker's image rows."""
    pb0, pb1, hp, sw, width = pad_out
    n, m = Y.shape[0], W.shape[0]
    c = W.size // m
    h, w = (X.shape[1], X.shape[2]) if nhwc_in else (X.shape[2], X.shape[3])
    lo, hi = share(h, part)
    ones = B is not None
    xt = mem.take((h, sw, width, c + ones), X.dtype)[lo:hi]
    Wt = weights_with_bias_transposed(W, B) if ones else weights_transposed(W)
    phases = depthwise.column_phases(w, pb1, sw)
    for b, q0, q1, _ in phases:                          # the padding slots: zero rows, the ones too
        xt[:, b, :q0], xt[:, b, q1:] = 0, 0
        if ones:
            xt[:, b, q0:q1, c] = 1
    rows = xt.reshape(-1, c + ones)
    for i in range(n):
        src = (X[i] if nhwc_in else X[i].transpose(1, 2, 0))[lo:hi]                  # (rows, W, C)
        for b, q0, q1, x0 in phases:
            xt[:, b, q0:q1, :c] = src[:, x0::sw]
        if lo == 0:
            Y[i, :pb0], Y[i, pb0 + h:] = 0, 0
        _gemm_bands(rows, Wt, Y[i, pb0 + lo:pb0 + hi].reshape(-1, m), None, None, act)


def _gemm_bands(rows, Wt, y, B, z, act) -> None:
    """y = act(rows @ Wt + B + z), NHWC_ROWS rows at a time: each band's epilogue runs in cache."""
    for r0 in range(0, y.shape[0], NHWC_ROWS):
        band = y[r0:r0 + NHWC_ROWS]
        np.matmul(rows[r0:r0 + NHWC_ROWS], Wt, out=band)
        if B is not None:
            add_channels(band, B)
        if z is not None:
            band += z[r0:r0 + NHWC_ROWS]
        if act is not None:
            act(band)


_tiled_bias: dict = {}


def add_channels(y, B) -> None:
    """y (pixels, M) += B (M,). With few channels numpy's inner loop would be M long, so B is
    repeated to about 1024 values and added to rows of that many: 12544 x 16, 81 -> 32 us."""
    m = y.shape[1]
    r = -(-1024 // m)
    q = y.shape[0] // r if m < 64 and y.flags.c_contiguous else 0
    if q:
        key = (id(B), r)
        bt = _tiled_bias.get(key)
        if bt is None:
            bt = np.tile(B, r)
            if registry.is_constant(B):
                _tiled_bias[key] = bt
                weakref.finalize(B, _tiled_bias.pop, key, None)
        y[:q * r].reshape(q, r * m).__iadd__(bt)
    if q * r < y.shape[0]:
        y[q * r:] += B


def nhwc_bias_in_gemm(c, m, has_bias) -> bool:
    """A channels-last output gets its bias in the GEMM when it has more channels than the input
    (an expansion: the [X^T | 1] copy is of the smaller side); a projection adds it to its few
    channels after the GEMM instead of copying its wide input."""
    return has_bias and m > c


def _expanded(Z, Y, mem) -> np.ndarray:
    """Z broadcast to Y's shape, in a contiguous buffer the epilogues index like Y."""
    full = mem.take(Y.shape, Y.dtype)
    np.copyto(full, np.broadcast_to(Z, Y.shape))
    return full


def _finish(y, B, Z, act, i, cols):
    """The epilogue on one band y (G, M/G, columns) of image i: y = act(y + B + Z[i]),
    the channels shared among the threads."""
    if B is None and Z is None and act is None:
        return
    g, mg = y.shape[:2]

    def channels(lo, hi):
        part = y[:, lo:hi]
        if B is not None:
            part += B.reshape(g, mg, 1)[:, lo:hi]
        if Z is not None:
            part += Z[i].reshape(g, mg, -1)[:, lo:hi, cols]
        if act is not None:
            act(part)
    split(channels, mg, y.size)


def _finish_part(y, B, Z, act):
    """The epilogue on a block y of output channels: y = act(y + B + Z), B and Z cut to match."""
    if B is not None:
        y += B.reshape(1, -1, 1)
    if Z is not None:
        y += Z
    if act is not None:
        act(y)


def _finish_tiles(t, B, act):
    """The epilogue on a block t (pixels, M) of channels-last output: t = act(t + B)."""
    if B is not None:
        t += B
    if act is not None:
        act(t)


def bias_in_gemm(ck, m, group, has_bias, one_by_one) -> bool:
    """Add the bias in the GEMM: [W | B] @ [cols; 1...1] = W @ cols + B, one more row of the
    matrix instead of a pass over the output. Free when im2col builds the matrix anyway; a 1x1
    convolution has to copy its input under a ones row, which pays when the output is at least 4x
    the input (expansions: ResNet-50's conv3, MobileNetV2's): 64 -> 256 channels at 56x56,
    0.83 -> 0.62 ms."""
    return has_bias and group == 1 and (not one_by_one or m >= 4 * ck)


_with_bias: dict = {}


def weights_with_bias(W, B) -> np.ndarray:
    """[W | B] as (M, C*K + 1); kept for the session's constant weights, like Winograd's packing."""
    key = (id(W), id(B))
    hit = _with_bias.get(key)
    if hit is not None:
        return hit
    m = W.shape[0]
    WB = np.empty((m, W.size // m + 1), np.result_type(W, B))
    WB[:, :-1], WB[:, -1] = W.reshape(m, -1), B
    if registry.is_constant(W) and registry.is_constant(B):
        _with_bias[key] = WB
        for a in (W, B):                                 # forget it when either dies (ids get reused)
            weakref.finalize(a, _with_bias.pop, key, None)
    return WB


_transposed: dict = {}


def weights_transposed(W) -> np.ndarray:
    """W^T as a contiguous (C*K, M): X^T @ W^T then runs as a plain GEMM (a transposed view of W
    ran 96 -> 576 channels at 14x14 in 140 us, this in 129); kept for constant weights."""
    hit = _transposed.get(id(W))
    if hit is not None:
        return hit
    Wt = np.ascontiguousarray(W.reshape(W.shape[0], -1).T)
    if registry.is_constant(W):
        _transposed[id(W)] = Wt
        weakref.finalize(W, _transposed.pop, id(W), None)
    return Wt


def weights_with_bias_transposed(W, B) -> np.ndarray:
    """[W^T; B] as (C*K + 1, M), for a channels-last output; kept for constant weights."""
    key = (id(W), id(B), "T")
    hit = _with_bias.get(key)
    if hit is not None:
        return hit
    WtB = np.ascontiguousarray(weights_with_bias(W, B).T)
    if registry.is_constant(W) and registry.is_constant(B):
        _with_bias[key] = WtB
        for a in (W, B):
            weakref.finalize(a, _with_bias.pop, key, None)
    return WtB


OUT_BYTES = 1 << 30    # a 1x1 convolution's output band (whole images: one big GEMM beats cache-sized bands here)


def _im2col_gemm(Xp, W, B, Z, act, group, k, s, d, osp, Y, mem, nhwc_out=False, part=None):
    """Y = act(W @ im2col(Xp) + B + Z), band by band of output rows; nhwc_out (group 1, no residual):
    Y is (N, H, W, M), written by the transposed GEMM im2col^T @ [W; B]^T (rzrt/layout.py links a
    stem to the depthwise it feeds so). part (rzrt/team.py): this worker's output channels (a 1x1
    with one group, or an output under TEAM_PIXELS pixels), else its output rows."""
    n, c = Xp.shape[:2]
    m, ck, L = W.shape[0], W.shape[1] * prod(k), prod(osp)
    mg = m // group
    one_by_one = all(x == 1 for x in k) and all(x == 1 for x in s) and not nhwc_out   # (a padded 1x1 may come here)
    Wg = W.reshape(group, mg, ck)
    if one_by_one:
        width = max(64, min(L, OUT_BYTES // (m * Xp.dtype.itemsize)))
        ones = bias_in_gemm(ck, m, group, B is not None, True)
        if ones:                                         # the input under a row of ones
            Wg, xe = weights_with_bias(W, B)[None], mem.take((ck + 1, L), Xp.dtype)
            xe[ck] = 1
        if part is not None and group == 1:      # share the output channels: whole rows of Y each
            lo, hi = share(m, part)
            for i in range(n):
                x, y = Xp[i].reshape(ck, L), Y[i].reshape(1, m, L)
                if ones:
                    xe[:ck] = x
                    x = xe
                np.matmul(Wg[0][lo:hi], x, out=y[0, lo:hi])
                _finish_part(y[:, lo:hi], None if ones or B is None else B[lo:hi],
                             None if Z is None else Z[i].reshape(1, m, L)[:, lo:hi], act)
            return
        lo, hi = share(L, part)
        for i in range(n):
            x, y = Xp[i].reshape(group, ck, L), Y[i].reshape(group, mg, L)
            if ones:
                xe[:ck, lo:hi] = x[0, :, lo:hi]
                x = xe[None]
            for c0 in range(lo, hi, width):
                band = slice(c0, min(hi, c0 + width))
                for g in range(group):
                    np.matmul(Wg[g], x[g, :, band], out=y[g, :, band])
                _finish(y[:, :, band], None if ones else B, Z, act, i, band)
        return
    wins = windows(Xp, k, s, d, osp)                     # (N, C, *k, *out): a view, no copy
    nb = 1 if nhwc_out else images_per_gemm(n, c * prod(k), L, Xp.dtype.itemsize, group)
    if nb > 1:
        _wide_gemm(wins, W.reshape(m, ck), B, Z, act, nb, L, Y, mem)
        return
    rows, inner = band_rows(c * prod(k), osp, Xp.dtype.itemsize), prod(osp[1:])
    ones = bias_in_gemm(ck, m, group, B is not None, False)
    buf = mem.take((c * prod(k) + 1, rows * inner), Xp.dtype)       # + a row of ones for the bias
    if ones:
        Wg = weights_with_bias(W, B)[None]
        buf[-1] = 1
    row_axis = 1 + len(k)                                # the first output axis of wins[i]
    if nhwc_out:
        Wt = weights_with_bias_transposed(W, B) if ones else weights_transposed(W)
    by_channels = part is not None and group == 1 and not nhwc_out and L < TEAM_PIXELS
    lo, hi = (0, osp[0]) if by_channels else share(osp[0], part)       # the output rows this rank makes
    m0, m1 = share(m, part) if by_channels else (0, m)                 # and its output channels
    for i in range(n):
        y = Y[i].reshape(L, m) if nhwc_out else Y[i].reshape(group, mg, L)
        for r0 in range(lo, hi, rows):
            r1 = min(hi, r0 + rows)
            src = wins[i][(slice(None),) * row_axis + (slice(r0, r1),)]
            width = (r1 - r0) * inner
            cols = buf[:, :width]
            dst = cols[:-1].reshape(src.shape)
            split(lambda lo, hi: np.copyto(dst[lo:hi], src[lo:hi]), c, width * (cols.shape[0] - 1))   # im2col
            band = slice(r0 * inner, r1 * inner)
            if nhwc_out:                                 # Y[band] (pixels, M) = cols^T @ W^T
                yb = y[band]
                np.matmul(cols.T if ones else cols[:-1].T, Wt, out=yb)
                if B is not None and not ones:
                    add_channels(yb, B)
                if act is not None:
                    act(yb)
                continue
            if by_channels:
                np.matmul(Wg[0][m0:m1], cols if ones else cols[:-1], out=y[0, m0:m1, band])
                _finish_part(y[:, m0:m1, band], None if ones or B is None else B[m0:m1],
                             None if Z is None else Z[i].reshape(1, m, L)[:, m0:m1, band], act)
                continue
            if ones:
                np.matmul(Wg[0], cols, out=y[0, :, band])
            else:
                for g in range(group):                   # 2-D GEMMs: numpy's batched matmul skips BLAS
                    np.matmul(Wg[g], cols[g * ck:(g + 1) * ck], out=y[g, :, band])
            _finish(y[:, :, band], None if ones else B, Z, act, i, band)


def _wide_gemm(wins, W2, B, Z, act, nb, L, Y, mem):
    """im2col for nb images side by side, cols[(c, j), (image, o)], then one GEMM for them all;
    the bias add moves each image's block of the product into Y, then residual and activation."""
    n, m = Y.shape[:2]
    rank = wins.ndim // 2 - 1
    ck = W2.shape[1]
    cols_buf, prod_buf = mem.take((ck * nb * L,), wins.dtype), mem.take((m * nb * L,), Y.dtype)
    for i0 in range(0, n, nb):
        i1 = min(n, i0 + nb)
        cols, prod_ = cols_buf[:ck * (i1 - i0) * L], prod_buf[:m * (i1 - i0) * L].reshape(m, -1)
        src = np.moveaxis(wins[i0:i1], 0, 1 + rank)       # (C, *k, images, *out)
        np.copyto(cols.reshape(src.shape), src)
        np.matmul(W2, cols.reshape(ck, -1), out=prod_)
        for i in range(i0, i1):
            y, part = Y[i].reshape(1, m, L), prod_[:, (i - i0) * L:(i - i0 + 1) * L]
            if B is not None:
                np.add(part, B.reshape(m, 1), out=y[0])
            else:
                np.copyto(y[0], part)
            _finish(y, None, Z, act, i, slice(None))


DW_BLOCK_BYTES = 1 << 22    # a depthwise channel block per numpy call: bigger blocks mean fewer calls


def _depthwise(Xp, W, k, s, d, osp, Y, mem):
    """Y[n, c] = sum_j W[c, j] * Xpad[n, c, o*s + j*d]: one multiply-add per tap over a block of
    channels at a time, the channels shared among the threads.
    Half-precision outputs add up in float32 and round once, as a float32 GEMM would."""
    n, c = Xp.shape[:2]
    low = Y.dtype.itemsize < 4
    acc = np.empty(Y.shape, np.float32) if low else Y
    taps = W.reshape(c, prod(k)).astype(acc.dtype)
    tmp = np.empty(Y.shape, np.float32) if low else mem.take(Y.shape, Y.dtype)
    plane = prod(osp) * acc.dtype.itemsize
    block = max(1, DW_BLOCK_BYTES // max(plane, 1))
    bshape = (1,) * len(osp)

    def channels(lo, hi):
        for i in range(n):
            for c0 in range(lo, hi, block):
                c1 = min(hi, c0 + block)
                a, t = acc[i, c0:c1], tmp[i, c0:c1]
                for j, (_, view) in enumerate(offsets(Xp[i:i + 1, c0:c1], k, s, d, osp)):
                    w = taps[c0:c1, j].reshape((-1,) + bshape)
                    if j == 0:
                        np.multiply(view[0], w, out=a)
                    else:
                        np.multiply(view[0], w, out=t)
                        a += t
    split(channels, c, acc.size)
    if low:
        np.copyto(Y, acc, casting="unsafe")

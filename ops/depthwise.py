"""Depthwise 2-D convolution (group == channels, one filter per channel), with no im2col:

    Y[c, o] = sum over taps t of W[c, t] * Xpad[c, o*s + t*d]

numpy is fast on long contiguous loops and slow on short ones, so the output is computed on a
*wide* grid: each output row runs the full width of the (padded) input plane, and the tap (i, j)
is then just the plane read at a constant flat offset i*width + j, a 1-D view of length
rows*width. The columns past the real output width are garbage and are cropped when the
epilogue writes Y.

A stride s becomes stride 1 by splitting the padded input into s*s phase planes (polyphase):
P[a, b][r, q] = Xpad[s*r + a, s*q + b], and the tap (i, j) reads phase (i*d % s, j*d % s) at
offset (i*d // s, j*d // s). Building the phases (or, for stride 1, the padded plane) is the one
copy of the input.

For a block of channels, the K tap views are copied into a stack S[c, t, :] (long contiguous
copies) and one batched matmul does the weighted sum of each channel: Y[c] = W[c] (1 x K) @ S[c]
(K x wide). A multiply and an add per tap took twice as long on maps of 28x28 and less (192
channels at 28x28: 0.80 -> 0.41 ms). Kernel rows that read the same phase share their column
views, stacked once and long enough for each of those rows to slide down the plane: one matmul
per kernel row, and at stride 1 kw copies instead of kh*kw. The epilogue (bias, residual, activation) runs on each
channel block while it is in cache.

Small planes (at most CHANNELS_LAST_PIXELS outputs, the 14x14 and 7x7 stages), and every plane
whose neighbours rzrt/layout.py links, run channels-last instead (depthwise2d_channels_last):
the image is copied into a padded (H, W, C) buffer split into column phases (Columns), so that
each (output row, kernel row, kernel column) multiplies one contiguous run of Wo*C values, and
one einsum per phase read does every tap, Y[h, w, c] = sum_ij Xpad[h*s + i*d, w*s + j*d, c] * W[c, i, j].
Its inner loops run along whole output rows, where the planar kernel would make thousands of
tiny matmuls over rows of 7 or 14.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import numpy as np

from rzrt.ops import registry
from rzrt.ops.parallel import share
from rzrt.ops.window import prod

STACK_BYTES = 1 << 20      # the tap stack of one channel block: 1 MB beat 256 KB, 512 KB and 4 MB here


@dataclass(frozen=True)
class Layout:
    phases: tuple           # (a, b) per phase plane
    rows: int               # rows of a phase plane (one spare, for the flat views' tail)
    width: int              # columns of a phase plane = the wide output row
    stack: tuple            # (phase index, flat offset) per view copied into the stack
    span: int               # length of each stacked view
    groups: tuple           # (shift, first view, taps) per kernel row: Y[c] += W[c, taps] @ its views, shifted
    out_rows: int
    out_cols: int
    block: int              # channels per block: a stack of about STACK_BYTES

    @property
    def plane(self) -> int:
        return self.rows * self.width

    @property
    def wide(self) -> int:
        return self.out_rows * self.width


@functools.lru_cache(maxsize=1024)
def layout(x_shape, k, s, d, pb, pe, osp, acc_itemsize) -> Layout:
    h, w = x_shape[2:]
    (kh, kw), (sh, sw), (dh, dw) = k, s, d
    oh, ow = osp
    ri, cj = (kh - 1) * dh // sh, (kw - 1) * dw // sw
    width = max(-(-(w + pb[1] + pe[1]) // sw), ow + cj)
    rows = max(-(-(h + pb[0] + pe[0]) // sh), oh + ri) + 1
    phases = tuple((a, b) for a in range(sh) for b in range(sw))
    # tap (i, j) reads phase (a_i, b_j) at flat offset r_i*width + q_j. The kernel rows with the same
    # row phase a read the same kw column views, r_i rows further down: stack those views once per
    # row phase, long enough for every such row, and let each kernel row's matmul slide down them.
    # Stride 1: kw copies instead of kh*kw (192 channels at 28x28: 0.48 -> 0.34 ms).
    row = [(i * dh % sh, i * dh // sh) for i in range(kh)]                 # (a_i, r_i)
    col = [(j * dw % sw, j * dw // sw) for j in range(kw)]                 # (b_j, q_j)
    row_phases = sorted({a for a, _ in row})
    stack = tuple((phases.index((a, b)), q) for a in row_phases for b, q in col)
    span = (oh + max(r for _, r in row)) * width
    groups = tuple((r * width, row_phases.index(a) * kw, tuple(range(i * kw, (i + 1) * kw)))
                   for i, (a, r) in enumerate(row))
    block = max(1, STACK_BYTES // max(len(stack) * span * acc_itemsize, 1))
    return Layout(phases, rows, width, stack, span, groups, oh, ow, block)


# Output planes of at most this many pixels run channels-last. 3x3 kernels, one image, planar vs
# channels-last in us: 960ch 7x7 352 vs 134, 576ch 14x14 456 vs 346, 576ch 14x14 stride 2 337 vs 135,
# 192ch 28x28 431 vs 518 (5x5 and 7x7 kernels: the same split, wider margins).
CHANNELS_LAST_PIXELS = 256


def channels_last(osp, itemsize) -> bool:
    return prod(osp) <= CHANNELS_LAST_PIXELS and itemsize >= 4     # half precision adds up in float32: planar


# With no transposes to pay (rzrt/layout.py links the 1x1 convolutions on both sides), channels-last
# wins on every plane and stride once a pixel holds a few vectors of channels. 3x3, one image,
# planar vs linked channels-last in us: 32ch 112x112 819 vs 760, 144ch 56x56 1072 vs 815, 96ch
# 112x112 stride 2 1426 vs 991, 144ch 56x56 stride 2 625 vs 364, 192ch 28x28 438 vs 308;
# 16ch 112x112 418 vs 429 (5x5: the same split).
LINKED_MIN_CHANNELS = 32


def channels_last_linked(c, itemsize) -> bool:
    return itemsize >= 4 and c >= LINKED_MIN_CHANNELS


def scratch_pieces(x_shape, k, s, d, pb, pe, osp, itemsize) -> list:
    if channels_last(osp, itemsize):
        return channels_last_pieces(x_shape, k, s, d, pb, pe, osp, itemsize)
    acc = max(itemsize, 4)
    lay = layout(tuple(x_shape), k, s, d, pb, pe, osp, acc)
    c = x_shape[1]
    cb = min(c, lay.block)
    return [((len(lay.phases), c, lay.plane), itemsize), ((cb, len(lay.stack), lay.span), acc),
            ((cb, lay.wide), acc), ((cb, lay.wide), acc)]


def fill_phases(x, planes, lay: Layout, s, pb) -> None:
    """planes[p] = phase p of the zero-padded image x (C, H, W); borders zeroed, the rest copied."""
    h, w = x.shape[1:]
    for p, (a, b) in enumerate(lay.phases):
        plane = planes[p].reshape(-1, lay.rows, lay.width)
        r0, q0 = max(0, -(-(pb[0] - a) // s[0])), max(0, -(-(pb[1] - b) // s[1]))   # first rows/cols on x
        x0, y0 = s[0] * r0 + a - pb[0], s[1] * q0 + b - pb[1]
        src = x[:, x0::s[0], y0::s[1]]
        nr, nq = min(src.shape[1], lay.rows - r0), min(src.shape[2], lay.width - q0)
        plane[:, :r0] = 0
        plane[:, r0 + nr:] = 0
        plane[:, r0:r0 + nr, :q0] = 0
        plane[:, r0:r0 + nr, q0 + nq:] = 0
        plane[:, r0:r0 + nr, q0:q0 + nq] = src[:, :nr, :nq]


def depthwise2d(X, W, B, Z, act, k, s, d, pb, pe, osp, Y, mem, memo=None, part=None) -> None:
    """Y = act(depthwise(X, W) + B + Z), channel block by channel block; part: this worker's
    channels (rzrt/team.py)."""
    n, c = X.shape[:2]
    if channels_last(osp, Y.dtype.itemsize) and X.dtype == Y.dtype:
        return depthwise2d_channels_last(X, W, B, Z, act, k, s, d, pb, pe, osp, Y, mem, memo=memo, part=part)
    clo, chi = share(c, part)
    acc_dtype = np.float32 if Y.dtype.itemsize < 4 else Y.dtype      # half precision adds up in float32
    lay = layout(X.shape, k, s, d, pb, pe, osp, np.dtype(acc_dtype).itemsize)
    taps = W.reshape(c, 1, prod(k)).astype(acc_dtype)
    weights = [np.ascontiguousarray(taps[:, :, list(t)]) for _, _, t in lay.groups]   # (C, 1, kw) per row
    planes = mem.take((len(lay.phases), c, lay.plane), X.dtype)
    cb = min(c, lay.block)
    stack_buf = mem.take((cb, len(lay.stack), lay.span), acc_dtype)
    acc_buf, tmp_buf = mem.take((cb, lay.wide), acc_dtype), mem.take((cb, lay.wide), acc_dtype)
    L, ow = lay.wide, lay.out_cols
    for i in range(n):
        fill_phases(X[i], planes, lay, s, pb)
        for c0 in range(clo, chi, cb):
            c1 = min(chi, c0 + cb)
            stack, acc, tmp = stack_buf[:c1 - c0], acc_buf[:c1 - c0], tmp_buf[:c1 - c0]
            for t, (p, off) in enumerate(lay.stack):         # S[c, t] = a flat view of a plane
                np.copyto(stack[:, t], planes[p, c0:c1, off:off + lay.span])
            for g, (shift, v, t) in enumerate(lay.groups):   # Y[c] = sum over kernel rows of W[c, row] @ S[c, row]
                np.matmul(weights[g][c0:c1], stack[:, v:v + len(t), shift:shift + L], out=(tmp if g else acc)[:, None])
                if g:
                    acc += tmp
            wide = acc.reshape(c1 - c0, lay.out_rows, lay.width)[:, :, :ow]      # crop the garbage columns
            y = Y[i, c0:c1]
            if B is not None:
                np.add(wide, B[c0:c1].reshape(-1, 1, 1), out=y)
            else:
                np.copyto(y, wide, casting="same_kind")
            if Z is not None:
                y += Z[i, c0:c1]
            if act is not None:
                act(y)


@dataclass(frozen=True)
class Columns:
    """The padded channels-last image split into s column phases, P[r, b, q, c] = Xpad[r, q*s + b, c]:
    kernel column j then reads one contiguous run of Wo*C values per output row, from phase
    b_j = j*d % s at column q_j = j*d // s. The columns reading one phase sit at q0, q0 + step, ..."""
    stride: int              # s, the column stride
    width: int               # columns per phase
    groups: tuple            # (phase b, q0, step, kernel columns j) per phase read


@functools.lru_cache(maxsize=1024)
def columns(wp, kw, sw, dw) -> Columns:
    by_phase = {}
    for j in range(kw):
        by_phase.setdefault(j * dw % sw, []).append((j, j * dw // sw))
    groups = []
    for b, jq in sorted(by_phase.items()):
        qs = [q for _, q in jq]
        step = qs[1] - qs[0] if len(qs) > 1 else 1           # an arithmetic run: j steps by s/gcd(s, d)
        groups.append((b, qs[0], step, tuple(j for j, _ in jq)))
    return Columns(sw, -(-wp // sw), tuple(groups))


def channels_last_pieces(x_shape, k, s, d, pb, pe, osp, itemsize, padded_in=False) -> list:
    """The channels-last kernel's scratch: its output, a second output-sized buffer when the kernel
    columns read more than one phase, and the padded image in column phases (unless the
    expansion before wrote X so: padded_in)."""
    hp, wp = (x + b + e for x, b, e in zip(x_shape[2:], pb, pe))
    cols, c = columns(wp, k[1], s[1], d[1]), x_shape[1]
    out = prod(osp) * c
    pieces = [((out,), itemsize), ((out if len(cols.groups) > 1 else 0,), itemsize)]
    return pieces if padded_in else pieces + [((hp, cols.stride, cols.width, c), itemsize)]


def padded_shape(x_shape, k, s, d, pb, pe) -> tuple:
    """(N, Hp, s, width, C): the padded image in column phases, as the channels-last kernel reads it."""
    n, c, h, w = x_shape
    cols = columns(w + pb[1] + pe[1], k[1], s[1], d[1])
    return (n, h + pb[0] + pe[0], cols.stride, cols.width, c)


_tiled: dict = {}


def tiled_taps(W, k, ow, cols: Columns, dtype) -> list:
    """Per phase read: the taps W[c, i, j] of its kernel columns, repeated along the output row,
    (kh, len(js), Wo*C), to match the runs einsum multiplies; kept for constant weights."""
    key = (id(W), tuple(k), ow, cols.groups, np.dtype(dtype).str)
    hit = _tiled.get(key)
    if hit is not None:
        return hit
    c = W.shape[0]
    taps = W.reshape(c, *k).transpose(1, 2, 0).astype(dtype)                    # (kh, kw, C)
    out = []
    for _, _, _, js in cols.groups:
        t = taps[:, list(js)]                                                    # (kh, nj, C)
        out.append(np.ascontiguousarray(np.broadcast_to(t[:, :, None], t.shape[:2] + (ow, c))).reshape(
            t.shape[0], t.shape[1], ow * c))
    if registry.is_constant(W):
        _tiled[key] = out
        weakref.finalize(W, _tiled.pop, key, None)
    return out


@dataclass
class ChannelsLastPlan:
    """Everything depthwise2d_channels_last derives from the shapes, the weights and the buffers,
    made once per node (kept in the step's memo) so that a run is mostly its numpy calls: a linked
    depthwise call took 26 us outside numpy's loops, 14 with its plan kept."""
    keep: tuple              # X, Y, the scratch and W: alive while the plan is, so their ids stay theirs
    cols: Columns
    zeros: list              # views of the padded copy's border, zeroed each run (the scratch is shared)
    fills: list              # per image: (destination, source) copies of the image into the padded copy
    views: list              # per image: the einsum's operand view per phase read (the first writes y)
    wts: list                # the tiled taps per phase read (None when W is not a constant)
    ys: list                 # per image: the einsum output, (Ho, Wo*C)
    tmp: np.ndarray
    epilogue: list           # per image: (the sum as (C, Ho, Wo), Y[i]) for an NCHW output, else (None, Y[i])
    taps_fixed: bool         # W is a constant: the tiled taps are part of the plan
    bias: list               # [B, B repeated along an output row (Wo*C)] for a constant B, once seen


def _address(a):
    return None if a is None else a.__array_interface__["data"][0]


def depthwise2d_channels_last(X, W, B, Z, act, k, s, d, pb, pe, osp, Y, mem, nhwc_in=False, nhwc_out=False,
                              memo=None, padded_in=None, part=None) -> None:
    """Y = act(depthwise(X, W) + B + Z), channels innermost:
    Y[h, w, c] = sum_ij Xpad[h*s + i*d, w*s + j*d, c] * W[c, i, j].
    The padded image is copied into column phases (Columns), so that for each output row h, kernel
    row i and kernel column j the values multiplied form one contiguous run of Wo*C: one einsum per
    phase read does every tap with long inner loops (192ch 28x28: 422 -> 247 us over an einsum on
    the (h, w, i, j, c) window, whose inner loop was the C channels of one pixel).
    X and Y are NCHW, transposed in and out here, unless nhwc_in / nhwc_out say they are already
    channels-last (N, H, W, C) (rzrt/layout.py: a MobileNet block's 1x1 convolutions read and write them so).
    memo: a dict that lives with the node (the session's `_memo`), where the plan is kept.
    padded_in: (H, W) when X is already the padded image in column phases, (N, Hp, s, width, C),
    written so by the 1x1 expansion before it (conv._pointwise_padded): no copy, no border to zero.
    part = (rank, ranks): only this worker's share of the output rows (rzrt/team.py)."""
    if mem.buf is None:                  # no memory plan: fresh buffers every run, nothing worth keeping
        memo = None
    # where the data is, not which objects hold it: a share of a batch (rzrt/batch.py, team.py) gets
    # new views of the same bytes every run, and a freed object's id may come back for other bytes
    key = (_address(X), _address(Y), _address(mem.buf), id(W), X.shape, X.strides, Y.shape, Y.strides, k, s, d,
           pb, pe, nhwc_in, nhwc_out)
    plan = memo.get(key) if memo is not None else None
    if plan is None:
        plan = _channels_last_plan(X, W, k, s, d, pb, pe, osp, Y, mem, nhwc_in, nhwc_out, padded_in)
        if memo is not None:
            if len(memo) >= 4:               # inputs that change every run (a graph input): do not hoard
                memo.clear()
            memo[key] = plan
    for z in plan.zeros:
        z.fill(0)
    wts = plan.wts if plan.taps_fixed else tiled_taps(W, k, osp[1], plan.cols, Y.dtype)
    tmp = plan.tmp
    lo, hi = share(osp[0], part)
    rows = slice(lo, hi)
    for i, (fills, views, y, (a, yi)) in enumerate(zip(plan.fills, plan.views, plan.ys, plan.epilogue)):
        for dst, src in fills:
            np.copyto(dst, src)
        y, t = y[rows], tmp[rows] if tmp.size else tmp
        for g, (view, wt) in enumerate(zip(views, wts)):
            np.einsum("hijk,ijk->hk", view[rows], wt, out=y if g == 0 else t)
            if g:
                y += t
        if a is None:                                    # channels-last out (no residual: conv() refuses one)
            if B is not None:                            # a row of B: long inner loops (56x56x144: 83 -> 43 us)
                y += _bias_row(plan, B, osp[1])
            yi = y
        else:
            a, yi = a[:, rows], yi[:, rows]
            if B is not None:
                np.add(a, B.reshape(-1, 1, 1), out=yi)
            else:
                np.copyto(yi, a)
            if Z is not None:
                yi += Z[i][:, rows]
        if act is not None:
            act(yi)


def column_phases(w, pb, sw) -> list:
    """(b, q0, q1, x0) per column phase b of an image w wide padded by pb on the left: its columns
    q0..q1-1 hold the image's columns x0, x0 + sw, ... (the rest is padding)."""
    phases = []
    for b in range(sw):
        q0 = max(0, -(-(pb - b) // sw))                      # the first column of phase b on the image
        x0 = q0 * sw + b - pb
        phases.append((b, q0, q0 + len(range(x0, w, sw)), x0))
    return phases


def _channels_last_plan(X, W, k, s, d, pb, pe, osp, Y, mem, nhwc_in, nhwc_out, padded_in=None) -> ChannelsLastPlan:
    n, c = X.shape[0], W.shape[0]
    h, w = padded_in or (X.shape[1:3] if nhwc_in else X.shape[2:])
    (kh, kw), (sh, sw), (dh, dw) = k, s, d
    oh, ow = osp
    hp, wp = h + pb[0] + pe[0], w + pb[1] + pe[1]
    cols = columns(wp, kw, sw, dw)
    acc, tmp = mem.take((oh, ow * c), Y.dtype), mem.take((oh, ow * c) if len(cols.groups) > 1 else (0,), Y.dtype)
    if padded_in:                                        # the expansion wrote X padded and phased: read it
        xps, zeros, fills = [X[i] for i in range(n)], [], [[] for _ in range(n)]
    else:
        xp = mem.take((hp, sw, cols.width, c), X.dtype)
        zeros = [xp[:pb[0]], xp[pb[0] + h:]]             # the zero border: the same places for every image
        phases = column_phases(w, pb[1], sw)
        for b, q0, q1, _ in phases:
            zeros += [xp[pb[0]:pb[0] + h, b, :q0], xp[pb[0]:pb[0] + h, b, q1:]]
        zeros = [z for z in zeros if z.size]
        fills = []
        for i in range(n):
            src = X[i] if nhwc_in else X[i].transpose(1, 2, 0)                      # (H, W, C)
            fills.append([(xp[pb[0]:pb[0] + h, b, q0:q1], src[:, x0::sw]) for b, q0, q1, x0 in phases])
        xps = [xp] * n
    item, row = X.itemsize, sw * cols.width * c
    views = [[np.ndarray((oh, kh, len(js), ow * c), xp.dtype, buffer=xp, offset=(b * cols.width + q0) * c * item,
                         strides=(sh * row * item, dh * row * item, step * c * item, item))
              for b, q0, step, js in cols.groups] for xp in xps]
    fixed = registry.is_constant(W)
    wts = tiled_taps(W, k, ow, cols, Y.dtype) if fixed else None
    ys = [Y[i].reshape(oh, ow * c) if nhwc_out else acc for i in range(n)]
    a = None if nhwc_out else acc.reshape(oh, ow, c).transpose(2, 0, 1)
    epilogue = [(a, Y[i]) for i in range(n)]
    return ChannelsLastPlan((X, Y, mem.buf, W), cols, zeros, fills, views, wts, ys, tmp, epilogue, fixed,
                            [None, None])


def _bias_row(plan: ChannelsLastPlan, B, ow) -> np.ndarray:
    if plan.bias[0] is B:
        return plan.bias[1]
    row = np.tile(B, ow)
    if registry.is_constant(B):
        plan.bias[:] = [B, row]
    return row

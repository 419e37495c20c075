"""Channels-last inside a MobileNet block, decided per plan (the shapes are known then).

    x -> 1x1 conv (E) -> depthwise (D) -> 1x1 conv (P) -> y

(E may also be a network's stem, a strided 3x3 run by im2col, which writes (H, W, C) just as well.)

Likewise 3x3 -> 3x3, both run by Winograd (ResNet-18's blocks, VGG): the first writes its output
tiles into the second's zero-padded (N, H', 1, W', C) input (runs of C values, where NCHW takes one
per channel plane), and the second reads it with no padding copy.

A depthwise convolution on a small plane runs channels-last (ops/depthwise.py), so on its own it
transposes its input to (H, W, C) and its output back. When its input comes from a 1x1
convolution read by nothing else, that convolution writes (H, W, C) directly: the same GEMM,
transposed, Y^T = X^T W^T, at no extra cost. Likewise a 1x1 convolution that alone reads the
depthwise output reads it as (H, W, C). Both transposes go: 0.5-1 ms of MobileNetV2's 15.

A squeeze-excitation between the depthwise and the projection (MobileNetV3, EfficientNet: a
GlobalAveragePool of the depthwise output, two 1x1 convolutions on the pooled vector, and a Mul
scaling the depthwise output's channels by the result) is followed through: the pool averages
(H, W, C) and the Mul broadcasts the (N, C, 1, 1) gate as (N, 1, 1, C).

From PADDED_MIN_PIXELS up, E writes D's padded image in column phases, (N, Hp, s, width, C), the
padding slots computed from zero rows (act(0) must be 0), and D copies nothing (_pad_out / _padded_in).

Between blocks (_chains): a projection whose output every reader can take channels-last (the
next expansion, the next projection's residual, a global pool) writes it so, with the plain GEMM
X^T @ W^T, and the next block's residual adds in that layout: 0.96x on MobileNetV2, 0.95x MnasNet.

The values between them change layout, so their planned shapes become (N, H, W, C); the step
kwargs _nhwc_in / _nhwc_out / _nhwc_gate tell the kernels (a channels-last output's residual is
channels-last too). Only rzrt's own Conv / FusedConv kernels, and only where no graph output or
other reader sees the channels-last value.
"""
from __future__ import annotations

import dataclasses

from rzrt.ops import conv as convops
from rzrt.ops import depthwise, winograd
from rzrt.ops.registry import is_rzrt_kernel

CONVS = {("", "Conv"), ("rzrt", "FusedConv")}
LAYOUT_FLAGS = ("_nhwc_in", "_nhwc_out", "_nhwc_gate", "_pad_out", "_padded_in")   # kwargs kernels and scratch rules read

# From this many pixels an expansion writes its depthwise's padded, column-phased input directly
# (saving the depthwise's copy of it) instead of plain (H, W, C): its GEMM then also computes the
# padding slots, (s*width - W)/W more rows, 2-7% from 28x28 up but 14-29% at 14x14 and 7x7.
PADDED_MIN_PIXELS = 28 * 28
WINOGRAD_LINKS = True   # a Winograd 3x3 read only by another writes its padded channels-last input
ZERO_AT_ZERO = {"", "Relu", "Tanh", "HardSwish", "Silu", "LeakyRelu"}     # act(0) == 0 (and Clip around 0)


def _zero_at_zero(step) -> bool:
    act = step.kwargs.get("activation", "")
    if act == "Clip":
        lo, hi = step.kwargs.get("activation_params", (None, None))
        return lo is not None and lo <= 0 <= hi
    return act in ZERO_AT_ZERO


def _conv_info(step, shapes):
    """(logical x shape, w shape, geometry) of a builtin 2-D convolution step, else None."""
    node = step.node
    if (node.domain, node.op_type) not in CONVS or not is_rzrt_kernel(step.kernel):
        return None
    x, w = (shapes.get(n) for n in step.inputs[:2])
    if x is None or w is None or len(x[0]) != 4 or len(w[0]) != 4:
        return None
    kw = step.kwargs
    try:
        geo = convops.conv_geometry(x[0], w[0], kw.get("kernel_shape"), kw.get("strides"), kw.get("dilations"),
                                    kw.get("pads"), kw.get("auto_pad", "NOTSET"))
    except Exception:
        return None
    return x, w, geo


def _has_residual(step) -> bool:
    return len(step.inputs) > 3 and bool(step.inputs[3])


def _pointwise(step, shapes) -> bool:
    info = _conv_info(step, shapes)
    if info is None:
        return False
    _, w, (k, s, _, pb, pe, _) = info
    return step.kwargs.get("group", 1) == 1 and k == (1, 1) and s == (1, 1) and not any(pb) and not any(pe)


def _dense_stem(step, shapes) -> bool:
    """A plain (group 1) convolution that is not 1x1 and that im2col runs, e.g. MobileNetV2's stem:
    it can write (H, W, C) with the transposed GEMM. (Winograd's convolutions write NCHW tiles.)"""
    info = _conv_info(step, shapes)
    if info is None or _pointwise(step, shapes) or _has_residual(step):
        return False
    (xs, xdt), (ws, _), _ = info
    kw = step.kwargs
    return kw.get("group", 1) == 1 and ws[1] == xs[1] and xdt.kind == "f" and winograd.tile_size(
        xs, ws, 1, kw.get("kernel_shape"), kw.get("strides"), kw.get("dilations"), kw.get("pads"),
        kw.get("auto_pad", "NOTSET"), xdt) == 0


def _winograd(step, shapes) -> int:
    """m when Winograd's F(m x m, 3 x 3) runs this convolution (ops/winograd.py), else 0: it can read
    and write channels-last."""
    info = _conv_info(step, shapes)
    if info is None or not convops.WINOGRAD:
        return 0
    (xs, xdt), (ws, _), _ = info
    kw = step.kwargs
    if xdt.kind != "f":
        return 0
    return winograd.tile_size(xs, ws, kw.get("group", 1), kw.get("kernel_shape"), kw.get("strides"),
                              kw.get("dilations"), kw.get("pads"), kw.get("auto_pad", "NOTSET"), xdt)


def _winograd_padded(xs, m) -> tuple:
    """(N, H', 1, W', C): the padded channels-last image F(m x m, 3 x 3) reads (pad 1, then zeros up
    to whole tiles), in the (N, Hp, s, width, C) form of a 1x1 convolution's pad_out (s = 1)."""
    n, c, h, w = xs
    eh, ew = winograd.extra_pad(xs, m)
    return (n, h + 2 + eh, 1, w + 2 + ew, c)


def _depthwise(step, shapes):
    """'small' for a depthwise convolution that runs channels-last anyway (a small plane), 'linked'
    for one that does when both its neighbours are linked, else None."""
    info = _conv_info(step, shapes)
    if info is None or _has_residual(step):
        return None
    (xs, xdt), (ws, _), (_, _, _, _, _, osp) = info
    if not (convops._is_depthwise(xs[1], ws[0], step.kwargs.get("group", 1), ws) and xdt.kind == "f"):   # group > 1
        return None
    if depthwise.channels_last(osp, xdt.itemsize):
        return "small"
    return "linked" if depthwise.channels_last_linked(xs[1], xdt.itemsize) else None


# Below this many output pixels a 1x1 convolution writes NCHW: W @ X^T then beats X^T @ W^T
# (7x7, 960 -> 160 channels: 129 vs 166 us), while from 14x14 up channels-last halves it.
CHAIN_MIN_PIXELS = 196


def _chains(steps, shapes, outputs, producer, readers, marks, mark) -> None:
    """Between blocks: a 1x1 convolution's output stays channels-last when every reader takes it
    so: a 1x1 convolution as its X, or as its residual Z when that convolution's output is
    channels-last too, a depthwise already linked to read it, or a GlobalAveragePool; and when its
    own input is channels-last. Then a block's projection writes (H, W, C) with the plain GEMM
    X^T @ W^T, which BLAS runs up to twice as fast as W @ X^T on its channels-last input (28x28,
    192 -> 32 channels with the residual: 119 -> 87 us), and the next expansion reads it as it is.
    (From an NCHW input it does not pay: 112x112, 32 -> 16, 159 vs 187 us.) Found as a fixpoint:
    drop every candidate that a reader cannot take or whose input or residual stays NCHW, until
    none is dropped."""
    def pointwise(i):
        return _pointwise(steps[i], shapes) and shapes[steps[i].inputs[0]][1].kind == "f"

    def residual(i):
        return steps[i].inputs[3] if _has_residual(steps[i]) else ""

    cand = set()
    for i, s in enumerate(steps):
        y = s.outputs[0] if s.outputs else ""
        if not y or y in outputs or not pointwise(i) or marks.get(i, {}).get("_nhwc_out"):
            continue
        n, c, hh, ww = shapes[y][0]
        z = residual(i)
        if hh * ww >= CHAIN_MIN_PIXELS and (not z or shapes.get(z) == shapes[y]):
            cand.add(i)

    def takes(r, v) -> bool:
        st, flags = steps[r], marks.get(r, {})
        if st.node.op_type == "GlobalAveragePool" and not st.node.domain and is_rzrt_kernel(st.kernel):
            return True
        if _depthwise(st, shapes) is not None:
            return flags.get("_nhwc_in", False) and st.inputs[0] == v
        if not pointwise(r):
            return False
        x, z = st.inputs[0], residual(r)
        return (x == v) != (z == v) and (x == v or r in cand)

    dropped = True
    while dropped:
        dropped = False
        for i in sorted(cand):
            v, x, z = steps[i].outputs[0], steps[i].inputs[0], residual(i)
            x_nhwc = marks.get(i, {}).get("_nhwc_in") or producer.get(x) in cand     # from NCHW it does not pay
            if not x_nhwc or not all(takes(r, v) for r in readers.get(v, [])) or (z and producer.get(z) not in cand):
                cand.discard(i)
                dropped = True
    for i in cand:
        v = steps[i].outputs[0]
        mark(i, _nhwc_out=True)
        for r in readers.get(v, []):
            if steps[r].inputs[0] == v:
                mark(r, _nhwc_in=True)


def channels_last_blocks(steps: list, shapes: dict, outputs) -> list:
    """Mark the 1x1 -> depthwise -> 1x1 links that can stay channels-last: returns the steps (copies
    where changed, kwargs extended) and updates `shapes` of the values that became (N, H, W, C)."""
    outputs = set(outputs)
    producer, readers = {}, {}
    for i, s in enumerate(steps):
        for o in s.outputs:
            if o:
                producer[o] = i
        for x in s.inputs:
            if x:
                readers.setdefault(x, []).append(i)
    marks, relaid, padded = {}, [], {}

    def mark(i, **flags):
        marks.setdefault(i, {}).update(flags)

    def private(value, reader) -> bool:
        return value not in outputs and readers.get(value) == [reader]

    def projection(value, reader) -> bool:
        """`reader`, alone reading `value` (as its X), is a 1x1 convolution."""
        return reader is not None and private(value, reader) and _pointwise(steps[reader], shapes) \
            and steps[reader].inputs[0] == value

    def squeeze_excite(y):
        """y's readers are a GlobalAveragePool and a Mul by a (N, C, 1, 1) gate whose product goes
        to a 1x1 convolution alone: (pool, mul, gate index, projection), else None."""
        if y in outputs or len(readers.get(y, [])) != 2:
            return None
        pool, mul = sorted(readers[y], key=lambda r: steps[r].node.op_type != "GlobalAveragePool")
        ps, ms = steps[pool], steps[mul]
        if (ps.node.op_type, ms.node.op_type) != ("GlobalAveragePool", "Mul") or ps.node.domain or ms.node.domain \
                or not all(is_rzrt_kernel(st.kernel) for st in (ps, ms)):
            return None
        if len(ms.inputs) != 2 or y not in ms.inputs or ms.inputs[0] == ms.inputs[1]:
            return None
        g = 1 - ms.inputs.index(y)
        gate, ys = shapes.get(ms.inputs[g]), shapes.get(y)
        if gate is None or ys is None or len(gate[0]) != 4 or gate[0][1:] != (ys[0][1], 1, 1) \
                or gate[0][0] not in (1, ys[0][0]) or gate[1] != ys[1]:
            return None
        z = ms.outputs[0]
        p = readers.get(z, [None])[0]
        return (pool, mul, g, p) if projection(z, p) else None

    for i, s in enumerate(steps):
        kind = _depthwise(s, shapes)
        if kind is None:
            continue
        x, y = s.inputs[0], s.outputs[0]
        e, p = producer.get(x), readers.get(y, [None])[0]
        link_in = e is not None and private(x, i) and not _has_residual(steps[e]) and (
            _pointwise(steps[e], shapes) or _dense_stem(steps[e], shapes))
        link_out = projection(y, p)
        se = None if link_out else squeeze_excite(y)
        if kind == "linked" and not (link_in and (link_out or se)):
            continue                                  # a larger plane pays for channels-last only untransposed
        if link_in:
            mark(e, _nhwc_out=True)
            mark(i, _nhwc_in=True)
            (xs, xdt), (ws, _), (k, st, dl, pb, pe, _) = _conv_info(s, shapes)
            if _pointwise(steps[e], shapes) and xs[2] * xs[3] >= PADDED_MIN_PIXELS and _zero_at_zero(steps[e]):
                ps = depthwise.padded_shape(xs, k, st, dl, pb, pe)    # (N, Hp, s, width, C)
                mark(e, _pad_out=(pb[0], pb[1], ps[1], ps[2], ps[3]))
                mark(i, _padded_in=(xs[2], xs[3]))
                padded[x] = (ps, xdt)
        if link_out:
            mark(i, _nhwc_out=True)
            mark(p, _nhwc_in=True)
        elif se:                                      # through the squeeze-excitation: pool and gate read NHWC
            pool, mul, g, p = se
            mark(i, _nhwc_out=True)
            mark(pool, _nhwc_in=True)
            mark(mul, _nhwc_gate=g)
            mark(p, _nhwc_in=True)
            relaid.append(steps[mul].outputs[0])
    for i, s in enumerate(steps):                     # 3x3 -> 3x3 (ResNet-18's blocks, VGG): Winograd to Winograd
        y = s.outputs[0] if s.outputs else ""
        if not WINOGRAD_LINKS or not y or y in outputs or _has_residual(s) or not _winograd(s, shapes):
            continue
        p = readers.get(y, [None])[0]
        if p is None or not private(y, p) or steps[p].inputs[0] != y or marks.get(p, {}).get("_nhwc_in"):
            continue
        m = _winograd(steps[p], shapes)
        if m:                                         # i writes the padded (H', W', C) image p reads
            ys, ydt = shapes[y]
            ps = _winograd_padded(ys, m)
            mark(i, _nhwc_out=True, _pad_out=(1, 1, ps[1], 1, ps[3]))
            mark(p, _nhwc_in=True, _padded_in=(ys[2], ys[3]))
            padded[y] = (ps, ydt)
    _chains(steps, shapes, outputs, producer, readers, marks, mark)
    out = list(steps)
    for i, flags in marks.items():
        out[i] = dataclasses.replace(steps[i], kwargs=dict(steps[i].kwargs, **flags))
        if flags.get("_nhwc_out"):
            relaid.append(steps[i].outputs[0])
    for name in relaid:
        (n, c, h, w), dt = shapes[name]
        shapes[name] = ((n, h, w, c), dt)
    shapes.update(padded)
    return out

"""Winograd convolution for 3x3, stride 1, pad 1, ungrouped convolutions: fewer multiplications.

An m x m output tile needs an (m+2) x (m+2) input tile d. With the constant matrices of
F(m x m, 3 x 3) (Lavin & Gray, 2015):

    U = G W G^T          (each filter, once, at first use: "pre-packed")
    V = B^T d B          (each input tile)
    Y = A^T (U . V) A    (. = elementwise over the (m+2)^2 positions, summed over channels)

The channel sum at each of the (m+2)^2 positions is a GEMM: M[p] = V[p] @ U[p], with the
tiles as rows and the channels as columns (channels last), so the whole convolution is
(m+2)^2 GEMMs of tiles x C x K instead of one of K x 9C x pixels:
F(4x4, 3x3) does 36 multiplications per 16 outputs where im2col does 144 (4x fewer),
F(2x2, 3x3) 16 per 4 (2.25x fewer). The transforms are small matrix products over the
tile axes. Tiles are processed in chunks so the buffers fit the planned scratch; bias and
activation are applied to each chunk's output tiles while they are in cache.

Non-finite inputs: the transforms multiply every input of a tile by some zero coefficients, and
0 * inf = NaN, so one NaN or inf pixel turns its whole output tile (and its neighbours') to NaN,
where direct convolution keeps it to the outputs whose window reads it.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np
from numpy.lib.stride_tricks import as_strided

from rzrt.ops import registry
from rzrt.ops.parallel import share

F = {
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
}
TILES = 64         # tiles per chunk: with channels-last tiles, 64 beat 128 at batch 8 (ResNet-50 670 vs 726 ms,
                   # ResNet-18 279 vs 302 ms, interleaved) and tied at batch 1; 32 tied with 64
PACKED_MAX_BYTES = 24 << 20   # packed filters are kept for the session: F(4x4) on 512x512 filters would
                              # keep 38 MB per layer (4x the weights), so such layers take F(2x2) (17 MB)
MIN_TILES = 32     # fewer tiles than this (a small map at batch 1): the GEMMs are too thin, and the packed
                   # filters, (m+2)^2/9 times the weights, cost more to stream from memory than they save
_packed: dict = {}
_packing = threading.Lock()


def tile_size(x_shape, w_shape, group, kernel_shape, strides, dilations, pads, auto_pad, dtype) -> int:
    """m for F(m x m, 3 x 3) when Winograd applies and pays here, else 0."""
    if np.dtype(dtype).kind != "f" or np.dtype(dtype).itemsize < 4:   # float16: too few bits for the transforms
        return 0
    if len(w_shape) != 4 or tuple(w_shape[2:]) != (3, 3) or len(x_shape) != 4 or group != 1 or auto_pad not in ("NOTSET", "", None):
        return 0
    if any(v != 1 for v in (strides or (1, 1))) or any(v != 1 for v in (dilations or (1, 1))):
        return 0
    if tuple(pads or (0, 0, 0, 0)) != (1, 1, 1, 1) or w_shape[1] < 32 or w_shape[0] < 32:
        return 0
    n, _, h, w = x_shape
    best, gain = 0, 1.5                  # Winograd must cut the multiplications by at least this much
    for m in (4, 2):
        th, tw = -(-h // m), -(-w // m)  # tiles; a partial last tile computes a few outputs for nothing
        if th < 2 or tw < 2 or n * th * tw < MIN_TILES:
            continue
        if (m + 2) ** 2 * w_shape[0] * w_shape[1] * np.dtype(dtype).itemsize > PACKED_MAX_BYTES:
            continue
        g = 9 * h * w / ((m + 2) ** 2 * th * tw)   # multiplications: im2col's over Winograd's
        if g > gain:
            best, gain = m, g
    return best


def extra_pad(x_shape, m) -> tuple:
    """Zeros to add below and right of the input so that whole m x m tiles cover the output."""
    return tuple(-(-d // m) * m - d for d in x_shape[2:])


def pack(W: np.ndarray, m: int) -> np.ndarray:
    """U = G W G^T for every filter, as (a*a, C, K): the right-hand factor of each V[p] @ U[p].

    The session's constant weights (registry.mark_constant: its initializers) are packed once
    and the result kept while W lives; any other weights are packed at every call."""
    key = (id(W), m)
    hit = _packed.get(key)
    if hit is not None:
        return hit
    with _packing:                       # threads sharing a batch (rzrt/batch.py) pack each filter once
        hit = _packed.get(key)
        if hit is not None:
            return hit
        _, G, _ = F[m]
        a = m + 2
        U = np.einsum("xi,kcij,yj->xyck", G, W.astype(np.float64), G).reshape(a * a, W.shape[1], W.shape[0])
        U = np.ascontiguousarray(U.astype(W.dtype))
        if registry.is_constant(W):
            _packed[key] = U
            weakref.finalize(W, _packed.pop, key, None)
        return U


def chunks(n: int, th: int, tw: int) -> list:
    """(first image, last image + 1, first tile row, last tile row + 1) per chunk of about TILES
    tiles: bands of tile rows of one image, or whole images together when an image has fewer
    tiles (batch > 1 on 14x14 or 7x7 maps: one GEMM over several images instead of small ones)."""
    per_image = th * tw
    if per_image >= TILES or n == 1:
        rows = min(th, max(1, TILES // max(tw, 1)))
        return [(i, i + 1, t0, min(th, t0 + rows)) for i in range(n) for t0 in range(0, th, rows)]
    imgs = max(1, TILES // per_image)
    return [(i0, min(n, i0 + imgs), 0, th) for i0 in range(0, n, imgs)]


def chunk_tiles(n: int, th: int, tw: int) -> int:
    return max((i1 - i0) * (t1 - t0) * tw for i0, i1, t0, t1 in chunks(n, th, tw))


def scratch_pieces(x_shape, w_shape, m, itemsize) -> list:
    """Scratch for one chunk: the input tiles, V, the products and the two output-transform stages."""
    n, c, h, w = x_shape
    k, a = w_shape[0], m + 2
    th, tw = -(-h // m), -(-w // m)
    q = chunk_tiles(n, th, tw)
    return [((max(a * a * c, m * a * k) * q,), itemsize), ((max(a * a * c, m * m * k) * q,), itemsize),
            ((a * a * q * k,), itemsize)]


def pad_channels_last(X, pe, mem, nhwc_in=False) -> np.ndarray:
    """X (N, C, H, W) zero-padded by 1 above and left and pe below and right, as (N, H', W', C):
    the one transposing copy, so that gathering the overlapping tiles copies runs of C elements
    (reading channel planes in the gather itself was 25-40% slower, on top of a padding copy).
    nhwc_in: X is (N, H, W, C) already, and the copy only pads."""
    n, h, w, c = X.shape if nhwc_in else (X.shape[0],) + X.shape[2:] + X.shape[1:2]
    xt = mem.take((n, h + 1 + pe[0], w + 1 + pe[1], c), X.dtype)
    zero_border(xt, h, w)
    np.copyto(xt[:, 1:h + 1, 1:w + 1], X if nhwc_in else X.transpose(0, 2, 3, 1))
    return xt


def zero_border(xt, h, w, rows=None) -> None:
    """Zero the padding of xt (N, H', W', C) around its (h, w) image at [1:h+1, 1:w+1]; rows = (lo, hi):
    only the border of those image rows, and the padding rows above (lo == 0) or below (hi == h)."""
    lo, hi = rows or (0, h)
    if lo == 0:
        xt[:, :1] = 0
    if hi == h:
        xt[:, h + 1:] = 0
    xt[:, 1 + lo:1 + hi, :1] = 0
    xt[:, 1 + lo:1 + hi, w + 1:] = 0


def conv3x3(Xp, W, m, Y, mem, epilogue=None, finish=None, part=None, channels_last=False):
    """Y = conv(X, W) from the padded channels-last input Xp (N, H, W, C: pad 1 above and left,
    up to whole tiles below and right; pad_channels_last). epilogue(t) applies bias and
    activation in place to a block t (pixels, K) of output tiles while it is in cache, before
    the tiles are written to Y; after each band of output rows of image i is written,
    finish(i, columns) may apply more to Y[i]'s flat columns (a residual; NCHW Y only).
    channels_last: Y is (N, H, W, K) (rzrt/layout.py links the 1x1 convolution reading it): the
    scatter of the output tiles then copies runs of K values, where into NCHW it writes one
    value per channel plane (64 channels at 56x56: 220 -> 28 us).

    Tiles are laid out channels last, V[p] = (tiles, C) and M[p] = V[p] @ U[p] = (tiles, K): the
    gather of the overlapping input tiles and the scatter of the output tiles then copy runs of
    C (or K) elements, where tiles-last layouts copy runs of one tile row (2-14 elements), and
    numpy's copy loops are slow on short runs.
    part = (rank, ranks): only this worker's share of the tile rows (rzrt/team.py)."""
    BT, _, AT = (M.astype(Xp.dtype) for M in F[m])
    a = m + 2
    n, c = Xp.shape[0], Xp.shape[3]
    k = W.shape[0]
    th, tw = (Xp.shape[1] - 2) // m, (Xp.shape[2] - 2) // m      # Xp is padded to whole tiles
    height, width = Y.shape[1:3] if channels_last else Y.shape[2:]
    whole = (th * m, tw * m) == (height, width)
    U = pack(W, m)                                                 # (a*a, C, K)
    xs = Xp.strides
    ys = (Y.strides[0], Y.strides[3], Y.strides[1], Y.strides[2]) if channels_last else Y.strides   # as NCHW
    # tiles[i, j, n, ty, tx, c] = Xp[n, ty*m + i, tx*m + j, c]: overlapping a x a windows (a view)
    tiles = as_strided(Xp, (a, a, n, th, tw, c), (xs[1], xs[2], xs[0], xs[1] * m, xs[2] * m, xs[3]))
    # out_tiles[r, s, n, ty, tx, k] = Y[n, k, ty*m + r, tx*m + s], only when whole tiles cover Y
    out_tiles = as_strided(Y, (m, m, n, th, tw, k), (ys[2], ys[3], ys[0], ys[2] * m, ys[3] * m, ys[1])) \
        if whole else None
    q_max = chunk_tiles(n, th, tw)
    # three buffers: the output transform reuses the input transform's, which are free by then
    buf_d = mem.take((max(a * a * c, m * a * k) * q_max,), Xp.dtype)
    buf_v = mem.take((max(a * a * c, m * m * k) * q_max,), Xp.dtype)
    prod_ = mem.take((a * a * q_max * k,), Xp.dtype)
    lo, hi = share(th, part)
    for i0, i1, t0, t1 in chunks(n, th, tw):
        t0, t1 = max(t0, lo), min(t1, hi)
        if t0 >= t1:
            continue
        ni, nt = i1 - i0, t1 - t0
        q = ni * nt * tw
        dd, vv = buf_d[:a * a * q * c], buf_v[:a * a * q * c]
        mm = prod_[:a * a * q * k].reshape(a * a, q, k)
        rr1, rr2 = buf_d[:m * a * q * k].reshape(m, a, q * k), buf_v[:m * m * q * k].reshape(m, m, q * k)
        np.copyto(dd.reshape(a, a, ni, nt, tw, c), tiles[:, :, i0:i1, t0:t1])
        # V = B^T d B: over the tile rows, then over the tile columns
        np.matmul(BT, dd.reshape(a, a * q * c), out=vv.reshape(a, a * q * c))
        np.matmul(BT, vv.reshape(a, a, q * c), out=dd.reshape(a, a, q * c))
        np.matmul(dd.reshape(a * a, q, c), U, out=mm)     # the channel sums: one GEMM per tile position
        # Y = A^T M A
        np.matmul(AT, mm.reshape(a, a * q * k), out=rr1.reshape(m, a * q * k))
        np.matmul(AT, rr1, out=rr2)
        if epilogue is not None:
            epilogue(rr2.reshape(m * m * q, k))
        res = rr2.reshape(m, m, ni, nt, tw, k)
        r0, r1 = t0 * m, min(height, t1 * m)
        if whole:
            np.copyto(out_tiles[:, :, i0:i1, t0:t1], res)
        else:                        # partial tiles: each (r, s) phase of the tiles, cropped to Y
            for r in range(m):
                nr = len(range(r0 + r, r1, m))
                for s in range(m):
                    dst = Y[i0:i1, r0 + r:r1:m, s::m] if channels_last else \
                        Y[i0:i1, :, r0 + r:r1:m, s::m].transpose(0, 2, 3, 1)
                    np.copyto(dst, res[r, s, :, :nr, :dst.shape[2]])
        if finish is not None:
            for i in range(i0, i1):
                finish(i, slice(r0 * width, r1 * width))

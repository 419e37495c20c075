"""Recurrent layers: RNN, GRU, LSTM, one time step at a time (the recurrence is inherently serial),
every step one GEMM for the input part (done for all steps up front) and one for the hidden part.

    RNN:   h_t = f(x_t W^T + h_{t-1} R^T + Wb + Rb)
    GRU:   z = f(x W_z^T + h R_z^T + b_z)      r = f(x W_r^T + h R_r^T + b_r)
           n = g(x W_h^T + (r * h) R_h^T + Rb_h + Wb_h)       (linear_before_reset: r * (h R_h^T + Rb_h))
           h_t = (1 - z) * n + z * h
    LSTM:  i = f(x W_i^T + h R_i^T + P_i * c + b_i)   f_ = f(... + P_f * c ...)   c~ = g(x W_c^T + h R_c^T + b_c)
           c_t = f_ * c + i * c~                      o = f(... + P_o * c_t ...)   h_t = o * h(c_t)
Weights stack the gates per direction (LSTM: i, o, f, c; GRU: z, r, h). Outputs: Y (all steps),
Y_h (last hidden), and for LSTM Y_c (last cell). Past a batch entry's sequence length, Y is 0
and the state stays as it was.
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _sigmoid(x, a=None, b=None):
    return 1 / (1 + np.exp(-x))


ACTIVATIONS = {
    "sigmoid": _sigmoid,
    "tanh": lambda x, a=None, b=None: np.tanh(x),
    "relu": lambda x, a=None, b=None: np.maximum(x, 0),
    "affine": lambda x, a=1.0, b=0.0: a * x + b,
    "leakyrelu": lambda x, a=0.01, b=None: np.where(x >= 0, x, a * x),
    "thresholdedrelu": lambda x, a=1.0, b=None: np.where(x > a, x, 0),
    "scaledtanh": lambda x, a=1.0, b=1.0: a * np.tanh(b * x),
    "hardsigmoid": lambda x, a=0.2, b=0.5: np.clip(a * x + b, 0, 1),
    "elu": lambda x, a=1.0, b=None: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1)),
    "softsign": lambda x, a=None, b=None: x / (1 + np.abs(x)),
    "softplus": lambda x, a=None, b=None: np.log1p(np.exp(x)),
}


def _activations(names, alphas, betas, defaults, n_dirs):
    """One callable per (direction, slot), with the alpha/beta the model gives, in order."""
    names = list(names) if names else defaults * n_dirs
    alphas, betas = list(alphas or []), list(betas or [])
    fns, ai, bi = [], 0, 0
    for name in names:
        key = name.lower()
        takes_a = key in ("affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu")
        takes_b = key in ("affine", "scaledtanh", "hardsigmoid")
        a = alphas[ai] if takes_a and ai < len(alphas) else None
        b = betas[bi] if takes_b and bi < len(betas) else None
        ai, bi = ai + takes_a, bi + takes_b
        f = ACTIVATIONS[key]
        fns.append(lambda x, f=f, a=a, b=b: f(x, *([a] if a is not None else [])) if b is None else f(x, a, b))
    per = len(defaults)
    return [fns[d * per:(d + 1) * per] for d in range(n_dirs)]


def _run(cell, X, W, R, B, sequence_lens, states, direction, layout, clip, acts, n_gates):
    """Shared driver: (Y, final states) for any cell; states is a list of [dirs, batch, hidden]."""
    if layout:
        X = X.transpose(1, 0, 2)
        states = [None if s is None else s.transpose(1, 0, 2) for s in states]
    seq, batch, _ = X.shape
    dirs, hidden = W.shape[0], R.shape[-1]
    lens = np.full(batch, seq, dtype=np.int64) if sequence_lens is None else sequence_lens.astype(np.int64)
    Y = np.zeros((seq, dirs, batch, hidden), dtype=X.dtype)
    finals = [np.zeros((dirs, batch, hidden), dtype=X.dtype) for _ in states]
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        wb, rb = (np.zeros(n_gates * hidden, X.dtype),) * 2 if B is None else np.split(B[d], 2)
        xw = X @ W[d].T + wb                                        # all steps' input GEMMs at once
        st = [np.zeros((batch, hidden), X.dtype) if s is None else s[d].copy() for s in states]
        for step in range(seq):
            # position of this step per batch entry (reverse runs within each entry's own length)
            t = (lens - 1 - step) if reverse else np.full(batch, step)
            live = step < lens
            tt = np.clip(t, 0, seq - 1)
            new = cell(xw[tt, np.arange(batch)], st, R[d], rb, acts[d], clip, d)
            for k in range(len(st)):
                st[k] = np.where(live[:, None], new[k], st[k])
            Y[tt[live], d, np.arange(batch)[live]] = st[0][live]
        for k in range(len(st)):
            finals[k][d] = st[k]
    if layout:
        return Y.transpose(2, 0, 1, 3), [f.transpose(1, 0, 2) for f in finals]
    return Y, finals


def _clip(x, clip):
    return x if clip is None else np.clip(x, -clip, clip)


def _rnn_cell(xw, st, R, rb, f, clip, d):
    (h,) = st
    return [f[0](_clip(xw + h @ R.T + rb, clip))]


def _gru_cell(linear_before_reset):
    def cell(xw, st, R, rb, f, clip, d):
        (h,) = st
        xz, xr, xh = np.split(xw, 3, axis=1)
        Rz, Rr, Rh = np.split(R, 3)
        bz, br, bh = np.split(rb, 3)
        z = f[0](_clip(xz + h @ Rz.T + bz, clip))
        r = f[0](_clip(xr + h @ Rr.T + br, clip))
        if linear_before_reset:
            n = f[1](_clip(xh + r * (h @ Rh.T + bh), clip))
        else:
            n = f[1](_clip(xh + (r * h) @ Rh.T + bh, clip))
        return [(1 - z) * n + z * h]
    return cell


def _lstm_cell(P, input_forget):
    def cell(xw, st, R, rb, f, clip, d):
        h, c = st
        g = xw + h @ R.T + rb
        gi, go, gf, gc = np.split(g, 4, axis=1)
        pi, po, pf = (np.zeros(h.shape[1], h.dtype),) * 3 if P is None else np.split(P[d], 3)
        i = f[0](_clip(gi + pi * c, clip))
        fg = 1 - i if input_forget else f[0](_clip(gf + pf * c, clip))
        c_new = fg * c + i * f[1](_clip(gc, clip))
        o = f[0](_clip(go + po * c_new, clip))
        return [o * f[2](c_new), c_new]
    return cell


def _dirs(direction):
    return 2 if direction == "bidirectional" else 1


@kernel("RNN", since=7)
def RNN(X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0):
    acts = _activations(activations, activation_alpha, activation_beta, ["Tanh"], _dirs(direction))
    Y, (Yh,) = _run(_rnn_cell, X, W, R, B, sequence_lens, [initial_h], direction, layout, clip, acts, 1)
    return Y, Yh


@kernel("GRU", since=7)
def GRU(X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, linear_before_reset=0):
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], _dirs(direction))
    Y, (Yh,) = _run(_gru_cell(linear_before_reset), X, W, R, B, sequence_lens, [initial_h], direction, layout,
                    clip, acts, 3)
    return Y, Yh


@kernel("LSTM", since=7)
def LSTM(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None,
         input_forget=0, layout=0):
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"],
                        _dirs(direction))
    Y, (Yh, Yc) = _run(_lstm_cell(P, input_forget), X, W, R, B, sequence_lens, [initial_h, initial_c], direction,
                       layout, clip, acts, 4)
    return Y, Yh, Yc

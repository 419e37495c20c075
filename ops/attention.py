"""Attention and the pieces of a transformer block around it.

    Attention:        Y = softmax(softcap(Q K^T * scale) + bias) V, per head
    RotaryEmbedding:  (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), the angle set by the position
    RMSNormalization: y = x / sqrt(mean(x^2) + eps) * scale
    Swish, SwiGLU:    swish(a) = a * sigmoid(alpha a);  swiglu(a, b) = swish(a) * b
    LinearAttention:  S_t = decay S_{t-1} + k_t (x) v_t (a recurrent state instead of a softmax);  o_t = scale q_t^T S_t
    CausalConvWithState: depthwise 1-D convolution over [past_state, x], carrying the last k-1 columns
    FlexAttention:    Attention whose scores and probabilities pass through user subgraphs

Heads live on axis 1: (batch, heads, sequence, head_size). 3-D inputs pack the heads into
the last axis, (batch, sequence, heads * head_size), and are unpacked on the way in.
Grouped-query attention (fewer K/V heads than Q heads) never copies K or V: Q is viewed as
(batch, kv_heads, group, sequence, head_size) and matmul broadcasts each K/V head over its group.

Masks are additive: an allowed position adds 0 (or the float mask's value), a disallowed one
-inf; causal, window and padding rules are one boolean "allowed" array, turned into the bias
once. A query row with nothing allowed gives zeros, not NaN. Elementwise steps stay in the
input's dtype, in the order of onnx's reference (bfloat16 keeps ~3 digits, so a different
rounding order alone can exceed the conformance tolerance); matmuls accumulate in float32.
"""
from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from rzrt.ops.registry import kernel


def _same(x, *rest, **_):
    return x


def _is_half(dtype) -> bool:
    """float16, bfloat16 (an ml_dtypes type, kind 'V')"""
    return np.dtype(dtype).kind in "fV" and np.dtype(dtype).itemsize < 4


def _wide(dtype):
    """float32 for float16 / bfloat16, the dtype itself otherwise."""
    return np.dtype(np.float32) if _is_half(dtype) else np.dtype(dtype)


def _sigmoid(x):
    """1 / (1 + exp(-x)), without overflow warnings for x << 0 (exp(-x) = inf gives the right limit, 0)."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def _matmul(a, b):
    """a @ b in a's dtype, accumulated in float32 for float16 / bfloat16 (numpy's own float16 matmul
    rounds every partial sum to float16, and has no BLAS)."""
    if _is_half(a.dtype):
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)


# --- Attention ---------------------------------------------------------------------

def _heads(x, num_heads):
    """(B, S, H * D) -> (B, H, S, D); a 4-D input is already that."""
    if x.ndim == 4:
        return x
    b, s, hd = x.shape
    return x.reshape(b, s, num_heads, hd // num_heads).transpose(0, 2, 1, 3)


def _allowed(Sq, Skv, offset, *, is_causal, left, right, nonpad):
    """Which keys each query may see, from the rules that do not come from attn_mask.

    A query's absolute position is p = offset + i (offset: keys before this query block; an
    array of shape (B, 1, 1, 1) when it differs per batch). causal: j <= p; window:
    p - left <= j <= p + right (-1 = unbounded); padding: j < nonpad_kv_seqlen[b].
    None when every key is allowed.
    """
    i = np.arange(Sq).reshape(Sq, 1)
    j = np.arange(Skv)
    p = i + offset
    ok = None

    def both(a, b):
        return b if a is None else a & b
    if is_causal:
        ok = both(ok, j <= p)
    if left >= 0:
        ok = both(ok, j >= p - left)
    if right >= 0:
        ok = both(ok, j <= p + right)
    if nonpad is not None:
        ok = both(ok, j < nonpad.reshape(-1, 1, 1, 1))
    return ok


def _bias(attn_mask, allowed, Skv, dtype):
    """The additive bias: the float mask (or 0) where allowed, -inf elsewhere; None if nothing masks.

    A mask shorter than the keys is padded on the right with False / -inf."""
    if attn_mask is not None:
        if attn_mask.dtype != bool:
            attn_mask = attn_mask.astype(dtype, copy=False)
        if attn_mask.shape[-1] < Skv:
            pad = [(0, 0)] * (attn_mask.ndim - 1) + [(0, Skv - attn_mask.shape[-1])]
            attn_mask = np.pad(attn_mask, pad, constant_values=False if attn_mask.dtype == bool else -np.inf)
        if attn_mask.dtype == bool:
            allowed = attn_mask if allowed is None else attn_mask & allowed
            attn_mask = None
    if allowed is None:
        return attn_mask
    return np.where(allowed, dtype.type(0) if attn_mask is None else attn_mask, dtype.type(-np.inf))


def _softmax(x):
    """softmax over the last axis, in place; an all -inf row gives zeros."""
    m = x.max(axis=-1, keepdims=True)
    m[np.isneginf(m)] = 0
    x -= m
    np.exp(x, out=x)
    s = x.sum(axis=-1, keepdims=True)
    s[s == 0] = 1
    x /= s
    return x


def attention(Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
              is_causal=0, kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None,
              softcap=0.0, softmax_precision=None, left_window_size=-1, right_window_size=-1, want_qk=True):
    """Y = softmax(softcap(Q K^T * scale) + bias) V; returns (Y, present_key, present_value, qk_matmul_output)."""
    packed = Q.ndim == 3
    q, k, v = _heads(Q, q_num_heads), _heads(K, kv_num_heads), _heads(V, kv_num_heads)
    if past_key is not None:
        k = np.concatenate((past_key, k), axis=2)
        v = np.concatenate((past_value, v), axis=2)
    present_key, present_value = k, v
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    if Hq % Hkv:
        raise ValueError(f"Attention: q_num_heads ({Hq}) must be a multiple of kv_num_heads ({Hkv})")
    G = Hq // Hkv
    dtype = q.dtype

    # Q and K are each scaled by sqrt(scale), which keeps Q K^T from overflowing in float16.
    s = dtype.type(np.sqrt(1 / np.sqrt(D) if scale is None else scale))
    qk = _matmul((q * s).reshape(B, Hkv, G, Sq, D), (k * s)[:, :, None].swapaxes(-1, -2))
    qk = qk.reshape(B, Hq, Sq, Skv)
    raw = qk
    if softcap > 0:
        qk = np.tanh(qk / dtype.type(softcap)) * dtype.type(softcap)

    if past_key is not None:
        offset = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = nonpad_kv_seqlen.reshape(-1, 1, 1, 1).astype(np.int64) - Sq
    else:
        offset = 0
    allowed = _allowed(Sq, Skv, offset, is_causal=is_causal, left=left_window_size, right=right_window_size,
                       nonpad=nonpad_kv_seqlen)
    bias = _bias(attn_mask, allowed, Skv, dtype)
    scores = qk if bias is None else qk + bias
    if want_qk and qk_matmul_output_mode in (0, 1):
        qk_out = raw if qk_matmul_output_mode == 0 else qk
    elif want_qk and qk_matmul_output_mode == 2:
        qk_out = scores
    else:
        qk_out = None

    sm_dtype = dtype if softmax_precision is None else np.dtype(tensor_dtype_to_np_dtype(softmax_precision))
    probs = _softmax(scores.astype(sm_dtype, copy=qk_out is not None))   # in place unless scores is an output
    if bias is not None:
        dead = np.isneginf(bias.max(axis=-1, keepdims=True))   # decided on the bias: the scores may be NaN there
        np.copyto(probs, 0, where=dead)
    if want_qk and qk_matmul_output_mode == 3:
        qk_out = probs
    probs = probs.astype(dtype, copy=False)

    Y = _matmul(probs.reshape(B, Hkv, G, Sq, Skv), v[:, :, None]).reshape(B, Hq, Sq, v.shape[-1])
    if packed:
        Y = Y.transpose(0, 2, 1, 3).reshape(B, Sq, Hq * v.shape[-1])
    qk_out = None if qk_out is None else qk_out.astype(dtype, copy=False)
    return Y, present_key, present_value, qk_out


def _wanted(n, outputs):
    """The first n of the outputs (a lone array for one)."""
    return outputs[0] if n <= 1 else outputs[:n]


@kernel("Attention", since=23)
def Attention_23(Q, K, V, attn_mask=None, past_key=None, past_value=None, *, is_causal=0, kv_num_heads=None,
                 q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0, softmax_precision=None,
                 _outputs=4):
    """Y = softmax(softcap(Q K^T * scale) + mask) V, mask from attn_mask and is_causal"""
    return _wanted(_outputs, attention(
        Q, K, V, attn_mask, past_key, past_value, is_causal=is_causal, kv_num_heads=kv_num_heads,
        q_num_heads=q_num_heads, qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
        softmax_precision=softmax_precision, want_qk=_outputs >= 4))


@kernel("Attention", since=24)
def Attention_24(Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, is_causal=0,
                 kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
                 softmax_precision=None, _outputs=4):
    """Y = softmax(softcap(Q K^T * scale) + mask) V; keys j >= nonpad_kv_seqlen[b] are padding"""
    return _wanted(_outputs, attention(
        Q, K, V, attn_mask, past_key, past_value, nonpad_kv_seqlen, is_causal=is_causal, kv_num_heads=kv_num_heads,
        q_num_heads=q_num_heads, qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
        softmax_precision=softmax_precision, want_qk=_outputs >= 4))


@kernel("Attention", since=25)
def Attention(Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, is_causal=0,
              kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
              softmax_precision=None, left_window_size=-1, right_window_size=-1, _outputs=4):
    """Y = softmax(softcap(Q K^T * scale) + mask) V; query p sees keys p - left_window_size .. p + right_window_size"""
    if Q.ndim == 4 and (q_num_heads is not None or kv_num_heads is not None):
        raise ValueError("Attention: q_num_heads and kv_num_heads are for 3-D inputs only")
    return _wanted(_outputs, attention(
        Q, K, V, attn_mask, past_key, past_value, nonpad_kv_seqlen, is_causal=is_causal, kv_num_heads=kv_num_heads,
        q_num_heads=q_num_heads, qk_matmul_output_mode=qk_matmul_output_mode, scale=scale, softcap=softcap,
        softmax_precision=softmax_precision, left_window_size=left_window_size, right_window_size=right_window_size,
        want_qk=_outputs >= 4))


# --- FlexAttention -----------------------------------------------------------------

@kernel("FlexAttention", domain="ai.onnx.preview", since=1)
def FlexAttention(Q, K, V, *, prob_mod=None, scale=None, score_mod=None, softmax_precision=None):
    """Y = prob_mod(softmax(score_mod(Q K^T * scale))) V, the mods being subgraphs of one tensor each"""
    B, Hq, Sq, D = Q.shape
    Hkv, Skv = K.shape[1], K.shape[2]
    if Hq % Hkv:
        raise ValueError(f"FlexAttention: Q's {Hq} heads must be a multiple of K/V's {Hkv}")
    G = Hq // Hkv
    s = np.asarray(np.sqrt(np.float32(1 / np.sqrt(D) if scale is None else scale)), dtype=Q.dtype)
    scores = _matmul((Q * s).reshape(B, Hkv, G, Sq, D), (K * s)[:, :, None].swapaxes(-1, -2))
    # softmax in float32 unless told otherwise (float64 inputs stay float64)
    sm = np.dtype(tensor_dtype_to_np_dtype(softmax_precision)) if softmax_precision else \
        (np.dtype(np.float64) if Q.dtype == np.float64 else np.dtype(np.float32))
    scores = scores.reshape(B, Hq, Sq, Skv).astype(sm)
    if score_mod is not None:
        scores = np.asarray(score_mod([scores], {})[0], dtype=sm)
    m = scores.max(axis=-1, keepdims=True)
    e = np.exp(scores - m)
    probs = e / e.sum(axis=-1, keepdims=True)
    if prob_mod is not None:
        probs = np.asarray(prob_mod([probs], {})[0], dtype=sm)
    Y = np.matmul(probs.reshape(B, Hkv, G, Sq, Skv), V[:, :, None].astype(sm))
    return Y.reshape(B, Hq, Sq, V.shape[-1]).astype(V.dtype)


# --- RotaryEmbedding ---------------------------------------------------------------

@kernel("RotaryEmbedding", since=23, shape=_same)
def RotaryEmbedding(X, cos_cache, sin_cache, position_ids=None, *, interleaved=0, num_heads=None,
                    rotary_embedding_dim=0):
    """(x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) on the first rotary_embedding_dim of each head"""
    packed = X.ndim == 3
    if packed and not num_heads:
        raise ValueError("RotaryEmbedding: a 3-D input needs the num_heads attribute")
    # work on (B, S, H, D) for 3-D inputs, (B, H, S, D) for 4-D: the caches broadcast over H either way
    x = X.reshape(X.shape[0], X.shape[1], num_heads, -1) if packed else X
    r = rotary_embedding_dim or x.shape[-1]
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]   # (B, S, r/2)
    if cos_cache.shape[-1] != r // 2 or sin_cache.shape[-1] != r // 2:
        raise ValueError(f"RotaryEmbedding: cos/sin caches have {cos_cache.shape[-1]}/{sin_cache.shape[-1]} "
                         f"columns, expected rotary_embedding_dim / 2 = {r // 2}")
    axis = 2 if packed else 1
    cos, sin = np.expand_dims(cos_cache, axis), np.expand_dims(sin_cache, axis)
    if interleaved:
        x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
    else:
        x1, x2 = x[..., :r // 2], x[..., r // 2:r]
    Y = x.copy()
    real, imag = (cos * x1 - sin * x2).astype(X.dtype), (sin * x1 + cos * x2).astype(X.dtype)
    if interleaved:
        Y[..., 0:r:2], Y[..., 1:r:2] = real, imag
    else:
        Y[..., :r // 2], Y[..., r // 2:r] = real, imag
    return Y.reshape(X.shape)


# --- RMSNormalization, Swish, SwiGLU -----------------------------------------------

def _rms_shape(x, scale, **_):
    return x[0], scale[1]     # Y has X's shape and Scale's dtype


@kernel("RMSNormalization", since=23, shape=_rms_shape)
def RMSNormalization(X, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    """y = x / sqrt(mean(x^2 over the axes from `axis` on) + epsilon) * scale, stage one in float32 (stash_type=1)"""
    axes = tuple(range(axis % X.ndim, X.ndim))
    x = X.astype(np.float32) if stash_type == 1 and X.dtype != np.float64 else X
    rms = np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + x.dtype.type(epsilon))
    return ((x / rms).astype(X.dtype) * scale).astype(scale.dtype, copy=False)


def swish(x, alpha=1.0):
    """x * sigmoid(alpha x), the sigmoid rounded to x's dtype first as onnx's reference does"""
    w = x.astype(_wide(x.dtype), copy=False)
    return x * _sigmoid(w.dtype.type(alpha) * w).astype(x.dtype)


@kernel("Swish", since=24, shape=_same)
def Swish(X, *, alpha=1.0):
    """y = x * sigmoid(alpha x)"""
    return swish(X, alpha)


@kernel("SwiGLU", since=28, shape=_same)
def SwiGLU(A, B, *, alpha=1.0):
    """y = a * sigmoid(alpha a) * b   (a: the gate, b: the value; same shapes, no broadcasting)"""
    if A.shape != B.shape:
        raise ValueError(f"SwiGLU: A {A.shape} and B {B.shape} must have the same shape")
    return (swish(A, alpha) * B).astype(A.dtype, copy=False)


# --- LinearAttention ---------------------------------------------------------------

def _per_head(x, b, t, h):
    """(B, T, H * d) -> (B, H, T, d) in float32."""
    return x.reshape(b, t, h, -1).transpose(0, 2, 1, 3).astype(np.float32)


def _linear_chunk(S, q, k, v, g, beta, scale):
    """One chunk of C steps of the recurrence, all at once; returns (outputs, state after the chunk).

    S (B, Hkv, dk, dv); q (B, Hkv, G, C, dk); k (B, Hkv, C, dk); v (B, Hkv, C, dv);
    g (B, Hkv, C, e) log decay, e = 1 (per head) or dk (per key dim), or None; beta (B, h, C, 1) or None.

    With cumulative decay A_t = exp(G_t), G_t = g_1 + ... + g_t, unrolling the recurrence gives
        S_t = A_t S + sum_{s<=t} (A_t / A_s) k_s u_s^T,     o_t = scale q_t^T S_t,
    where u_s = v_s (linear, gated) or, with the delta rule, the corrected value
        u_t = beta_t (v_t - A_t k_t^T S - sum_{s<t} (A_t / A_s) (k_t . k_s) u_s),
    a unit lower-triangular system (I + beta M) U = beta (V - (A k) S) solved for all t at once.
    """
    C = k.shape[2]
    causal = np.tril(np.ones((C, C), dtype=bool))
    if g is None:
        A = np.ones(k.shape[:2] + (C, 1), dtype=np.float32)
        k_to_end = k
        decay = causal[..., None].astype(np.float32)                         # D_ts = [s <= t]: (C, C, 1)
    else:
        Gc = np.cumsum(g, axis=2)
        A = np.exp(Gc)
        k_to_end = k * np.exp(Gc[:, :, -1:] - Gc)                            # k_s A_C / A_s
        diff = np.where(causal[..., None], Gc[:, :, :, None] - Gc[:, :, None], 0)   # G_t - G_s, s <= t
        decay = np.where(causal[..., None], np.exp(diff), np.float32(0))     # D_ts = A_t / A_s: (B, Hkv, C, C, e)

    def dots(a, b):
        """sum_d a_t,d b_s,d D_ts,d for every t, s of the chunk"""
        if decay.shape[-1] > 1:    # per key dimension: D_ts varies along d, so it stays inside the sum
            return np.einsum("bh...td,bhsd,bhtsd->bh...ts", a, b, decay)
        d = decay[..., 0]
        ab = np.matmul(a, b.swapaxes(-1, -2) if a.ndim == 4 else b[:, :, None].swapaxes(-1, -2))
        return ab * (d[:, :, None] if a.ndim == 5 and d.ndim == 4 else d)

    if beta is not None:
        rhs = beta * (v - np.matmul(k * A, S))
        u = np.linalg.solve(np.eye(C, dtype=np.float32) + beta * np.tril(dots(k, k), -1), rhs)
    else:
        u = v
    o = np.matmul(q * A[:, :, None], S[:, :, None]) + np.matmul(dots(q, k), u[:, :, None])
    S = A[:, :, -1, :, None] * S + np.matmul(k_to_end.swapaxes(-1, -2), u)
    return scale * o, S


@kernel("LinearAttention", since=27)
def LinearAttention(query, key, value, past_state=None, decay=None, beta=None, *, chunk_size=64,
                    kv_num_heads=None, q_num_heads=None, scale=0.0, update_rule="gated_delta"):
    """S_t = exp(g_t) S_{t-1} + k_t (x) beta_t (v_t - exp(g_t) S_{t-1}^T k_t);  o_t = scale q_t^T S_t
    (gated_delta; 'gated' drops the beta correction, 'delta' the decay, 'linear' both)

    Computed chunk by chunk (chunk_size steps at a time, each chunk in closed form): only the
    state crosses from one chunk to the next, so the Python loop runs T / chunk_size times."""
    rules = {"linear": (False, False), "gated": (True, False), "delta": (False, True), "gated_delta": (True, True)}
    if update_rule not in rules:
        raise ValueError(f"LinearAttention: update_rule {update_rule!r}, expected one of {', '.join(rules)}")
    gated, delta = rules[update_rule]
    if gated != (decay is not None) or delta != (beta is not None):
        raise ValueError(f"LinearAttention: update_rule {update_rule!r} "
                         f"{'needs' if gated else 'takes no'} decay and {'needs' if delta else 'takes no'} beta")
    b, t, _ = query.shape
    hq, hkv = q_num_heads, kv_num_heads
    if not hkv or hq % hkv:
        raise ValueError(f"LinearAttention: q_num_heads ({hq}) must be a positive multiple of kv_num_heads ({hkv})")
    q = _per_head(query, b, t, hq)
    k, v = _per_head(key, b, t, hkv), _per_head(value, b, t, hkv)
    dk, dv, G = q.shape[-1], v.shape[-1], hq // hkv
    q = q.reshape(b, hkv, G, t, dk)
    g = None if decay is None else _per_head(decay, b, t, hkv)   # (B, Hkv, T, 1 or dk)
    be = None if beta is None else _per_head(beta, b, t, beta.shape[-1])
    S = np.zeros((b, hkv, dk, dv), np.float32) if past_state is None else past_state.astype(np.float32)
    sc = np.float32(scale if scale else 1 / np.sqrt(dk))
    step = chunk_size if chunk_size and chunk_size > 0 else max(t, 1)
    outs = []
    for a in range(0, t, step):
        w = slice(a, a + step)
        o, S = _linear_chunk(S, q[:, :, :, w], k[:, :, w], v[:, :, w], None if g is None else g[:, :, w],
                             None if be is None else be[:, :, w], sc)
        outs.append(o)
    o = np.concatenate(outs, axis=3) if outs else np.zeros((b, hkv, G, 0, dv), np.float32)
    Y = o.reshape(b, hq, t, dv).transpose(0, 2, 1, 3).reshape(b, t, hq * dv)
    return Y.astype(query.dtype), S.astype(query.dtype if past_state is None else past_state.dtype)


# --- CausalConvWithState -----------------------------------------------------------

@kernel("CausalConvWithState", since=27)
def CausalConvWithState(input, weight, bias=None, past_state=None, *, activation="none"):
    """y[b, c, t] = act(sum_j w[c, 0, j] x'[b, c, t + j] + bias[c]),  x' = [past_state (or zeros), x] along time;
    present_state = the last k - 1 columns of x'"""
    if activation not in ("none", "silu", "swish"):
        raise ValueError(f"CausalConvWithState: activation {activation!r}, expected 'none', 'silu' or 'swish'")
    B, C, L = input.shape
    k = weight.shape[2]
    past = np.zeros((B, C, k - 1), dtype=input.dtype) if past_state is None else past_state.astype(input.dtype)
    padded = np.concatenate([past, input], axis=2)
    w = _wide(input.dtype)
    windows = np.lib.stride_tricks.sliding_window_view(padded.astype(w, copy=False), k, axis=2)   # (B, C, L, k)
    y = np.einsum("bclk,ck->bcl", windows, weight[:, 0].astype(w, copy=False))
    if bias is not None:
        y += bias.astype(w, copy=False)[:, None]
    y = y.astype(input.dtype)
    if activation != "none":
        yw = y.astype(w)
        y = (yw * _sigmoid(yw)).astype(input.dtype)
    return y, padded[:, :, padded.shape[2] - (k - 1):]


@kernel("TensorScatter", since=24)
def TensorScatter(past_cache, update, write_indices=None, *, axis=-2, mode="linear"):
    """present = past with update[b] written along `axis` from write_indices[b] on (mod length if circular)"""
    axis = axis % past_cache.ndim
    present = past_cache.copy()
    n, length = update.shape[axis], past_cache.shape[axis]
    starts = np.zeros(past_cache.shape[0], np.int64) if write_indices is None else write_indices.astype(np.int64)
    for b in range(present.shape[0]):         # axis 0 is the batch: each entry has its own write position
        pos = starts[b] + np.arange(n)
        if mode == "circular":
            pos %= length
        index = [slice(None)] * (present.ndim - 1)
        index[axis - 1] = pos
        present[b][tuple(index)] = update[b]
    return present

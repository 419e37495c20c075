"""Losses over class scores: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Scores are (N, C) or (N, C, d1, ..., dk), targets (N) or (N, d1, ..., dk) class indices.
Per element  loss[n, d] = -w[c] * x[n, c, d]  with c = target[n, d]  (w = 1 without weights),
and 0 where target == ignore_index. Reductions: 'none' keeps the per-element shape, 'sum'
adds them, 'mean' divides the sum by the total weight of the elements not ignored.
SoftmaxCrossEntropyLoss is the same loss applied to log_softmax(scores) along C.
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _nll(logp, target, weight, reduction, ignore_index):
    ignored = np.zeros(target.shape, bool) if ignore_index is None else target == ignore_index
    t = np.where(ignored, 0, target).astype(np.intp)
    picked = np.take_along_axis(logp, t[:, None], axis=1)[:, 0]
    w = np.ones(t.shape, logp.dtype) if weight is None else weight[t]
    w = np.where(ignored, 0, w).astype(logp.dtype)
    loss = -picked * w
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / w.sum()
    return np.asarray(loss, dtype=logp.dtype)


@kernel("NegativeLogLikelihoodLoss", since=12)
def NegativeLogLikelihoodLoss(input, target, weight=None, *, ignore_index=None, reduction="mean"):
    """loss = -weight[t] * input[n, t, d], t = target[n, d]; reduced by sum or weighted mean"""
    return _nll(input, target, weight, reduction, ignore_index)


@kernel("SoftmaxCrossEntropyLoss", since=12)
def SoftmaxCrossEntropyLoss(scores, labels, weights=None, *, ignore_index=None, reduction="mean"):
    """log_prob = log_softmax(scores, axis=1); loss = NegativeLogLikelihoodLoss(log_prob, labels, weights)"""
    x = scores.astype(np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    log_prob = (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(scores.dtype)
    return _nll(log_prob, labels, weights, reduction, ignore_index), log_prob

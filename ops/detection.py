"""Detection post-processing: NonMaxSuppression.

For each (batch, class): keep boxes scoring above score_threshold, visit them best first, and
select a box unless its IoU with an already selected box exceeds iou_threshold;
at most max_output_boxes_per_class per class.   IoU(a, b) = |a ∩ b| / |a ∪ b|
"""
from __future__ import annotations

import numpy as np

from rzrt.ops.registry import kernel


def _corners(boxes, center_point_box):
    """(y1, x1, y2, x2) with y1 <= y2, x1 <= x2, from either box encoding."""
    if center_point_box:
        xc, yc, w, h = boxes.T
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    y1, x1, y2, x2 = boxes.T
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=1)


def iou_matrix(b):
    """Pairwise IoU of (n, 4) corner boxes."""
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top, left = np.maximum(b[:, None, 0], b[None, :, 0]), np.maximum(b[:, None, 1], b[None, :, 1])
    bottom, right = np.minimum(b[:, None, 2], b[None, :, 2]), np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    union = area[:, None] + area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@kernel("NonMaxSuppression", since=10)
def NonMaxSuppression(boxes, scores, max_output_boxes_per_class=None, iou_threshold=None, score_threshold=None,
                      *, center_point_box=0):
    limit = 0 if max_output_boxes_per_class is None or max_output_boxes_per_class.size == 0 \
        else int(max_output_boxes_per_class.reshape(-1)[0])
    iou_t = 0.0 if iou_threshold is None or iou_threshold.size == 0 else float(iou_threshold.reshape(-1)[0])
    score_t = None if score_threshold is None or score_threshold.size == 0 else float(score_threshold.reshape(-1)[0])
    selected = []
    for b in range(boxes.shape[0]):
        corners = _corners(boxes[b].astype(np.float64), center_point_box)
        iou = iou_matrix(corners)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            order = np.argsort(-s, kind="stable")
            if score_t is not None:
                order = order[s[order] > score_t]
            kept = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not kept or np.all(iou[i, kept] <= iou_t):
                    kept.append(i)
            selected += [(b, c, i) for i in kept]
    return np.array(selected, dtype=np.int64).reshape(-1, 3)

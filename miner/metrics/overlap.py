"""Box overlap: IoU and IoBB (intersection over the predicted box, Wang et al. CVPR 2017).

Boxes are x, y, w, h (BBox_List_2017 convention: top-left corner and extent, the box covers
[x, x + w) x [y, y + h)); every function returns the matrix over all pairs.
"""
from __future__ import annotations

import numpy as np


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if (b[:, 2:] < 0).any():
        raise ValueError("box widths and heights must be >= 0")
    return b


def intersection(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection areas (np.ndarray[N, M]) of pred (ndarray[N, 4] xywh) with gt (ndarray[M, 4] xywh)."""
    p, g = _as_boxes(pred)[:, None], _as_boxes(gt)[None]
    iw = np.minimum(p[..., 0] + p[..., 2], g[..., 0] + g[..., 2]) - np.maximum(p[..., 0], g[..., 0])
    ih = np.minimum(p[..., 1] + p[..., 3], g[..., 1] + g[..., 3]) - np.maximum(p[..., 1], g[..., 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection over union (np.ndarray[N, M]); 0 where both boxes are empty."""
    inter = intersection(pred, gt)
    p, g = _as_boxes(pred), _as_boxes(gt)
    union = (p[:, 2] * p[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def iobb(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection over the predicted box's area (np.ndarray[N, M]); 0 for an empty predicted box."""
    inter = intersection(pred, gt)
    area = (_as_boxes(pred)[:, 2] * _as_boxes(pred)[:, 3])[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, inter / area, 0.0)


OVERLAPS = {"iou": iou, "iobb": iobb}

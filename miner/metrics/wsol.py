"""WSOL metrics of Choe et al. (CVPR 2020, "Evaluating Weakly Supervised Object Localization Methods Right").

**MaxBoxAccV2.** Score maps are min-max normalised per map. For a map threshold tau, the estimated boxes of an
image are the boxes around every connected region of (score >= tau) (all regions: the "V2" multi-contour
rule). BoxAcc(tau, delta) = fraction of images whose best estimated box has IoU >= delta with one of its
ground-truth boxes. MaxBoxAccV2 = mean over delta in {0.3, 0.5, 0.7} of max over tau of BoxAcc(tau, delta),
tau on the grid 0, 0.01, ..., 0.99. Differences from the reference code, by design: regions are 8-connected
components (their code takes OpenCV contours of a uint8 copy of the map, thresholded at tau * max with a strict
>), and the maps are upsampled bilinearly to the working resolution of `miner.boxes` rather than to the input
size; boxes are then scaled to original image pixels like the mined boxes.

**PxAP.** Pixel-wise average precision of the normalised score maps against ground-truth masks, pooled over
all pixels of all images: at each tau of the same grid, precision and recall of (score >= tau); PxAP =
sum_k precision(tau_k) * (recall(tau_k) - recall(tau_{k-1})) going down the thresholds (Choe et al.'s
formula: histograms of positive and negative scores, cumulated from the top).

Component work goes through `miner.kernels` (batched over maps and thresholds).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from miner.config import BoxConfig
from miner.errors import UsageError

#: Choe et al.'s map-threshold grid (cam_curve_interval = 0.01)
CAM_THRESHOLDS = tuple(np.round(np.arange(0.0, 1.0, 0.01), 2).tolist())
#: Choe et al.'s IoU levels of MaxBoxAccV2
IOU_LEVELS = (0.3, 0.5, 0.7)


@dataclass
class MaxBoxAccResult:
    """value: MaxBoxAccV2; best[delta] = (max BoxAcc, its tau); curve: BoxAcc (np.ndarray[taus, deltas])."""

    value: float
    best: dict[float, tuple[float, float]]
    curve: np.ndarray
    cam_thresholds: tuple[float, ...]
    iou_levels: tuple[float, ...]
    images: int


def _normalise(maps: Tensor) -> Tensor:
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def max_box_acc_v2(
    scoremaps: Tensor,
    gt_boxes: Sequence[np.ndarray],
    original_sizes: Sequence[tuple[int, int]],
    *,
    cam_thresholds: Sequence[float] = CAM_THRESHOLDS,
    iou_levels: Sequence[float] = IOU_LEVELS,
    config: BoxConfig | None = None,
    chunk: int = 8,
) -> MaxBoxAccResult:
    """MaxBoxAccV2 of score maps against ground-truth boxes.

    Args:
        scoremaps: one map per image (Tensor[N, h, w]), e.g. the fused H_f of one finding.
        gt_boxes: per image, its ground-truth boxes (np.ndarray[M_i, 4] x, y, w, h in original pixels, M_i >= 1).
        original_sizes: (H, W) per image.
        cam_thresholds: the tau grid.
        iou_levels: the delta levels.
        config: working resolution and connectivity (`BoxConfig`: upsample, max_work_side, connectivity).
        chunk: thresholds labelled per batched kernel call.
    """
    from miner.boxes import work_size
    from miner.kernels import component_stats, label_components

    cfg = config or BoxConfig()
    n, h, w = scoremaps.shape
    if len(gt_boxes) != n or len(original_sizes) != n:
        raise UsageError(f"{n} score maps need {n} ground-truth box sets and sizes")
    if any(len(np.asarray(b).reshape(-1, 4)) == 0 for b in gt_boxes):
        raise UsageError("every image needs at least one ground-truth box for MaxBoxAccV2")
    device = scoremaps.device
    hw, ww = work_size((h, w), cfg)
    maps = scoremaps.float()
    if (hw, ww) != (h, w):
        maps = F.interpolate(maps.unsqueeze(1), size=(hw, ww), mode="bilinear", align_corners=False).squeeze(1)
    norm = _normalise(maps)
    mmax = max(len(np.asarray(b).reshape(-1, 4)) for b in gt_boxes)
    gt = torch.zeros(n, mmax, 4, dtype=torch.float64)
    gt_ok = torch.zeros(n, mmax, dtype=torch.bool)
    for i, boxes in enumerate(gt_boxes):
        b = torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4))
        gt[i, : len(b)] = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)  # x0, y0, x1, y1
        gt_ok[i, : len(b)] = True
    gt, gt_ok = gt.to(device), gt_ok.to(device)
    scale = torch.tensor([[s[1] / ww, s[0] / hw, s[1] / ww, s[0] / hw] for s in original_sizes],
                         dtype=torch.float64, device=device)  # [N, 4]
    taus = [float(t) for t in cam_thresholds]
    best_iou = torch.zeros(len(taus), n, dtype=torch.float64, device=device)
    for start in range(0, len(taus), chunk):
        part = taus[start : start + chunk]
        lv = torch.tensor(part, dtype=norm.dtype, device=device).view(-1, 1, 1, 1)
        binary = (norm.unsqueeze(0) >= lv).reshape(len(part) * n, hw, ww)
        labels, counts = label_components(binary, connectivity=cfg.connectivity)
        k = int(counts.max()) if counts.numel() else 0
        if k == 0:
            continue
        stats = component_stats(labels, norm.repeat(len(part), 1, 1), num_labels=k)
        boxes = stats.bbox.view(len(part), n, k, 4).to(torch.float64) * scale.view(1, n, 1, 4)
        valid = (stats.area > 0).view(len(part), n, k)
        ious = _iou_xyxy(boxes.unsqueeze(3), gt.view(1, n, 1, mmax, 4))  # [T, N, K, M]
        ious = torch.where(valid.unsqueeze(-1) & gt_ok.view(1, n, 1, mmax), ious, torch.zeros_like(ious))
        best_iou[start : start + len(part)] = ious.amax(dim=(2, 3))
    deltas = [float(d) for d in iou_levels]
    curve = torch.stack([(best_iou >= d).double().mean(dim=1) for d in deltas], dim=1).cpu().numpy()
    best = {d: (float(curve[:, j].max()), taus[int(curve[:, j].argmax())]) for j, d in enumerate(deltas)}
    return MaxBoxAccResult(float(np.mean([v[0] for v in best.values()])), best, curve, tuple(taus), tuple(deltas), n)


def _iou_xyxy(a: Tensor, b: Tensor) -> Tensor:
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    union = area_a + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def pxap(
    scoremaps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    *,
    thresholds: Sequence[float] = CAM_THRESHOLDS,
    normalise: bool = True,
) -> float:
    """Pixel-wise average precision over all pixels of all images.

    Args:
        scoremaps: per image a score map (np.ndarray[H_i, W_i]) at the mask's resolution.
        masks: per image the ground-truth mask (same shape, nonzero = positive).
        thresholds: the tau grid (ascending).
        normalise: min-max normalise each score map first (Choe et al.'s maps are in [0, 1]).
    """
    edges = np.append(np.asarray(thresholds, np.float64), [1.0, 2.0, 3.0])
    pos_hist = np.zeros(len(edges) - 1)
    neg_hist = np.zeros(len(edges) - 1)
    if len(scoremaps) != len(masks):
        raise UsageError(f"{len(scoremaps)} score maps but {len(masks)} masks")
    for s, m in zip(scoremaps, masks):
        s = np.asarray(s, np.float64)
        m = np.asarray(m) != 0
        if s.shape != m.shape:
            raise UsageError(f"score map {s.shape} and mask {m.shape} differ in size: resize the map to the mask")
        if normalise:
            span = s.max() - s.min()
            s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
        pos_hist += np.histogram(s[m], bins=edges)[0]
        neg_hist += np.histogram(s[~m], bins=edges)[0]
    n_pos = pos_hist.sum()
    if n_pos == 0:
        raise UsageError("PxAP needs at least one positive mask pixel")
    tp = np.cumsum(pos_hist[::-1])  # positives scoring >= each lower edge, from the top threshold down
    fp = np.cumsum(neg_hist[::-1])
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = tp / n_pos
    return float((precision[1:] * np.diff(recall)).sum())

"""Which lesions the mined boxes find, per image-finding: the building blocks of ``miner bench localize`` and
``miner calibrate``.

Boxes are grouped per (image_id, finding) as ``[(rank, (x, y, w, h)), ...]`` and ground truth as
``{(image_id, finding): [(x, y, w, h), ...]}``, both in original pixels. "Every box" scoring, as the seed's
Table 3: a ground-truth box is found when any box of its image and finding overlaps it at IoU >= the level
(no AFP bound, so it equals Acc with every box of B of `miner.metrics.localization`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from miner.metrics.overlap import iou

Key = tuple[str, str]
XYWH = tuple[float, float, float, float]


def group_boxes(rows: Iterable[tuple[str, str, int, XYWH]]) -> dict[Key, list[tuple[int, XYWH]]]:
    """``(image_id, finding, rank, xywh)`` rows -> {(image_id, finding): [(rank, xywh), ...]}."""
    out: dict[Key, list[tuple[int, XYWH]]] = defaultdict(list)
    for image_id, finding, rank, xywh in rows:
        out[(image_id, finding)].append((int(rank), tuple(float(v) for v in xywh)))
    return dict(out)


def found_per_finding(pred: Mapping[Key, Sequence[tuple[int, XYWH]]], gt: Mapping[Key, Sequence[XYWH]],
                      level: float, keys: Iterable[Key] | None = None) -> dict[str, tuple[int, int]]:
    """Per finding: (ground-truth boxes found at IoU >= `level` by a box of their image-finding, boxes) over
    `keys` (default: every ground-truth image-finding)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key in (gt if keys is None else keys):
        truth = np.asarray(gt[key], float).reshape(-1, 4)
        boxes = np.asarray([b for _, b in pred.get(key, ())], float).reshape(-1, 4)
        hit = (iou(boxes, truth) >= level - 1e-12).any(axis=0) if len(boxes) else np.zeros(len(truth), bool)
        counts[key[1]][0] += int(hit.sum())
        counts[key[1]][1] += len(truth)
    return {f: (h, n) for f, (h, n) in counts.items()}


def found_share(pred: Mapping[Key, Sequence[tuple[int, XYWH]]], gt: Mapping[Key, Sequence[XYWH]], level: float,
                keys: Iterable[Key] | None = None) -> dict[str, float]:
    """Per finding: the share of ground-truth boxes found (`found_per_finding`)."""
    return {f: h / n for f, (h, n) in found_per_finding(pred, gt, level, keys).items() if n}


def rank1_area_ratio(pred: Mapping[Key, Sequence[tuple[int, XYWH]]], gt: Mapping[Key, Sequence[XYWH]]) -> float:
    """Median over image-findings with ground truth of (rank-1 box area) / (area of the ground-truth box it
    overlaps most; the first one when it overlaps none); NaN when no pair has a box."""
    ratios = []
    for key, boxes in pred.items():
        first = [b for r, b in boxes if r == 1]
        if key not in gt or not first:
            continue
        truth = np.asarray(gt[key], float).reshape(-1, 4)
        g = truth[int(np.argmax(iou(np.asarray(first[:1], float), truth)[0]))]
        ratios.append(first[0][2] * first[0][3] / max(g[2] * g[3], 1e-9))
    return float(np.median(ratios)) if ratios else math.nan


def inside(point: tuple[float, float], boxes: Sequence[XYWH]) -> bool:
    """Whether (x, y) lies in one of `boxes` (half-open [x, x + w) x [y, y + h))."""
    x, y = point
    return any(bx <= x < bx + bw and by <= y < by + bh for bx, by, bw, bh in boxes)


def macro(values: Mapping[str, float], findings: Sequence[str] | None = None) -> float:
    """Mean over `findings` (default: all) of the values that exist and are not NaN."""
    names = list(values) if findings is None else [f for f in findings if f in values]
    vals = [values[f] for f in names if not math.isnan(values[f])]
    return float(np.mean(vals)) if vals else math.nan

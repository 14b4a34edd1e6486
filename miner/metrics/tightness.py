"""Are the mined boxes tight enough to train a detector on? Two measures beside Acc and COCO AP (issue 25), the
building blocks of ``miner bench localize``'s "tight boxes" table.

Boxes are grouped per (image_id, finding) as ``[(rank, (x, y, w, h)), ...]`` and ground truth as
``{(image_id, finding): [(x, y, w, h), ...]}``, both in original pixels (as `miner.metrics.hits`).

- **Nested boxes** (`nested_per_finding`): an image-finding with two or more boxes is *nested* when one of its
  boxes holds another or lies inside it: the intersection of the two over the area of the smaller one is >=
  ``share`` (default 0.9; a pair whose smaller box has no area never counts). A detector trained on such labels
  is taught two boxes of different size on one lesion, one of them wrong whichever it is. The share is per
  finding, over the image-findings with >= 2 boxes (those with one box cannot nest); the issue's target is
  below 2 %.
- **Large lesions found** (`large_found_per_finding`): a ground-truth box is *large* when its area lies strictly
  above the ``quantile`` (default 0.75; numpy's linear interpolation) of its finding's ground-truth box areas in
  the scored ground truth; it is *found* when a box of rank <= ``max_rank`` (default 3) of its image and finding
  overlaps it at IoU >= ``level`` (default 0.3). Nested boxes are often a large lesion's core and a ring around
  it; a rule that drops one of them must not lose the large lesions the other one found: this is the check.

Both return per finding (hits, count) so that shares can be pooled as well as averaged (`shares`).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from miner.errors import UsageError
from miner.metrics.overlap import intersection, iou

Key = tuple[str, str]
XYWH = tuple[float, float, float, float]

#: the share of the smaller box's area that the intersection must reach for two boxes to be nested
NESTED_SHARE = 0.9
#: large lesions: above this quantile of their finding's ground-truth box areas
LARGE_QUANTILE = 0.75


def holds_nested(boxes: Sequence[XYWH], share: float = NESTED_SHARE) -> bool:
    """Whether two of `boxes` nest: intersection / area of the smaller box >= `share` (module docstring)."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    if len(b) < 2:
        return False
    area = b[:, 2] * b[:, 3]
    smaller = np.minimum(area[:, None], area[None])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(smaller > 0, intersection(b, b) / smaller, 0.0)
    pairs = np.triu(np.ones((len(b), len(b)), bool), k=1)
    return bool((ratio[pairs] >= share - 1e-12).any())


def nested_per_finding(pred: Mapping[Key, Sequence[tuple[int, XYWH]]], keys: Iterable[Key] | None = None,
                       share: float = NESTED_SHARE) -> dict[str, tuple[int, int]]:
    """Per finding: (nested image-findings, image-findings with two or more boxes) over `keys` (default: every
    image-finding of `pred`); a finding none of whose image-findings has two boxes is left out."""
    if not 0 < share <= 1:
        raise UsageError(f"nested share must lie in (0, 1], got {share}")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key in (pred if keys is None else keys):
        boxes = [b for _, b in pred.get(key, ())]
        if len(boxes) < 2:
            continue
        counts[key[1]][0] += int(holds_nested(boxes, share))
        counts[key[1]][1] += 1
    return {f: (h, n) for f, (h, n) in counts.items()}


def large_areas(gt: Mapping[Key, Sequence[XYWH]], quantile: float = LARGE_QUANTILE) -> dict[str, float]:
    """Per finding: the `quantile` of its ground-truth box areas (w x h) in `gt`, numpy's linear interpolation;
    a box above it is large."""
    if not 0 <= quantile <= 1:
        raise UsageError(f"large-lesion quantile must lie in [0, 1], got {quantile}")
    areas: dict[str, list[float]] = defaultdict(list)
    for (_, finding), boxes in gt.items():
        areas[finding] += [float(w) * float(h) for _, _, w, h in boxes]
    return {f: float(np.quantile(np.asarray(a, float), quantile)) for f, a in areas.items() if a}


def large_found_per_finding(pred: Mapping[Key, Sequence[tuple[int, XYWH]]], gt: Mapping[Key, Sequence[XYWH]], *,
                            level: float = 0.3, max_rank: int = 3,
                            quantile: float = LARGE_QUANTILE) -> dict[str, tuple[int, int]]:
    """Per finding: (large ground-truth boxes found by a box of rank <= `max_rank` of their image-finding at IoU >=
    `level`, large ground-truth boxes); large = area above the finding's `quantile` in `gt` (`large_areas`). A
    finding without a large box (every area equal) is left out."""
    if max_rank < 1:
        raise UsageError(f"max_rank must be at least 1, got {max_rank}")
    limits = large_areas(gt, quantile)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, boxes in gt.items():
        truth = np.asarray(boxes, float).reshape(-1, 4)
        truth = truth[truth[:, 2] * truth[:, 3] > limits[key[1]]]
        if not len(truth):
            continue
        mine = np.asarray([b for r, b in pred.get(key, ()) if r <= max_rank], float).reshape(-1, 4)
        hit = (iou(mine, truth) >= level - 1e-12).any(axis=0) if len(mine) else np.zeros(len(truth), bool)
        counts[key[1]][0] += int(hit.sum())
        counts[key[1]][1] += len(truth)
    return {f: (h, n) for f, (h, n) in counts.items()}


def shares(counts: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Per finding: hits / count (findings with a count of 0 left out)."""
    return {f: h / n for f, (h, n) in counts.items() if n}


__all__ = ["LARGE_QUANTILE", "NESTED_SHARE", "holds_nested", "large_areas", "large_found_per_finding",
           "nested_per_finding", "shares"]

"""One ground truth from several readers' boxes (VinDr-CXR: three radiologists per training image).

Rules (`miner.config.EvalConfig.readers`, ``miner eval --readers``):

- ``any``: every reader's box is a ground-truth box. Three readers boxing one lesion give three boxes; one
  mined box can match only one of them, so recall counts each reader's view of a lesion.
- ``fused`` (default): per image and finding, boxes of *different* readers whose IoU is >= ``fuse_iou`` are
  linked; every connected group is one lesion, and its box is the mean of its boxes' corners (weighted boxes
  fusion with equal weights). Groups boxed by fewer than
  ``min_readers`` distinct readers are dropped (``min_readers=2``: lesions at least two radiologists agree on).
  Boxes of one reader are never linked to each other directly (two lesions one reader drew stay two).
- a reader's id (``R8``): only that reader's boxes.

Boxes without a reader (single-reader archives) pass through every rule unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from miner.data.records import GroundTruthBox
from miner.errors import UsageError
from miner.metrics.overlap import iou

RULES: tuple[str, ...] = ("fused", "any")


def readers_of(boxes: Sequence[GroundTruthBox]) -> list[str]:
    """The distinct readers of `boxes`, sorted."""
    return sorted({b.reader for b in boxes if b.reader is not None})


def fuse_readers(
    boxes: Sequence[GroundTruthBox],
    *,
    rule: str = "fused",
    fuse_iou: float = 0.4,
    min_readers: int = 1,
) -> list[GroundTruthBox]:
    """The ground-truth boxes under `rule` (module docstring); fused boxes have ``reader=None``.

    Output order: by image and finding in order of first appearance, fused groups in order of their first box.
    """
    if not 0 < fuse_iou <= 1:
        raise UsageError(f"--fuse-iou must be in (0, 1], got {fuse_iou}")
    if min_readers < 1:
        raise UsageError(f"--min-readers must be at least 1, got {min_readers}")
    readers = readers_of(boxes)
    if rule == "any" or not readers:
        return list(boxes)
    if rule != "fused":
        if rule not in readers:
            shown = ", ".join(readers[:20]) + (" ..." if len(readers) > 20 else "")
            raise UsageError(f"--readers {rule!r}: not fused, any or one of the readers ({shown})")
        return [b for b in boxes if b.reader == rule or b.reader is None]
    groups: dict[tuple[str, str], list[GroundTruthBox]] = {}
    for b in boxes:
        groups.setdefault((b.image_id, b.finding), []).append(b)
    out: list[GroundTruthBox] = []
    for (image_id, finding), own in groups.items():
        if len(own) == 1:
            if min_readers <= 1:
                out.append(own[0] if own[0].reader is None else _fused(image_id, finding, own))
            continue
        xywh = np.array([[b.x, b.y, b.w, b.h] for b in own], dtype=np.float64)
        names = [b.reader for b in own]
        link = iou(xywh, xywh) >= fuse_iou - 1e-12
        same = np.array([[a is not None and a == b for b in names] for a in names])
        link &= ~same
        np.fill_diagonal(link, True)
        for members in _components(link):
            group = [own[i] for i in members]
            distinct = {b.reader for b in group if b.reader is not None}
            if len(distinct) >= min_readers or (not distinct and min_readers <= 1):
                out.append(_fused(image_id, finding, group))
    return out


def _fused(image_id: str, finding: str, group: Sequence[GroundTruthBox]) -> GroundTruthBox:
    corners = np.array([b.xyxy for b in group], dtype=np.float64).mean(axis=0)
    x0, y0, x1, y1 = (float(v) for v in corners)
    return GroundTruthBox(image_id, finding, x0, y0, x1 - x0, y1 - y0, reader=None)


def _components(link: np.ndarray) -> list[list[int]]:
    """Connected components of a symmetric boolean adjacency matrix, each sorted, in order of their first node."""
    n = len(link)
    seen = np.zeros(n, dtype=bool)
    out = []
    for start in range(n):
        if seen[start]:
            continue
        stack, members = [start], []
        seen[start] = True
        while stack:
            i = stack.pop()
            members.append(i)
            for j in np.flatnonzero(link[i] & ~seen):
                seen[j] = True
                stack.append(int(j))
        out.append(sorted(members))
    return out

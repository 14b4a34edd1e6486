"""Several readers' boxes -> one ground truth (`miner.metrics.readers`): hand-made cases."""
from __future__ import annotations

import pytest

from miner.data.records import GroundTruthBox as B
from miner.errors import UsageError
from miner.metrics.readers import fuse_readers, readers_of

BOXES = [
    B("a", "Nodule/Mass", 10, 10, 10, 10, reader="R1"),
    B("a", "Nodule/Mass", 12, 10, 10, 10, reader="R2"),  # IoU with R1's = 80 / 120 = 0.667: the same lesion
    B("a", "Nodule/Mass", 11, 11, 10, 10, reader="R3"),  # IoU 81/119 with R1's, 0.68 with R2's: the same lesion
    B("a", "Nodule/Mass", 60, 60, 10, 10, reader="R1"),  # a second lesion only R1 saw
    B("a", "Nodule/Mass", 14, 10, 10, 10, reader="R1"),  # R1's own near-duplicate: never fused with R1's first
    B("a", "Effusion", 0, 50, 40, 20, reader="R2"),
    B("b", "Effusion", 0, 50, 40, 20, reader="R3"),
]


def test_any_keeps_every_box_and_a_reader_selects_its_own():
    assert fuse_readers(BOXES, rule="any") == BOXES
    assert fuse_readers(BOXES, rule="R2") == [BOXES[1], BOXES[5]]
    assert readers_of(BOXES) == ["R1", "R2", "R3"]


def test_fused_groups_across_readers_and_averages_corners():
    fused = fuse_readers(BOXES, rule="fused", fuse_iou=0.4)
    # lesion 1: R1's first, R2's, R3's, and R1's duplicate linked through R2 (IoU 0.667) and R3 (0.46):
    # one connected group of four boxes; its box is the mean of their corners
    xs = [10, 12, 11, 14]
    first = fused[0]
    assert (first.image_id, first.finding, first.reader) == ("a", "Nodule/Mass", None)
    assert first.x == pytest.approx(sum(xs) / 4) and first.w == pytest.approx(10)
    assert first.y == pytest.approx((10 + 10 + 11 + 10) / 4) and first.h == pytest.approx(10)
    assert [(b.image_id, b.finding, b.x, b.y, b.w, b.h) for b in fused[1:]] == [
        ("a", "Nodule/Mass", 60, 60, 10, 10), ("a", "Effusion", 0, 50, 40, 20), ("b", "Effusion", 0, 50, 40, 20)]


def test_fused_at_a_high_iou_and_min_readers():
    strict = fuse_readers(BOXES, rule="fused", fuse_iou=0.7)
    # no pair of different readers reaches 0.7 on image a (0.667, 0.68, ...): every box is its own lesion
    assert len([b for b in strict if b.finding == "Nodule/Mass"]) == 5
    agreed = fuse_readers(BOXES, rule="fused", fuse_iou=0.4, min_readers=2)
    assert len(agreed) == 1 and agreed[0].finding == "Nodule/Mass"  # the only lesion two readers boxed


def test_bad_options():
    with pytest.raises(UsageError, match="R9"):
        fuse_readers(BOXES, rule="R9")
    with pytest.raises(UsageError, match="--fuse-iou"):
        fuse_readers(BOXES, fuse_iou=0)
    with pytest.raises(UsageError, match="--min-readers"):
        fuse_readers(BOXES, min_readers=0)
    single = [B("x", "Mass", 0, 0, 1, 1)]
    assert fuse_readers(single, rule="fused", min_readers=3) == single  # no readers: passes through

"""Nested boxes and large lesions found (miner.metrics.tightness), on hand-made boxes whose answers are worked out
in the comments."""
from __future__ import annotations

import pytest

from miner.errors import UsageError
from miner.metrics.tightness import (
    holds_nested,
    large_areas,
    large_found_per_finding,
    nested_per_finding,
    shares,
)


def test_two_boxes_nest_when_the_smaller_lies_at_least_0_9_inside_the_other():
    assert holds_nested([(0, 0, 10, 10), (2, 2, 4, 4)])  # inside: 16 / 16
    assert holds_nested([(2, 2, 4, 4), (0, 0, 10, 10)])  # either order: the smaller box's area counts
    assert not holds_nested([(0, 0, 10, 10), (5, 5, 10, 10)])  # 5 x 5 = 25 of 100
    assert holds_nested([(0, 0, 10, 10), (1, 0, 10, 10)])  # 9 x 10 = 90 of 100: exactly 0.9 counts
    assert not holds_nested([(0, 0, 10, 10), (2, 0, 10, 10)])  # 80 of 100
    assert holds_nested([(0, 0, 20, 20), (11, 0, 10, 10)])  # sticks out 1 px: 9 x 10 = 90 of the small one's 100
    assert not holds_nested([(0, 0, 20, 20), (15, 15, 10, 10)])  # 25 of 100
    assert holds_nested([(0, 0, 10, 10), (2, 0, 10, 10)], share=0.8)
    # one box cannot nest; a box without area never counts; the third of three boxes may be the nested one
    assert not holds_nested([(0, 0, 10, 10)]) and not holds_nested([])
    assert not holds_nested([(0, 0, 10, 10), (5, 5, 0, 0)])
    assert holds_nested([(0, 0, 10, 10), (40, 40, 5, 5), (41, 41, 2, 3)])


PRED = {
    ("a", "Mass"): [(1, (0, 0, 10, 10)), (2, (2, 2, 4, 4))],  # nested
    ("b", "Mass"): [(1, (0, 0, 10, 10)), (2, (20, 20, 5, 5))],  # apart
    ("c", "Mass"): [(1, (0, 0, 10, 10))],  # one box: not counted
    ("a", "Nodule"): [(1, (0, 0, 4, 4))],  # Nodule has no image-finding with two boxes: left out
    ("d", "Effusion"): [(1, (0, 0, 10, 10)), (2, (1, 0, 10, 10)), (3, (50, 50, 5, 5))],  # 90 of 100: nested
}


def test_nested_share_per_finding_over_image_findings_with_two_or_more_boxes():
    counts = nested_per_finding(PRED)
    assert counts == {"Mass": (1, 2), "Effusion": (1, 1)}
    assert shares(counts) == {"Mass": 0.5, "Effusion": 1.0}
    assert nested_per_finding(PRED, keys=[("b", "Mass"), ("c", "Mass"), ("x", "Mass")]) == {"Mass": (0, 1)}
    assert nested_per_finding(PRED, share=0.95) == {"Mass": (1, 2), "Effusion": (0, 1)}
    assert shares({"Mass": (0, 0)}) == {}
    with pytest.raises(UsageError, match="nested share must lie in"):
        nested_per_finding(PRED, share=0.0)


# Mass: nine lesions of areas 100, 200, ..., 900; the 0.75 quantile (linear) sits at position 0.75 x 8 = 6 of the
# sorted areas: 700, so 800 (image a) and 900 (image b) are the large ones (700 itself is not above it)
GT = {
    ("a", "Mass"): [(0, 0, 10, 10), (50, 50, 20, 40)],  # 100, 800
    ("b", "Mass"): [(0, 0, 10, 20), (30, 30, 30, 10), (100, 100, 30, 30)],  # 200, 300, 900
    ("c", "Mass"): [(0, 0, 20, 20), (0, 40, 10, 50), (60, 0, 20, 30), (60, 60, 35, 20)],  # 400, 500, 600, 700
    ("a", "Effusion"): [(0, 0, 10, 10)],  # every area equal: no large Effusion
    ("b", "Effusion"): [(5, 5, 10, 10)],
}
BOXES = {
    # a: the 800 lesion is boxed exactly, but at rank 4; rank 1 boxes the small lesion
    ("a", "Mass"): [(1, (0, 0, 10, 10)), (4, (50, 50, 20, 40))],
    # b: the 900 lesion at rank 2, moved 10 px right: 20 x 30 = 600 / (900 + 900 - 600) = 0.5
    ("b", "Mass"): [(1, (0, 0, 10, 20)), (2, (110, 100, 30, 30))],
    # c: the 700 lesion found (it is not large, so this does not count)
    ("c", "Mass"): [(1, (60, 60, 35, 20))],
    ("a", "Effusion"): [(1, (0, 0, 10, 10))],
}


def test_large_lesions_are_those_above_the_findings_0_75_area_quantile():
    assert large_areas(GT) == {"Mass": 700.0, "Effusion": 100.0}
    assert large_areas(GT, quantile=0.5) == {"Mass": 500.0, "Effusion": 100.0}
    with pytest.raises(UsageError, match="quantile must lie in"):
        large_areas(GT, quantile=1.5)


def test_large_lesions_found_by_a_box_of_rank_3_or_better():
    assert large_found_per_finding(BOXES, GT) == {"Mass": (1, 2)}  # b's at IoU 0.5; a's only at rank 4
    assert large_found_per_finding(BOXES, GT, max_rank=4) == {"Mass": (2, 2)}
    assert large_found_per_finding(BOXES, GT, max_rank=4, level=0.6) == {"Mass": (1, 2)}  # b's 0.5 < 0.6
    assert large_found_per_finding(BOXES, GT, max_rank=4, level=0.5) == {"Mass": (2, 2)}  # 0.5 counts at 0.5
    # at the median (500): 600, 700 (c), 800 (a), 900 (b) are large; c's 700 is found at rank 1
    assert large_found_per_finding(BOXES, GT, quantile=0.5) == {"Mass": (2, 4)}
    assert large_found_per_finding({}, GT) == {"Mass": (0, 2)}
    with pytest.raises(UsageError, match="max_rank must be at least 1"):
        large_found_per_finding(BOXES, GT, max_rank=0)

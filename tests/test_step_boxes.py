"""Boxes of the mining steps (BoxConfig.rule="steps"): hand-made maps, per-finding levels, cell centres."""
from __future__ import annotations

import pytest
import torch

from miner.boxes import boxes_from_mining, cell_shift
from miner.config import BoxConfig
from miner.errors import UsageError
from miner.mining import attention_mining

STEPS = BoxConfig(rule="steps", upsample=1, step_level=0.5, dedup_iou=0.5, dedup_iobb=0.8)


def two_peaks() -> torch.Tensor:
    """A 12x12 map: a strong 3x3 peak (1.0 with a 0.6 rim) and a weaker 2x2 one (0.4), apart."""
    m = torch.zeros(1, 1, 12, 12)
    m[0, 0, 1:6, 1:6] = 0.6
    m[0, 0, 2:5, 2:5] = 1.0
    m[0, 0, 8:10, 7:9] = 0.4
    return m


def boxes(maps, *, steps=3, config=STEPS, sizes=((12, 12),), threshold=0.5, **kw):
    mined = attention_mining(maps, steps=steps, threshold=threshold)
    return boxes_from_mining(mined, original_sizes=list(sizes), config=config, **kw)


def xywh(box):
    return (float(box["x"]), float(box["y"]), float(box["w"]), float(box["h"]))


def test_one_box_per_step_each_around_its_own_peak():
    out = boxes(two_peaks())[0]
    # step 1: the peak, cut at 0.5 of its height (the 0.6 rim is above half of 1.0): rows/cols 1..5
    # step 2: the weaker lesion, cut at half of its own height: exactly its 2x2 cells
    assert [xywh(b) for b in out] == [(1, 1, 5, 5), (7, 8, 2, 2)]
    assert [b["rank"] for b in out] == [1, 2]
    # ranked by the mean of H_1 (min-max over the whole map) inside the region: (9 * 1 + 16 * 0.6) / 25, then 0.4
    assert out[0]["score"] == pytest.approx((9 * 1.0 + 16 * 0.6) / 25)
    assert out[1]["score"] == pytest.approx(0.4)
    assert all(b["threshold"] == pytest.approx(0.5) for b in out)


def test_t1_gives_one_box_and_a_higher_level_a_tighter_one():
    assert [xywh(b) for b in boxes(two_peaks(), steps=1)[0]] == [(1, 1, 5, 5)]
    tight = BoxConfig(rule="steps", upsample=1, step_level=0.8)
    assert [xywh(b) for b in boxes(two_peaks(), steps=1, config=tight)[0]] == [(2, 2, 3, 3)]


def test_per_finding_levels_override_the_default():
    maps = torch.cat([two_peaks(), two_peaks()], dim=1)  # two findings, same map
    cfg = BoxConfig(rule="steps", upsample=1, step_level=0.5, finding_levels={"Nodule": 0.8})
    out = boxes(maps, steps=1, config=cfg, class_names=("Mass", "Nodule"))[0]
    got = {b["class_index"]: (xywh(b), float(b["threshold"])) for b in out}
    assert got == {0: ((1, 1, 5, 5), 0.5), 1: ((2, 2, 3, 3), pytest.approx(0.8))}


def test_per_finding_shapes_rescale_and_move_boxes_within_the_image():
    maps = torch.cat([two_peaks(), two_peaks()], dim=1)
    # Mass: the 5x5 box at (1, 1) twice as wide, half as tall, centre 0.2 of its width right, 0.1 of its height up:
    #   centre (3.5 + 1, 3.5 - 0.5) = (4.5, 3.0), size 10 x 2.5 -> x 4.5 - 5 = -0.5, clipped to 0, x1 9.5;
    #   y 1.75 .. 4.25. Nodule keeps its box (no shape); a finding not among the maps changes nothing.
    cfg = BoxConfig(rule="steps", upsample=1, step_level=0.5,
                    finding_shapes={"Mass": [2.0, 0.5, 0.2, -0.1], "Effusion": [3, 3, 0, 0]})
    out = boxes(maps, steps=1, config=cfg, class_names=("Mass", "Nodule"))[0]
    got = {b["class_index"]: xywh(b) for b in out}
    assert got[0] == pytest.approx((0.0, 1.75, 9.5, 2.5))
    assert got[1] == (1, 1, 5, 5)
    # in original pixels: the shape is relative, so a 24 x 36 image gives the same box scaled by (3, 2)
    big = boxes(maps, steps=1, config=cfg, class_names=("Mass", "Nodule"), sizes=((24, 36),))[0]
    assert {b["class_index"]: xywh(b) for b in big}[0] == pytest.approx((0.0, 3.5, 28.5, 5.0))
    # clipped at the far edges too; the identity (1, 1, 0, 0) leaves boxes exactly as they are
    from miner.step_boxes import shape_boxes
    far = shape_boxes(torch.tensor([[8.0, 8.0, 12.0, 12.0]]), torch.tensor([2.0, 2.0, 0.3, 0.3]),
                      torch.tensor([12, 12]))
    assert far[0].tolist() == pytest.approx([7.2, 7.2, 12.0, 12.0])  # centre 10 + 1.2, half side 4
    box = torch.tensor([[1.5, 2.0, 7.0, 9.25]])
    assert torch.equal(shape_boxes(box, torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([12, 12])), box)
    # the seed's levels rule applies shapes too
    levels = BoxConfig(rule="levels", upsample=1, thresholds=(0.5,), max_boxes=1,
                       finding_shapes={"Mass": [0.6, 0.6, 0, 0]})
    plain = BoxConfig(rule="levels", upsample=1, thresholds=(0.5,), max_boxes=1)
    a = xywh(boxes(two_peaks(), steps=1, config=plain, class_names=("Mass",))[0][0])
    b = xywh(boxes(two_peaks(), steps=1, config=levels, class_names=("Mass",))[0][0])
    assert b == pytest.approx((a[0] + 0.2 * a[2], a[1] + 0.2 * a[3], 0.6 * a[2], 0.6 * a[3]))


def test_a_shoulder_of_the_first_lesion_is_a_duplicate():
    m = torch.zeros(1, 1, 12, 12)
    m[0, 0, 2:9, 2:9] = 0.5
    m[0, 0, 4:7, 4:7] = 1.0  # erasing at 0.9 leaves the 0.5 plateau around it for step 2
    out = boxes(m, steps=2, threshold=0.9)[0]
    # step 2 boxes the plateau ring (2..8), which holds step 1's box: kept (it is not inside it) but IoU
    # 9/49 < 0.5; step 1 at level 0.5 already boxed the plateau: step 2 is inside it -> dropped
    assert [xywh(b) for b in out] == [(2, 2, 7, 7)]


def ring_around_a_core() -> torch.Tensor:
    """A 12x12 map: a 3x3 core of 1.0 (rows/cols 4..6) inside a 7x7 plateau of 0.3 (rows/cols 2..8)."""
    m = torch.zeros(1, 1, 12, 12)
    m[0, 0, 2:9, 2:9] = 0.3
    m[0, 0, 4:7, 4:7] = 1.0
    return m


def test_drop_nested_drops_a_later_box_that_holds_an_earlier_one():
    from dataclasses import replace

    # step 1 at level 0.5 boxes the core (4, 4, 3 x 3; mean H_1 1.0) and erases it (H_1 >= 0.9); step 2's peak is
    # the 0.3 plateau, its region at 0.5 of 0.3 the 40-cell ring: box (2, 2, 7 x 7), mean H_1 0.3. IoU 9/49 <= 0.5
    # and the ring box is not inside the core's (9/49 of its own area <= 0.8): today it is kept, holding the first
    out = boxes(ring_around_a_core(), steps=2, threshold=0.9)[0]
    assert [xywh(b) for b in out] == [(4, 4, 3, 3), (2, 2, 7, 7)]
    assert [round(float(b["score"]), 6) for b in out] == [1.0, 0.3]
    assert [xywh(b) for b in boxes(ring_around_a_core(), steps=2, threshold=0.9,
                                   config=replace(STEPS, drop_nested=0.0))[0]] == [(4, 4, 3, 3), (2, 2, 7, 7)]
    # with the option: the ring box holds all of the core's box (9 / 9 = 1 > 0.9): dropped
    nested = boxes(ring_around_a_core(), steps=2, threshold=0.9, config=replace(STEPS, drop_nested=0.9))[0]
    assert [xywh(b) for b in nested] == [(4, 4, 3, 3)] and nested[0]["rank"] == 1
    # "above" the share: 1.0 is never exceeded, so 1.0 keeps it as 0 does
    assert len(boxes(ring_around_a_core(), steps=2, threshold=0.9, config=replace(STEPS, drop_nested=1.0))[0]) == 2
    # a second lesion apart from the first is kept (no overlap), and bad values are one-line errors
    assert [xywh(b) for b in boxes(two_peaks(), config=replace(STEPS, drop_nested=0.5))[0]] == [(1, 1, 5, 5),
                                                                                               (7, 8, 2, 2)]
    for bad in (-0.1, 1.5, float("nan"), "x", True):
        with pytest.raises(UsageError, match="drop_nested must be a number in"):
            boxes(ring_around_a_core(), steps=2, config=replace(STEPS, drop_nested=bad))


def test_background_peak_of_a_later_step_ranks_below_a_stronger_lesion():
    m = torch.zeros(1, 1, 12, 12)
    m[0, 0, 1:3, 1:3] = 1.0
    m[0, 0, 8:11, 8:11] = 0.9  # second lesion, nearly as strong
    m[0, 0, 6, 1] = 0.2  # weak background blip, found at step 3
    out = boxes(m)[0]
    assert [xywh(b) for b in out] == [(1, 1, 2, 2), (8, 8, 3, 3), (1, 6, 1, 1)]
    assert [round(float(b["score"]), 3) for b in out] == [1.0, 0.9, 0.2]


def test_cell_shift_moves_boxes_to_receptive_field_centres():
    assert cell_shift((256, 256), (32, 32), "corner") == pytest.approx((-3.5 / 8, -3.5 / 8))
    assert cell_shift((256, 256), (32, 32), "centre") == (0.0, 0.0)
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 1, 2] = 1.0
    cfg = BoxConfig(rule="steps", upsample=1, step_level=0.5, align_cells=True)
    shift = cell_shift((32, 32), (4, 4), "corner")  # stride 8: 3.5 px up and left
    (box,) = boxes(m, steps=1, config=cfg, sizes=((32, 32),), shift=shift)[0]
    assert xywh(box) == pytest.approx((16 - 3.5, 8 - 3.5, 8, 8))
    # the seed's recipe leaves boxes where they were
    (box,) = boxes(m, steps=1, config=BoxConfig(rule="steps", upsample=1, step_level=0.5), sizes=((32, 32),),
                   shift=shift)[0]
    assert xywh(box) == (16, 8, 8, 8)
    # clipped to the image at the border
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, 0] = 1.0
    (box,) = boxes(m, steps=1, config=cfg, sizes=((32, 32),), shift=shift)[0]
    assert xywh(box) == pytest.approx((0, 0, 8 - 3.5, 8 - 3.5))


def test_levels_rule_is_the_seed_rule_and_unknown_rules_are_refused():
    from miner.boxes import boxes_from_maps

    maps = two_peaks()
    mined = attention_mining(maps, steps=3)
    seed = BoxConfig(upsample=1)
    assert boxes_from_mining(mined, original_sizes=[(12, 12)], config=seed) == boxes_from_maps(
        mined.fused, original_sizes=[(12, 12)], config=seed)
    with pytest.raises(UsageError, match="box rule"):
        boxes_from_mining(mined, original_sizes=[(12, 12)], config=BoxConfig(rule="peaks"))

"""One evaluation of a job (`miner.metrics.job`): the ground truth of the mined images, both Acc-AFP tables, COCO,
the text cells the report shows; and the helpers it is built from (GT rows -> BoxTable, no bounds, table rows)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from miner.config import EvalConfig
from miner.data.records import GroundTruthBox as G
from miner.metrics import BoxTable, format_table, ground_truth_table, localization_table, no_bounds
from miner.metrics.job import evaluate_job, job_ground_truth, multi_lesion_counts
from miner.metrics.localization import table_rows

BOXES = [G("a.png", "Mass", 0, 0, 10, 10), G("a.png", "Mass", 50, 50, 10, 10), G("b.png", "Nodule", 5, 5, 4, 4),
         G("c.png", "Mass", 0, 0, 8, 8), G("d.png", "Effusion", 0, 0, 20, 20)]


def _perfect(gt: BoxTable) -> BoxTable:
    """Every ground-truth box as its own prediction (score 1)."""
    return BoxTable.from_columns(gt.image_id, gt.finding, gt.x, gt.y, gt.w, gt.h, rank=gt.rank,
                                 score=np.ones(len(gt)))


def test_ground_truth_table_keeps_order_ranks_and_the_images_asked():
    gt = ground_truth_table(BOXES, images={"a.png", "b.png"})
    assert gt.image_id.tolist() == ["a.png", "a.png", "b.png"]
    assert gt.rank.tolist() == [1, 2, 1] and np.isnan(gt.score).all()
    assert gt.xywh.tolist() == [[0, 0, 10, 10], [50, 50, 10, 10], [5, 5, 4, 4]]
    assert len(ground_truth_table(BOXES)) == 5 and len(ground_truth_table(BOXES, images=[])) == 0
    assert len(gt.take(gt.finding == "Mass")) == 2


def test_no_bounds_has_no_bound_anywhere():
    bounds = no_bounds()
    assert bounds.bound("iou", 0.3, "Mass") is None and bounds.bound("iobb", 0.5, "Nodule") is None


def test_job_ground_truth_limits_to_mined_images_and_the_models_findings_in_its_order():
    gt, findings = job_ground_truth(BOXES, mined=["a.png", "b.png", "d.png"],
                                    classes=("Nodule", "Mass", "Cardiomegaly"))
    assert sorted(set(gt.image_id.tolist())) == ["a.png", "b.png", "d.png"] and len(gt) == 4
    assert findings == ["Nodule", "Mass"]  # Effusion: not the model's; Cardiomegaly: no box; Mass: c.png not mined


def test_ground_truth_as_predictions_scores_acc_1_afp_0_in_both_tables_and_coco():
    gt, findings = job_ground_truth(BOXES, mined=["a.png", "b.png", "c.png", "d.png"], classes=("Mass", "Nodule"))
    result = evaluate_job(_perfect(gt), gt, images=["a.png", "b.png", "c.png", "d.png"], findings=findings)
    cfg = EvalConfig()
    assert result.findings == ["Mass", "Nodule"]
    assert result.gt_boxes == 4 and result.gt_images == 3  # the Effusion box of d.png is not evaluated
    assert len(result.bounded) == 2 * (len(cfg.iou_thresholds) + len(cfg.iobb_thresholds))
    assert len(result.every_box) == 2 * len(cfg.iou_thresholds)  # T(IoU) levels only
    assert all(c.acc == 1 and c.afp == 0 for c in result.bounded + result.every_box)
    assert all(c.bound is None for c in result.every_box)
    assert result.acc("Mass", 0.3) == 1 and math.isnan(result.acc("Mass", 0.35))
    assert result.coco is not None and result.coco.convention == "boxed"  # auto, not exhaustive
    assert [r.finding for r in result.coco.results] == ["Mass", "Nodule"]
    assert all(r.ap == pytest.approx(1) for r in result.coco.results)
    assert result.coco_table()[-1][:4] == ["mean", "", "4", "4"]
    # Mass: AR@1 finds one of a.png's two boxes (one detection per image): 2 of 3
    assert result.coco_table()[0][4:] == ["1.000", "1.000", "1.000", "0.667", "1.000", "1.000"]
    assert result.coco.json()["mean"]["ap"] == pytest.approx(1)


def test_every_box_table_equals_localization_table_without_bounds():
    gt = ground_truth_table(BOXES)
    pred = BoxTable.from_columns(["a.png", "a.png", "c.png"], ["Mass"] * 3, [0, 90, 1], [0, 90, 1], [10, 5, 8],
                                 [10, 5, 8], rank=[1, 2, 1], score=[0.9, 0.8, 0.7])
    result = evaluate_job(pred, gt, images=["a.png", "c.png"], findings=["Mass"], coco=False,
                          config=EvalConfig(iou_thresholds=(0.3, 0.5), iobb_thresholds=(0.5,)))
    want = localization_table(pred, gt, config=EvalConfig(iou_thresholds=(0.3, 0.5), iobb_thresholds=()),
                              bounds=no_bounds(), findings=["Mass"])
    assert result.every_box == want and result.coco is None
    assert [c.acc for c in want] == [pytest.approx(2 / 3)] * 2 and [c.afp for c in want] == [0.5, 0.5]


def test_table_rows_are_the_cells_format_table_prints():
    gt = ground_truth_table(BOXES)
    cells = localization_table(_perfect(gt), gt, config=EvalConfig(iou_thresholds=(0.1, 0.5), iobb_thresholds=(0.5,)),
                               findings=["Mass", "Nodule", "Pneumonia"])
    rows = table_rows(cells)
    assert rows[0] == ["T", "Mass", "Nodule", "Pneumonia"]
    assert rows[1] == ["T(IoU)=0.1", "1.00-0.00", "1.00-0.00", "-"]  # the built-in bounds at T(IoU); no GT: -
    assert rows[3] == ["T(IoBB)=0.5", "1.00-0.00*", "1.00-0.00*", "-"]  # no bound at T(IoBB): *
    text = format_table(cells).splitlines()
    assert text[0].split() == ["T", "Mass", "Nodule", "PNA"] and text[3].split() == rows[3]


def test_multi_lesion_counts():
    assert multi_lesion_counts(BOXES) == {"Mass": 1}

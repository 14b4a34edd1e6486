"""The Acc/AFP protocol: a constructed case, the real NIH box list against itself, table and file I/O."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from miner.config import EvalConfig
from miner.metrics import BoxTable, evaluate_finding, format_table, load_bounds, localization_table, read_boxes
from miner.metrics.bounds import REPAIRED, default_bounds
from miner.metrics.localization import read_bbox_csv, write_bbox_csv


def _table(rows):
    """rows: (image, finding, x, y, w, h, rank, score)."""
    cols = list(zip(*rows))
    return BoxTable.from_columns(*cols[:6], rank=cols[6], score=cols[7])


@pytest.fixture
def case():
    """Four Mass images with 5 GT boxes; predictions of 3 ranks; one image without GT (ignored)."""
    gt = _table([
        ("a", "Mass", 0, 0, 10, 10, 1, np.nan),
        ("a", "Mass", 50, 50, 10, 10, 2, np.nan),
        ("b", "Mass", 0, 0, 10, 10, 1, np.nan),
        ("c", "Mass", 0, 0, 10, 10, 1, np.nan),
        ("d", "Mass", 0, 0, 10, 10, 1, np.nan),
        ("a", "Nodule", 0, 0, 5, 5, 1, np.nan),
    ])
    pred = _table([
        ("a", "Mass", 0, 0, 10, 10, 1, 0.9),     # TP (gt a1), IoU 1
        ("b", "Mass", 30, 30, 10, 10, 1, 0.8),   # FP
        ("c", "Mass", 0, 0, 10, 20, 1, 0.7),     # IoU 0.5 with c; IoBB 0.5
        ("d", "Mass", 40, 40, 10, 10, 1, 0.6),   # FP
        ("a", "Mass", 50, 50, 10, 10, 2, 0.5),   # TP (gt a2)
        ("b", "Mass", 2, 0, 10, 10, 2, 0.4),     # IoU 80/120 = 0.667 with b
        ("d", "Mass", 0, 0, 10, 10, 3, 0.3),     # TP (gt d)
        ("e", "Mass", 0, 0, 10, 10, 1, 0.99),    # image without a Mass GT box: ignored
        ("a", "Nodule", 0, 0, 5, 5, 1, 0.5),     # another finding: ignored for Mass
    ])
    return pred, gt


def test_constructed_acc_afp(case):
    pred, gt = case
    levels = [0.3, 0.6, 0.7]
    # no bound: all 7 boxes of B.  IoU >= 0.3: FP = b1, d1 -> AFP 2/4; every GT localised -> Acc 5/5
    # IoU >= 0.6: c1 (0.5) also FP -> AFP 3/4; GT c missed -> Acc 4/5
    # IoU >= 0.7: b2 (0.667) also FP -> AFP 4/4; b, c missed -> Acc 3/5
    res = evaluate_finding(pred, gt, "Mass", metric="iou", thresholds=levels, bounds=[None] * 3)
    assert [(r.acc, r.afp, r.images, r.gt_boxes, r.available) for r in res] == [
        (1.0, 0.5, 4, 5, 7), (0.8, 0.75, 4, 5, 7), (0.6, 1.0, 4, 5, 7)]
    # with a bound of 0.25 FP per image (1 FP on 4 images): B in score order within rank is
    # a1 (TP) b1 (FP, 1/4 ok) c1 (TP at 0.3) d1 (FP: 2/4 > 0.25 -> stop before it)
    res = evaluate_finding(pred, gt, "Mass", metric="iou", thresholds=[0.3], bounds=[0.25])
    r = res[0]
    assert (r.selected, r.false_positives, r.localized, r.acc, r.afp) == (3, 1, 2, 0.4, 0.25)
    # image order within a rank (the seed's literal listing) gives the same here (scores fall with the name)
    r2 = evaluate_finding(pred, gt, "Mass", metric="iou", thresholds=[0.3], bounds=[0.25], within_rank="image")[0]
    assert (r2.selected, r2.acc) == (3, 0.4)
    # a bound of 0.5: d1 fits (2/4); next FP none at 0.3 -> all of B
    r3 = evaluate_finding(pred, gt, "Mass", metric="iou", thresholds=[0.3], bounds=[0.5])[0]
    assert (r3.selected, r3.acc, r3.afp) == (7, 1.0, 0.5)
    # IoBB: c1 (10x20 box over a 10x10 GT) has IoBB 0.5; b2 80/100 = 0.8
    r4 = evaluate_finding(pred, gt, "Mass", metric="iobb", thresholds=[0.75], bounds=[None])[0]
    assert (r4.acc, r4.afp) == (0.8, 0.75)  # FP: b1, c1, d1; GT c missed
    # max_rank 1: only rank-1 boxes enter B
    r5 = evaluate_finding(pred, gt, "Mass", metric="iou", thresholds=[0.3], bounds=[None], max_rank=1)[0]
    assert (r5.available, r5.acc, r5.afp) == (4, 0.4, 0.5)


def test_real_nih_boxes_against_themselves(nih_bbox_list):
    """The real BBox_List_2017 as both ground truth and prediction: Acc 1 and AFP 0 at every T(IoU)."""
    gt = read_bbox_csv(nih_bbox_list)
    assert len(gt) == 984 and len(set(gt.image_id)) == 880
    results = localization_table(gt, gt)
    iou_rows = [r for r in results if r.metric == "iou"]
    assert len(iou_rows) == 8 * 7
    assert all(r.acc == 1.0 and r.afp == 0.0 for r in results)
    assert sum(r.gt_boxes for r in iou_rows) == 984 * 7
    # a shifted copy keeps Acc 1 up to the IoU the shift leaves and fails above it
    shifted = BoxTable.from_columns(gt.image_id, gt.finding, gt.x + gt.w / 4, gt.y, gt.w, gt.h)
    res = {(r.finding, r.threshold): r for r in localization_table(shifted, gt) if r.metric == "iou"}
    # IoU of a box shifted by a quarter of its width: 0.75 / 1.25 = 0.6
    assert all(res[(f, 0.6)].acc == 1.0 for f, _ in res) and all(res[(f, 0.7)].acc == 0.0 for f, _ in res)


def test_table_layout(case):
    pred, gt = case
    results = localization_table(pred, gt, config=EvalConfig(iou_thresholds=(0.3,), iobb_thresholds=(0.5,)))
    text = format_table(results)
    lines = text.splitlines()
    assert lines[0].split() == ["T", "Mass", "Nodule"]
    assert lines[1].split()[0] == "T(IoU)=0.3" and lines[2].split()[0] == "T(IoBB)=0.5"
    # Mass at T(IoU)=0.3 under the built-in bound 0.69: 2 FP on 4 images (0.5) fit, so all of B is taken
    assert lines[1].split()[1:] == ["1.00-0.50", "1.00-0.00"]
    assert lines[2].split()[1].endswith("*")  # no built-in IoBB bound


def test_built_in_bounds():
    b = default_bounds()
    assert b.bound("iou", 0.1, "Pneumonia") == 1.02 and b.bound("iou", 0.7, "Pneumonia") == 1.13
    assert b.bound("iou", 0.3, "Atelectasis") == REPAIRED[("iou", 0.3, "Atelectasis")][1] == 1.06
    assert b.bound("iou", 0.5, "Cardiomegaly") == 0.39
    assert b.bound("iobb", 0.5, "Mass") is None and b.bound("iou", 0.35, "Mass") is None
    for finding in ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                    "Pneumothorax"):
        seq = [b.bound("iou", t, finding) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
        assert seq == sorted(seq)  # AFP cannot fall as the level rises


def test_bounds_files(tmp_path, case):
    pred, gt = case
    js = tmp_path / "b.json"
    js.write_text(json.dumps({"iou": {"0.3": {"Mass": 0.25}}, "iobb": {"0.5": {"Mass": 0.0}}}))
    csvf = tmp_path / "b.csv"
    csvf.write_text("metric,threshold,finding,afp\niou,0.3,Mass,0.25\niobb,0.5,Mass,0\niou,0.3,Nodule,\n")
    for path in (js, csvf):
        bounds = load_bounds(path)
        assert bounds.bound("iou", 0.3, "Mass") == 0.25 and bounds.bound("iou", 0.3, "Nodule") is None
        res = localization_table(pred, gt, bounds=bounds, config=EvalConfig(iou_thresholds=(0.3,),
                                                                            iobb_thresholds=(0.5,)))
        mass = {r.metric: r for r in res if r.finding == "Mass"}
        assert (mass["iou"].acc, mass["iou"].afp) == (0.4, 0.25)
        assert mass["iobb"].false_positives == 0 and mass["iobb"].selected == 1  # stops at the first FP
    bad = tmp_path / "bad.csv"
    bad.write_text("finding,afp\nMass,1\n")
    from miner.errors import UsageError

    with pytest.raises(UsageError, match="columns"):
        load_bounds(bad)


def test_read_boxes_from_parquet_and_csv(tmp_path, case):
    pred, _ = case
    from miner.io import BOXES_SCHEMA

    n = len(pred)
    table = pa.table({
        "image_id": pred.image_id.astype(str), "finding": pred.finding.astype(str),
        "class_index": np.zeros(n, np.int16), "rank": pred.rank.astype(np.int8),
        "x": pred.x.astype(np.float32), "y": pred.y.astype(np.float32), "w": pred.w.astype(np.float32),
        "h": pred.h.astype(np.float32), "score": pred.score.astype(np.float32), "prob": np.ones(n, np.float32),
        "threshold": np.full(n, 0.5, np.float32)}, schema=BOXES_SCHEMA)
    (tmp_path / "out" / "boxes").mkdir(parents=True)
    pq.write_table(table.slice(0, 4), tmp_path / "out" / "boxes" / "part-000000.parquet")
    pq.write_table(table.slice(4), tmp_path / "out" / "boxes" / "part-000001.parquet")
    for path in (tmp_path / "out", tmp_path / "out" / "boxes"):
        got = read_boxes(path)
        assert sorted(zip(got.image_id, got.rank, got.x)) == sorted(zip(pred.image_id, pred.rank, pred.x))
    write_bbox_csv(tmp_path / "p.csv", pred)
    back = read_boxes(tmp_path / "p.csv")
    assert sorted(zip(back.image_id, back.finding, back.x)) == sorted(zip(pred.image_id, pred.finding, pred.x))

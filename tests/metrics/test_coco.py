"""COCO AP/AR in `miner eval` (`miner.metrics.coco`): equal to pycocotools and faster-coco-eval run directly on the
JSON files eval writes; the real NIH box list against itself; hand-computed cases; image-level AUC."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from miner.cli import main
from miner.data.records import Record
from miner.metrics import BoxTable
from miner.metrics.coco import coco_detections, coco_ground_truth, evaluate_coco


def _direct(library: str, folder, category: int, images: list[int]) -> np.ndarray:
    """COCOeval of `library` run on ground_truth.json / detections.json as a user would: its stats vector."""
    if library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / "ground_truth.json"))
        dt = gt.loadRes(str(folder / "detections.json"))
        e = COCOeval(gt, dt, "bbox")
        e.params.catIds, e.params.imgIds = [category], images
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.array(e.stats[:12])


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, nih_bbox_list):
    """The real NIH boxes as ground truth and a noisy copy as predictions: jittered boxes (varied IoU), some
    dropped, false positives on other images of the list, random scores and ranks."""
    from miner.metrics.localization import read_bbox_csv, write_bbox_csv

    root = tmp_path_factory.mktemp("coco")
    gt = read_bbox_csv(nih_bbox_list)
    rng = np.random.default_rng(0)
    n = len(gt)
    keep = rng.random(n) > 0.2
    xywh = gt.xywh[keep] + rng.normal(0, 1, (keep.sum(), 4)) * np.r_[0.15, 0.15, 0.2, 0.2] * gt.xywh[keep, 2:].repeat(
        2, axis=1)
    ids, findings = gt.image_id[keep], gt.finding[keep]
    images = np.array(sorted(set(gt.image_id)))
    fp = 300
    fp_ids = rng.choice(images, fp)
    fp_findings = rng.choice(sorted(set(gt.finding)), fp)
    fp_xywh = np.c_[rng.uniform(0, 800, (fp, 2)), rng.uniform(30, 300, (fp, 2))]
    pred = BoxTable.from_columns(np.r_[ids, fp_ids], np.r_[findings, fp_findings], *np.r_[xywh, fp_xywh].T,
                                 rank=np.ones(keep.sum() + fp, int), score=rng.random(keep.sum() + fp))
    import pyarrow as pa
    import pyarrow.parquet as pq

    from miner.io import BOXES_SCHEMA

    m = len(pred)
    table = pa.table({"image_id": pred.image_id.astype(str), "finding": pred.finding.astype(str),
                      "class_index": np.zeros(m, np.int16), "rank": np.ones(m, np.int8),
                      "x": pred.x.astype(np.float32), "y": pred.y.astype(np.float32),
                      "w": np.abs(pred.w).astype(np.float32), "h": np.abs(pred.h).astype(np.float32),
                      "score": pred.score.astype(np.float32), "prob": np.ones(m, np.float32),
                      "threshold": np.full(m, 0.5, np.float32)}, schema=BOXES_SCHEMA)
    pq.write_table(table, root / "pred.parquet")
    write_bbox_csv(root / "gt.csv", gt)
    return root


@pytest.mark.parametrize("negatives", ["boxed", "all"])
def test_eval_ap_equals_pycocotools_and_faster_coco_eval_on_the_same_json(noisy, negatives, capsys):
    folder = noisy / negatives
    report = noisy / f"{negatives}.json"
    assert main(["eval", str(noisy / "pred.parquet"), "--gt", str(noisy / "gt.csv"), "--negatives", negatives,
                 "--coco-dir", str(folder), "--json", str(report), "--iou", "0.5", "--iobb", "0.5"]) == 0
    assert "COCO detection metrics" in capsys.readouterr().out
    coco = json.loads(report.read_text())["coco"]
    gt = json.loads((folder / "ground_truth.json").read_text())
    assert coco["negatives"] == negatives and len(gt["categories"]) == 8 and len(gt["images"]) == 880
    aps = []
    for category, result in zip(gt["categories"], coco["findings"]):
        k = category["id"]
        own = sorted({a["image_id"] for a in gt["annotations"] if a["category_id"] == k})
        images = own if negatives == "boxed" else [e["id"] for e in gt["images"]]
        for library in ("pycocotools", "faster-coco-eval"):
            stats = _direct(library, folder, k, images)
            got = [result[f] for f in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100")]
            np.testing.assert_allclose(got, stats[[0, 1, 2, 6, 7, 8]], rtol=0, atol=1e-12)
        assert result["images"] == len(images) and 0.05 < result["ap50"] < 0.99  # a non-trivial case
        aps.append(result["ap"])
    assert coco["mean"]["ap"] == pytest.approx(np.mean(aps), abs=1e-12)
    if negatives == "all":  # the mean over findings = one pycocotools run over every category
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            g = COCO(str(folder / "ground_truth.json"))
            e = COCOeval(g, g.loadRes(str(folder / "detections.json")), "bbox")
            e.evaluate()
            e.accumulate()
            e.summarize()
        assert coco["mean"]["ap"] == pytest.approx(e.stats[0], abs=1e-12)


def test_real_nih_box_list_against_itself_gives_ap_1(nih_bbox_list, tmp_path, capsys):
    report = tmp_path / "self.json"
    for backend in ("faster-coco-eval", "pycocotools"):
        assert main(["eval", str(nih_bbox_list), "--gt", str(nih_bbox_list), "--coco-backend", backend,
                     "--json", str(report), "--iou", "0.5", "--iobb", "0.5"]) == 0
        coco = json.loads(report.read_text())["coco"]
        assert [r["finding"] for r in coco["findings"]] == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration",
                                                           "Mass", "Nodule", "Pneumonia", "Pneumothorax"]
        assert sum(r["gt_boxes"] for r in coco["findings"]) == 984
        for r in coco["findings"]:
            assert (r["ap"], r["ap50"], r["ap75"], r["ar100"]) == (1.0, 1.0, 1.0, 1.0), r
    assert "mean" in capsys.readouterr().out


def _tables(gt_rows, pred_rows):
    g = list(zip(*gt_rows))
    p = list(zip(*pred_rows)) if pred_rows else [[]] * 7
    return (BoxTable.from_columns(*g),
            BoxTable.from_columns(*p[:6], rank=np.ones(len(pred_rows), int), score=p[6] if pred_rows else []))


def test_hand_computed_ap_and_conventions():
    gt, pred = _tables([("a", "Mass", 0, 0, 10, 10)],
                       [("a", "Mass", 0, 0, 10, 10, 0.8),      # exact: a true positive at every IoU level
                        ("a", "Mass", 30, 30, 10, 10, 0.95),   # a false positive ranked above it on the same image
                        ("b", "Mass", 50, 50, 10, 10, 0.9)])   # on an image without Mass ground truth
    for convention, ap in (("all", 1 / 3), ("boxed", 1 / 2)):
        data = coco_ground_truth(gt, ["a", "b"], ["Mass"])
        [r] = evaluate_coco(data, coco_detections(pred, data), convention=convention)
        # all: ranked FP 0.95, FP 0.9, TP 0.8: precision 1/3 at recall 1 (and interpolated below) -> AP 1/3;
        # boxed: image b does not count for Mass: FP 0.95, TP 0.8 -> AP 1/2.
        # AR@1: the best box of image a is the false positive -> 0; AR@10 -> 1
        assert (r.ap, r.ap50, r.ar1, r.ar10) == pytest.approx((ap, ap, 0.0, 1.0)), convention
        assert r.detections == (3 if convention == "all" else 2)
    data = coco_ground_truth(gt, ["a", "b"], ["Mass", "Nodule"])
    mass, nodule = evaluate_coco(data, [], convention="all")  # nothing mined: AP 0; no Nodule ground truth: NaN
    assert (mass.ap, mass.ar100, mass.detections) == (0.0, 0.0, 0) and math.isnan(nodule.ap)


def test_label_auc_matches_mann_whitney_and_leaves_unknown_out():
    from miner.metrics.auc import label_auc

    class Archive:
        classes = ("Effusion", "Fracture")
        records = [Record("a", "", labels=("Effusion",)), Record("b", "", labels=()),
                   Record("c", "", labels=(), unknown=("Effusion",)), Record("d", "", labels=("Effusion",)),
                   Record("e", "", labels=())]

    probs = np.array([[0.9, 0.1], [0.3, 0.2], [0.99, 0.3], [0.2, 0.4], [0.25, 0.5]])
    results = label_auc(probs, ("Effusion", "Cardiomegaly"), ["a", "b", "c", "d", "e"], Archive())
    [effusion] = results  # Cardiomegaly is not the archive's; Fracture is not the model's
    pos, neg = [0.9, 0.2], [0.3, 0.25]  # c is unknown: left out
    assert effusion.auc == pytest.approx(mannwhitneyu(pos, neg).statistic / 4) == 0.5
    assert (effusion.images, effusion.positives, effusion.unknown) == (4, 2, 1)

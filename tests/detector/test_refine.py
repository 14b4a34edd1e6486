"""One refinement round (`miner.detector.predict.refine_boxes` / ``miner detector refine``): hand-computed cases of
the replacement rule, and the output it writes (provenance in the manifest, refusals of mismatched inputs)."""
from __future__ import annotations

import json

import pytest

from miner.detector.predict import refine_boxes
from miner.errors import UsageError


def _row(x, y, w, h, score, rank=1):
    return {"image_id": "a.png", "finding": "Mass", "class_index": 4, "rank": rank, "x": x, "y": y, "w": w, "h": h,
            "score": score, "prob": 0.9, "threshold": 0.8}


MINED = [_row(10, 10, 20, 20, 0.7, 1), _row(100, 100, 10, 10, 0.6, 2), _row(50, 50, 10, 10, 0.9, 3)]
# D1 overlaps mined box 1: intersection 15x15 = 225, union 400 + 400 - 225 = 575, IoU 0.391
# D2 overlaps nothing; D3 overlaps mined box 3 at IoU 100 / (100 + 400 - 100) = 0.25
PREDICTED = [_row(15, 15, 20, 20, 0.8), _row(200, 200, 10, 10, 0.99), _row(50, 50, 20, 20, 0.4)]


def test_fusion_by_hand():
    rows, fused = refine_boxes(MINED, PREDICTED, agree_iou=0.3)  # weight 0.5: the mean of the two boxes
    assert fused == 1
    # mined (10, 10)-(30, 30) and D1 (15, 15)-(35, 35): their mean (12.5, 12.5)-(32.5, 32.5)
    assert [(r["x"], r["y"], r["w"], r["h"]) for r in rows] == [(12.5, 12.5, 20, 20), (50, 50, 10, 10),
                                                                 (100, 100, 10, 10)]
    assert [r["score"] for r in rows] == pytest.approx([0.5 + 0.5 * 0.8, 0.5 * 0.9, 0.5 * 0.6])
    rows, _ = refine_boxes(MINED, PREDICTED, agree_iou=0.2, weight=0.25)
    # mined (50, 50)-(60, 60) and D3 (50, 50)-(70, 70) at weight 0.25: (50, 50)-(62.5, 62.5)
    assert (rows[1]["x"], rows[1]["w"], rows[1]["h"]) == (50, 12.5, 12.5)
    assert (rows[0]["x"], rows[0]["w"]) == (11.25, 20)


def test_replacement_by_hand():
    mined, predicted = MINED, PREDICTED
    rows, replaced = refine_boxes(mined, predicted, agree_iou=0.3, weight=1.0)
    assert replaced == 1
    assert [(r["x"], r["y"], r["w"], r["h"]) for r in rows] == [(15, 15, 20, 20), (50, 50, 10, 10), (100, 100, 10, 10)]
    assert [r["score"] for r in rows] == pytest.approx([0.5 + 0.5 * 0.8, 0.5 * 0.9, 0.5 * 0.6])
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["finding"] == "Mass" and r["prob"] == 0.9 for r in rows)  # the mined row's other fields stay
    # at IoU 0.2 the third box agrees too: both confirmed rank first, by the detector's score
    rows, replaced = refine_boxes(mined, predicted, agree_iou=0.2, weight=1.0)
    assert replaced == 2
    assert [(r["x"], r["w"]) for r in rows] == [(15, 20), (50, 20), (100, 10)]
    assert [r["score"] for r in rows] == pytest.approx([0.9, 0.7, 0.3])


def test_one_detector_box_replaces_one_mined_box():
    mined = [_row(10, 10, 20, 20, 0.7, 1), _row(12, 12, 20, 20, 0.6, 2)]
    predicted = [_row(11, 11, 20, 20, 0.5)]
    rows, replaced = refine_boxes(mined, predicted, agree_iou=0.1, weight=1.0)
    # the best pair wins (IoU of (11, 11) with (10, 10) and with (12, 12) is the same: the first mined box by order)
    assert replaced == 1
    assert [(r["x"], r["score"]) for r in rows] == [(11, pytest.approx(0.75)), (12, pytest.approx(0.3))]


def test_no_mined_box_no_refined_box():
    assert refine_boxes([], [_row(1, 1, 5, 5, 0.9)]) == ([], 0)
    rows, replaced = refine_boxes([_row(1, 1, 5, 5, 0.4)], [])
    assert replaced == 0 and rows[0]["score"] == pytest.approx(0.2) and rows[0]["x"] == 1


def test_refine_writes_an_output_with_its_provenance(truth_output, tmp_path):
    """The true boxes as "mined", a detector output made from them: the refined output names both and keeps the
    mined images; a second archive's output is refused."""
    import shutil

    from miner.detector.predict import refine_outputs
    from miner.io import read_dataset
    from miner.output import read_output

    predicted = tmp_path / "pred"
    shutil.copytree(truth_output, predicted)
    manifest = json.loads((predicted / "_manifest.json").read_text())
    manifest["producer"] = {"verb": "miner detector predict", "detector": "/x/detector.pt"}
    (predicted / "_manifest.json").write_text(json.dumps(manifest))
    result = refine_outputs(truth_output, predicted, tmp_path / "refined", agree_iou=0.5)
    out = read_output(result.out)
    assert out.manifest["producer"]["verb"] == "miner detector refine"
    assert out.manifest["producer"]["mined"] == str(read_output(truth_output).root)
    assert out.manifest["producer"]["detector"] == "/x/detector.pt"
    assert sorted(out.image_ids) == sorted(read_output(truth_output).image_ids)
    refined = read_dataset(result.out, "boxes").to_pylist()
    original = read_dataset(truth_output, "boxes").to_pylist()
    assert len(refined) == len(original)
    # every box agrees with itself: all fused with itself, same places, scores 0.5 + 0.5 x 1
    assert out.manifest["producer"]["fused"] == len(original) and out.manifest["producer"]["weight"] == 0.5
    key = lambda r: (r["image_id"], r["finding"], r["x"], r["y"])  # noqa: E731
    assert sorted(map(key, refined)) == sorted(map(key, original))
    assert all(r["score"] == pytest.approx(1.0) for r in refined)

    manifest["identity"]["archive"] = "another"
    (predicted / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="outputs of different archives"):
        refine_outputs(truth_output, predicted, tmp_path / "refused")
    del manifest["producer"]
    (predicted / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="was not written by miner detector predict"):
        refine_outputs(truth_output, predicted, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

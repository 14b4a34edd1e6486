"""`miner bench localize`: every figure of a row equals an independent computation on the boxes the mining job's
pipeline writes for the same images (miner.metrics' protocol, the pointing game by hand, box areas by hand)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from miner.bench.localize import FINDINGS, RowSpec, parse_row, run_localize
from miner.errors import UsageError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from miner.models import create_model, save_checkpoint
    from miner.recipes import get_recipe

    torch.manual_seed(0)
    net = create_model("resnet18_msa", classes=FINDINGS, width=0.125, msa_stride=8)
    path = tmp_path_factory.mktemp("m") / "m.pt"
    save_checkpoint(path, net, meta={"input_size": 64, **get_recipe("peaks").record()})
    return path


@pytest.fixture(scope="module")
def result(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("loc")
    specs = [RowSpec("own", str(model)), RowSpec("seed", str(model), {"recipe": "cai2018"})]
    return out, run_localize(out, specs, images=60, size=64, seed=3, kinds=("plain",), log=lambda _: None)


def _pipeline_boxes(model, archive, **options):
    """Boxes of the labelled positive images through `miner.pipeline.Pipeline` (the job's code), independently."""
    from miner.backends import open_backend
    from miner.data import read_archive
    from miner.metrics import BoxTable
    from miner.pipeline import Pipeline, decode_batch

    arch = read_archive(archive)
    boxed = {b.image_id for b in arch.boxes}
    records = [(r.image_id, r.path, tuple(r.labels)) for r in arch.records if r.labels and r.image_id in boxed]
    pipeline = Pipeline(open_backend(model, backend="torch", device="cpu"), **options)
    import pyarrow as pa

    table = pa.concat_tables([pipeline.run(decode_batch(records[i:i + 32], input_size=64)).boxes
                              for i in range(0, len(records), 32)])
    cols = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
    return arch, BoxTable.from_columns(cols["image_id"], cols["finding"], cols["x"], cols["y"], cols["w"], cols["h"],
                                       rank=cols["rank"], score=cols["score"])


def test_acc_and_box_size_equal_miner_metrics_on_the_pipelines_boxes(model, result):
    from miner.config import EvalConfig
    from miner.metrics import default_bounds, iou, localization_table, no_bounds
    from miner.metrics import ground_truth_table as ground_truth

    out, res = result
    rows = {r.label: r for r in res.rows}
    archive = out / "plain-60-64-3"
    for label, options in (("own", {}), ("seed", {"recipe": "cai2018"})):
        arch, pred = _pipeline_boxes(model, archive, **options)
        gt = ground_truth(arch.boxes)
        cfg = replace(EvalConfig(), iou_thresholds=(0.1, 0.3, 0.5), iobb_thresholds=())
        every = {(c.finding, c.threshold): c.acc for c in localization_table(pred, gt, config=cfg, bounds=no_bounds())}
        for level in (0.1, 0.3, 0.5):
            for f, acc in rows[label].acc[f"{level:g}"].items():
                assert acc == pytest.approx(every[(f, level)]), (label, f, level)
        bounded = {c.finding: c.acc for c in localization_table(
            pred, gt, config=replace(cfg, iou_thresholds=(0.3,)), bounds=default_bounds())}
        assert rows[label].bounded == pytest.approx(bounded)
        # median rank-1 area over the area of the ground-truth box it overlaps most
        ratios = []
        for i in np.flatnonzero(pred.rank == 1):
            g = np.flatnonzero((gt.image_id == pred.image_id[i]) & (gt.finding == pred.finding[i]))
            j = g[int(np.argmax(iou(pred.xywh[i:i + 1], gt.xywh[g])[0]))]
            ratios.append(pred.w[i] * pred.h[i] / (gt.w[j] * gt.h[j]))
        assert rows[label].area_ratio == pytest.approx(float(np.median(ratios)))
    assert rows["own"].settings["recipe"] == "peaks" and rows["seed"].settings["recipe"] == "cai2018"
    assert rows["own"].settings["boxes"]["rule"] == "steps"


def test_multi_lesion_rows_and_the_printed_tables(model, result):
    from miner.config import EvalConfig
    from miner.metrics import ground_truth_table as ground_truth
    from miner.metrics import localization_table, no_bounds

    out, res = result
    own = next(r for r in res.rows if r.label == "own")
    arch, _ = _pipeline_boxes(model, out / "plain-60-64-3")
    per = {}
    for b in arch.boxes:
        per.setdefault((b.image_id, b.finding), []).append(b)
    multi = [b for boxes in per.values() if len(boxes) >= 2 for b in boxes]
    assert multi, "the archive has multi-lesion image-findings"
    for t in (1, 2, 3):
        _, pred = _pipeline_boxes(model, out / "plain-60-64-3", mining={"steps": t})
        cfg = replace(EvalConfig(), iou_thresholds=(0.3,), iobb_thresholds=())
        want = {c.finding: c.acc for c in localization_table(pred, ground_truth(multi), config=cfg,
                                                             bounds=no_bounds())}
        assert own.multi[t] == pytest.approx(want)
    text = (out / "tables.txt").read_text()
    assert text == res.tables + "\n" and "plain phantoms" in text and "multi T=1" in text
    assert all(0 <= v <= 1 for v in own.pointing.values())


def test_coco_nested_and_large_lesions_equal_miner_eval_and_hand_counts_on_the_pipelines_boxes(model, result):
    """AP50 / AP as miner eval scores a job (`evaluate_job` with the archive's `exhaustive`); nested boxes and large
    lesions found counted here by hand from the same boxes; the new keys in results.json and the new tables."""
    import json

    from miner.metrics import iou
    from miner.metrics.job import evaluate_job, job_ground_truth

    out, res = result
    rows = {r.label: r for r in res.rows}
    for label, options in (("own", {}), ("seed", {"recipe": "cai2018"})):
        arch, pred = _pipeline_boxes(model, out / "plain-60-64-3", **options)
        boxed = {b.image_id for b in arch.boxes}
        images = [r.image_id for r in arch.records if r.labels and r.image_id in boxed]
        gt, findings = job_ground_truth(arch.boxes, mined=images, classes=FINDINGS)
        ev = evaluate_job(pred, gt, images=images, findings=findings, every_box=False, coco=True,
                          exhaustive=arch.exhaustive)
        assert rows[label].coco_negatives == ev.coco.convention == "boxed"  # phantoms: a ChestX-ray14-style list
        for f in findings:
            assert rows[label].ap50[f] == pytest.approx(ev.coco_of(f).ap50, nan_ok=True), (label, f)
            assert rows[label].ap[f] == pytest.approx(ev.coco_of(f).ap, nan_ok=True), (label, f)
        # nested: per image-finding with 2+ boxes, a pair whose intersection is >= 0.9 of the smaller one's area
        groups: dict = {}
        for i in range(len(pred)):
            groups.setdefault((pred.image_id[i], pred.finding[i]), []).append(i)
        nested: dict = {}
        for (_, f), idx in groups.items():
            if len(idx) < 2:
                continue
            hit = False
            for a in idx:
                for b in idx:
                    if a < b:
                        iw = min(pred.x[a] + pred.w[a], pred.x[b] + pred.w[b]) - max(pred.x[a], pred.x[b])
                        ih = min(pred.y[a] + pred.h[a], pred.y[b] + pred.h[b]) - max(pred.y[a], pred.y[b])
                        small = min(pred.w[a] * pred.h[a], pred.w[b] * pred.h[b])
                        hit |= small > 0 and max(iw, 0) * max(ih, 0) / small >= 0.9
            nested.setdefault(f, [0, 0])
            nested[f][0] += int(hit)
            nested[f][1] += 1
        assert rows[label].nested_pairs == {f: tuple(v) for f, v in nested.items()}
        assert rows[label].nested == pytest.approx({f: h / n for f, (h, n) in nested.items()})
        # large@3: ground-truth boxes above their finding's 0.75 area quantile, found at IoU 0.3 by rank <= 3
        large: dict = {}
        for f in findings:
            g = np.flatnonzero(gt.finding == f)
            limit = np.quantile(gt.w[g] * gt.h[g], 0.75)
            assert rows[label].large_area[f] == pytest.approx(limit)
            for j in g[gt.w[g] * gt.h[g] > limit]:
                mine = np.flatnonzero((pred.image_id == gt.image_id[j]) & (pred.finding == f) & (pred.rank <= 3))
                found = len(mine) and (iou(pred.xywh[mine], gt.xywh[j:j + 1])[:, 0] >= 0.3).any()
                large.setdefault(f, [0, 0])
                large[f][0] += int(found)
                large[f][1] += 1
        assert rows[label].large3_lesions == {f: tuple(v) for f, v in large.items()}
        assert rows[label].large3 == pytest.approx({f: h / n for f, (h, n) in large.items()})
    saved = json.loads((out / "results.json").read_text())
    assert {"acc", "bounded", "pointing", "area_ratio", "multi", "settings", "ap50", "ap", "nested", "large3",
            "coco_negatives"} <= set(saved[0])
    assert saved[0]["settings"]["boxes"]["drop_nested"] == 0.0  # off unless a row asks
    text = res.tables
    assert "plain phantoms: tight boxes, macro mean" in text and "large@3" in text and "nested" in text
    assert "tight boxes per finding, Acc at T(IoU)=0.5 (every box of B) and COCO AP50" in text
    own = rows["own"]
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("plain phantoms: tight boxes, macro mean"))
    assert lines[head + 1].split() == ["Acc@0.3", "Acc@0.5", "AP50", "AP", "nested", "large@3"]
    mean = {name: np.nanmean(list(values.values())) for name, values in (
        ("acc3", own.acc["0.3"]), ("acc5", own.acc["0.5"]), ("ap50", own.ap50), ("ap", own.ap),
        ("nested", own.nested), ("large", own.large3))}
    assert lines[head + 2].split() == ["own", *(f"{mean[k]:.3f}" for k in ("acc3", "acc5", "ap50", "ap")),
                                       f"{100 * mean['nested']:.1f}%", f"{mean['large']:.3f}"]


def test_a_row_with_drop_nested_reaches_the_pipeline(model, tmp_path):
    """``boxes.drop_nested`` from a row goes through the settings path of every BoxConfig field; a record holds it
    only where it is on, so records of models without it stay as they were."""
    from miner.settings import InferenceSettings

    peaks = InferenceSettings.for_recipe("peaks")
    on = peaks.with_overrides(boxes={"drop_nested": 0.9})
    assert on.boxes.drop_nested == 0.9 and on.to_record()["boxes"]["drop_nested"] == 0.9
    assert InferenceSettings.from_record(on.to_record()) == on
    assert "drop_nested" not in peaks.to_record()["boxes"] and InferenceSettings.from_record(peaks.to_record()) == peaks
    spec = parse_row(f"dn={model}:boxes.drop_nested=0.9")
    assert spec.settings()["boxes"] == {"drop_nested": 0.9}
    res = run_localize(tmp_path, [spec], images=24, size=64, seed=3, kinds=("plain",), log=lambda _: None)
    assert res.rows[0].settings["boxes"]["drop_nested"] == 0.9
    with pytest.raises(UsageError, match="drop_nested must be a number"):
        run_localize(tmp_path, [parse_row(f"bad={model}:boxes.drop_nested=2")], images=24, size=64, seed=3,
                     kinds=("plain",), log=lambda _: None)


def test_pointing_game_by_hand():
    """A hand-made fused map whose maximum lies in a ground-truth box for one finding and outside for another."""
    from miner.bench.localize import _pointing
    from miner.config import BoxConfig

    class P:  # what _pointing reads of a pipeline
        box_config = BoxConfig(upsample=1)
        shift = (0.0, 0.0)
        class_names = ("Mass", "Nodule")

    class B:
        image_ids = ["a.png"]
        sizes = np.array([[80, 80]])

    fused = torch.zeros(1, 2, 8, 8)
    fused[0, 0, 2, 3] = 1.0  # cell (2, 3) -> pixel centre (35, 25) on an 80 px image
    fused[0, 1, 7, 7] = 1.0  # (75, 75)
    gt = {("a.png", "Mass"): [(30.0, 20.0, 10.0, 10.0)], ("a.png", "Nodule"): [(0.0, 0.0, 20.0, 20.0)]}
    hits: dict = {}
    from collections import defaultdict

    hits = defaultdict(list)
    _pointing(hits, fused, B(), np.array([[True, True]]), P(), gt)
    assert dict(hits) == {"Mass": [True], "Nodule": [False]}


def test_row_specs():
    with pytest.raises(UsageError, match="LABEL=MODEL"):
        parse_row("nothing")
    with pytest.raises(UsageError, match="does not exist"):
        parse_row("x=/no/such/model.pt")
    spec = RowSpec("x", "m.pt", {"recipe": "cai2018", "method": "layercam", "mining.steps": 2,
                                 "boxes.thresholds": (0.3, 0.5), "boxes.finding_levels": None})
    assert spec.settings() == {"recipe": "cai2018", "method": "layercam", "plain_maps": False, "mining": {"steps": 2},
                               "boxes": {"thresholds": (0.3, 0.5), "finding_levels": None}}
    assert RowSpec("x", "m.pt", {"maps": "plain"}).settings()["plain_maps"] is True


def test_row_parsing_values(model):
    spec = parse_row(f"lab el={model}:mining.threshold=0.7,boxes.align_cells=false,boxes.finding_levels=none,"
                     "boxes.thresholds=0.3/0.5,recipe=peaks")
    assert spec.label == "lab el" and spec.overrides == {
        "mining.threshold": 0.7, "boxes.align_cells": False, "boxes.finding_levels": None,
        "boxes.thresholds": (0.3, 0.5), "recipe": "peaks"}
    with pytest.raises(UsageError, match="must be recipe"):
        parse_row(f"x={model}:steps=3")
    assert parse_row(f"x={model}:maps=plain").settings()["plain_maps"] is True
    with pytest.raises(UsageError, match="maps= takes 'plain'"):
        parse_row(f"x={model}:maps=fancy")

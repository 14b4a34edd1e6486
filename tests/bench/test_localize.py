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

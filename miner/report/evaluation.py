"""`miner eval`'s tables for a report: the job's boxes against the archive's ground truth, where it has some.

The same protocol and defaults as ``miner eval`` and ``miner demo`` (`miner.metrics.localization_table`): Acc and
AFP per finding at every T(IoU) and T(IoBB) level, once with Wang et al.'s AFP bounds (the seed's Table 2) and once
with every box of the ranked list B (its Table 3). Only the images that went through the model count, so broken
files (error rows) and shards not yet done do not lower the accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from miner.metrics import BoxTable, LocalizationResult


@dataclass
class Evaluation:
    """The tables of one job against one archive's ground truth.

    Attributes:
        findings: the findings evaluated (those with ground-truth boxes on mined images, in the model's order).
        gt_boxes, gt_images: ground-truth boxes and the images holding them (mined images only).
        bounded: cells with Wang et al.'s AFP bounds (T(IoBB): no bound); every_box: cells with all of B.
        bounds_source: where the AFP bounds come from.
        iou_levels, iobb_levels: the levels of the rows.
    """

    findings: list[str]
    gt_boxes: int
    gt_images: int
    bounded: list[LocalizationResult]
    every_box: list[LocalizationResult]
    bounds_source: str
    iou_levels: tuple[float, ...]
    iobb_levels: tuple[float, ...]

    def cells(self, finding: str, *, metric: str = "iou", every_box: bool = False) -> list[LocalizationResult]:
        """The cells of one finding and overlap measure, in level order."""
        source = self.every_box if every_box else self.bounded
        return [c for c in source if c.finding == finding and c.metric == metric]

    def acc(self, finding: str, level: float, *, metric: str = "iou") -> float:
        """Acc of one cell (bounded table); NaN where there is none."""
        for c in self.cells(finding, metric=metric):
            if abs(c.threshold - level) < 1e-9:
                return c.acc
        return math.nan

    def table(self, *, every_box: bool = False) -> list[list[str]]:
        """Cai et al.'s Table 2 layout as rows of text cells: a header row (level, findings), then one row per
        level with "Acc-AFP" per finding (``*`` = no AFP bound, ``-`` = no cell)."""
        source = self.every_box if every_box else self.bounded
        cell = {(c.metric, c.threshold, c.finding): c for c in source}
        rows = [["T", *self.findings]]
        levels = [("iou", t) for t in self.iou_levels]
        if not every_box:
            levels += [("iobb", t) for t in self.iobb_levels]
        for metric, level in levels:
            label = f"T({'IoU' if metric == 'iou' else 'IoBB'})={level:g}"
            texts = []
            for f in self.findings:
                c = cell.get((metric, level, f))
                if c is None or math.isnan(c.acc):
                    texts.append("-")
                else:
                    texts.append(f"{c.acc:.2f}-{c.afp:.2f}" + ("*" if c.bound is None else ""))
            rows.append([label, *texts])
        return rows


def ground_truth_table(boxes: Sequence[Any], *, images: set[str]) -> BoxTable:
    """A `BoxTable` of an archive's `GroundTruthBox` rows on `images`."""
    rows = [b for b in boxes if b.image_id in images]
    return BoxTable.from_columns([b.image_id for b in rows], [b.finding for b in rows], [b.x for b in rows],
                                 [b.y for b in rows], [b.w for b in rows], [b.h for b in rows])


def predictions(boxes: Any) -> BoxTable:
    """The job's box rows (a pyarrow table of `miner.io.BOXES_SCHEMA`) as a `BoxTable`."""
    cols = {name: boxes.column(name).to_numpy(zero_copy_only=False) for name in boxes.column_names}
    return BoxTable.from_columns(cols["image_id"], cols["finding"], cols["x"], cols["y"], cols["w"], cols["h"],
                                 rank=cols["rank"], score=cols["score"])


def evaluate_job(pred: BoxTable, gt_boxes: Sequence[Any], *, mined: set[str],
                 classes: Sequence[str]) -> Evaluation | None:
    """The tables of `pred` against the ground-truth boxes of the `mined` images; None when there are none."""
    from miner.config import EvalConfig
    from miner.demo import no_bounds
    from miner.metrics import default_bounds, localization_table

    gt = ground_truth_table(gt_boxes, images=mined)
    present = set(gt.finding.tolist())
    findings = [f for f in classes if f in present]
    if not findings:
        return None
    keep = np.isin(gt.finding.astype(str), np.asarray(findings, dtype=str))
    gt = BoxTable(*(getattr(gt, name)[keep] for name in ("image_id", "finding", "x", "y", "w", "h", "rank",
                                                          "score")))
    cfg = EvalConfig()
    bounds = default_bounds()
    bounded = localization_table(pred, gt, config=cfg, bounds=bounds, findings=findings)
    every_box = localization_table(pred, gt, config=replace(cfg, iobb_thresholds=()), bounds=no_bounds(),
                                   findings=findings)
    return Evaluation(findings=findings, gt_boxes=len(gt), gt_images=len(set(gt.image_id.tolist())),
                      bounded=bounded, every_box=every_box, bounds_source=bounds.source,
                      iou_levels=tuple(cfg.iou_thresholds), iobb_levels=tuple(cfg.iobb_thresholds))

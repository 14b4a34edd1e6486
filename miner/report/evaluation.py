"""`miner eval`'s tables for a report: the job's boxes against the archive's ground truth, where it has some.

The same protocols and defaults as ``miner eval`` and ``miner demo``:

- Acc and AFP per finding at every T(IoU) and T(IoBB) level (`miner.metrics.localization_table`), once with Wang
  et al.'s AFP bounds (the seed's Table 2) and once with every box of the ranked list B (its Table 3);
- COCO AP, AP50, AP75 and AR@1/10/100 per finding (`miner.metrics.coco`), with ``miner eval``'s images convention
  (``negatives=auto``: every mined image counts where the archive's readers saw every image, else only the images
  with a ground-truth box of the finding).

Only the images that went through the model count, so broken files (error rows) and shards not yet done do not
lower the scores.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from miner.metrics import BoxTable, LocalizationResult
from miner.metrics.coco import CocoResult


@dataclass
class Evaluation:
    """The tables of one job against one archive's ground truth.

    Attributes:
        findings: the findings evaluated (those with ground-truth boxes on mined images, in the model's order).
        gt_boxes, gt_images: ground-truth boxes and the images holding them (mined images only).
        bounded: cells with Wang et al.'s AFP bounds (T(IoBB): no bound); every_box: cells with all of B.
        bounds_source: where the AFP bounds come from.
        iou_levels, iobb_levels: the levels of the rows.
        coco: COCO metrics per finding (in `findings` order) and their mean; coco_convention: ``all`` or ``boxed``.
    """

    findings: list[str]
    gt_boxes: int
    gt_images: int
    bounded: list[LocalizationResult]
    every_box: list[LocalizationResult]
    bounds_source: str
    iou_levels: tuple[float, ...]
    iobb_levels: tuple[float, ...]
    coco: list[CocoResult]
    coco_mean: CocoResult
    coco_convention: str
    coco_backend: str

    def coco_of(self, finding: str) -> CocoResult | None:
        return next((r for r in self.coco if r.finding == finding), None)

    def coco_table(self) -> list[list[str]]:
        """Rows of text cells: finding, images, ground-truth boxes, mined boxes, AP, AP50, AP75, AR@1/10/100
        (``-`` = no value), then the mean over the findings."""
        rows = []
        for r in [*self.coco, self.coco_mean]:
            cells = ["-" if math.isnan(v) else f"{v:.3f}" for v in (r.ap, r.ap50, r.ap75, r.ar1, r.ar10, r.ar100)]
            rows.append([r.finding, "" if r is self.coco_mean else f"{r.images:,}", f"{r.gt_boxes:,}",
                         f"{r.detections:,}", *cells])
        return rows

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


def evaluate_job(pred: BoxTable, gt_boxes: Sequence[Any], *, mined: Sequence[str], classes: Sequence[str],
                 sizes: dict[str, tuple[int, int]], exhaustive: bool) -> Evaluation | None:
    """The tables of `pred` against the ground-truth boxes of the `mined` images; None when there are none.

    Args:
        sizes: image id -> (height, width) of the mined images (the COCO data set's image sizes).
        exhaustive: the archive's readers looked at every image for boxes (`miner.data.Archive.exhaustive`).
    """
    from miner.config import EvalConfig
    from miner.demo import no_bounds
    from miner.metrics import default_bounds, localization_table
    from miner.metrics.coco import coco_detections, coco_ground_truth, evaluate_coco, mean_result

    gt = ground_truth_table(gt_boxes, images=set(mined))
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
    convention = cfg.negatives if cfg.negatives != "auto" else ("all" if exhaustive else "boxed")
    dataset = coco_ground_truth(gt, list(mined), findings, sizes=sizes)
    coco = evaluate_coco(dataset, coco_detections(pred, dataset, max_rank=cfg.max_rank), convention=convention,
                         backend=cfg.coco_backend)
    return Evaluation(findings=findings, gt_boxes=len(gt), gt_images=len(set(gt.image_id.tolist())),
                      bounded=bounded, every_box=every_box, bounds_source=bounds.source,
                      iou_levels=tuple(cfg.iou_thresholds), iobb_levels=tuple(cfg.iobb_thresholds), coco=coco,
                      coco_mean=mean_result(coco), coco_convention=convention, coco_backend=cfg.coco_backend)

"""One evaluation of a finished mining job against a ground truth: ``miner eval``, ``miner demo`` and
``miner report`` score a job's boxes here, with the same protocols and defaults.

- **The ground truth** (`job_ground_truth`): the archive's boxes on the images that went through the model, so
  broken files (error rows) and shards not yet done do not lower the scores; the findings evaluated are the
  model's classes that have a box there, in the model's order. (``miner eval`` may also take a BBox_List CSV,
  fuse several readers' boxes and name the findings: it passes its own table and findings.)
- **Acc and AFP** per finding at every T(IoU) and T(IoBB) level (`miner.metrics.localization_table`), once with
  AFP bounds (default: Wang et al.'s, the seed's Table 2) and, where asked, once with every box of the ranked
  list B at the T(IoU) levels (the seed's Table 3; `miner.metrics.bounds.no_bounds`): `evaluate_job`.
- **COCO** AP, AP50, AP75 and AR@1/10/100 per finding (`job_coco`, `miner.metrics.coco`) with the images
  convention ``negatives`` (``auto``: every mined image counts where the archive's readers saw every image,
  else only the images with a ground-truth box of the finding).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from miner.config import EvalConfig
from miner.metrics.bounds import AfpBounds, default_bounds, no_bounds
from miner.metrics.coco import (
    CocoResult,
    coco_detections,
    coco_ground_truth,
    evaluate_coco,
    mean_result,
    metric_cells,
    results_json,
)
from miner.metrics.localization import (
    BoxTable,
    LocalizationResult,
    ground_truth_table,
    localization_table,
    table_rows,
)

if TYPE_CHECKING:
    from miner.data.records import GroundTruthBox


@dataclass
class CocoEvaluation:
    """COCO metrics of one job: per finding (in the evaluation's order), their mean, and what was scored.

    Attributes:
        convention: ``all`` (every image counts for every finding) or ``boxed`` (`miner.metrics.coco`).
        backend: the COCOeval implementation.
        dataset, detections: the COCO ground truth and results list that were scored (``miner eval --coco-dir``).
    """

    convention: str
    backend: str
    results: list[CocoResult]
    mean: CocoResult
    dataset: dict
    detections: list[dict]

    def json(self) -> dict[str, Any]:
        """Plain dicts (for ``--json``): the convention, the backend, the findings' results and their mean."""
        return {"negatives": self.convention, "backend": self.backend, "findings": results_json(self.results),
                "mean": results_json([self.mean])[0]}


@dataclass
class JobEvaluation:
    """The tables of one job's boxes against one ground truth.

    Attributes:
        findings: the findings evaluated.
        images: the images that count (those that went through the model).
        gt: the ground-truth boxes on those images, every finding (`gt_boxes` counts the evaluated ones).
        config: the protocol's levels, order within a rank and rank limit.
        bounds_source: where the AFP bounds of `bounded` come from.
        bounded: the cells with the AFP bounds (T(IoBB): no bound unless the bounds name one).
        every_box: the cells with every box of B at the T(IoU) levels (empty unless asked).
        coco: COCO metrics (None unless asked).
    """

    findings: list[str]
    images: list[str]
    gt: BoxTable
    config: EvalConfig
    bounds_source: str
    bounded: list[LocalizationResult]
    every_box: list[LocalizationResult] = field(default_factory=list)
    coco: CocoEvaluation | None = None

    @property
    def gt_boxes(self) -> int:
        """Ground-truth boxes of the evaluated findings."""
        return int(self._evaluated().sum())

    @property
    def gt_images(self) -> int:
        """Images holding a ground-truth box of an evaluated finding."""
        return len(set(self.gt.image_id[self._evaluated()].tolist()))

    def _evaluated(self) -> np.ndarray:
        return np.isin(self.gt.finding.astype(str), np.asarray(self.findings, dtype=str))

    def cells(self, finding: str, *, metric: str = "iou", every_box: bool = False) -> list[LocalizationResult]:
        """The cells of one finding and overlap measure, in level order."""
        source = self.every_box if every_box else self.bounded
        return [c for c in source if c.finding == finding and c.metric == metric]

    def acc(self, finding: str, level: float, *, metric: str = "iou", every_box: bool = False) -> float:
        """Acc of one cell; NaN where there is none."""
        for c in self.cells(finding, metric=metric, every_box=every_box):
            if abs(c.threshold - level) < 1e-9:
                return c.acc
        return math.nan

    def table(self, *, every_box: bool = False) -> list[list[str]]:
        """Cai et al.'s Table 2 layout as rows of text cells (`miner.metrics.localization.table_rows`)."""
        return table_rows(self.every_box if every_box else self.bounded)

    def coco_of(self, finding: str) -> CocoResult | None:
        return next((r for r in self.coco.results if r.finding == finding), None) if self.coco else None

    def coco_table(self) -> list[list[str]]:
        """Rows of text cells: finding, images, ground-truth boxes, mined boxes, AP, AP50, AP75, AR@1/10/100
        (``-`` = no value), then the mean over the findings."""
        if self.coco is None:
            return []
        return [[r.finding, "" if r is self.coco.mean else f"{r.images:,}", f"{r.gt_boxes:,}", f"{r.detections:,}",
                 *metric_cells(r)] for r in [*self.coco.results, self.coco.mean]]


def multi_lesion_counts(boxes: Sequence[GroundTruthBox]) -> dict[str, int]:
    """Per finding, the images with two or more ground-truth boxes of it (sorted by finding)."""
    per = Counter((b.image_id, b.finding) for b in boxes)
    counts = Counter(finding for (_, finding), n in per.items() if n >= 2)
    return dict(sorted(counts.items()))


def job_ground_truth(boxes: Sequence[GroundTruthBox], *, mined: Sequence[str],
                     classes: Sequence[str]) -> tuple[BoxTable, list[str]]:
    """The ground truth of a job: the `boxes` on the `mined` images (a `BoxTable`), and the findings to evaluate:
    the model's `classes` that have a box there, in the model's order."""
    gt = ground_truth_table(boxes, images=mined)
    present = set(gt.finding.tolist())
    return gt, [f for f in classes if f in present]


def evaluate_job(
    pred: BoxTable,
    gt: BoxTable,
    *,
    images: Sequence[str],
    findings: Sequence[str],
    config: EvalConfig | None = None,
    bounds: AfpBounds | None = None,
    every_box: bool = True,
    coco: bool = True,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    exhaustive: bool = False,
) -> JobEvaluation:
    """The tables of the mined boxes `pred` against `gt` on `images` (module docstring).

    Args:
        findings: the findings to evaluate (`job_ground_truth`'s, or a user's choice).
        config: levels and the protocol's options (default `miner.config.EvalConfig()`).
        bounds: the AFP bounds of the bounded table (default: Wang et al.'s, `default_bounds`).
        every_box: also the table with every box of B (T(IoU) levels only).
        coco: also COCO metrics (`job_coco`; `sizes` and `exhaustive` as there).
    """
    cfg = config or EvalConfig()
    bounds = bounds or default_bounds()
    findings = list(findings)
    bounded = localization_table(pred, gt, config=cfg, bounds=bounds, findings=findings)
    every = []
    if every_box:
        every = localization_table(pred, gt, config=replace(cfg, iobb_thresholds=()), bounds=no_bounds(),
                                   findings=findings)
    scored = job_coco(pred, gt, images=images, findings=findings, config=cfg, sizes=sizes,
                      exhaustive=exhaustive) if coco else None
    return JobEvaluation(findings=findings, images=list(images), gt=gt, config=cfg, bounds_source=bounds.source,
                         bounded=bounded, every_box=every, coco=scored)


def job_coco(
    pred: BoxTable,
    gt: BoxTable,
    *,
    images: Sequence[str],
    findings: Sequence[str],
    config: EvalConfig | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    exhaustive: bool = False,
) -> CocoEvaluation:
    """COCO metrics of `pred` against `gt` on `images`, per finding (`miner.metrics.coco`).

    Args:
        config: ``negatives`` (``auto`` follows `exhaustive`), ``coco_backend`` and ``max_rank`` (boxes of a
            higher rank are left out).
        sizes: image id -> (height, width) (the data set's image sizes; optional).
        exhaustive: the archive's readers looked at every image for boxes (`miner.data.Archive.exhaustive`).
    """
    cfg = config or EvalConfig()
    convention = cfg.negatives if cfg.negatives != "auto" else ("all" if exhaustive else "boxed")
    info = {"description": "miner eval: ground truth of the mined images", "negatives": convention,
            "max_rank": cfg.max_rank}
    dataset = coco_ground_truth(gt, list(images), list(findings), sizes=sizes, info=info)
    detections = coco_detections(pred, dataset, max_rank=cfg.max_rank)
    results = evaluate_coco(dataset, detections, convention=convention, backend=cfg.coco_backend)
    return CocoEvaluation(convention=convention, backend=cfg.coco_backend, results=results,
                          mean=mean_result(results), dataset=dataset, detections=detections)

"""The ChestX-ray14 localisation protocol (Wang et al. CVPR 2017; Cai et al. MICCAI 2018, Sec. 3.2): Acc and AFP.

For one finding f, one overlap measure (IoU or IoBB) and one level T:

- **Images that count**: the images with at least one ground-truth box of f (N_f of them). Predicted boxes of
  f on other images are ignored: Cai et al. build B "across all test images from the c-th category", and in
  the evaluation set (the 880 box images) those are the images boxed for f.
- **The ranked list B**: every counted image's rank-1 box of f, then every rank-2 box, then every rank-3 box
  (ranks above ``max_rank`` are left out). Within one rank the boxes are ordered by descending score
  (``within_rank="score"``, default) or by image name (``"image"``, the seed's literal listing
  bbox_1(1), ..., bbox_N(1)); ties keep image-name order.
- **Matches**: a predicted box matches a ground-truth box of f on the same image when their overlap is >= T.
  A predicted box that matches none is a **false positive**.
- **Selection**: the longest prefix of B whose false positives per counted image stay <= the bound
  (FP / N_f <= bound; no bound = the whole of B). True positives never raise AFP, so the prefix ends right
  before the false positive that would exceed the bound.
- **Acc** = ground-truth boxes of f matched by at least one selected box / ground-truth boxes of f.
  **AFP** = false positives among the selected boxes / N_f.

With B = the ground truth itself (every box its own prediction) Acc = 1 and AFP = 0 at every level.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from miner.config import EvalConfig
from miner.errors import UsageError
from miner.findings import BOXED_FINDINGS, canonical
from miner.metrics.bounds import AfpBounds, default_bounds
from miner.metrics.overlap import OVERLAPS

if TYPE_CHECKING:
    import pyarrow as pa

    from miner.data.records import GroundTruthBox


@dataclass
class BoxTable:
    """Boxes as columns (np.ndarray each, one entry per box); x, y, w, h in original pixels."""

    image_id: np.ndarray  # str
    finding: np.ndarray  # str
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    rank: np.ndarray  # int, 1 = best
    score: np.ndarray  # float (NaN where unknown)

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def xywh(self) -> np.ndarray:
        return np.stack([self.x, self.y, self.w, self.h], axis=1).astype(np.float64)

    @classmethod
    def from_columns(cls, image_id, finding, x, y, w, h, rank=None, score=None) -> BoxTable:
        image_id = np.asarray(image_id, dtype=object)
        finding = np.asarray([canonical(str(f)) for f in finding], dtype=object)
        n = len(image_id)
        if rank is None:
            rank = _ranks_in_order(image_id, finding)
        score = np.full(n, np.nan) if score is None else np.asarray(score, dtype=np.float64)
        return cls(image_id, finding, *(np.asarray(v, dtype=np.float64) for v in (x, y, w, h)),
                   np.asarray(rank, dtype=np.int64), score)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> BoxTable:
        """The rows of a pyarrow table of `miner.io.BOXES_SCHEMA` (a job's ``OUT/boxes``)."""
        cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        return cls.from_columns(cols["image_id"], cols["finding"], cols["x"], cols["y"], cols["w"], cols["h"],
                                rank=cols["rank"], score=cols["score"])

    def take(self, keep: np.ndarray) -> BoxTable:
        """The rows where `keep` (np.ndarray[N] bool, or indices) selects them."""
        return BoxTable(*(getattr(self, name)[keep] for name in _COLUMNS))


_COLUMNS = ("image_id", "finding", "x", "y", "w", "h", "rank", "score")


def ground_truth_table(boxes: Sequence[GroundTruthBox], *, images: Collection[str] | None = None) -> BoxTable:
    """A `BoxTable` of ground-truth boxes (`miner.data.records.GroundTruthBox` rows, in their order), limited to
    `images` (image ids) if given; ranks follow the order within each (image, finding), scores are unknown (NaN)."""
    if images is not None:
        wanted = set(images)
        boxes = [b for b in boxes if b.image_id in wanted]
    return BoxTable.from_columns([b.image_id for b in boxes], [b.finding for b in boxes], [b.x for b in boxes],
                                 [b.y for b in boxes], [b.w for b in boxes], [b.h for b in boxes])


def _ranks_in_order(image_id: np.ndarray, finding: np.ndarray) -> np.ndarray:
    """Rank = position among the earlier rows of the same (image, finding), 1-based (file order)."""
    seen: dict[tuple[str, str], int] = {}
    out = np.empty(len(image_id), np.int64)
    for i, key in enumerate(zip(image_id, finding)):
        seen[key] = seen.get(key, 0) + 1
        out[i] = seen[key]
    return out


def read_bbox_csv(path: str | Path) -> BoxTable:
    """A BBox_List_2017.csv-format file (plain or .gz): ``Image Index,Finding Label,x,y,w,h``.

    Ranks follow the file order within each (image, finding); scores are unknown (NaN).
    """
    from miner.data.archives.nih import read_bbox_list

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    return ground_truth_table(read_bbox_list(path))


def read_boxes(path: str | Path) -> BoxTable:
    """Mined boxes: ``OUT`` or ``OUT/boxes`` (the Parquet dataset), one ``.parquet`` file, or a BBox_List CSV."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"BOXES: {path} does not exist (give OUT, OUT/boxes, a .parquet file or a BBox_List CSV)")
    if path.is_file() and not path.name.endswith(".parquet"):
        return read_bbox_csv(path)
    from miner.io import read_folder, read_part

    if path.is_dir() and (path / "boxes").is_dir():
        path = path / "boxes"
    # every part checked against the output contract (miner.io.read_part): one line naming a damaged one
    return BoxTable.from_arrow(read_folder(path, "boxes") if path.is_dir() else read_part(path, "boxes"))


@dataclass
class LocalizationResult:
    """One cell of the table: finding, metric (iou/iobb), level, bound and what the selection gives."""

    finding: str
    metric: str
    threshold: float
    bound: float | None
    acc: float
    afp: float
    localized: int  # ground-truth boxes matched
    gt_boxes: int
    images: int  # N_f
    selected: int  # boxes taken from B
    available: int  # boxes in B
    false_positives: int


def ranked_list(pred: BoxTable, finding: str, images: Sequence[str], *, within_rank: str = "score",
                max_rank: int = 3) -> np.ndarray:
    """Indices into `pred` of the list B for `finding` over `images` (module docstring)."""
    if within_rank not in ("score", "image"):
        raise UsageError(f"within_rank must be 'score' or 'image', got {within_rank!r}")
    keep = (pred.finding == finding) & (pred.rank >= 1) & (pred.rank <= max_rank)
    keep &= np.isin(pred.image_id.astype(str), np.asarray(list(images), dtype=str))
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return idx
    names = pred.image_id[idx].astype(str)
    score = np.nan_to_num(pred.score[idx], nan=-np.inf)
    keys = [names] if within_rank == "image" else [names, -score]
    order = np.lexsort(tuple(keys) + (pred.rank[idx],))  # last key is primary: rank, then score, then name
    return idx[order]


def evaluate_finding(
    pred: BoxTable,
    gt: BoxTable,
    finding: str,
    *,
    metric: str,
    thresholds: Sequence[float],
    bounds: Sequence[float | None],
    within_rank: str = "score",
    max_rank: int = 3,
) -> list[LocalizationResult]:
    """Acc and AFP of one finding at every level of one overlap measure (`bounds[i]` for `thresholds[i]`)."""
    if metric not in OVERLAPS:
        raise UsageError(f"metric must be iou or iobb, got {metric!r}")
    overlap = OVERLAPS[metric]
    gt_idx = np.flatnonzero(gt.finding == finding)
    images = sorted(set(gt.image_id[gt_idx]))
    n_images, n_gt = len(images), len(gt_idx)
    order = ranked_list(pred, finding, images, within_rank=within_rank, max_rank=max_rank)
    # best[i, j]: overlap of B's i-th box with the j-th ground-truth box of f (0 on other images)
    best = np.zeros((len(order), n_gt))
    if len(order) and n_gt:
        gt_of_image: dict[str, list[int]] = {}
        for j, g in enumerate(gt_idx):
            gt_of_image.setdefault(gt.image_id[g], []).append(j)
        gt_xywh, pred_xywh = gt.xywh[gt_idx], pred.xywh[order]
        for image, cols in gt_of_image.items():
            rows = np.flatnonzero(pred.image_id[order] == image)
            if rows.size:
                best[np.ix_(rows, cols)] = overlap(pred_xywh[rows], gt_xywh[cols])
    results = []
    for level, bound in zip(thresholds, bounds):
        match = best >= level - 1e-12
        fp = ~match.any(axis=1)
        cum_fp = np.cumsum(fp)
        if bound is None or not n_images:
            take = len(order)
        else:
            over = np.flatnonzero(cum_fp > bound * n_images + 1e-9)
            take = int(over[0]) if over.size else len(order)
        localized = int(match[:take].any(axis=0).sum()) if take else 0
        n_fp = int(cum_fp[take - 1]) if take else 0
        results.append(LocalizationResult(
            finding=finding, metric=metric, threshold=float(level), bound=bound,
            acc=localized / n_gt if n_gt else math.nan, afp=n_fp / n_images if n_images else math.nan,
            localized=localized, gt_boxes=n_gt, images=n_images, selected=take, available=len(order),
            false_positives=n_fp))
    return results


def localization_table(
    pred: BoxTable,
    gt: BoxTable,
    *,
    config: EvalConfig | None = None,
    bounds: AfpBounds | None = None,
    findings: Sequence[str] | None = None,
) -> list[LocalizationResult]:
    """Every finding (default: those with ground-truth boxes, in ChestX-ray14 order) at every level."""
    cfg = config or EvalConfig()
    bounds = bounds or default_bounds()
    if findings is None:
        present = set(gt.finding)
        findings = [f for f in BOXED_FINDINGS if f in present] + sorted(present - set(BOXED_FINDINGS))
    out = []
    for finding in findings:
        for metric, levels in (("iou", cfg.iou_thresholds), ("iobb", cfg.iobb_thresholds)):
            out += evaluate_finding(pred, gt, finding, metric=metric, thresholds=levels,
                                    bounds=[bounds.bound(metric, t, finding) for t in levels],
                                    within_rank=cfg.within_rank, max_rank=cfg.max_rank)
    return out


_SHORT = {"Atelectasis": "AT", "Cardiomegaly": "CM", "Effusion": "Effusion", "Infiltration": "Infiltra.",
          "Mass": "Mass", "Nodule": "Nodule", "Pneumonia": "PNA", "Pneumothorax": "PTx"}


def table_rows(results: Sequence[LocalizationResult]) -> list[list[str]]:
    """Cai et al.'s Table 2 layout as rows of text cells: a header row (``T``, the findings in the order of
    `results`), then one row per level (``T(IoU)=0.3``) with an "Acc-AFP" cell per finding (``*`` = no AFP bound,
    ``-`` = no cell)."""
    findings = list(dict.fromkeys(r.finding for r in results))
    levels = list(dict.fromkeys((r.metric, r.threshold) for r in results))
    cell = {(r.metric, r.threshold, r.finding): r for r in results}
    rows = [["T", *findings]]
    for metric, level in levels:
        label = f"T({'IoU' if metric == 'iou' else 'IoBB'})={level:g}"
        cells = []
        for f in findings:
            r = cell.get((metric, level, f))
            if r is None or math.isnan(r.acc):
                cells.append("-")
            else:
                cells.append(f"{r.acc:.2f}-{r.afp:.2f}" + ("*" if r.bound is None else ""))
        rows.append([label, *cells])
    return rows


def format_table(results: Sequence[LocalizationResult]) -> str:
    """`table_rows` as aligned text, the findings' names shortened as in Cai et al.'s Table 2."""
    head, *lines = table_rows(results)
    head = [head[0], *(_SHORT.get(f, f) for f in head[1:])]
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    text = [fmt.format(*head), *(fmt.format(*row) for row in lines)]
    return "\n".join(text)


def results_json(results: Sequence[LocalizationResult]) -> list[dict]:
    """Plain dicts (for ``--json``)."""
    return [asdict(r) for r in results]


def write_bbox_csv(path: str | Path, boxes: BoxTable) -> None:
    """Write boxes in BBox_List_2017.csv format (the ranks are the row order within an image and finding)."""
    order = np.lexsort((boxes.rank, boxes.finding.astype(str), boxes.image_id.astype(str)))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"])
        for i in order:
            w.writerow([boxes.image_id[i], boxes.finding[i], *(repr(float(v)) for v in boxes.xywh[i])])

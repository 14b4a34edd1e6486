"""COCO detection metrics of mined boxes: AP, AP50, AP75 and AR per finding, by faster-coco-eval or pycocotools.

Mined boxes and ground-truth boxes become a COCO detection data set (`coco_ground_truth`: images, one
category per finding, ``bbox`` = x, y, w, h in pixels, ``area`` = w * h, ``iscrowd`` 0) and a COCO results list
(`coco_detections`: ``score`` = the box's mean fused heatmap; a box without a score, as in a BBox_List CSV,
is scored 1 / rank). Each finding f is evaluated by the library's own ``COCOeval`` (``iouType="bbox"``,
default parameters: IoU 0.50:0.05:0.95, 101 recall points, area "all", maxDets 1/10/100) with ``catIds = [f]``
and ``imgIds`` set by the images convention:

- ``all``: every evaluated image; a box of f on an image without a ground-truth box of f is a false positive
  (the convention of archives whose readers looked at every image: VinDr-CXR, RSNA, SIIM);
- ``boxed``: only the images with a ground-truth box of f; boxes of f elsewhere are left out (ChestX-ray14,
  whose box list covers 880 images: its other images are not known negatives).

AP is COCO's ``stats[0]`` (mean precision over IoU 0.50:0.95), AP50 ``stats[1]``, AP75 ``stats[2]``, AR@1/10/100
``stats[6:9]``: exactly what ``COCOeval.summarize()`` reports when run directly on the written JSON files with
these ``catIds`` / ``imgIds`` (tests/metrics/test_coco.py). Under ``all`` the mean of the per-finding APs equals
one evaluation over every category at once.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from miner.errors import UsageError
from miner.metrics.localization import BoxTable

BACKENDS: tuple[str, ...] = ("faster-coco-eval", "pycocotools")
CONVENTIONS: tuple[str, ...] = ("all", "boxed")


@dataclass
class CocoResult:
    """COCO metrics of one finding (NaN where the evaluated images hold no ground-truth box of it)."""

    finding: str
    images: int  # images evaluated for this finding
    gt_boxes: int
    detections: int  # mined boxes on those images
    ap: float
    ap50: float
    ap75: float
    ar1: float
    ar10: float
    ar100: float


def detection_scores(boxes: BoxTable) -> np.ndarray:
    """np.ndarray[N] float64: the boxes' scores, 1 / rank where a box has none (NaN)."""
    score = np.asarray(boxes.score, dtype=np.float64)
    return np.where(np.isnan(score), 1.0 / np.maximum(boxes.rank, 1), score)


def coco_ground_truth(
    gt: BoxTable,
    images: Sequence[str],
    findings: Sequence[str],
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    info: Mapping[str, object] | None = None,
) -> dict:
    """A COCO detection data set: `images` (ids 1..N in this order, ``file_name`` = the image id, ``height`` /
    ``width`` where `sizes` knows them), one category per finding (ids 1..K), and the boxes of `gt` on those images
    and findings (ids 1..M in table order)."""
    image_ids = {name: i + 1 for i, name in enumerate(images)}
    category_ids = {name: k + 1 for k, name in enumerate(findings)}
    out_images = []
    for name, i in image_ids.items():
        entry: dict = {"id": i, "file_name": name}
        if sizes is not None and name in sizes:
            entry["height"], entry["width"] = int(sizes[name][0]), int(sizes[name][1])
        out_images.append(entry)
    annotations = []
    for n in range(len(gt)):
        i, k = image_ids.get(str(gt.image_id[n])), category_ids.get(str(gt.finding[n]))
        if i is None or k is None:
            continue
        x, y, w, h = (float(v) for v in gt.xywh[n])
        annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": k, "bbox": [x, y, w, h],
                            "area": w * h, "iscrowd": 0})
    return {"info": dict(info or {}), "images": out_images,
            "categories": [{"id": k, "name": name, "supercategory": "finding"} for name, k in category_ids.items()],
            "annotations": annotations}


def coco_detections(pred: BoxTable, dataset: Mapping, *, max_rank: int | None = None) -> list[dict]:
    """The COCO results list of `pred` on the images and categories of `dataset` (``image_id``, ``category_id``,
    ``bbox``, ``score``; also ``rank``, which COCOeval ignores)."""
    image_ids = {e["file_name"]: e["id"] for e in dataset["images"]}
    category_ids = {c["name"]: c["id"] for c in dataset["categories"]}
    scores = detection_scores(pred)
    out = []
    for n in range(len(pred)):
        if max_rank is not None and pred.rank[n] > max_rank:
            continue
        i, k = image_ids.get(str(pred.image_id[n])), category_ids.get(str(pred.finding[n]))
        if i is None or k is None:
            continue
        x, y, w, h = (float(v) for v in pred.xywh[n])
        out.append({"image_id": i, "category_id": k, "bbox": [x, y, w, h], "score": float(scores[n]),
                    "rank": int(pred.rank[n])})
    return out


def _library(backend: str):
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError:
            raise UsageError("--coco-backend pycocotools: pycocotools is not installed; pip install pycocotools, "
                             "or use the default faster-coco-eval") from None
        return COCO, COCOeval
    raise UsageError(f"--coco-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def _coco(COCO, dataset: Mapping):
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco(
    dataset: Mapping,
    detections: Sequence[Mapping],
    *,
    convention: str = "all",
    backend: str = "faster-coco-eval",
) -> list[CocoResult]:
    """COCO metrics per category of `dataset` (module docstring), in category order."""
    if convention not in CONVENTIONS:
        raise UsageError(f"images convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    COCO, COCOeval = _library(backend)
    gt = _coco(COCO, dataset)
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([dict(copy.deepcopy(d)) for d in detections])
    else:  # loadRes refuses an empty list: an empty results set, as loadRes would build it
        dt = _coco(COCO, {"images": dataset["images"], "categories": dataset["categories"], "annotations": []})
    all_images = [e["id"] for e in dataset["images"]]
    results = []
    for category in dataset["categories"]:
        k = category["id"]
        own = [a for a in dataset["annotations"] if a["category_id"] == k]
        images = all_images if convention == "all" else sorted({a["image_id"] for a in own})
        image_set = set(images)
        found = sum(1 for d in detections if d["category_id"] == k and d["image_id"] in image_set)
        stats = [math.nan] * 12
        if own and images:
            stats = _stats(COCOeval, gt, dt, k, images, backend)
        results.append(CocoResult(finding=category["name"], images=len(images), gt_boxes=len(own), detections=found,
                                  ap=stats[0], ap50=stats[1], ap75=stats[2], ar1=stats[6], ar10=stats[7],
                                  ar100=stats[8]))
    return results


def _stats(COCOeval, gt, dt, category: int, images: list[int], backend: str) -> list[float]:
    kwargs = {"print_function": lambda *args, **kw: None} if backend == "faster-coco-eval" else {}
    evaluator = COCOeval(gt, dt, "bbox", **kwargs)
    evaluator.params.catIds = [category]
    evaluator.params.imgIds = images
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [math.nan if v < 0 else float(v) for v in list(evaluator.stats)[:12]]


def mean_result(results: Sequence[CocoResult]) -> CocoResult:
    """The mean of every metric over the findings that have ground truth (NaN ones left out); ``images`` 0, box
    counts summed."""
    def mean(name: str) -> float:
        values = [getattr(r, name) for r in results if not math.isnan(getattr(r, name))]
        return float(np.mean(values)) if values else math.nan

    return CocoResult(finding="mean", images=0,
                      gt_boxes=sum(r.gt_boxes for r in results), detections=sum(r.detections for r in results),
                      ap=mean("ap"), ap50=mean("ap50"), ap75=mean("ap75"), ar1=mean("ar1"), ar10=mean("ar10"),
                      ar100=mean("ar100"))


def metric_cells(result: CocoResult) -> list[str]:
    """AP, AP50, AP75, AR@1, AR@10 and AR@100 of one result as text (3 decimals; ``-`` = no value)."""
    r = result
    return ["-" if math.isnan(v) else f"{v:.3f}" for v in (r.ap, r.ap50, r.ap75, r.ar1, r.ar10, r.ar100)]


def format_coco(results: Sequence[CocoResult]) -> str:
    """One row per finding and a mean row: images, GT boxes, mined boxes, AP, AP50, AP75, AR@1, AR@10, AR@100."""
    head = ["finding", "images", "GT", "mined", "AP", "AP50", "AP75", "AR@1", "AR@10", "AR@100"]
    rows = []
    for r in [*results, mean_result(results)] if results else []:
        images = "" if r.finding == "mean" else str(r.images)
        rows.append([r.finding, images, str(r.gt_boxes), str(r.detections), *metric_cells(r)])
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *rows])


def results_json(results: Sequence[CocoResult]) -> list[dict]:
    """Plain dicts (for ``--json``)."""
    return [asdict(r) for r in results]

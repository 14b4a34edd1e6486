"""``miner detector predict`` (a trained detector's boxes on an archive) and ``miner detector refine`` (one
refinement round of mined boxes by those predictions), both written as job outputs (`miner.detector.output`).

**predict**: every image of the archive (or of one split) is decoded as a job decodes it (the archive-root rule
included: a file outside it is an ``outside_archive`` error row, a file that does not decode an error row of its
kind), resized to the detector's input, and its detections mapped back to the original pixels. Under
``classes="labels"`` (the default, as ``miner mine --classes labels``: the archive's image labels say which findings
an image shows) an image keeps only the boxes of its labelled findings; ``classes="all"`` keeps every finding.
At most ``max_boxes`` boxes per image and finding, ranked by the detector's score (``score`` and ``prob`` = that
score; ``threshold`` = ``min_score``); the images' ``probs`` are each class's highest score on the image.

**refine** (`refine_boxes`): the detector was trained on the mined boxes; where one of its boxes agrees with a
mined box (IoU >= ``agree_iou``, same image and finding) the two are fused: each coordinate is the weighted mean
``weight`` x detector + (1 - weight) x mined (0.5: their plain mean; 1: the detector's box replaces the mined one).
The mined box marks where the class map found the lesion, the detector's box how a model trained on every mined box
draws it; their errors are partly independent, so their mean sits closer to the lesion than either
(docs/results/detector.md). Pairs are taken best first, each detector box fusing with at most one mined box. A
mined box without a partner is kept as mined; a detector box without a mined partner is left out (the class maps do
not back it). Fused boxes rank first (score 0.5 + 0.5 x the detector's score), kept ones after (0.5 x their mined
score), so a detector-confirmed box ranks above an unconfirmed one across images. The output's manifest names both
inputs and the rule (``producer``).
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from miner.errors import ImageError, UsageError
from miner.io import shown

CLASS_POLICIES = ("labels", "all")


@dataclass
class PredictResult:
    out: Path
    images: int
    boxes: int
    errors: int
    seconds: float

    def line(self, verb: str = "miner detector predict") -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        return (f"{verb}: {self.out}: {self.images} images, {self.boxes} boxes, {self.errors} error rows; "
                f"{rate:.1f} images/s")


def predict_archive(
    detector: str | Path,
    archive: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    classes: str = "labels",
    max_boxes: int = 3,
    min_score: float = 0.05,
    batch: int = 8,
    uncertain: str = "ignore",
    allow_outside_archive: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictResult:
    """The detector's boxes on `archive`, written as a job output in `out` (module docstring)."""
    import cv2
    import torch

    from miner.config import ArchiveConfig
    from miner.data import read_archive
    from miner.data.confine import load_record
    from miner.detector.model import load_detector
    from miner.detector.output import archive_record, check_new_output, write_output
    from miner.findings import canonical
    from miner.job.plan import model_hash

    if classes not in CLASS_POLICIES:
        raise UsageError(f"--classes must be one of {', '.join(CLASS_POLICIES)}, got {classes!r}")
    detector = Path(detector).expanduser().resolve()
    model, meta = load_detector(detector)
    model.roi_heads.score_thresh = min(float(min_score), model.roi_heads.score_thresh)  # what --min-score keeps
    archive_config = ArchiveConfig(uncertain=uncertain, allow_outside_archive=allow_outside_archive)
    arch = read_archive(archive, config=archive_config)
    if classes == "labels" and not arch.has_labels:
        raise UsageError(f"{archive}: this archive has no labels; use --classes all")
    names = [canonical(c) for c in meta["classes"]]
    records = arch.records
    if split is not None:
        splits = sorted({r.split for r in records if r.split})
        records = [r for r in records if r.split == split]
        if not records:
            raise UsageError(f"--split: the archive has no image in split {split!r} (its splits: "
                             f"{', '.join(splits) or 'none'})")
    out = check_new_output(out, overwrite=overwrite)
    size = int(meta["size"])
    started = time.perf_counter()
    box_rows, error_rows, image_rows = [], [], []
    seen: set[str] = set()
    todo = [r for r in records if not (r.image_id in seen or seen.add(r.image_id))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="predicting", unit="img")
    try:
        for start in range(0, len(todo), batch):
            chunk, tensors, shapes = [], [], []
            for record in todo[start:start + batch]:
                try:
                    image, (height, width) = load_record(record)
                except ImageError as err:
                    error_rows.append({"image_id": record.image_id, "path": record.path, "kind": err.kind,
                                       "error": str(err)})
                    continue
                small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
                tensors.append(torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None])
                chunk.append(record)
                shapes.append((height, width))
            with torch.inference_mode():
                results = model(tensors) if tensors else []
            for record, (height, width), result in zip(chunk, shapes, results):
                boxes = result["boxes"].numpy().astype(np.float64)
                scores = result["scores"].numpy().astype(np.float64)
                labels = result["labels"].numpy() - 1
                sx, sy = width / size, height / size
                probs = np.zeros(len(names), np.float32)
                for k in range(len(names)):
                    if np.any(labels == k):
                        probs[k] = float(scores[labels == k].max())
                wanted = set(record.labels) if classes == "labels" else set(names)
                count = 0
                for k, finding in enumerate(names):
                    if finding not in wanted or finding in record.unknown:
                        continue
                    picked = np.flatnonzero((labels == k) & (scores >= min_score))
                    picked = picked[np.argsort(-scores[picked], kind="stable")][:max_boxes]
                    for rank, n in enumerate(picked, start=1):
                        x0, y0, x1, y1 = boxes[n]
                        x0, x1 = np.clip([x0 * sx, x1 * sx], 0, width)
                        y0, y1 = np.clip([y0 * sy, y1 * sy], 0, height)
                        if x1 - x0 <= 0 or y1 - y0 <= 0:
                            continue
                        box_rows.append({"image_id": record.image_id, "finding": finding, "class_index": k,
                                         "rank": rank, "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0,
                                         "score": float(scores[n]), "prob": float(probs[k]),
                                         "threshold": float(min_score)})
                        count += 1
                image_rows.append({"image_id": record.image_id, "height": height, "width": width, "boxes": count,
                                   "probs": probs.tolist()})
            if bar is not None:
                bar.update(len(todo[start:start + batch]))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    record, fingerprint = archive_record(arch, archive_config, archive)
    write_output(out, boxes=box_rows, errors=error_rows, images=image_rows, archive=record,
                 fingerprint=fingerprint,
                 model={"path": str(detector), "sha256": model_hash(detector), "classes": names, "kind": "detector",
                        "labels": meta.get("labels"), "backbone": meta.get("backbone")},
                 producer={"verb": "miner detector predict", "detector": str(detector), "split": split,
                           "classes": classes, "max_boxes": max_boxes, "min_score": min_score},
                 config={"classes": classes, "max_boxes": max_boxes, "prob_threshold": 0.0},
                 overwrite=overwrite)
    return PredictResult(out=out, images=len(image_rows), boxes=len(box_rows), errors=len(error_rows),
                         seconds=seconds)


# -- one refinement round ------------------------------------------------------------------------------------

def refine_boxes(mined: list[dict], predicted: list[dict], *, agree_iou: float = 0.1,
                 weight: float = 0.5) -> tuple[list[dict], int]:
    """The refined boxes of one image and finding (module docstring): rows of the boxes dataset in, rows out
    (ranked), and how many of them were fused with a detector box."""
    from miner.metrics.overlap import iou

    if not mined:
        return [], 0
    m = np.asarray([[r["x"], r["y"], r["w"], r["h"]] for r in mined], np.float64)
    used: set[int] = set()
    confirmed, kept = [], []
    if predicted:
        p = np.asarray([[r["x"], r["y"], r["w"], r["h"]] for r in predicted], np.float64)
        overlap = iou(m, p)
        # greedy, best pairs first: each detector box fuses with at most one mined box
        pairs = sorted(((overlap[i, j], i, j) for i in range(len(mined)) for j in range(len(predicted))),
                       key=lambda t: (-t[0], t[1], t[2]))
        partner: dict[int, int] = {}
        for value, i, j in pairs:
            if value < agree_iou:
                break
            if i in partner or j in used:
                continue
            partner[i] = j
            used.add(j)
        for i, row in enumerate(mined):
            if i in partner:
                det = predicted[partner[i]]
                x0 = weight * det["x"] + (1 - weight) * row["x"]
                y0 = weight * det["y"] + (1 - weight) * row["y"]
                x1 = weight * (det["x"] + det["w"]) + (1 - weight) * (row["x"] + row["w"])
                y1 = weight * (det["y"] + det["h"]) + (1 - weight) * (row["y"] + row["h"])
                confirmed.append({**row, "x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0,
                                  "score": 0.5 + 0.5 * float(det["score"])})
            else:
                kept.append({**row, "score": 0.5 * float(np.clip(row["score"], 0.0, 1.0))})
    else:
        kept = [{**row, "score": 0.5 * float(np.clip(row["score"], 0.0, 1.0))} for row in mined]
    rows = sorted(confirmed, key=lambda r: -r["score"]) + sorted(kept, key=lambda r: -r["score"])
    return [{**row, "rank": rank} for rank, row in enumerate(rows, start=1)], len(confirmed)


def refine_outputs(
    mined: str | Path,
    predicted: str | Path,
    out: str | Path,
    *,
    agree_iou: float = 0.1,
    weight: float = 0.5,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> PredictResult:
    """Refine the boxes of job output `mined` with the detector output `predicted` (same archive) into `out`."""
    from miner.detector.output import check_new_output, write_output
    from miner.io import read_dataset
    from miner.output import read_output

    if not 0.0 <= agree_iou <= 1.0:
        raise UsageError(f"--agree-iou must lie in [0, 1], got {agree_iou}")
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"--weight must lie in [0, 1], got {weight}")
    started = time.perf_counter()
    job, det = read_output(mined), read_output(predicted)
    for name, output in (("MINED", job), ("PREDICTED", det)):
        if output.manifest.get("status") != "complete":
            raise UsageError(f"{name}: {shown(output.root)} is not a complete output; finish it first")
    producer = det.manifest.get("producer") or {}
    if producer.get("verb") != "miner detector predict":
        raise UsageError(f"PREDICTED: {shown(det.root)} was not written by miner detector predict")
    fingerprint = job.manifest.get("identity", {}).get("archive")
    if fingerprint != det.manifest.get("identity", {}).get("archive"):
        raise UsageError(f"{shown(job.root)} and {shown(det.root)} are outputs of different archives (or of the "
                         "same archive changed in between); predict on the archive that was mined")
    if list(job.classes) != list(det.classes):
        missing = [c for c in job.classes if c not in det.classes]
        if missing:
            raise UsageError(f"the detector of {shown(det.root)} lacks the findings {', '.join(missing)} of the "
                             "mined output; train it on labels of every finding")
    out = check_new_output(out, overwrite=overwrite)
    det_images = set(det.image_ids)
    images = [i for i in dict.fromkeys(job.image_ids) if i in det_images]
    chosen = set(images)
    mined_rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in read_dataset(job.root, "boxes").to_pylist():
        if row["image_id"] in chosen:
            mined_rows[(row["image_id"], row["finding"])].append(row)
    det_rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in read_dataset(det.root, "boxes").to_pylist():
        det_rows[(row["image_id"], row["finding"])].append(row)
    boxes: list[dict] = []
    fused = 0
    for key in sorted(mined_rows):
        rows, confirmed = refine_boxes(mined_rows[key], det_rows.get(key, []), agree_iou=agree_iou, weight=weight)
        fused += confirmed
        boxes.extend(rows)
    counts: dict[str, int] = defaultdict(int)
    for row in boxes:
        counts[row["image_id"]] += 1
    index = {i: n for n, i in enumerate(job.image_ids)}
    image_rows = [{"image_id": i, "height": job.sizes[i][0], "width": job.sizes[i][1], "boxes": counts.get(i, 0),
                   "probs": job.probs[index[i]].tolist()} for i in images]
    errors = list(job.errors)
    manifest_model = dict(job.manifest.get("model", {}))
    manifest_model.setdefault("classes", list(job.classes))
    write_output(out, boxes=boxes, errors=errors, images=image_rows, archive=job.manifest.get("archive", {}),
                 fingerprint=fingerprint, model=manifest_model,
                 producer={"verb": "miner detector refine", "mined": str(job.root),
                           "mined_model_sha256": job.manifest.get("model", {}).get("sha256"),
                           "predicted": str(det.root), "detector": producer.get("detector"),
                           "detector_sha256": det.manifest.get("model", {}).get("sha256"),
                           "agree_iou": agree_iou, "weight": weight, "fused": fused},
                 config=dict(job.manifest.get("config", {})), overwrite=overwrite)
    log(f"{fused} of {len(boxes)} boxes fused with the detector's")
    return PredictResult(out=out, images=len(image_rows), boxes=len(boxes), errors=len(errors),
                         seconds=time.perf_counter() - started)

"""`miner eval BOXES --gt BBOX_CSV`: the ChestX-ray14 localisation table (Acc-AFP per finding and level)."""
from __future__ import annotations

import argparse

HELP = "evaluate mined boxes against ground-truth boxes: Acc-AFP per finding at T(IoU) and T(IoBB)"
DESCRIPTION = (
    "Print Cai et al.'s Table 2 for BOXES (OUT, OUT/boxes, a .parquet file, or a BBox_List CSV) against the "
    "ground-truth boxes: per finding and level, the localisation accuracy and the average false positives per "
    "image of the ranked list B (all rank-1 boxes, then rank-2, then rank-3) taken until AFP reaches a bound "
    "(Wang et al.'s AFP for T(IoU), from the seed's Table 2; none for T(IoBB), marked *). With --model and "
    "--archive also MaxBoxAccV2 per finding, and PxAP where the archive has masks (Choe et al. 2020). "
    "The definitions are in miner/metrics/localization.py."
)


def _levels(text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    from miner.errors import UsageError

    if text is None:
        return default
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"levels must be comma-separated numbers, got {text!r}") from None
    if any(not 0 < v <= 1 for v in values):
        raise UsageError(f"levels must be in (0, 1], got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("boxes", metavar="BOXES", help="mined boxes: OUT, OUT/boxes, a .parquet file or a CSV")
    parser.add_argument("--gt", default=None, help="ground-truth boxes, BBox_List_2017.csv format (plain or .gz); "
                                                   "default: the boxes of --archive")
    parser.add_argument("--json", default=None, help="also write every cell (and WSOL metrics) to this JSON file")
    parser.add_argument("--afp-bounds", default=None, help="AFP bounds file (JSON or CSV; see "
                                                           "miner/metrics/bounds.py) instead of the built-in ones")
    parser.add_argument("--iou", default=None, help="T(IoU) levels (default 0.1,...,0.7)")
    parser.add_argument("--iobb", default=None, help="T(IoBB) levels (default 0.1,0.25,0.5,0.75,0.9)")
    parser.add_argument("--within-rank", choices=("score", "image"), default="score",
                        help="order of one rank's boxes in B: by score (default) or by image name")
    parser.add_argument("--max-rank", type=int, default=3, help="boxes per image and finding that enter B")
    parser.add_argument("--findings", default=None, help="comma-separated findings (default: all with GT boxes)")
    parser.add_argument("--model", default=None, help="checkpoint: also MaxBoxAccV2 (and PxAP with masks)")
    parser.add_argument("--archive", default=None, help="archive with the images (needed with --model)")
    parser.add_argument("--method", default=None, help="map method with --model (default cam / gradcam)")
    parser.add_argument("--steps", type=int, default=None, help="attention-mining steps with --model (default 3)")
    parser.add_argument("--size", type=int, default=None, help="model input side (default: the checkpoint's)")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace
    from pathlib import Path

    from miner.config import EvalConfig
    from miner.errors import UsageError
    from miner.findings import canonical
    from miner.metrics import BoxTable, default_bounds, format_table, load_bounds, localization_table
    from miner.metrics.localization import read_bbox_csv, read_boxes, results_json

    cfg = EvalConfig()
    cfg = replace(cfg, iou_thresholds=_levels(args.iou, cfg.iou_thresholds),
                  iobb_thresholds=_levels(args.iobb, cfg.iobb_thresholds), within_rank=args.within_rank,
                  max_rank=args.max_rank, afp_bounds=args.afp_bounds)
    if args.max_rank < 1:
        raise UsageError(f"--max-rank must be at least 1, got {args.max_rank}")
    archive = None
    if args.archive:
        from miner.data import read_archive

        archive = read_archive(args.archive)
    if args.gt:
        gt = read_bbox_csv(args.gt)
    elif archive is not None:
        b = archive.boxes
        gt = BoxTable.from_columns([x.image_id for x in b], [x.finding for x in b], [x.x for x in b],
                                   [x.y for x in b], [x.w for x in b], [x.h for x in b])
    else:
        raise UsageError("give --gt BBOX_CSV (or --archive with a BBox_List_2017.csv)")
    if len(gt) == 0:
        raise UsageError("the ground truth holds no boxes")
    pred = read_boxes(args.boxes)
    bounds = load_bounds(args.afp_bounds) if args.afp_bounds else default_bounds()
    findings = None
    if args.findings:
        findings = [canonical(f) for f in args.findings.split(",") if f.strip()]
    results = localization_table(pred, gt, config=cfg, bounds=bounds, findings=findings)
    images = len(set(gt.image_id))
    print(f"{len(pred)} mined boxes vs {len(gt)} ground-truth boxes on {images} images; cells Acc-AFP; "
          f"bounds: {bounds.source} (* = no bound: every box of B)")
    print(format_table(results))
    report: dict = {"boxes": str(args.boxes), "bounds": bounds.source, "config": {
        "iou_thresholds": list(cfg.iou_thresholds), "iobb_thresholds": list(cfg.iobb_thresholds),
        "within_rank": cfg.within_rank, "max_rank": cfg.max_rank}, "cells": results_json(results)}

    if args.model:
        if archive is None:
            raise UsageError("--model needs --archive (the images to compute the heatmaps of)")
        report["wsol"] = _wsol(args, archive, gt, list(dict.fromkeys(r.finding for r in results)))
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(report), indent=1))
        print(f"wrote {args.json}")
    return 0


def _finite(value):
    """NaN/inf -> None, recursively (strict JSON)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _wsol(args, archive, gt, findings) -> dict:
    """MaxBoxAccV2 per finding (images with its GT boxes) and PxAP where the archive has masks."""
    from dataclasses import replace

    import numpy as np
    from torch.nn import functional as F

    from miner.cli._maps import default_method, fused_maps, open_checkpoint
    from miner.config import MiningConfig
    from miner.metrics.wsol import max_box_acc_v2, pxap

    model, _meta, size = open_checkpoint(args.model, size=args.size)
    method = args.method or default_method(model)
    config = MiningConfig() if args.steps is None else replace(MiningConfig(), steps=args.steps)
    paths = {r.image_id: r.path for r in archive.records}
    out = {}
    print(f"WSOL metrics of {args.model} ({method}, T={config.steps}) -- Choe et al. 2020:")
    for f in findings:
        if f not in model.classes:
            continue
        rows = np.flatnonzero(gt.finding == f)
        ids = [i for i in dict.fromkeys(gt.image_id[rows]) if i in paths]
        if not ids:
            continue
        _, fused, sizes = fused_maps(model, [paths[i] for i in ids], input_size=size, classes=[f], method=method,
                                     config=config)
        boxes = [gt.xywh[rows[gt.image_id[rows] == i]] for i in ids]
        mba = max_box_acc_v2(fused[:, 0], boxes, sizes)
        entry = {"images": len(ids), "maxboxacc_v2": mba.value,
                 "best": {str(d): {"boxacc": v[0], "tau": v[1]} for d, v in mba.best.items()}}
        masks = [archive.load_mask(i, f) for i in ids]
        if any(m is not None for m in masks):
            maps, gts = [], []
            for k, m in enumerate(masks):
                if m is None:
                    continue
                up = F.interpolate(fused[k : k + 1], size=m.shape, mode="bilinear", align_corners=False)
                maps.append(up[0, 0].numpy())
                gts.append(m)
            entry["pxap"] = pxap(maps, gts)
            entry["pxap_images"] = len(gts)
        out[f] = entry
        extra = f"  PxAP {entry['pxap']:.3f} ({entry['pxap_images']} masks)" if "pxap" in entry else ""
        print(f"  {f:14s} MaxBoxAccV2 {mba.value:.3f} on {len(ids)} images{extra}")
    return out

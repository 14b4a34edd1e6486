"""`miner eval BOXES`: the ChestX-ray14 localisation table (Acc-AFP), COCO AP/AR per finding, label AUC."""
from __future__ import annotations

import argparse

from miner.cli._options import OPEN_FRACTION, RANK, SIDE, STEPS, integer, numbers, out_file, out_folder

HELP = "evaluate mined boxes: Acc-AFP per finding at T(IoU) and T(IoBB), COCO AP/AP50/AR, image-level AUC"
DESCRIPTION = (
    "Print Cai et al.'s Table 2 for BOXES (OUT, OUT/boxes, a .parquet file, or a BBox_List CSV) against the "
    "ground-truth boxes: per finding and level, the localisation accuracy and the average false positives per "
    "image of the ranked list B (all rank-1 boxes, then rank-2, then rank-3) taken until AFP reaches a bound "
    "(Wang et al.'s AFP for T(IoU), from the seed's Table 2; none for T(IoBB), marked *). Then COCO detection "
    "metrics per finding (AP over IoU 0.50:0.95, AP50, AP75, AR@1/10/100; faster-coco-eval or pycocotools), and, "
    "where the archive has image labels and BOXES is a job's OUT, the AUC of the model's probabilities per "
    "finding. With --model and --archive also MaxBoxAccV2 per finding, and PxAP where the archive has masks "
    "(Choe et al. 2020). Ground truth: --gt, else --archive, else the archive recorded in OUT/_manifest.json. "
    "The definitions are in miner/metrics/localization.py, coco.py, readers.py and auc.py."
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
    from miner.config import UNCERTAIN_POLICIES, EvalConfig

    cfg = EvalConfig()
    parser.add_argument("boxes", metavar="BOXES", help="mined boxes: OUT, OUT/boxes, a .parquet file or a CSV")
    parser.add_argument("--gt", default=None, help="ground-truth boxes, BBox_List_2017.csv format (plain or .gz); "
                                                   "default: the boxes of --archive (or of OUT's archive)")
    parser.add_argument("--json", default=None, type=out_file,
                        help="also write every cell (and WSOL metrics) to this JSON file")
    parser.add_argument("--afp-bounds", default=None, help="AFP bounds file (JSON or CSV; see "
                                                           "miner/metrics/bounds.py) instead of the built-in ones")
    parser.add_argument("--iou", default=None, type=numbers(OPEN_FRACTION), help="T(IoU) levels (default 0.1,...,0.7)")
    parser.add_argument("--iobb", default=None, type=numbers(OPEN_FRACTION),
                        help="T(IoBB) levels (default 0.1,0.25,0.5,0.75,0.9)")
    parser.add_argument("--within-rank", choices=("score", "image"), default="score",
                        help="order of one rank's boxes in B: by score (default) or by image name")
    parser.add_argument("--max-rank", type=RANK, default=3, help="boxes per image and finding that are scored")
    parser.add_argument("--findings", default=None,
                        help="comma-separated findings (default: those with GT boxes that the model knows)")
    gt = parser.add_argument_group("ground truth")
    gt.add_argument("--archive", default=None,
                    help="the archive (its boxes, masks and labels; needed with --model; default: OUT's)")
    gt.add_argument("--readers", default=cfg.readers,
                    help="several readers' boxes (VinDr-CXR): fused (one box per lesion that readers' boxes "
                         "overlapping at --fuse-iou share), any (every reader's box) or a reader id such as R8 "
                         "(default: %(default)s)")
    gt.add_argument("--fuse-iou", type=OPEN_FRACTION, default=cfg.fuse_iou,
                    help="IoU at which two readers' boxes are one lesion (default: %(default)s)")
    gt.add_argument("--min-readers", type=integer(1, 100), default=cfg.min_readers,
                    help="with --readers fused: lesions boxed by at least this many readers (default: %(default)s)")
    gt.add_argument("--uncertain", default=None, choices=UNCERTAIN_POLICIES,
                    help="CheXpert's uncertain labels when reading --archive (default: as the job read it, else "
                         "ignore)")
    coco = parser.add_argument_group("COCO metrics")
    coco.add_argument("--negatives", default=cfg.negatives, choices=("auto", "all", "boxed"),
                      help="images that count for a finding: all mined images (a box where the ground truth has "
                           "none is a false positive), only those with its ground-truth boxes (boxed), or the "
                           "archive's convention (auto: all for VinDr-CXR, RSNA, SIIM; boxed otherwise)")
    coco.add_argument("--coco-backend", default=cfg.coco_backend, choices=("faster-coco-eval", "pycocotools"),
                      help="the COCOeval implementation (default: %(default)s)")
    coco.add_argument("--coco-dir", default=None, type=out_folder, metavar="DIR",
                      help="write the COCO ground truth (ground_truth.json) and detections (detections.json) "
                           "that were scored")
    wsol = parser.add_argument_group("WSOL metrics")
    wsol.add_argument("--model", default=None, help="checkpoint: also MaxBoxAccV2 (and PxAP with masks)")
    wsol.add_argument("--method", default=None, help="map method with --model (default cam / gradcam)")
    wsol.add_argument("--steps", type=STEPS, default=None, help="attention-mining steps with --model (default 3)")
    wsol.add_argument("--size", type=SIDE, default=None, help="model input side (default: the checkpoint's)")
    wsol.add_argument("--allow-outside-archive", action="store_true",
                      help="with --model: also read image files that resolve outside the archive's root (symbolic "
                           "links followed; default: as the job read the archive, else they are left out unread)")


def _ground_truth(args, archive, cfg):
    """(BoxTable of ground-truth boxes, where they came from)."""
    from miner.metrics import ground_truth_table
    from miner.metrics.localization import read_bbox_csv
    from miner.metrics.readers import fuse_readers, readers_of

    if args.gt:
        return read_bbox_csv(args.gt), args.gt
    if archive is None:
        return None, None
    boxes = archive.boxes
    source = f"{archive.root} ({len(boxes)} boxes)"
    if readers_of(boxes):
        boxes = fuse_readers(boxes, rule=cfg.readers, fuse_iou=cfg.fuse_iou, min_readers=cfg.min_readers)
        source += f"; readers {cfg.readers}" + (f" at IoU {cfg.fuse_iou:g}, >= {cfg.min_readers} readers"
                                                if cfg.readers == "fused" else "") + f" -> {len(boxes)} boxes"
    return ground_truth_table(boxes), source


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace
    from pathlib import Path

    import numpy as np

    from miner.config import ArchiveConfig, EvalConfig
    from miner.errors import UsageError
    from miner.findings import canonical
    from miner.io import json_safe
    from miner.metrics import format_table, load_bounds
    from miner.metrics.job import evaluate_job
    from miner.metrics.localization import read_boxes, results_json
    from miner.output import is_output, read_output

    cfg = EvalConfig()
    cfg = replace(cfg, iou_thresholds=_levels(args.iou, cfg.iou_thresholds),
                  iobb_thresholds=_levels(args.iobb, cfg.iobb_thresholds), within_rank=args.within_rank,
                  max_rank=args.max_rank, afp_bounds=args.afp_bounds, readers=args.readers, fuse_iou=args.fuse_iou,
                  min_readers=args.min_readers, negatives=args.negatives, coco_backend=args.coco_backend)
    if args.max_rank < 1:
        raise UsageError(f"--max-rank must be at least 1, got {args.max_rank}")
    boxes_path = Path(args.boxes)
    output = None
    if boxes_path.exists() and (is_output(boxes_path) or is_output(boxes_path.parent)):
        output = read_output(boxes_path)
    archive = None
    if output is not None and (args.archive or not args.gt):
        archive = output.archive(path=args.archive, uncertain=args.uncertain)
        if args.allow_outside_archive:
            from miner.data.archives.archive import unconfined

            archive = unconfined(archive)
    elif args.archive:
        from miner.data import read_archive

        archive = read_archive(args.archive, config=ArchiveConfig(uncertain=args.uncertain or
                                                                  ArchiveConfig.uncertain,
                                                                  allow_outside_archive=args.allow_outside_archive))
    gt, gt_source = _ground_truth(args, archive, cfg)
    if gt is None:
        raise UsageError("give --gt BBOX_CSV, --archive ARCHIVE, or a job's OUT (its manifest names the archive)")
    pred = read_boxes(args.boxes)
    # the images that count: those that went through the model (OUT), else the archive's, else any named
    if output is not None:
        # an image is counted once (docs/untrusted-input.md: duplicate rows)
        universe = list(dict.fromkeys(output.image_ids))
    elif archive is not None:
        universe = [r.image_id for r in archive.records]
    else:
        universe = list(dict.fromkeys([*map(str, gt.image_id), *map(str, pred.image_id)]))
    inside = np.isin(gt.image_id.astype(str), np.asarray(universe, dtype=str))
    gt = gt.take(inside)
    model_classes = tuple(output.classes) if output is not None else ()
    if args.findings:
        findings = [canonical(f) for f in args.findings.split(",") if f.strip()]
    else:
        present = list(dict.fromkeys(map(str, gt.finding)))
        findings = [f for f in present if not model_classes or f in model_classes]
        from miner.findings import VOCABULARY

        findings.sort(key=lambda f: (VOCABULARY.index(f) if f in VOCABULARY else len(VOCABULARY), f))
    report: dict = {"boxes": str(args.boxes), "ground_truth": gt_source, "images": len(universe), "config": {
        "iou_thresholds": list(cfg.iou_thresholds), "iobb_thresholds": list(cfg.iobb_thresholds),
        "within_rank": cfg.within_rank, "max_rank": cfg.max_rank, "readers": cfg.readers, "fuse_iou": cfg.fuse_iou,
        "min_readers": cfg.min_readers}}
    scored = False
    if len(gt) and findings:
        # miner.metrics.job: the evaluation miner demo and miner report make too (here: only the bounded table)
        scores = evaluate_job(pred, gt, images=universe, findings=findings, config=cfg, every_box=False, coco=False,
                              bounds=load_bounds(args.afp_bounds) if args.afp_bounds else None)
        print(f"{len(pred)} mined boxes vs {len(gt)} ground-truth boxes on {len(set(gt.image_id))} images "
              f"({gt_source}); cells Acc-AFP; bounds: {scores.bounds_source} (* = no bound: every box of B)")
        print(format_table(scores.bounded))
        report.update(bounds=scores.bounds_source, cells=results_json(scores.bounded))
        report["coco"] = _coco(cfg, pred, gt, universe, findings, archive, output, args.coco_dir)
        scored = True
    elif len(gt):
        print(f"no finding with ground-truth boxes is one the model knows ({', '.join(model_classes)}): "
              "no box metrics")
    if output is not None and archive is not None and archive.has_labels and model_classes:
        auc = _auc(output, archive, findings if args.findings else None)
        if auc:
            report["auc"] = auc
            scored = True
    if not scored:
        raise UsageError("nothing to score: the ground truth holds no boxes of the model's findings, and no image "
                         "labels meet them (give --gt, --archive or --findings)")

    if args.model:
        if archive is None:
            raise UsageError("--model needs --archive (the images to compute the heatmaps of)")
        report["wsol"] = _wsol(args, archive, gt, findings)
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(report), indent=1))
        print(f"wrote {args.json}")
    return 0


def _coco(cfg, pred, gt, universe, findings, archive, output, coco_dir) -> dict:
    """COCO metrics per finding (`miner.metrics.job.job_coco`; printed; returned for the JSON report)."""
    import json
    from pathlib import Path

    from miner.metrics.coco import format_coco
    from miner.metrics.job import job_coco
    from miner.outdir import prepare_out

    scored = job_coco(pred, gt, images=universe, findings=findings, config=cfg,
                      sizes=output.sizes if output is not None else None,
                      exhaustive=archive is not None and archive.exhaustive)
    how = ("every mined image counts (a box where the ground truth has none is a false positive)"
           if scored.convention == "all" else "only images with ground-truth boxes of the finding count")
    print()
    print(f"COCO detection metrics ({cfg.coco_backend}; IoU 0.50:0.95, area all; {how}):")
    print(format_coco(scored.results))
    if coco_dir:
        folder = Path(coco_dir)
        prepare_out(folder, overwrite=True, where=f"--coco-dir: {folder}", not_folder="give a folder", create=True)
        (folder / "ground_truth.json").write_text(json.dumps(scored.dataset))
        (folder / "detections.json").write_text(json.dumps(scored.detections))
        print(f"wrote {folder / 'ground_truth.json'}, {folder / 'detections.json'}")
    return scored.json()


def _auc(output, archive, findings) -> list[dict]:
    from miner.metrics.auc import format_auc, label_auc, results_json

    results = label_auc(output.probs, output.classes, output.image_ids, archive, findings=findings)
    if not results:
        return []
    print()
    print(f"image-level AUC of the model's probabilities against the archive's labels ({len(output.image_ids)} "
          "mined images; unknown labels left out):")
    print(format_auc(results))
    return results_json(results)


def _wsol(args, archive, gt, findings) -> dict:
    """MaxBoxAccV2 per finding (images with its GT boxes) and PxAP where the archive has masks."""
    import numpy as np
    from torch.nn import functional as F

    from miner.cli._maps import default_method, fused_maps, mining_config, open_checkpoint
    from miner.data.confine import FLAG, check_inside
    from miner.errors import ImageError
    from miner.metrics.wsol import max_box_acc_v2, pxap

    model, settings, size = open_checkpoint(args.model, size=args.size)
    method = args.method or default_method(model, settings)
    config = mining_config(settings, args.steps)
    paths, outside = {}, 0
    for r in archive.records:  # the archive-root rule (miner.data.confine): the resolved path is the one opened
        try:
            paths[r.image_id] = check_inside(r.path, r.root)
        except ImageError:
            outside += 1
    out = {}
    print(f"WSOL metrics of {args.model} ({method}, T={config.steps}) -- Choe et al. 2020:")
    if outside:
        print(f"  {outside} images resolve outside the archive's root: left out, unread ({FLAG} reads them)")
    for f in findings:
        if f not in model.classes:
            continue
        rows = np.flatnonzero(gt.finding == f)
        ids = [i for i in dict.fromkeys(gt.image_id[rows]) if i in paths]
        if not ids:
            continue
        _, fused, sizes = fused_maps(model, [paths[i] for i in ids], input_size=size, classes=[f], method=method,
                                     config=config, stage_weights=settings.stage_weights)
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

"""`miner show BOXES IMAGE_ID --out PNG`: one image's mined boxes (green), ground truth (red), fused heatmaps."""
from __future__ import annotations

import argparse

HELP = "draw one image's mined boxes (green), ground-truth boxes (red) and fused heatmaps to a PNG"
DESCRIPTION = (
    "Draw IMAGE_ID with one panel per finding: mined boxes from BOXES in green (rank and score), ground-truth "
    "boxes in red, and the fused attention-mining heatmap H_f when --model is given (the heatmap is not stored "
    "in the Parquet output, so it is recomputed from the model; without --model only the boxes are drawn). "
    "BOXES is OUT, OUT/boxes, a .parquet file or a BBox_List CSV."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("boxes", metavar="BOXES", help="mined boxes: OUT, OUT/boxes, a .parquet file or a CSV")
    parser.add_argument("image_id", metavar="IMAGE_ID", help="the image's name, e.g. 00000003_000.png")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--archive", default=None, help="archive holding the image (and its ground-truth boxes)")
    parser.add_argument("--image", default=None, help="the image file itself (instead of --archive)")
    parser.add_argument("--gt", default=None, help="ground-truth boxes (BBox_List CSV; default: the archive's)")
    parser.add_argument("--model", default=None, help="checkpoint: recompute and draw the fused heatmaps")
    parser.add_argument("--method", default=None, help="map method with --model (default: cam for linear heads, "
                                                      "else gradcam)")
    parser.add_argument("--steps", type=int, default=None, help="attention-mining steps with --model (default 3)")
    parser.add_argument("--size", type=int, default=None, help="model input side (default: the checkpoint's)")
    parser.add_argument("--findings", default=None, help="comma-separated findings to draw (default: every "
                                                         "finding with a mined or ground-truth box)")
    parser.add_argument("--panel-size", type=int, default=512, help="longer side of each panel (default 512)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    import cv2
    import numpy as np

    from miner.config import MiningConfig
    from miner.data import load_image, read_archive
    from miner.errors import UsageError
    from miner.findings import canonical
    from miner.metrics.localization import read_bbox_csv, read_boxes
    from miner.show import Panel, render

    image_id = args.image_id
    mined = read_boxes(args.boxes)
    sel = mined.image_id.astype(str) == image_id
    path, gt_rows = None, []
    if args.archive:
        archive = read_archive(args.archive)
        record = next((r for r in archive.records if r.image_id == image_id), None)
        if record is None:
            raise UsageError(f"{args.archive} has no image {image_id!r}")
        path = record.path
        gt_rows = [(b.finding, (b.x, b.y, b.w, b.h)) for b in archive.boxes if b.image_id == image_id]
    if args.image:
        path = args.image
    if path is None:
        raise UsageError("give --archive ARCHIVE (or --image FILE) so the image can be found")
    if args.gt:
        gt = read_bbox_csv(args.gt)
        gsel = gt.image_id.astype(str) == image_id
        gt_rows = [(gt.finding[i], tuple(gt.xywh[i])) for i in np.flatnonzero(gsel)]
    image, (height, width) = load_image(path)
    if args.findings:
        findings = [canonical(f) for f in args.findings.split(",") if f.strip()]
    else:
        findings = list(dict.fromkeys([*mined.finding[sel], *(f for f, _ in gt_rows)]))

    heat: dict[str, np.ndarray] = {}
    note = "boxes only: give --model for the heatmap"
    if args.model:
        from miner.cli._maps import default_method, fused_maps, open_checkpoint

        model, _meta, size = open_checkpoint(args.model, size=args.size)
        known = [f for f in findings if f in model.classes]
        method = args.method or default_method(model)
        config = MiningConfig() if args.steps is None else replace(MiningConfig(), steps=args.steps)
        if known:
            _, fused, _ = fused_maps(model, [path], input_size=size, classes=known, method=method, config=config)
            heat = {f: fused[0, i].numpy() for i, f in enumerate(known)}
        note = f"H_f, {method}, T={config.steps}"

    panels = []
    for f in findings:
        idx = np.flatnonzero(sel & (mined.finding == f))
        idx = idx[np.argsort(mined.rank[idx])]
        panels.append(Panel(
            finding=f, heat=heat.get(f),
            gt=[b for g, b in gt_rows if g == f],
            mined=[tuple(mined.xywh[i]) for i in idx],
            labels=[f"{int(mined.rank[i])}" + ("" if np.isnan(mined.score[i]) else f" {mined.score[i]:.2f}")
                    for i in idx],
            note=note if args.model is None or f in heat else "not a class of the model",
        ))
    picture = render(image, panels, panel_size=args.panel_size, title=f"{image_id}  ({width}x{height})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), picture):
        raise UsageError(f"--out: cannot write {out} (use a .png name in a writable folder)")
    n_mined = int(sel.sum())
    print(f"{out}: {image_id}, {len(panels)} finding(s), {n_mined} mined box(es), {len(gt_rows)} ground-truth "
          f"box(es){', heatmaps from ' + args.model if args.model else ''}")
    return 0

"""`miner show BOXES IMAGE_ID --out PNG`: one image's mined boxes (green), ground truth (red), fused heatmaps,
and with ``--clear`` the CLEAR picture of every class of the model (`miner.clear`)."""
from __future__ import annotations

import argparse

from miner.cli._options import PANEL, SIDE, STEPS, out_file

HELP = "draw one image's mined boxes (green), ground-truth boxes (red) and fused heatmaps to a PNG"
DESCRIPTION = (
    "Draw IMAGE_ID with one panel per finding: mined boxes from BOXES in green (rank and score), ground-truth "
    "boxes in red, and the fused attention-mining heatmap H_f when --model is given (the heatmap is not stored "
    "in the Parquet output, so it is recomputed from the model; without --model only the boxes are drawn). "
    "With --model and --clear a last panel shows the CLEAR picture (Kumar et al.): at each pixel the dominant "
    "finding of the model's class maps (argmax over all its classes) as hue and its response as brightness, "
    "with a legend of the findings' hues. BOXES is OUT, OUT/boxes, a .parquet file or a BBox_List CSV."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("boxes", metavar="BOXES", help="mined boxes: OUT, OUT/boxes, a .parquet file or a CSV")
    parser.add_argument("image_id", metavar="IMAGE_ID", help="the image's name, e.g. 00000003_000.png")
    parser.add_argument("--out", required=True, type=out_file, help="PNG file to write")
    parser.add_argument("--archive", default=None, help="archive holding the image (and its ground-truth boxes)")
    parser.add_argument("--image", default=None, help="the image file itself (instead of --archive)")
    parser.add_argument("--allow-outside-archive", action="store_true",
                        help="draw the archive's image even where its file resolves outside the archive's root "
                             "(symbolic links followed); without it such an image is refused, unread")
    parser.add_argument("--gt", default=None, help="ground-truth boxes (BBox_List CSV; default: the archive's)")
    parser.add_argument("--model", default=None, help="checkpoint: recompute and draw the fused heatmaps")
    parser.add_argument("--method", default=None, help="map method with --model (default: cam for linear heads, "
                                                      "else gradcam)")
    parser.add_argument("--steps", type=STEPS, default=None, help="attention-mining steps with --model (default 3)")
    parser.add_argument("--size", type=SIDE, default=None, help="model input side (default: the checkpoint's)")
    parser.add_argument("--findings", default=None, help="comma-separated findings to draw (default: every "
                                                         "finding with a mined or ground-truth box)")
    parser.add_argument("--panel-size", type=PANEL, default=512, help="longer side of each panel (default 512)")
    parser.add_argument("--clear", action="store_true", help="with --model: add the CLEAR picture of every class "
                                                             "(dominant finding as hue, its response as value)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cv2
    import numpy as np

    from miner.config import ArchiveConfig
    from miner.data import load_image, read_archive
    from miner.data.confine import check_inside
    from miner.data.textfile import printable
    from miner.errors import ArchiveError, ImageError, UsageError
    from miner.findings import canonical
    from miner.metrics.localization import read_bbox_csv, read_boxes
    from miner.show import Panel, render

    image_id = args.image_id
    if args.clear and not args.model:
        raise UsageError("--clear needs --model (the CLEAR picture is drawn from the model's class maps)")
    mined = read_boxes(args.boxes)
    sel = mined.image_id.astype(str) == image_id
    path, gt_rows = None, []
    if args.archive:
        archive = read_archive(args.archive, config=ArchiveConfig(allow_outside_archive=args.allow_outside_archive))
        record = next((r for r in archive.records if r.image_id == image_id), None)
        if record is None:
            raise UsageError(f"{args.archive} has no image {image_id!r}")
        try:  # the archive-root rule (miner.data.confine); the resolved path is the one opened, here and below
            path = check_inside(record.path, record.root)
        except ImageError as err:
            raise ArchiveError(f"{args.archive}: image {printable(image_id)} is not drawn: {printable(err.detail)}"
                               ) from None
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
    clear_panel = None
    note = "boxes only: give --model for the heatmap"
    if args.model:
        from miner.cli._maps import default_method, fused_maps, mining_config, open_checkpoint

        model, settings, size = open_checkpoint(args.model, size=args.size)
        known = [f for f in findings if f in model.classes]
        method = args.method or default_method(model, settings)
        config = mining_config(settings, args.steps)
        if known:
            _, fused, _ = fused_maps(model, [path], input_size=size, classes=known, method=method, config=config,
                                     stage_weights=settings.stage_weights)
            heat = {f: fused[0, i].numpy() for i, f in enumerate(known)}
        note = f"H_f, {method}, T={config.steps}"
        if args.clear:
            import torch

            from miner.cam import class_maps
            from miner.data import to_model_input

            pixels = torch.from_numpy(to_model_input(image, size)[None])
            _, maps = class_maps(model, pixels, method=method, stage_weights=settings.stage_weights)
            clear_panel = Panel(finding="CLEAR", clear=maps[0].float().numpy(), clear_names=tuple(model.classes),
                                note=f"{method}, {len(model.classes)} classes")

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
    if clear_panel is not None:
        panels.append(clear_panel)
    picture = render(image, panels, panel_size=args.panel_size, title=f"{image_id}  ({width}x{height})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), picture):
        raise UsageError(f"--out: cannot write {out} (use a .png name in a writable folder)")
    n_mined = int(sel.sum())
    print(f"{out}: {image_id}, {len(findings)} finding(s), {n_mined} mined box(es), {len(gt_rows)} ground-truth "
          f"box(es){', heatmaps from ' + args.model if args.model else ''}"
          f"{', CLEAR picture of ' + str(len(clear_panel.clear_names)) + ' findings' if clear_panel else ''}")
    return 0

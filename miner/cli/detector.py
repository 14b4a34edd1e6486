"""`miner detector train | predict | refine`: a detector trained on mined boxes, its boxes, one refinement round."""
from __future__ import annotations

import argparse
import sys

from miner.cli._options import BATCH, FRACTION, RANK, SEED, SIDE, integer, out_folder, real

HELP = "train a detector on mined boxes (miner labels output), predict boxes with it, refine mined boxes by it"
DESCRIPTION = """\
A detector (torchvision's Faster R-CNN with an FPN on the ResNet stages of a product classifier; needs the
optional extra: pip install 'attention-miner[detector]') trained on what miner labels writes:

  miner detector train LABELS --to DIR      LABELS = a miner labels folder (YOLO data.yaml or COCO
      annotations.json); DIR gets detector.pt, last.pt (after every epoch), log.jsonl and train.json; the same
      command again resumes.
  miner detector predict DETECTOR ARCHIVE --out OUT    the detector's boxes on an archive, written as a mining
      job's output (miner eval, labels and report read it unchanged).
  miner detector refine MINED PREDICTED --out OUT      mined boxes fused with the detector's where the two agree.

Details: docs/detector.md, miner/detector/.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    from miner.config import DetectorTrainConfig

    cfg = DetectorTrainConfig()
    t = sub.add_parser("train", help="train a detector on a miner labels folder",
                       description="Train the detector on a label set (miner labels --format yolo or coco) into DIR. "
                                   "Running the same command again resumes after the last finished epoch.")
    t.add_argument("labels", metavar="LABELS", help="a miner labels folder (data.yaml or annotations.json)")
    t.add_argument("--to", required=True, metavar="DIR", type=out_folder, help="folder to write (new, or this "
                   "training's to resume)")
    t.add_argument("--split", default=cfg.split, help="which images to train on: train (data.yaml's train list, "
                   "or annotations_train.json), all, or a split name (default: %(default)s)")
    t.add_argument("--archive", default=None, help="the archive's folder: an image resolving outside it is refused")
    t.add_argument("--backbone", default=cfg.backbone, help="classifier checkpoint whose ResNet stages start the "
                   "trunk, 'embedded' (the product's model) or 'none' (from scratch) (default: %(default)s)")
    t.add_argument("--epochs", type=integer(1, 10_000), default=cfg.epochs, help="epochs (default: %(default)s)")
    t.add_argument("--batch", type=BATCH, default=cfg.batch, help="images per step (default: %(default)s)")
    t.add_argument("--lr", type=real(0.0, 10.0, lo_open=True), default=cfg.lr,
                   help="peak learning rate of SGD (default: %(default)s)")
    t.add_argument("--size", type=SIDE, default=cfg.size, help="input side in pixels (default: %(default)s)")
    t.add_argument("--seed", type=SEED, default=cfg.seed, help="random seed (default: %(default)s)")
    t.add_argument("--fpn-channels", type=integer(8, 1024), default=cfg.fpn_channels,
                   help="channels of the feature pyramid (default: %(default)s)")
    t.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    t.add_argument("--overwrite", action="store_true", help="start afresh (replaces only a training's files)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(_parser=t)  # usage errors name `miner detector train`

    p = sub.add_parser("predict", help="the detector's boxes on an archive, as a mining job's output",
                       description="Run a trained detector over an archive and write its boxes in the Parquet "
                                   "contract of miner mine (OUT/boxes, errors, images, _manifest.json).")
    p.add_argument("detector", metavar="DETECTOR", help="detector.pt of miner detector train")
    p.add_argument("archive", metavar="ARCHIVE", help="the archive (any kind miner mine reads)")
    p.add_argument("--out", required=True, type=out_folder, help="output folder (new or empty)")
    p.add_argument("--split", default=None, help="only this split of the archive (default: every image)")
    p.add_argument("--classes", default="labels", choices=("labels", "all"),
                   help="boxes of the image's labelled findings only (labels, as miner mine) or of every finding "
                        "(default: %(default)s)")
    p.add_argument("--max-boxes", type=RANK, default=3, help="boxes per image and finding (default: %(default)s)")
    p.add_argument("--min-score", type=FRACTION, default=0.05, help="lowest detector score kept "
                   "(default: %(default)s)")
    p.add_argument("--batch", type=BATCH, default=8, help="images per model call (default: %(default)s)")
    p.add_argument("--uncertain", default="ignore", choices=("ignore", "zeros", "ones"),
                   help="CheXpert's uncertain labels (default: %(default)s)")
    p.add_argument("--allow-outside-archive", action="store_true",
                   help="read image files that resolve outside the archive's root too")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(_parser=p)

    r = sub.add_parser("refine", help="mined boxes fused with the detector's where they agree",
                       description="One refinement round: each mined box is fused with the detector's box of the "
                                   "same image and finding that overlaps it most (IoU >= --agree-iou): each "
                                   "coordinate the weighted mean --weight x detector + (1 - --weight) x mined; mined "
                                   "boxes without one are kept, detector boxes without a mined partner left out. "
                                   "Written as a new output; its manifest names both inputs.")
    r.add_argument("mined", metavar="MINED", help="OUT of miner mine")
    r.add_argument("predicted", metavar="PREDICTED", help="OUT of miner detector predict on the same archive")
    r.add_argument("--out", required=True, type=out_folder, help="output folder (new or empty)")
    r.add_argument("--agree-iou", type=FRACTION, default=0.1,
                   help="IoU at which a detector box and a mined box agree (default: %(default)s)")
    r.add_argument("--weight", type=FRACTION, default=0.5,
                   help="the detector box's weight in the fused box (1: it replaces the mined box; default: "
                        "%(default)s)")
    r.add_argument("--overwrite", action="store_true", help="replace an earlier output in OUT")
    r.set_defaults(_parser=r)


def _log(line: str) -> None:
    print(f"miner detector: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from miner.detector import require_torchvision

    if args.action != "refine":
        require_torchvision()
    if args.action == "train":
        from miner.config import DetectorTrainConfig
        from miner.detector.train import train_detector

        cfg = DetectorTrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr, size=args.size, seed=args.seed,
                                  flip=not args.no_flip, fpn_channels=args.fpn_channels, backbone=args.backbone,
                                  split=args.split)
        result = train_detector(args.labels, args.to, config=cfg, archive=args.archive, overwrite=args.overwrite,
                                progress=not args.no_progress, log=_log if args.no_progress else (lambda line: None))
        print(result.line())
    elif args.action == "predict":
        from miner.detector.predict import predict_archive

        result = predict_archive(args.detector, args.archive, args.out, split=args.split, classes=args.classes,
                                 max_boxes=args.max_boxes, min_score=args.min_score, batch=args.batch,
                                 uncertain=args.uncertain, allow_outside_archive=args.allow_outside_archive,
                                 overwrite=args.overwrite, progress=not args.no_progress)
        print(result.line())
    else:
        from miner.detector.predict import refine_outputs

        result = refine_outputs(args.mined, args.predicted, args.out, agree_iou=args.agree_iou, weight=args.weight,
                                overwrite=args.overwrite, log=_log)
        print(result.line("miner detector refine"))
    return 0


def resume_hint(args: argparse.Namespace) -> str:
    if getattr(args, "action", None) == "train":
        return "run the same command again to resume after the last finished epoch"
    return "run the same command again with --overwrite"

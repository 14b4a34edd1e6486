"""`miner calibrate CKPT ARCHIVE... --out CKPT2`: per-finding box levels fixed on validation images with boxes."""
from __future__ import annotations

import argparse
import os

HELP = "fix per-finding box levels on validation images with boxes; write them into a checkpoint"
DESCRIPTION = (
    "Score CKPT's boxes (its own recipe settings, the mining job's code) on the labelled images with ground-truth "
    "boxes of ARCHIVE(s) at each candidate level of the 'steps' box rule, pick the best level per finding (Acc at "
    "T(IoU) = --iou, every box), and write a copy of the checkpoint that records them (boxes.finding_levels, used "
    "by miner mine, miner export and every backend). Use images the model was not trained on and that you will "
    "not report results on: a validation archive, or --split val for the training run's held-out patients."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from miner.calibrate import LEVELS

    parser.add_argument("checkpoint", metavar="CKPT", help="a checkpoint from miner train (.pt)")
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE", help="archive(s) with ground-truth boxes")
    parser.add_argument("--out", required=True, metavar="CKPT2", help="the calibrated checkpoint (may be CKPT)")
    parser.add_argument("--split", default=None, choices=("val", "train", "test"),
                        help="use one split of each archive (val: the training run's held-out patients, as "
                             "recorded in CKPT); default: every image")
    parser.add_argument("--recipe", default=None,
                        help="calibrate (and record) this named recipe's settings instead of the model's own")
    parser.add_argument("--method", default=None,
                        help="class-map method to calibrate (and record); default: the model's own")
    parser.add_argument("--iou", type=float, default=0.3, help="T(IoU) of the Acc that decides (default %(default)s)")
    parser.add_argument("--min-boxes", type=int, default=10,
                        help="findings with fewer ground-truth boxes keep the recipe's level (default %(default)s)")
    parser.add_argument("--levels", default=",".join(f"{v:g}" for v in LEVELS),
                        help="candidate levels, fractions of a step's peak (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from miner.backends import open_backend
    from miner.calibrate import calibrate_levels, load_boxed_set, write_calibrated
    from miner.errors import UsageError
    from miner.models.checkpoint import read_checkpoint

    try:
        levels = tuple(float(v) for v in args.levels.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--levels: expected numbers like 0.5,0.7,0.9, got {args.levels!r}") from None
    if not levels or any(not 0 < v <= 1 for v in levels):
        raise UsageError(f"--levels must lie in (0, 1], got {args.levels!r}")
    if not 0 < args.iou <= 1:
        raise UsageError(f"--iou must lie in (0, 1], got {args.iou}")
    record = read_checkpoint(args.checkpoint)
    config = record.get("config") or {}
    backend = open_backend(args.checkpoint, backend="torch", device="cpu", method=args.method)
    data = load_boxed_set(args.archives, backend.meta.input_size, split=args.split, batch_size=args.batch_size,
                          val=(float(config.get("val_fraction", 0.1)), int(config.get("seed", 0))))
    result = calibrate_levels(backend, data, levels=levels, iou=args.iou, min_boxes=args.min_boxes,
                              recipe=args.recipe)
    print(f"Acc at T(IoU)={args.iou:g} (every box) per candidate level, {data.images} images:")
    for line in result.lines():
        print("  " + line)
    path = write_calibrated(args.checkpoint, args.out, result,
                            source={"archives": [str(a) for a in args.archives], "split": args.split,
                                    "images": data.images})
    chosen = ", ".join(f"{f} {v:g}" for f, v in result.levels.items()) or "none (too few boxes)"
    print(f"miner calibrate: wrote {path} with box levels {chosen}", flush=True)
    return 0

"""`miner calibrate CKPT ARCHIVE... --out CKPT2`: per-finding box levels fixed on validation images with boxes."""
from __future__ import annotations

import argparse
import os

from miner.cli._options import BATCH, COUNT, OPEN_FRACTION, integer, numbers, out_file, real

HELP = "fix per-finding box levels on validation images with boxes; write them into a checkpoint"
DESCRIPTION = (
    "Score CKPT's boxes (its own recipe settings, the mining job's code) on the labelled images with ground-truth "
    "boxes of ARCHIVE(s) at each candidate level of the 'steps' box rule, fit each finding's box shape (a scale "
    "and shift of its boxes) at each level, pick the best level and shape per finding (Acc at T(IoU) = --iou, "
    "every box), and write a copy of the checkpoint that records them (boxes.finding_levels, "
    "boxes.finding_shapes, used by miner mine, miner export and every backend). Use images the model was not "
    "trained on and that you will "
    "not report results on: a validation archive, or --split val for the training run's held-out patients. "
    "The same images choose, per finding, the weight of the coarsest backbone stage in its class map "
    "(--coarse-weights; recorded as stage_weights, every backend and the ONNX export apply them). "
    "With --input-sizes, the same images also choose the image size the model runs at (each size with its own "
    "levels; the highest macro mean Acc wins) and the copy records it as its input_size."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from miner.calibrate import COARSE_WEIGHTS, LEVELS

    parser.add_argument("checkpoint", metavar="CKPT", help="a checkpoint from miner train (.pt)")
    parser.add_argument("archives", nargs="+", metavar="ARCHIVE", help="archive(s) with ground-truth boxes")
    parser.add_argument("--out", required=True, metavar="CKPT2", type=out_file,
                        help="the calibrated checkpoint (may be CKPT)")
    parser.add_argument("--split", default=None, choices=("val", "train", "test"),
                        help="use one split of each archive (val: the training run's held-out patients, as "
                             "recorded in CKPT); default: every image")
    parser.add_argument("--recipe", default=None,
                        help="calibrate (and record) this named recipe's settings instead of the model's own")
    parser.add_argument("--method", default=None,
                        help="class-map method to calibrate (and record); default: the model's own")
    parser.add_argument("--iou", type=OPEN_FRACTION, default=0.3,
                        help="T(IoU) of the Acc that decides (default %(default)s)")
    parser.add_argument("--min-boxes", type=COUNT, default=10,
                        help="findings with fewer ground-truth boxes keep the recipe's level (default %(default)s)")
    parser.add_argument("--levels", type=numbers(OPEN_FRACTION), default=",".join(f"{v:g}" for v in LEVELS),
                        help="candidate levels, fractions of a step's peak (default %(default)s)")
    parser.add_argument("--no-shapes", action="store_true",
                        help="levels only: no per-finding box shapes (scale and shift of each finding's boxes, "
                             "fitted with the levels; docs/results/box-quality.md)")
    parser.add_argument("--coarse-weights", type=numbers(real(0.0, 4.0)),
                        default=",".join(f"{v:g}" for v in COARSE_WEIGHTS), metavar="W,W,...",
                        help="candidate weights of the coarsest backbone stage's channels in each finding's map "
                             "(the MSA's stride-32 part; 1 = the maps as trained); each finding takes the one whose "
                             "boxes find the most of these images' boxes, recorded as stage_weights "
                             "(default %(default)s; 1 keeps the maps as trained)")
    parser.add_argument("--input-sizes", type=numbers(integer(32, 4096)), default=None, metavar="N,N,...",
                        help="candidate square image sizes to run the model at, e.g. 256,288,320 (fully "
                             "convolutional models only); the one with the best macro Acc on these images (see "
                             "--size-tolerance) is recorded as the model's input_size. Default: the checkpoint's own "
                             "size only. Time grows with the pixels")
    parser.add_argument("--size-tolerance", type=real(0.0, 1.0, hi_open=True), default=0.0,
                        help="take the smallest size within this macro Acc of the best, for speed (default "
                             "%(default)s: the best)")
    parser.add_argument("--no-regressors", action="store_true",
                        help="no box regressors: keep the levels' and shapes' boxes (by default each finding's "
                             "boxes are regressed from its maps at several levels and scored by their expected IoU, "
                             "fitted on the same images at the chosen size; miner.box_regression)")
    parser.add_argument("--no-refine", action="store_true",
                        help="box regressors without their refinement (each lesion's box moved and scaled where the "
                             "image and the map fit it best, then scored; miner.box_regression)")
    parser.add_argument("--weights-by", choices=("boxes", "levels"), default="levels",
                        help="what chooses each finding's --coarse-weights weight: 'boxes' the regressed and "
                             "refined boxes' out-of-fold Acc at T(IoU) 0.5, fitted at every candidate weight (needs "
                             "the refinement); 'levels' (the default) the levels' and shapes' Acc at --iou")
    parser.add_argument("--batch-size", type=BATCH, default=32)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from miner.backends.torch_backend import TorchBackend
    from miner.calibrate import calibrate_input_size, calibrate_maps, load_boxed_set, write_calibrated
    from miner.errors import UsageError
    from miner.models.checkpoint import read_checkpoint
    from miner.models.meta import parse_size

    try:
        levels = tuple(float(v) for v in args.levels.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--levels: expected numbers like 0.5,0.7,0.9, got {args.levels!r}") from None
    if not levels or any(not 0 < v <= 1 for v in levels):
        raise UsageError(f"--levels must lie in (0, 1], got {args.levels!r}")
    if not 0 < args.iou <= 1:
        raise UsageError(f"--iou must lie in (0, 1], got {args.iou}")
    try:
        weights = tuple(dict.fromkeys(float(v) for v in args.coarse_weights.split(",") if v.strip()))
    except ValueError:
        raise UsageError(f"--coarse-weights: expected numbers like 1,0.5,0.25, got {args.coarse_weights!r}") from None
    if not weights or any(not 0 <= v < float("inf") for v in weights):
        raise UsageError(f"--coarse-weights must be numbers >= 0, got {args.coarse_weights!r}")
    sizes = parse_sizes(args.input_sizes)
    by_boxes = args.weights_by == "boxes"
    if by_boxes and (args.no_regressors or args.no_refine):
        raise UsageError("--weights-by boxes chooses the stage weights by the refined boxes: it needs the box "
                         "regressors and their refinement (drop --no-regressors / --no-refine, or pass "
                         "--weights-by levels)")
    if not 0 <= args.size_tolerance < 1:
        raise UsageError(f"--size-tolerance must lie in [0, 1), got {args.size_tolerance}")
    record = read_checkpoint(args.checkpoint)
    config = record.get("config") or {}
    val = (float(config.get("val_fraction", 0.1)), int(config.get("seed", 0)))
    source = {"archives": [str(a) for a in args.archives], "split": args.split}
    options = dict(levels=levels, iou=args.iou, min_boxes=args.min_boxes, recipe=args.recipe,
                   shapes=not args.no_shapes, coarse_weights=weights)

    def backend_at(size, stage_weights):  # size None: the checkpoint's own
        return TorchBackend.from_checkpoint(args.checkpoint, device="cpu", method=args.method,
                                            input_size=None if size is None else (size, size),
                                            stage_weights=stage_weights)

    def data_at(size):  # N or (H, W)
        data = load_boxed_set(args.archives, parse_size(size), split=args.split, batch_size=args.batch_size, val=val)
        source["images"] = data.images
        return data

    def show(size, result):
        where = f" at {size} px" if size else ""
        print(f"Acc at T(IoU)={args.iou:g} (every box) per candidate level{where}, {source['images']} images:")
        for line in result.lines():
            print("  " + line)
        if size:
            print(f"  macro mean over the calibrated findings: {result.macro:.3f} "
                  f"(plain boxes at these levels: {result.plain_macro:.3f})", flush=True)

    if sizes is None:
        size = backend_at(None, {}).meta.input_size
        result = calibrate_maps(lambda stage_weights: backend_at(None, stage_weights), data_at(size), **options)
        show(None, result)
        search = None
    else:
        size = parse_size(record.get("trained_input_size") or record.get("input_size"))
        trained = size[0] if size and size[0] == size[1] else sizes[0]
        search = calibrate_input_size(
            backend_at, data_at, sizes, trained=trained, tolerance=args.size_tolerance, on_size=show, **options)
        result = search.calibration
        print(f"input size on these images (macro mean Acc at T(IoU)={args.iou:g} over the calibrated findings):")
        for line in search.lines():
            print("  " + line)
    regression = None
    chosen_size = search.size if search is not None else None
    if by_boxes:
        from dataclasses import replace

        from miner.calibrate import calibrate_box_weights

        if search is not None:  # without a search, `size` is already the checkpoint's own
            size = (search.size, search.size)
        result, regression = calibrate_box_weights(lambda stage_weights: backend_at(chosen_size, stage_weights),
                                                   data_at(size), result, min_boxes=args.min_boxes)
        if search is not None:  # the size search's chosen calibration, now at the weights the boxes chose
            search = replace(search, results={**search.results, search.size: result})
        lines = result.box_weight_lines()
        if lines:
            print(lines[0])
            for line in lines[1:]:
                print("  " + line)
    elif not args.no_regressors:
        from miner.calibrate import calibrate_regressors

        backend = backend_at(chosen_size, result.stage_weights)
        size = backend.meta.input_size
        regression = calibrate_regressors(backend, data_at(size), result, min_boxes=args.min_boxes,
                                          refine=not args.no_refine)
    if regression is not None:
        print(f"box regressors at {size} px (validation Acc, in-sample):")
        for line in regression.lines():
            print("  " + line)
    path = write_calibrated(args.checkpoint, args.out, result, source=source, sizes=search, regression=regression)
    chosen = ", ".join(f"{f} {v:g}" + (" (shaped)" if f in result.shapes else "")
                       + "".join(f" ({s} x{w:g})" for s, w in result.stage_weights.get(f, {}).items())
                       for f, v in result.levels.items()) or "none (too few boxes)"
    at = f" at input size {search.size}" if search is not None else ""
    print(f"miner calibrate: wrote {path} with box levels {chosen}{at}", flush=True)
    return 0


def parse_sizes(text):
    """--input-sizes "256,288,320" -> (256, 288, 320); None for None."""
    from miner.errors import UsageError

    if text is None:
        return None
    try:
        sizes = tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise UsageError(f"--input-sizes: expected whole numbers like 256,288,320, got {text!r}") from None
    if not sizes or any(not 32 <= v <= 4096 for v in sizes):
        raise UsageError(f"--input-sizes: sizes must lie in 32..4096 px, got {text!r}")
    return sizes

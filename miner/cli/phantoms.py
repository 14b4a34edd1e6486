"""`miner phantoms OUT`: write a synthetic archive in the ChestX-ray14 release layout."""
from __future__ import annotations

import argparse
import sys
import time

from miner.cli._options import FRACTION, IMAGES, SEED, SIDE, out_folder, real
from miner.config import PhantomConfig

HELP = "write a phantom archive (synthetic chest X-rays with known lesions) in the ChestX-ray14 layout"
DESCRIPTION = (
    "Write OUT/images/*.png, Data_Entry_2017.csv, BBox_List_2017.csv (one box per lesion), train_val_list.txt "
    "and test_list.txt, exactly as the ChestX-ray14 release lays them out. Same seed, same bytes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PhantomConfig()
    parser.add_argument("out", metavar="OUT", type=out_folder, help="new (or empty) folder to write the archive to")
    parser.add_argument("--images", type=IMAGES, default=d.images, help=f"number of images (default {d.images})")
    parser.add_argument("--size", type=SIDE, default=d.size, help=f"image side in pixels (default {d.size})")
    parser.add_argument("--seed", type=SEED, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument("--masks", action="store_true",
                        help="also write masks/<image stem>_<Finding>.png (255 on the finding's lesions)")
    parser.add_argument("--real-background", action="store_true",
                        help="draw on the pydicom-data chest radiograph (randomly cropped and warped) instead of "
                             "the synthetic chest; needs the pydicom-data package")
    parser.add_argument("--findings", default=None,
                        help="comma-separated findings to draw (default: all eight: " + ",".join(d.findings) + ")")
    parser.add_argument("--no-finding", type=FRACTION, default=d.no_finding,
                        help=f"fraction of images without findings (default {d.no_finding})")
    parser.add_argument("--contrast", type=real(0.0, 10.0, lo_open=True), default=d.contrast,
                        help=f"lesion visibility scale (default {d.contrast}; lower is harder)")
    parser.add_argument("--test-fraction", type=FRACTION, default=d.test_fraction,
                        help=f"fraction of patients in test_list.txt (default {d.test_fraction})")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty OUT (replaces its images)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from miner.errors import UsageError
    from miner.phantoms import make_phantoms

    for name in ("no_finding", "test_fraction"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must be within [0, 1], got {value}")
    if args.contrast <= 0:
        raise UsageError(f"--contrast must be positive, got {args.contrast}")
    findings = None
    if args.findings is not None:
        findings = tuple(f.strip() for f in args.findings.split(",") if f.strip())
    config = replace(PhantomConfig(), no_finding=args.no_finding, contrast=args.contrast,
                     test_fraction=args.test_fraction)
    start = time.perf_counter()
    archive = make_phantoms(args.out, images=args.images, size=args.size, seed=args.seed, masks=args.masks,
                            real_background=args.real_background, findings=findings, config=config,
                            overwrite=args.overwrite, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    positives = sum(1 for r in archive.records if r.labels)
    train = sum(1 for r in archive.records if r.split == "train")
    print(f"wrote {len(archive)} images ({positives} with findings, {len(archive.boxes)} boxes; "
          f"{train} train / {len(archive) - train} test) of {args.size}x{args.size} to {args.out} "
          f"in {seconds:.1f} s")
    return 0

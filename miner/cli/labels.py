"""`miner labels OUT --format coco|yolo --to DIR`: pseudo-labels for detector training from mined boxes."""
from __future__ import annotations

import argparse

from miner.cli._options import FRACTION, RANK, out_folder

HELP = "export mined boxes as pseudo-labels for detector training: COCO JSON or the YOLO layout"
DESCRIPTION = """\
Write the boxes of a finished mining job (OUT of miner mine) as detector training labels in DIR:

  --format coco: DIR/annotations.json (and annotations_<split>.json per archive split): images with their
      original width/height, categories = the findings, bbox = x, y, w, h in pixels, score and rank kept;
  --format yolo: DIR/images/ (links to the archive's files, nothing copied), DIR/labels/<name>.txt (class cx cy
      w h, normalised), DIR/images.txt and <split>.txt lists, DIR/data.yaml (names of the classes).

Boxes with score >= --min-score and rank <= --max-rank are kept. A mined image without a box of an exported
finding, and not labelled with one, is a negative (no annotation; an empty label file). Images whose boxes the
filters removed, or that are labelled with an exported finding without a box, are left out (DIR/skipped.csv);
error rows are left out (DIR/errors.csv). DIR/miner-labels.json lists the files written: --overwrite replaces
only those (any other file in DIR is kept). Details: miner/labels.py.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from miner.config import LabelsConfig

    cfg = LabelsConfig()
    parser.add_argument("out", metavar="OUT", help="a finished mining job's output folder")
    parser.add_argument("--format", required=True, choices=("coco", "yolo"), help="label format")
    parser.add_argument("--to", required=True, metavar="DIR", type=out_folder, help="folder to write (new or empty)")
    parser.add_argument("--min-score", type=FRACTION, default=cfg.min_score, metavar="S",
                        help="keep boxes with score (mean fused heatmap in the box) >= S (default: %(default)s)")
    parser.add_argument("--max-rank", type=RANK, default=cfg.max_rank, metavar="K",
                        help="keep boxes of rank <= K per image and finding (default: %(default)s)")
    parser.add_argument("--findings", default=None,
                        help="comma-separated findings to export (default: every class of the model)")
    parser.add_argument("--filtered", default=cfg.filtered, choices=("skip", "negative"),
                        help="images whose boxes the filters removed: leave out (skip) or write as negatives "
                             "(default: %(default)s)")
    parser.add_argument("--archive", default=None,
                        help="where the mined archive is now (default: the path in OUT/_manifest.json)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in DIR (only the files it wrote; other files are kept)")
    parser.add_argument("--allow-outside-archive", action="store_true",
                        help="export images whose files resolve outside the archive's root too (symbolic links "
                             "followed; default: as the job read the archive, else they are left out: "
                             "skipped.csv)")


def run(args: argparse.Namespace) -> int:
    from miner.config import LabelsConfig
    from miner.labels import export_labels

    findings = [f for f in args.findings.split(",") if f.strip()] if args.findings else None
    config = LabelsConfig(min_score=args.min_score, max_rank=args.max_rank, filtered=args.filtered)
    result = export_labels(args.out, args.to, format=args.format, findings=findings, config=config,
                           archive=args.archive, overwrite=args.overwrite,
                           allow_outside_archive=args.allow_outside_archive)
    print(result.line())
    return 0

"""`miner report OUT`: a static HTML report of a mining job (index.html, a page per finding, pictures, plots)."""
from __future__ import annotations

import argparse

from miner.cli._options import COUNT, SEED, integer, out_folder
from miner.config import ReportConfig

HELP = "write a static HTML report of a mining job: findings, galleries, plots, evaluation, errors (offline)"
DESCRIPTION = """\
Write OUT/report/index.html (or --to DIR) for the job output folder OUT: the job (archive, model, options,
counts, timings, versions; a job still running or stopped says so, with shards done / planned), per finding a
page with a score histogram, boxes per image, box sizes and two galleries (top-scoring boxes and a random
sample; each thumbnail links to a full-size picture), miner eval's tables (Acc-AFP, COCO AP/AR) and an
Acc-vs-T(IoU) plot where the archive has ground-truth boxes, and the error rows. With --model the pictures show
the fused heatmap H_f and the CLEAR picture (dominant finding as hue, its response as brightness). The report
opens from the file system with no server and no network, runs no scripts, and shows every name from the archive
as text, control and bidirectional characters escaped (\\u202e). Every Parquet part and the manifest are checked
against the output contract first (a damaged one: one line naming it, exit 2). DIR/report.json lists the files
the report wrote; a later report into DIR replaces those only.
"""

_D = ReportConfig()
#: boxes shown per finding (each a thumbnail and a picture)
SHOWN = integer(0, 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="the job's output folder (written by miner mine or miner demo)")
    parser.add_argument("--archive", default=None, help="the job's archive (default: the path in the manifest)")
    parser.add_argument("--model", default=None, help="model file: draw the fused heatmaps and CLEAR pictures")
    parser.add_argument("--to", default=None, metavar="DIR", type=out_folder,
                        help="report folder (default: OUT/report): new, empty or an earlier report's, whose files "
                             "are replaced (report.json lists them; other files are kept)")
    parser.add_argument("--top", type=SHOWN, default=_D.top,
                        help="top-scoring boxes per finding (default: %(default)s)")
    parser.add_argument("--sample", type=SHOWN, default=_D.sample,
                        help="randomly sampled boxes per finding (default: %(default)s)")
    parser.add_argument("--seed", type=SEED, default=_D.seed, help="seed of the sample (default: %(default)s)")
    parser.add_argument("--thumb-size", type=integer(32, 2048), default=_D.thumb_size,
                        help="thumbnail panel side in pixels (default: %(default)s)")
    parser.add_argument("--picture-size", type=integer(64, 8192), default=_D.picture_size,
                        help="full-size picture panel side in pixels (default: %(default)s)")
    parser.add_argument("--max-errors", type=COUNT, default=_D.max_errors,
                        help="error rows listed (default: %(default)s; the counts by kind cover all)")
    parser.add_argument("--allow-outside-archive", action="store_true",
                        help="draw images whose files resolve outside the archive's root (symbolic links "
                             "followed; default: as the job read the archive, else their gallery entry says why "
                             "there is no picture)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from miner.report import write_report

    config = replace(_D, top=args.top, sample=args.sample, seed=args.seed, thumb_size=args.thumb_size,
                     picture_size=args.picture_size, max_errors=args.max_errors)
    result = write_report(args.out, archive=args.archive, model=args.model, to=args.to, config=config,
                          allow_outside_archive=args.allow_outside_archive)
    for text in result.notices:
        print(f"miner report: note: {text}")
    print(result.line(), flush=True)
    return 0

"""`miner inspect ARCHIVE`: what an archive holds, and which of its files are missing or unreadable."""
from __future__ import annotations

import argparse
import json
import sys

from miner.cli._options import THREADS, integer

HELP = "summarise an archive: counts per finding and split, boxes, image sizes, missing or unreadable files"
DESCRIPTION = (
    "Read an archive (release folder, Data_Entry CSV, the label file or folder of VinDr-CXR, RSNA Pneumonia, "
    "SIIM-ACR, CheXpert, PadChest or Google's relabels, CSV/Parquet manifest, or image folder): what kind it is and "
    "what its label files hold (readers, uncertainty policy, masks, ...), then images per "
    "finding and split, No Finding images, boxes per finding, image sizes (from file headers) and every file that "
    "is missing, empty, truncated, corrupt or of an unsupported format, or resolves outside the archive's root "
    "(symbolic links followed; never opened: see --allow-outside-archive). An image listed twice in a label file is "
    "counted once (its first row) and named. Exits 0 when bad files are found (they are listed); 2 when the "
    "archive itself cannot be read."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from miner.config import UNCERTAIN_POLICIES

    parser.add_argument("archive", metavar="ARCHIVE", help="release folder, Data_Entry CSV, manifest or image folder")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--deep", action="store_true",
                        help="decode every checked file fully (slower; also finds corrupt pixel data)")
    parser.add_argument("--sample", type=integer(1, 100_000_000), default=None, metavar="N",
                        help="check only N files drawn at random (counts still cover the whole archive)")
    parser.add_argument("--workers", type=THREADS, default=8, help="threads checking files (default 8)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class list (default: the archive's classes.txt, else ChestX-ray14; "
                             "for the other archive kinds the vocabulary findings they name)")
    parser.add_argument("--uncertain", default=None, choices=UNCERTAIN_POLICIES,
                        help="CheXpert's uncertain labels: ignore (unknown), zeros or ones (default: ignore)")
    parser.add_argument("--allow-outside-archive", action="store_true",
                        help="check image files that resolve outside the archive's root too (symbolic links "
                             "followed); without it they are listed as outside_archive and never opened")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    return "\n".join(lines)


#: labels outside the class list listed one per row (PadChest has about 150 such terms; the rest are summed up)
MAX_OTHER_ROWS = 10


def format_report(report: dict) -> str:
    out = [f"archive {report['archive']} ({report.get('kind', report['source'])}): {report['images']} images, "
           f"{report['boxes']} boxes on {report['images_with_boxes']} images"]
    if report.get("label_files"):
        out.append("label files: " + ", ".join(report["label_files"]))
    out.append(f"root: {report['root']} (image files must resolve under it)" if report.get("root")
               else "root: none (--allow-outside-archive: image files may resolve anywhere)")
    duplicates = report.get("duplicates") or {}
    if duplicates.get("images"):
        shown = ", ".join(f"{k} x{v}" for k, v in duplicates["first"].items())
        more = duplicates["images"] - len(duplicates["first"])
        out.append(f"image ids listed more than once (read once, from the first row): {duplicates['images']} "
                   f"({duplicates['rows dropped']} rows dropped): {shown}" + (f", ... {more} more" if more > 0 else ""))
    for key, value in (report.get("details") or {}).items():
        shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        out.append(f"{key}: {shown}")
    if report.get("masks"):
        out.append(f"run-length masks: {report['masks']} image-findings (PxAP in miner eval --model)")
    if report.get("unknown_labels"):
        out.append(f"unknown labels (left out of label scores): {report['unknown_labels']}")
    splits = list(report["splits"])
    if report["labelled"]:
        classes = set(report.get("classes") or [])
        inside = [(n, v) for n, v in report["findings"].items() if n in classes or v["boxes"]]
        others = [(n, v) for n, v in report["findings"].items() if not (n in classes or v["boxes"])]
        others.sort(key=lambda item: -item[1]["images"])
        rows = [[name, v["images"], *(v.get(s, 0) for s in splits), v["boxes"], v["images_with_boxes"]]
                for name, v in inside + others[:MAX_OTHER_ROWS]]
        if len(others) > MAX_OTHER_ROWS:
            rest = others[MAX_OTHER_ROWS:]
            rows.append([f"({len(rest)} more labels outside the class list; images summed)",
                         sum(v["images"] for _, v in rest),
                         *("" for _ in splits), "", ""])
        nf = report["no_finding"]
        rows.append(["No Finding", nf["images"], *(nf.get(s, 0) for s in splits), "", ""])
        rows.append(["(all images)", report["images"], *(report["splits"][s] for s in splits), report["boxes"],
                     report["images_with_boxes"]])
        out.append(_table(rows, ["finding", "images", *splits, "boxes", "boxed images"]))
    else:
        out.append("unlabelled: " + ", ".join(f"{s} {n}" for s, n in report["splits"].items()))
    if report["boxes_without_image"]:
        out.append(f"boxes naming an image not in the archive: {report['boxes_without_image']}")
    if report["boxes_outside_image"]:
        out.append(f"boxes reaching outside their image: {report['boxes_outside_image']}")
    sizes = report["sizes"]
    if sizes["distinct"]:
        shown = ", ".join(f"{s['height']}x{s['width']} ({s['images']})" for s in sizes["distinct"][:6])
        more = len(sizes["distinct"]) - 6
        out.append("image sizes (HxW): " + shown + (f", ... {more} more" if more > 0 else "")
                   + f"; min {sizes['min'][0]}x{sizes['min'][1]}, max {sizes['max'][0]}x{sizes['max'][1]}")
    if sizes["unknown"]:
        out.append(f"image sizes not in the header: {sizes['unknown']}")
    if report["formats"]:
        out.append("formats: " + ", ".join(f"{k} {v}" for k, v in report["formats"].items()))
    counts = report["problem_counts"]
    total = sum(counts.values())
    out.append(f"files checked: {report['checked']} ({report['check']}); "
               + (f"{total} bad: " + ", ".join(f"{k} {v}" for k, v in counts.items()) if total else "none bad"))
    for p in report["problems"]:
        out.append(f"  {p['kind']:<15} {p['image_id']}  {p['path']}" + (f"  ({p['detail']})" if p["detail"] else ""))
    if total > len(report["problems"]):
        out.append(f"  ... {total - len(report['problems'])} more (see --json)")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from miner.data import read_archive
    from miner.data.archives.survey import survey_archive
    from miner.errors import UsageError

    if args.sample is not None and args.sample < 1:
        raise UsageError(f"--sample must be at least 1, got {args.sample}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    from miner.config import ArchiveConfig

    config = ArchiveConfig(uncertain=args.uncertain or ArchiveConfig.uncertain,
                           allow_outside_archive=args.allow_outside_archive)
    archive = read_archive(args.archive, classes=classes, config=config)
    report = survey_archive(archive, deep=args.deep, sample=args.sample, workers=args.workers,
                            progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0

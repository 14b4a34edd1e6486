"""Pseudo-labels for detector training from a mining job's output (`miner labels`): COCO JSON or the YOLO layout.

Boxes are kept when their ``score`` >= ``min_score`` and ``rank`` <= ``max_rank`` and their finding is exported.
Each mined image (``OUT/images``) then falls in one of three groups:

- **with boxes**: at least one kept box;
- **negative** (an image without objects: no COCO annotation, an empty YOLO label file, as detector trainers
  expect): the job gave it no box of an exported finding *and* the archive does not label it with one;
- **left out**, listed with the reason in ``DIR/skipped.csv``: ``filtered`` (it had boxes, the score/rank filters
  removed them all: it shows a finding, so it is no background example; ``--filtered negative`` writes these as
  negatives instead), ``unboxed`` (labelled with an exported finding the job gave no box for) or ``unknown``
  (its label of an exported finding is unknown, e.g. CheXpert's uncertain under ``--uncertain ignore``) or
  ``outside_archive`` (its file now resolves outside the archive's root, `miner.data.confine`: not linked, not
  named; ``--allow-outside-archive`` exports it).

An image the job's output lists twice (an output mined before duplicate rows were read once) is exported once.

Error rows (``OUT/errors``: files that did not decode) are left out and listed in ``DIR/errors.csv``.

``DIR/miner-labels.json`` lists every file the export wrote. DIR must be new or empty; ``--overwrite`` replaces
an earlier export, and only the files its list names: a file of the user's in DIR is never removed, and one in
the place of a file the export writes makes it refuse. The export is written beside DIR first and moved in when
complete.

**COCO** (``DIR/annotations.json``, and ``DIR/annotations_<split>.json`` per split of the archive): ``images``
with their original ``width`` / ``height`` from ``OUT/images`` and ``file_name`` relative to the archive's folder
(``info.image_root``), ``categories`` = the exported findings (ids 1..K in the model's class order),
``annotations`` with ``bbox`` = x, y, w, h in pixels, ``area``, ``iscrowd`` 0, and the mined ``score`` and
``rank`` kept.

**YOLO** (the Ultralytics layout): ``DIR/images/<name>`` symbolic links to the archive's files (nothing is copied),
``DIR/labels/<name stem>.txt`` with one ``class cx cy w h`` line per box (normalised by the image's width and
height, 6 decimals, clipped to the image), ``DIR/images.txt`` (every exported image) and ``DIR/<split>.txt`` per
split, and ``DIR/data.yaml`` (``path``, ``train``, ``val``, ``nc``, ``names``). A name is the image id with ``/``
replaced by ``__`` (CheXpert's ids are paths), its image suffix replaced by the file's own. DICOM archives
(VinDr-CXR, RSNA, SIIM) link DICOM files, which a YOLO trainer must be able to decode (or convert them first).
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from miner.config import LabelsConfig
from miner.errors import UsageError
from miner.io import shown
from miner.outdir import (
    built_beside,
    check_not_in_data,
    folder_files,
    install_folder,
    listed_files,
    prepare_out,
    read_listing,
)

FORMATS: tuple[str, ...] = ("coco", "yolo")
FILTERED: tuple[str, ...] = ("skip", "negative")
#: written last into DIR: every file the export wrote, all that ``overwrite`` may replace (other files are kept)
LISTING = "miner-labels.json"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
_SPLIT_ORDER = ("train", "val", "valid", "test")


@dataclass
class LabelsResult:
    """What `export_labels` wrote: counts and files."""

    format: str
    to: Path
    findings: tuple[str, ...]
    images: int  # images exported (with boxes + negatives)
    with_boxes: int
    negatives: int
    boxes: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> images left out
    errors: int = 0
    files: list[Path] = field(default_factory=list)

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.skipped.items() if v)
        return (f"miner labels: {self.format} -> {self.to}: {self.images} images ({self.with_boxes} with boxes, "
                f"{self.negatives} negatives), {self.boxes} boxes of {len(self.findings)} findings; {skipped} images "
                f"left out" + (f" ({reasons}; skipped.csv)" if skipped else "")
                + f"; {self.errors} error rows left out (errors.csv)")


def file_name(image_id: str, path: str) -> str:
    """The export's name of an image: the id with ``/`` -> ``__``, its image suffix replaced by the file's."""
    flat = image_id.replace("\\", "/").replace("/", "__")
    lower = flat.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            flat = flat[: len(flat) - len(suffix)]
            break
    return flat + Path(path).suffix.lower()


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _earlier_export(to: Path) -> set[str]:
    """The files of an earlier export in the non-empty folder `to` that ``overwrite`` may replace (its `LISTING`).
    An export replaces only the files it wrote itself: any other file in `to` is kept."""
    files = listed_files(read_listing(to / LISTING))
    if files is not None:
        return files | {LISTING}
    if (to / "annotations.json").is_file() or (to / "data.yaml").is_file():
        raise UsageError(f"--to: {shown(to)} holds an export without its list of files ({LISTING}: written by an "
                         "earlier version, or edited); --overwrite replaces only files an export lists: remove it "
                         "yourself or give a new folder")
    raise UsageError(f"--to: {shown(to)} holds no earlier export ({LISTING}); --overwrite replaces only an export: "
                     "give a new folder")


def export_labels(
    out: str | Path,
    to: str | Path,
    *,
    format: str,
    findings: Sequence[str] | None = None,
    config: LabelsConfig | None = None,
    archive: str | Path | None = None,
    overwrite: bool = False,
    allow_outside_archive: bool = False,
) -> LabelsResult:
    """Write the pseudo-labels of job output `out` into folder `to` (module docstring).

    Args:
        out: a finished job's output folder (``miner mine``'s OUT).
        to: a new or empty folder (with `overwrite`, the files of an earlier export are replaced; other files
            are kept).
        format: ``coco`` or ``yolo``.
        findings: exported findings (default: every class of the model), canonical or archive spelling.
        config: `LabelsConfig` (min_score, max_rank, filtered).
        archive: where the mined archive is now (default: the path recorded in OUT's manifest).
        allow_outside_archive: export images whose files resolve outside the archive's root too (else as the job
            read the archive: `miner.config.ArchiveConfig.allow_outside_archive`).
    """
    from miner.data.archives.archive import unconfined
    from miner.data.confine import outside_records
    from miner.findings import canonical
    from miner.metrics.localization import read_boxes
    from miner.output import read_output

    cfg = config or LabelsConfig()
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if cfg.filtered not in FILTERED:
        raise UsageError(f"--filtered must be one of {', '.join(FILTERED)}, got {cfg.filtered!r}")
    if cfg.max_rank < 1:
        raise UsageError(f"--max-rank must be at least 1, got {cfg.max_rank}")
    output = read_output(out)
    status = output.manifest.get("status")
    if status != "complete":
        raise UsageError(f"{output.root}: the job is {status or 'unfinished'}, not complete; rerun the same "
                         "miner mine command to finish it first")
    classes = tuple(output.classes)
    if findings:
        chosen = [canonical(f) for f in findings]
        unknown = [f for f in chosen if f not in classes]
        if unknown:
            raise UsageError(f"--findings: {', '.join(unknown)} not among the model's classes ({', '.join(classes)})")
        exported = tuple(f for f in classes if f in set(chosen))
    else:
        exported = classes
    arch = output.archive(path=archive)
    if allow_outside_archive:
        arch = unconfined(arch)
    records = {r.image_id: r for r in arch.records}
    boxes = read_boxes(output.root)
    in_export = np.isin(boxes.finding.astype(str), np.asarray(exported, dtype=str))
    kept = in_export & (boxes.rank <= cfg.max_rank) & (np.nan_to_num(boxes.score, nan=-np.inf) >= cfg.min_score)
    by_image: dict[str, list[int]] = {}
    for n in np.flatnonzero(kept):
        by_image.setdefault(str(boxes.image_id[n]), []).append(int(n))
    had = set(map(str, boxes.image_id[in_export]))
    exported_set = set(exported)

    chosen_images: list[str] = []
    skipped: list[tuple[str, str]] = []
    negatives = 0
    mined = list(dict.fromkeys(output.image_ids))  # each image once (docs/untrusted-input.md: duplicate rows)
    missing = next((i for i in mined if i not in records), None)
    if missing is not None:
        raise UsageError(f"{output.root}: image {missing} is not in the archive {arch.root}; pass --archive "
                         "with the archive that was mined")
    outside = {r.image_id for r, _ in outside_records([records[i] for i in mined], arch.confined_to)}
    for image_id in mined:
        record = records[image_id]
        if image_id in outside:
            skipped.append((image_id, "outside_archive"))
            continue
        if image_id in by_image:
            chosen_images.append(image_id)
            continue
        if image_id in had:
            if cfg.filtered == "negative":
                chosen_images.append(image_id)
                negatives += 1
            else:
                skipped.append((image_id, "filtered"))
            continue
        if exported_set & set(record.unknown):
            skipped.append((image_id, "unknown"))
        elif exported_set & set(record.labels):
            skipped.append((image_id, "unboxed"))
        else:
            chosen_images.append(image_id)
            negatives += 1

    to = Path(to).expanduser().resolve()
    check_not_in_data(output.root, to)
    owned = prepare_out(to, overwrite=overwrite, where=f"--to: {shown(to)}", not_folder="give a new folder",
                        not_empty="is not empty; give a new folder or pass --overwrite (it replaces only the "
                                  "files of an earlier export)", owned_by=_earlier_export)
    with built_beside(to) as built:  # written beside DIR, moved in when complete (miner.outdir.install_folder)
        if format == "coco":
            _write_coco(built, output, arch, records, chosen_images, by_image, boxes, exported, cfg)
        else:
            _write_yolo(built, output, records, chosen_images, by_image, boxes, exported, final=to)
        _write_csv(built / "errors.csv", ["image_id", "path", "kind", "error"],
                   [[e["image_id"], e["path"], e["kind"], e["error"]] for e in output.errors])
        _write_csv(built / "skipped.csv", ["image_id", "reason"], [list(s) for s in skipped])
        written = [*folder_files(built), LISTING]
        (built / LISTING).write_bytes(_listing_bytes(format, written))
    install_folder(built, to, owned=owned, listing=LISTING, verb="labels",
                   listing_bytes=lambda files: _listing_bytes(format, files))
    files = [to / name for name in written]
    reasons = {"filtered": 0, "unboxed": 0, "unknown": 0, "outside_archive": 0}
    for _, reason in skipped:
        reasons[reason] += 1
    return LabelsResult(format=format, to=to, findings=exported, images=len(chosen_images),
                        with_boxes=len(chosen_images) - negatives, negatives=negatives,
                        boxes=sum(len(by_image.get(i, ())) for i in chosen_images), skipped=reasons,
                        errors=len(output.errors), files=files)


def _listing_bytes(format: str, files: Sequence[str]) -> bytes:
    return (json.dumps({"written_by": "miner labels", "format": format, "files": sorted(files)}, indent=0)
            + "\n").encode()


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _splits(records: dict, images: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for image_id in images:
        split = records[image_id].split
        if split:
            out.setdefault(split, []).append(image_id)
    return dict(sorted(out.items(), key=lambda kv: (_SPLIT_ORDER.index(kv[0]) if kv[0] in _SPLIT_ORDER
                                                    else len(_SPLIT_ORDER), kv[0])))


def _write_coco(to, output, arch, records, images, by_image, boxes, exported, cfg) -> list[Path]:
    root = Path(arch.root).resolve()
    category = {name: k + 1 for k, name in enumerate(exported)}
    info = {"description": "pseudo-labels mined by attention-miner (miner labels)", "out": str(output.root),
            "model_sha256": output.manifest.get("model", {}).get("sha256"), "image_root": str(root),
            "min_score": cfg.min_score, "max_rank": cfg.max_rank, "filtered": cfg.filtered}

    def dataset(selected: Sequence[str]) -> dict:
        out_images, annotations = [], []
        for n, image_id in enumerate(selected, start=1):
            record = records[image_id]
            height, width = output.sizes[image_id]
            path = Path(record.path)
            try:
                name = path.resolve().relative_to(root).as_posix()
            except ValueError:
                name = str(path)
            out_images.append({"id": n, "file_name": name, "width": int(width), "height": int(height),
                               "image_id": image_id, **({"split": record.split} if record.split else {})})
            for b in by_image.get(image_id, ()):
                x, y, w, h = (float(v) for v in boxes.xywh[b])
                annotations.append({"id": len(annotations) + 1, "image_id": n,
                                    "category_id": category[str(boxes.finding[b])], "bbox": [x, y, w, h],
                                    "area": w * h, "iscrowd": 0, "score": float(boxes.score[b]),
                                    "rank": int(boxes.rank[b])})
        return {"info": info, "images": out_images, "annotations": annotations,
                "categories": [{"id": k, "name": name, "supercategory": "finding"} for name, k in category.items()]}

    written = [to / "annotations.json"]
    written[0].write_text(json.dumps(dataset(images)))
    for split, ids in _splits(records, images).items():
        path = to / f"annotations_{split}.json"
        path.write_text(json.dumps(dataset(ids)))
        written.append(path)
    return written


def _write_yolo(to, output, records, images, by_image, boxes, exported, *, final: Path) -> list[Path]:
    """The YOLO layout written into `to`, its data.yaml naming `final` (the folder it is moved to) as its path."""
    index = {name: k for k, name in enumerate(exported)}
    (to / "images").mkdir()
    (to / "labels").mkdir()
    names: dict[str, str] = {}
    taken: set[str] = set()
    for image_id in images:
        name = file_name(image_id, records[image_id].path)
        if _stem(name) in taken:
            raise UsageError(f"two images map to the export name {_stem(name)} (their ids differ only in '/' vs "
                             "'__' or in the image suffix); rename one in the archive")
        taken.add(_stem(name))
        names[image_id] = name
        os.symlink(os.path.abspath(records[image_id].path), to / "images" / name)
        height, width = output.sizes[image_id]
        lines = []
        for b in by_image.get(image_id, ()):
            x, y, w, h = (float(v) for v in boxes.xywh[b])
            x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            lines.append(f"{index[str(boxes.finding[b])]} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                         f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n")
        (to / "labels" / f"{_stem(name)}.txt").write_text("".join(lines))
    written = [to / "images.txt"]
    written[0].write_text("".join(f"./images/{names[i]}\n" for i in images))
    splits = _splits(records, images)
    for split, ids in splits.items():
        path = to / f"{split}.txt"
        path.write_text("".join(f"./images/{names[i]}\n" for i in ids))
        written.append(path)
    train = "train.txt" if "train" in splits else "images.txt"
    val = next((f"{s}.txt" for s in ("val", "valid", "test") if s in splits), "images.txt")
    yaml = [
        "# pseudo-labels mined by attention-miner (miner labels); images are links to the archive's files",
        f"# from {output.root} (model sha256 {output.manifest.get('model', {}).get('sha256')})",
        f"path: {json.dumps(str(final))}",
        f"train: {train}",
        f"val: {val}",
        f"nc: {len(exported)}",
        "names:",
        *(f"  {k}: {json.dumps(name)}" for k, name in enumerate(exported)),
    ]
    (to / "data.yaml").write_text("\n".join(yaml) + "\n")
    return [*written, to / "data.yaml", to / "labels", to / "images"]

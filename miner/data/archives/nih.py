"""The ChestX-ray14 (NIH) release layout: its files, their headers and quirks, read and written; `read_release`
reads a release folder as an `Archive`.

A release folder holds::

    images/00000001_000.png ...       (or images_001/images/... as the tarballs unpack)
    Data_Entry_2017.csv               (or Data_Entry_2017_v2020.csv; either may be gzipped: .csv.gz)
    BBox_List_2017.csv                (optional; .csv.gz accepted)
    train_val_list.txt, test_list.txt (optional; one image name per line)

Quirks handled here:

- ``Data_Entry_2017.csv`` has the header ``...,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],``
  (the brackets hold commas, so it has more fields than names, and the 2017 file ends every line with a
  comma); the v2020 file drops the trailing comma. Columns are found by name, so both read alike.
- ``Finding Labels`` joins findings with ``|``; ``No Finding`` means none.
- ``BBox_List_2017.csv`` has the header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` and spells
  ``Infiltrate`` for the class ``Infiltration``.

Every file is read as untrusted text through `miner.data.textfile` (UTF-8, a UTF-16 file with its byte-order
mark, gzip or zip; lines of at most `miner.data.textfile.MAX_LINE_CHARS` characters; no control characters): a
fault is one `ArchiveError` line naming the file and line. A Data_Entry file without rows, a 0-byte box list and
non-finite box values are refused too.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from miner.data.archives.archive import Archive, masks_dir
from miner.data.archives.classes import check_labels, root_class_list
from miner.data.records import GroundTruthBox, Record
from miner.data.textfile import LabelText, csv_rows, display_path, shown, text_lines
from miner.errors import ArchiveError
from miner.findings import NO_FINDING, canonical

DATA_ENTRY_NAMES: tuple[str, ...] = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
BBOX_LIST_NAME = "BBox_List_2017.csv"
TRAIN_LIST_NAME = "train_val_list.txt"
TEST_LIST_NAME = "test_list.txt"

#: the header line of the 2017 release's Data_Entry_2017.csv (the phantom generator writes it)
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
#: the header line of BBox_List_2017.csv
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

#: how the box file spells findings that the class list spells differently
BBOX_SPELLING: dict[str, str] = {"Infiltration": "Infiltrate"}


@dataclass(frozen=True)
class EntryRow:
    """One line of Data_Entry_2017.csv."""

    image_id: str
    labels: tuple[str, ...]
    follow_up: int | None
    patient_id: str | None
    age: int | None
    gender: str | None
    view: str | None
    width: int | None = None
    height: int | None = None
    spacing_x: float | None = None
    spacing_y: float | None = None


def open_text(path: Path) -> LabelText:
    """The checked lines of a label text file, gunzipping ``*.gz`` and reading the one member of a ``*.zip`` (as
    Kaggle serves CSVs); encodings and limits as `miner.data.textfile` states them."""
    return LabelText(path)


def find_file(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists first."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_data_entry(root: Path) -> Path | None:
    for name in DATA_ENTRY_NAMES:
        found = find_file(root, name)
        if found is not None:
            return found
    return None


def is_release(root: Path) -> bool:
    """Whether a folder holds a ChestX-ray14 release (it has a Data_Entry file)."""
    return root.is_dir() and find_data_entry(root) is not None


def split_labels(text: str) -> tuple[str, ...]:
    """``"Cardiomegaly|Effusion"`` -> ("Cardiomegaly", "Effusion"); ``"No Finding"`` -> ()."""
    out = []
    for part in text.split("|"):
        part = part.strip()
        if part and part != NO_FINDING:
            name = canonical(part)
            if name not in out:
                out.append(name)
    return tuple(out)


_DIGITS = frozenset("0123456789")


def _int(text: str) -> int | None:
    """A whole number of a Data_Entry field, or None (2017 ages may read ``058Y``; other text is no number)."""
    text = text.strip()
    if text.isascii() and len(text) <= 18:
        try:
            return int(text)
        except ValueError:
            pass
    digits = "".join(ch for ch in text if ch in _DIGITS)
    return int(digits) if digits and len(digits) <= 18 else None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_data_entry(path: Path) -> list[EntryRow]:
    """All rows of a Data_Entry file (2017 or v2020 layout, plain or gzipped).

    Raises:
        ArchiveError: an unreadable file (`miner.data.textfile`), no header or no rows, a row without its image
            name or labels.
    """
    where = display_path(path)
    rows_of = csv_rows(path)
    try:
        header = next(rows_of, None)
        if header is None:
            raise ArchiveError(f"{where}: empty file; expected a Data_Entry_2017.csv header")
        names = [h.strip() for h in header[1]]
        index = {name: i for i, name in enumerate(names) if name}
        for required in ("Image Index", "Finding Labels"):
            if required not in index:
                raise ArchiveError(f"{where}:1: no {required!r} column in the header (found "
                                   f"{shown(','.join(names[:6]), 120)})")
        i_id, i_lab = index["Image Index"], index["Finding Labels"]
        blank = len(names)  # rows are padded with one empty field: absent columns read it
        i_fu, i_pid = index.get("Follow-up #", blank), index.get("Patient ID", blank)
        i_age, i_sex, i_view = (index.get(k, blank) for k in ("Patient Age", "Patient Gender", "View Position"))
        i_w, i_sx = index.get("OriginalImage[Width"), index.get("OriginalImagePixelSpacing[x")
        i_h = blank if i_w is None else i_w + 1  # the bracketed names span two fields each
        i_w = blank if i_w is None else i_w
        i_sy = blank if i_sx is None else i_sx + 1
        i_sx = blank if i_sx is None else i_sx
        width = blank + 1
        rows = []
        for line_no, row in rows_of:
            if not row or not row[0].strip():
                continue
            if len(row) <= max(i_id, i_lab):
                raise ArchiveError(f"{where}:{line_no}: {len(row)} fields, expected at least {max(i_id, i_lab) + 1} "
                                   "(Image Index and Finding Labels)")
            if len(row) < width:
                row += [""] * (width - len(row))
            else:
                row[blank] = ""
            pid = row[i_pid].strip()
            rows.append(EntryRow(
                image_id=row[i_id].strip(),
                labels=split_labels(row[i_lab]),
                follow_up=_int(row[i_fu]) if row[i_fu] else None,
                patient_id=str(int(pid)) if pid.isascii() and pid.isdigit() and len(pid) <= 18 else (pid or None),
                age=_int(row[i_age]) if row[i_age] else None,
                gender=row[i_sex].strip() or None,
                view=row[i_view].strip() or None,
                width=_int(row[i_w]) if row[i_w] else None,
                height=_int(row[i_h]) if row[i_h] else None,
                spacing_x=_float(row[i_sx]) if row[i_sx] else None,
                spacing_y=_float(row[i_sy]) if row[i_sy] else None,
            ))
    finally:
        rows_of.close()
    if not rows:
        raise ArchiveError(f"{where}: no image rows below the header; a Data_Entry file lists one image per line")
    return rows


def read_bbox_list(path: Path) -> list[GroundTruthBox]:
    """All boxes of a BBox_List_2017.csv (plain or gzipped), findings in class-list spelling.

    A header-only file holds no boxes; an empty (0-byte) file is refused as a failed download.
    """
    where = display_path(path)
    boxes = []
    seen_any = False
    with csv_rows(path) as rows:
        for line_no, row in rows:
            seen_any = True
            if not row or not row[0].strip() or row[0].strip() == "Image Index":
                continue
            if len(row) < 6:
                raise ArchiveError(f"{where}:{line_no}: {len(row)} fields, expected image,finding,x,y,w,h")
            values = shown(",".join(row[2:6]))
            try:
                x, y, w, h = (float(v) for v in row[2:6])
            except ValueError:
                raise ArchiveError(f"{where}:{line_no}: box values {values} are not numbers") from None
            if not all(map(math.isfinite, (x, y, w, h))):
                raise ArchiveError(f"{where}:{line_no}: box values {values} are not finite numbers")
            boxes.append(GroundTruthBox(row[0].strip(), canonical(row[1]), x, y, w, h))
    if not seen_any:
        raise ArchiveError(f"{where}: empty file; expected the header {BBOX_HEADER!r} (or remove the file)")
    return boxes


def read_split_list(path: Path) -> list[str]:
    """Image names of train_val_list.txt / test_list.txt (one per line, blank lines ignored)."""
    return [name for _, name in text_lines(path)]


def image_folders(root: Path) -> list[Path]:
    """Where a release keeps its PNGs: ``images/`` or the unpacked tarballs' ``images_*/images/``."""
    if (root / "images").is_dir():
        return [root / "images"]
    return sorted(p / "images" for p in root.glob("images_*") if (p / "images").is_dir())


# ----------------------------------------------------------------------------------------------
# writing (the phantom generator writes exactly this layout)


def read_release(root: Path, data_entry: Path, classes: Sequence[str] | None) -> Archive:
    """The release in `root` whose Data_Entry file is `data_entry` (`miner.data.archives.read_archive`)."""
    class_list, declared = root_class_list(root, classes)
    rows = read_data_entry(data_entry)
    splits: dict[str, str] = {}
    for name, split in ((TRAIN_LIST_NAME, "train"), (TEST_LIST_NAME, "test")):
        found = find_file(root, name)
        if found is not None:
            for image_id in read_split_list(found):
                splits[image_id] = split
    folders = image_folders(root)
    location: dict[str, Path] = {}
    if len(folders) > 1:  # images_001/images ... images_012/images: index them once
        for folder in folders:
            with os.scandir(folder) as it:
                for entry in it:
                    location.setdefault(entry.name, folder)
    default = folders[0] if folders else root / "images"
    records = [
        Record(
            image_id=r.image_id,
            path=str(location.get(r.image_id, default) / r.image_id),
            labels=r.labels,
            split=splits.get(r.image_id),
            patient_id=r.patient_id,
            follow_up=r.follow_up,
            view=r.view,
        )
        for r in rows
    ]
    check_labels(records, class_list, declared, data_entry)
    bbox = find_file(root, BBOX_LIST_NAME)
    boxes = read_bbox_list(bbox) if bbox is not None else []
    return Archive(root=root, classes=class_list, records=records, boxes=boxes,
                   masks_dir=masks_dir(root), has_labels=True, source="release",
                   label_files=[data_entry] + ([bbox] if bbox is not None else []))


def _fmt(value: float) -> str:
    return repr(float(value))


def write_data_entry(path: Path, rows: Iterable[EntryRow]) -> None:
    """Write Data_Entry_2017.csv in the 2017 layout (header and trailing commas as released)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(DATA_ENTRY_HEADER + "\n")
        for r in rows:
            labels = "|".join(r.labels) if r.labels else NO_FINDING
            fields = [
                r.image_id, labels, str(r.follow_up if r.follow_up is not None else 0), str(r.patient_id or ""),
                str(r.age if r.age is not None else ""), r.gender or "", r.view or "",
                str(r.width or ""), str(r.height or ""),
                _fmt(r.spacing_x) if r.spacing_x is not None else "",
                _fmt(r.spacing_y) if r.spacing_y is not None else "",
            ]
            f.write(",".join(fields) + ",\n")


def write_bbox_list(path: Path, boxes: Iterable[GroundTruthBox]) -> None:
    """Write BBox_List_2017.csv: the release's odd header, ``Infiltrate`` spelling, six fields a row."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(BBOX_HEADER + "\n")
        for b in boxes:
            finding = BBOX_SPELLING.get(b.finding, b.finding)
            f.write(f"{b.image_id},{finding},{_fmt(b.x)},{_fmt(b.y)},{_fmt(b.w)},{_fmt(b.h)}\n")


def write_split_list(path: Path, image_ids: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{i}\n" for i in image_ids))

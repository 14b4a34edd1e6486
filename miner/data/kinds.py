"""Archive kinds beyond ChestX-ray14's release: recognised from the header of their label files.

`read_archive` (`miner.data.archive`) asks `detect` which kind a folder or label file is. A folder is searched
for label files at its top level (``*.csv``, ``*.csv.gz``, ``*.csv.zip``); a file's first line decides its
kind: every column of `ArchiveKind.columns` must be in it. Each kind's reader is the module named in
`ArchiveKind.module`, exposing ``read(files, *, classes, config) -> Archive``. Label files are read through
`miner.data.textfile` (`dict_rows`): encodings, limits and faults as it states; a quoted field may run over line
ends only in a column the reader does not use.

- ``vindr`` (VinDr-CXR): ``train.csv`` (Kaggle) or ``annotations_train.csv`` / ``annotations_test.csv``
  (PhysioNet); images ``train/<image_id>.dicom`` (``test/`` for a test file) beside the label file or its folder.
- ``rsna`` (RSNA Pneumonia Detection): ``stage_2_train_labels.csv``; ``stage_2_train_images/<patientId>.dcm``.
- ``siim`` (SIIM-ACR Pneumothorax): ``train-rle.csv``; ``<SOPInstanceUID>.dcm`` anywhere below its folder.
- ``chexpert`` (CheXpert): ``train.csv``, ``valid.csv``; the ``Path`` column, relative to the folder that holds
  ``CheXpert-v1.0*/``.
- ``padchest`` (PadChest): ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``; ``<ImageDir>/<ImageID>``.
- ``google`` (Google's ChestX-ray14 relabels): ``google2019_nih-chest-xray-labels.csv`` or
  ``four_findings_expert_labels_{test,validation}_labels.csv``; ChestX-ray14's ``images/`` (or
  ``images_*/images/``).
"""
from __future__ import annotations

import importlib
import math
import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from miner.data.textfile import csv_rows, display_path, shown
from miner.errors import ArchiveError
from miner.findings import archive_classes, canonical

if TYPE_CHECKING:
    from miner.config import ArchiveConfig
    from miner.data.archive import Archive

LABEL_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".csv.zip")


@dataclass(frozen=True)
class ArchiveKind:
    """One archive kind: how its label file is recognised and which module reads it.

    Attributes:
        name: the key (`Archive.source`, `miner.findings.ARCHIVE_FINDINGS`).
        title: the archive's published name.
        columns: header columns (compared stripped) that every label file of this kind has.
        module: the reader module (``read(files, *, classes, config) -> Archive``).
        exhaustive: readers looked at every image for boxes, so an image without a box of a finding is a
            negative for it (`miner eval`'s ``--negatives auto``).
    """

    name: str
    title: str
    columns: tuple[str, ...]
    module: str
    exhaustive: bool = False


KINDS: tuple[ArchiveKind, ...] = (
    ArchiveKind("vindr", "VinDr-CXR", ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max"),
                "miner.data.vindr", exhaustive=True),
    ArchiveKind("rsna", "RSNA Pneumonia Detection", ("patientId", "x", "y", "width", "height", "Target"),
                "miner.data.rsna", exhaustive=True),
    ArchiveKind("siim", "SIIM-ACR Pneumothorax", ("ImageId", "EncodedPixels"), "miner.data.siim", exhaustive=True),
    ArchiveKind("chexpert", "CheXpert", ("Path", "Frontal/Lateral", "No Finding"), "miner.data.chexpert"),
    ArchiveKind("padchest", "PadChest", ("ImageID", "ImageDir", "Labels"), "miner.data.padchest"),
    ArchiveKind("google", "Google ChestX-ray14 relabels",
                ("Image Index", "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"),
                "miner.data.google"),
)
BY_NAME: dict[str, ArchiveKind] = {k.name: k for k in KINDS}
#: display names of every `Archive.source`
TITLES: dict[str, str] = {"release": "ChestX-ray14 release", "manifest": "manifest", "folder": "image folder",
                          **{k.name: k.title for k in KINDS}}


def is_label_file(path: Path) -> bool:
    return path.name.lower().endswith(LABEL_SUFFIXES)


def header(path: Path) -> list[str]:
    """The stripped column names of a CSV's first line (plain, gzipped or zipped); [] for an empty file.

    Only the first line is read (a fault further down is its reader's to report).

    Raises:
        ArchiveError: the first line cannot be read (`miner.data.textfile`: encoding, limits, compression).
    """
    rows = csv_rows(path)
    try:
        first = next(rows, (0, []))[1]
    finally:
        rows.close()
    return [c.strip() for c in first]


def kind_of(path: Path) -> ArchiveKind | None:
    """The kind whose columns the label file's header holds, or None."""
    names = set(header(path))
    for kind in KINDS:
        if set(kind.columns) <= names:
            return kind
    return None


def detect(path: Path) -> tuple[ArchiveKind, list[Path]] | None:
    """(kind, label files) of a label file or of a folder's top-level label files; None if none matches.

    Raises:
        ArchiveError: a folder holding label files of two kinds (the user must name one); a label file (a
            folder's ``*.csv`` included) whose first line cannot be read (`header`).
    """
    if path.is_file():
        kind = kind_of(path)
        return (kind, [path]) if kind is not None else None
    if not path.is_dir():
        return None
    found: dict[str, list[Path]] = {}
    for candidate in sorted(p for p in path.iterdir() if is_label_file(p) and p.is_file()):
        kind = kind_of(candidate)
        if kind is not None:
            found.setdefault(kind.name, []).append(candidate)
    if not found:
        return None
    if len(found) > 1:
        listing = "; ".join(f"{BY_NAME[k].title}: {', '.join(p.name for p in v)}" for k, v in found.items())
        raise ArchiveError(f"{path}: holds label files of several archives ({listing}); give the path of the "
                           "label file to read")
    name, files = next(iter(found.items()))
    return BY_NAME[name], files


def read_kind(kind: ArchiveKind, files: Sequence[Path], *, classes: Sequence[str] | None,
              config: ArchiveConfig) -> Archive:
    """Run `kind`'s reader on its label files (returns a `miner.data.archive.Archive`)."""
    module = importlib.import_module(kind.module)
    return module.read([Path(f).resolve() for f in files], classes=classes, config=config)


# ----------------------------------------------------------------------------------------------
# helpers the readers share


def class_list(kind: str, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The declared class list (canonical spelling), else every vocabulary finding the archive can name."""
    if classes is None:
        return archive_classes(kind)
    names = tuple(canonical(c) for c in classes)
    if not names or len(set(names)) != len(names):
        raise ArchiveError(f"classes must be a non-empty list without repeats, got {list(classes)}")
    return names


def dict_rows(path: Path, required: Iterable[str], *,
              also: Iterable[str] | None = None) -> Iterable[tuple[int, dict[str, str]]]:
    """(line number, row with stripped column names and values) of a label CSV, after checking its header.

    `also`: the other columns wanted (those the file has); None = every column. Naming them saves a dict of
    every field per row (PadChest has 36 columns, 160,861 rows).

    A quoted field may run over line ends only in the columns not read (PadChest's CUI columns do).

    Raises:
        ArchiveError: an unreadable file (`miner.data.textfile`), an empty one, a missing column, a line break in
            a value read, or no row below the header.
    """
    where = display_path(path)
    rows = csv_rows(path, multiline=True)  # PadChest's CUI columns hold line breaks
    try:
        first = next(rows, None)
        if first is None:
            raise ArchiveError(f"{where}: empty file; expected a header line naming the columns")
        names = [c.strip() for c in first[1]]
        required = list(required)
        missing = [c for c in required if c not in names]
        if missing:
            raise ArchiveError(f"{where}:1: no {', '.join(repr(m) for m in missing)} column (found "
                               f"{shown(','.join(names[:8]), 160)})")
        wanted = names if also is None else [c for c in names if c in set(required) | set(also)]
        pick = operator.itemgetter(*(names.index(c) for c in wanted)) if len(wanted) > 1 else None
        width = len(names)
        strip = str.strip
        count = 0
        for line, row in rows:
            if len(row) <= 1 and not "".join(row).strip():
                continue  # a blank line
            if len(row) < width:
                row = row + [""] * (width - len(row))
            values = pick(row) if pick is not None else [row[names.index(wanted[0])]]
            if rows.spanned:  # a value this reader uses may not hold a line break (it would name an image)
                for column, value in zip(wanted, values):
                    if "\n" in value or "\r" in value:
                        raise ArchiveError(f"{where}:{line}: {column} {shown(value)} holds a line break; close "
                                           "the quote before it")
            count += 1
            yield line, dict(zip(wanted, map(strip, values)))
    finally:
        rows.close()
    if not count:
        raise ArchiveError(f"{where}: no rows below the header; is this the whole file?")


def stem_index(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """stem -> file for the files of `folder` (not recursive) whose names end in one of `suffixes`."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            lower = name.lower()
            for suffix in suffixes:
                if lower.endswith(suffix):
                    out.setdefault(name[: len(name) - len(suffix)], folder / name)
                    break
    return out


def number(value: str, *, path: Path, line: int, column: str) -> float:
    """A finite number of a label file's field (a box coordinate), or an `ArchiveError` naming its line."""
    try:
        out = float(value)
    except ValueError:
        raise ArchiveError(f"{display_path(path)}:{line}: {column} {shown(value)} is not a number") from None
    if not math.isfinite(out):
        raise ArchiveError(f"{display_path(path)}:{line}: {column} {shown(value)} is not a finite number")
    return out

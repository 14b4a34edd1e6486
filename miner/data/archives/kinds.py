"""Archive kinds beyond ChestX-ray14's release: recognised from the header of their label files.

`read_archive` (`miner.data.archives.read`) asks `detect` which kind a folder or label file is. A folder is
searched for label files at its top level (``*.csv``, ``*.csv.gz``, ``*.csv.zip``); a file's first line decides
its kind: every column of `ArchiveKind.columns` must be in it. Each kind's reader is the module of this package
named like the kind (``miner.data.archives.vindr``, ...), exposing ``read(files, *, classes, config) -> Archive``;
`read_archive` calls it. Label files are read through `miner.data.textfile` (`miner.data.archives.rows.dict_rows`):
encodings, limits and faults as it states; a quoted field may run over line ends only in a column the reader does
not use.

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

from dataclasses import dataclass
from pathlib import Path

from miner.data.textfile import csv_rows
from miner.errors import ArchiveError

LABEL_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".csv.zip")


@dataclass(frozen=True)
class ArchiveKind:
    """One archive kind: how its label file is recognised (its reader: `miner.data.archives.<name>`).

    Attributes:
        name: the key (`Archive.source`, `miner.findings.ARCHIVE_FINDINGS`).
        title: the archive's published name.
        columns: header columns (compared stripped) that every label file of this kind has.
        exhaustive: readers looked at every image for boxes, so an image without a box of a finding is a
            negative for it (`miner eval`'s ``--negatives auto``).
    """

    name: str
    title: str
    columns: tuple[str, ...]
    exhaustive: bool = False


KINDS: tuple[ArchiveKind, ...] = (
    ArchiveKind("vindr", "VinDr-CXR", ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max"),
                exhaustive=True),
    ArchiveKind("rsna", "RSNA Pneumonia Detection", ("patientId", "x", "y", "width", "height", "Target"),
                exhaustive=True),
    ArchiveKind("siim", "SIIM-ACR Pneumothorax", ("ImageId", "EncodedPixels"), exhaustive=True),
    ArchiveKind("chexpert", "CheXpert", ("Path", "Frontal/Lateral", "No Finding")),
    ArchiveKind("padchest", "PadChest", ("ImageID", "ImageDir", "Labels")),
    ArchiveKind("google", "Google ChestX-ray14 relabels",
                ("Image Index", "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")),
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

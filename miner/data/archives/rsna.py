"""RSNA Pneumonia Detection Challenge (Kaggle 2018; ChestX-ray14 images re-read by radiologists, as DICOM).

Label file: ``stage_2_train_labels.csv`` (``patientId, x, y, width, height, Target``; plain, ``.gz`` or Kaggle's
``.zip``): one row per box of an image with lung opacities suggestive of pneumonia (``Target`` 1), one row with
empty coordinates for an image without (``Target`` 0). Images: ``stage_2_train_images/<patientId>.dcm`` (the
label file's name with ``labels`` -> ``images``) beside the label file. Every box is the canonical finding
Pneumonia; every image was read, so an image without a box is a negative (`Archive.exhaustive`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from miner.data.archives.archive import Archive
from miner.data.archives.classes import class_list
from miner.data.archives.rows import dict_rows, number, stem_index
from miner.data.records import GroundTruthBox, Record
from miner.errors import ArchiveError
from miner.findings import ARCHIVE_FINDINGS

if TYPE_CHECKING:
    from miner.config import ArchiveConfig

FINDING = ARCHIVE_FINDINGS["rsna"]["Target"]
IMAGE_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
_COORDS = ("x", "y", "width", "height")


def image_folder(label_file: Path) -> Path:
    """``stage_2_train_images`` for ``stage_2_train_labels.csv`` (any ``*_labels*`` -> ``*_images``)."""
    stem = label_file.name.split(".")[0]
    name = stem.replace("labels", "images") if "labels" in stem else "stage_2_train_images"
    return label_file.parent / name


def read(files: Sequence[Path], *, classes: Sequence[str] | None, config: ArchiveConfig) -> Archive:

    class_names = class_list("rsna", classes)
    target: dict[str, int] = {}
    folders: dict[str, Path] = {}
    boxes: list[GroundTruthBox] = []
    rows = 0
    for path in files:
        folder = image_folder(path)
        for line, row in dict_rows(path, ("patientId", *_COORDS, "Target")):
            rows += 1
            pid, value = row["patientId"], row["Target"]
            if not pid:
                raise ArchiveError(f"{path}:{line}: empty patientId")
            if value not in ("0", "1"):
                raise ArchiveError(f"{path}:{line}: Target must be 0 or 1, got {value!r}")
            t = int(value)
            if target.setdefault(pid, t) != t:
                raise ArchiveError(f"{path}:{line}: patient {pid} has rows with Target 0 and Target 1")
            folders.setdefault(pid, folder)
            values = [row[c] for c in _COORDS]
            if t == 0:
                if any(values):
                    raise ArchiveError(f"{path}:{line}: a Target 0 row with a box {values}")
                continue
            if not all(values):
                raise ArchiveError(f"{path}:{line}: a Target 1 row needs x, y, width and height, got {values}")
            x, y, w, h = (number(v, path=path, line=line, column=c) for v, c in zip(values, _COORDS))
            boxes.append(GroundTruthBox(pid, FINDING, x, y, w, h))
    indexes = {folder: stem_index(folder, IMAGE_SUFFIXES) for folder in set(folders.values())}
    records = [Record(image_id=pid, path=str(indexes[folders[pid]].get(pid, folders[pid] / f"{pid}.dcm")),
                      labels=(FINDING,) if t else (), patient_id=pid,
                      split="test" if "test" in folders[pid].name else "train")
               for pid, t in target.items()]
    return Archive(root=files[0].parent, classes=class_names, records=records, boxes=boxes, has_labels=True,
                   source="rsna", exhaustive=True, label_files=list(files),
                   details={"rows": rows, "positive images": sum(target.values()),
                            "ground truth": "one Pneumonia box per Target 1 row; Target 0 images are negatives"})

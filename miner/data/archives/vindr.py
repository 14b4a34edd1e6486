"""VinDr-CXR (Nguyen et al., Scientific Data 2022): 18,000 posteroanterior radiographs, boxes by several readers.

Label file: Kaggle's ``train.csv`` (``image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max``; one
row per box, or one ``No finding`` row per reader with empty coordinates), or PhysioNet's
``annotations_train.csv`` / ``annotations_test.csv`` (the same columns; the test file's consensus boxes have no
``rad_id``). Images: DICOM ``train/<image_id>.dicom`` (``test/`` for a test file) beside the label file or beside
its folder; ``.dcm``, ``.png`` and ``.jpg`` conversions under the same stem are found too.

Every training image was read by three of 17 radiologists. Each box keeps its reader (`GroundTruthBox.reader`);
an image's labels are the findings any of its readers boxed (its 14 classes map to the vocabulary:
"Pleural effusion" -> Effusion, "Nodule/Mass" stays one finding, `miner.findings.ARCHIVE_FINDINGS`). How several
readers' boxes become one ground truth is `miner eval`'s ``--readers`` (`miner.metrics.readers`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from miner.data.archives.archive import Archive
from miner.data.archives.classes import class_list
from miner.data.archives.rows import dict_rows, number, stem_index
from miner.data.confine import common_root
from miner.data.records import GroundTruthBox, Record
from miner.errors import ArchiveError
from miner.findings import archive_finding

if TYPE_CHECKING:
    from miner.config import ArchiveConfig

IMAGE_SUFFIXES: tuple[str, ...] = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")
_COORDS = ("x_min", "y_min", "x_max", "y_max")


def image_folder(label_file: Path) -> Path:
    """``train/`` (``test/`` for a test label file) beside the label file, else beside its folder."""
    name = "test" if "test" in label_file.name.lower() else "train"
    for base in (label_file.parent, label_file.parent.parent):
        if (base / name).is_dir():
            return base / name
    return label_file.parent / name


def read(files: Sequence[Path], *, classes: Sequence[str] | None, config: ArchiveConfig) -> Archive:

    class_names = class_list("vindr", classes)
    order: dict[str, None] = {}
    labels: dict[str, dict[str, None]] = {}
    boxes: list[GroundTruthBox] = []
    readers: Counter = Counter()
    folders: dict[str, Path] = {}
    rows = 0
    for path in files:
        folder = image_folder(path)
        for line, row in dict_rows(path, ("image_id", "class_name", *_COORDS)):
            rows += 1
            image_id = row["image_id"]
            if not image_id:
                raise ArchiveError(f"{path}:{line}: empty image_id")
            order.setdefault(image_id, None)
            folders.setdefault(image_id, folder)
            own = labels.setdefault(image_id, {})
            reader = row.get("rad_id") or None
            if reader:
                readers[reader] += 1
            finding = archive_finding("vindr", row["class_name"])
            if finding is None:
                continue
            own.setdefault(finding, None)
            values = [row[c] for c in _COORDS]
            if not any(values):
                continue  # a finding without a box (not in the released files, but kept as a label)
            if not all(values):
                raise ArchiveError(f"{path}:{line}: {row['class_name']} box with a blank coordinate {values}")
            x0, y0, x1, y1 = (number(v, path=path, line=line, column=c) for v, c in zip(values, _COORDS))
            if x1 < x0 or y1 < y0:
                raise ArchiveError(f"{path}:{line}: box with x_max < x_min or y_max < y_min ({values})")
            boxes.append(GroundTruthBox(image_id, finding, x0, y0, x1 - x0, y1 - y0, reader=reader))
    indexes = {folder: stem_index(folder, IMAGE_SUFFIXES) for folder in set(folders.values())}
    records = []
    for image_id in order:
        folder = folders[image_id]
        path = indexes[folder].get(image_id, folder / f"{image_id}.dicom")
        records.append(Record(image_id=image_id, path=str(path), labels=tuple(labels[image_id]),
                              split="test" if folder.name == "test" else "train"))
    per_image = Counter(b.image_id for b in boxes)
    # the archive-root rule (miner.data.confine): the folder holding the label files' image folders (PhysioNet's
    # annotations/ sits beside train/ and test/: their common parent)
    confined_to = common_root(image_folder(p).parent for p in files)
    return Archive(root=files[0].parent, classes=class_names, records=records, boxes=boxes, has_labels=True,
                   source="vindr", exhaustive=True, label_files=list(files), confined_to=confined_to,
                   details={"rows": rows, "readers": len(readers), "rows per reader": dict(readers.most_common()),
                            "boxes per image": f"{len(boxes) / max(len(per_image), 1):.2f} on the "
                                               f"{len(per_image)} boxed images (all readers)",
                            "ground truth": "boxes kept per reader; miner eval --readers fused|any|<rad_id>"})

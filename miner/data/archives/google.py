"""Google's expert relabels of ChestX-ray14 (Majkowska et al., Radiology 2019): four findings, adjudicated.

Label file: ``google2019_nih-chest-xray-labels.csv`` (as torchxrayvision ships it: ChestX-ray14's Data_Entry
columns, then ``Fracture, Pneumothorax, Airspace opacity, Nodule or mass`` as ``YES``/``NO`` and ``Set Id``
``val`` / ``test``), or Google's own ``four_findings_expert_labels_{validation,test}_labels.csv`` (the split from
the file name: ``val`` / ``test``). Images: ChestX-ray14's PNGs under ``images/`` (or the tarballs'
``images_*/images/``) beside the label file.

The four findings map to the vocabulary: Fracture, Pneumothorax, "Airspace opacity" -> Lung Opacity,
"Nodule or mass" -> Nodule/Mass (`miner.findings.ARCHIVE_FINDINGS["google"]`). ChestX-ray14's own
``Finding Labels`` are not used: the relabels replace them. No boxes.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from miner.data.archives import nih
from miner.data.archives.archive import Archive
from miner.data.archives.classes import class_list
from miner.data.archives.rows import dict_rows
from miner.data.records import Record
from miner.errors import ArchiveError
from miner.findings import ARCHIVE_FINDINGS

if TYPE_CHECKING:
    from miner.config import ArchiveConfig

COLUMNS = tuple(ARCHIVE_FINDINGS["google"])
_SPLIT_NAMES = {"val": "val", "validation": "val", "test": "test"}


def split_of_file(path: Path) -> str | None:
    name = path.name.lower()
    if "validation" in name:
        return "val"
    if "test" in name:
        return "test"
    return None


def read(files: Sequence[Path], *, classes: Sequence[str] | None, config: ArchiveConfig) -> Archive:

    class_names = class_list("google", classes)
    records: list[Record] = []
    splits: Counter = Counter()
    for path in files:
        folders = nih.image_folders(path.parent)
        location: dict[str, str] = {}
        if len(folders) > 1:  # images_001/images ... images_012/images: index them once
            for folder in folders:
                with os.scandir(folder) as it:
                    for entry in it:
                        location.setdefault(entry.name, str(folder))
        default = str(folders[0] if folders else path.parent / "images")
        file_split = split_of_file(path)
        for line, row in dict_rows(path, ("Image Index", *COLUMNS)):
            image_id = row["Image Index"]
            if not image_id:
                raise ArchiveError(f"{path}:{line}: empty Image Index")
            labels = []
            for column in COLUMNS:
                value = row[column].upper()
                if value not in ("YES", "NO"):
                    raise ArchiveError(f"{path}:{line}: {column} is {row[column]!r}; expected YES or NO")
                if value == "YES":
                    labels.append(ARCHIVE_FINDINGS["google"][column])
            set_id = row.get("Set Id", "").lower()
            split = _SPLIT_NAMES.get(set_id, set_id or None) if set_id else file_split
            splits[split or "none"] += 1
            pid = row.get("Patient ID", "")
            follow = row.get("Follow-up #", "")
            records.append(Record(image_id=image_id, path=os.path.join(location.get(image_id, default), image_id),
                                  labels=tuple(labels), split=split,
                                  patient_id=str(int(pid)) if _whole(pid) else (pid or None),
                                  follow_up=int(follow) if _whole(follow) else None,
                                  view=row.get("View Position") or None))
    return Archive(root=files[0].parent, classes=class_names, records=records, boxes=[], has_labels=True,
                   source="google", label_files=list(files),
                   details={"rows": len(records), "splits": dict(splits),
                            "ground truth": "adjudicated image labels of 4 findings (no boxes): miner eval scores "
                                            "AUC"})


def _whole(text: str) -> bool:
    """Whether int(text) reads `text` as ASCII digits (not "²", not past int's 4300-digit limit)."""
    return text.isascii() and text.isdigit() and len(text) <= 18

"""PadChest (Bustos et al., Medical Image Analysis 2020): 160,868 radiographs of Hospital San Juan, Alicante.

Label file: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (plain or ``.gz``): one row per image,
``ImageID``, ``ImageDir`` (the number of the zip file, i.e. the sub-folder, that holds the image) and ``Labels``,
a Python list of the report's radiological terms (``['pleural effusion', 'cardiomegaly']``; ``normal`` = no
finding). Images: 16-bit PNGs ``<ImageDir>/<ImageID>`` beside the label file.

Terms that name a vocabulary finding map to it (`miner.findings.ARCHIVE_FINDINGS["padchest"]`: "pleural
effusion" -> Effusion, "laminar atelectasis" -> Atelectasis, ...); the other terms (about 150: "COPD signs",
"aortic elongation", ...) stay on the records verbatim, outside the class list. A row without labels (103 in
the released file) has every class unknown (`Record.unknown`). No official split; no boxes.
"""
from __future__ import annotations

import ast
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from miner.data.archives.archive import Archive
from miner.data.archives.classes import class_list
from miner.data.archives.rows import dict_rows
from miner.data.records import Record
from miner.errors import ArchiveError
from miner.findings import archive_finding

if TYPE_CHECKING:
    from miner.config import ArchiveConfig


def parse_labels(text: str, *, where: str) -> list[str]:
    """``"['normal']"`` -> ``['normal']`` (stripped terms; empty terms dropped)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError):  # deep nesting: the parser's own limits
        raise ArchiveError(f"{where}: Labels {text[:60]!r} is not a list of terms") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ArchiveError(f"{where}: Labels {text[:60]!r} is not a list of terms")
    return [v.strip() for v in value if v.strip()]


def read(files: Sequence[Path], *, classes: Sequence[str] | None, config: ArchiveConfig) -> Archive:

    class_names = class_list("padchest", classes)
    known_classes = set(class_names)
    records: list[Record] = []
    outside: Counter = Counter()
    unlabelled = 0
    cache: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for path in files:
        base = str(path.parent)
        for line, row in dict_rows(path, ("ImageID", "ImageDir", "Labels"), also=("PatientID", "Projection")):
            image_id, folder, text = row["ImageID"], row["ImageDir"], row["Labels"]
            if not image_id or not folder:
                raise ArchiveError(f"{path}:{line}: empty ImageID or ImageDir")
            unknown: tuple[str, ...] = ()
            if not text or text.lower() == "nan":
                labels: tuple[str, ...] = ()
                unknown = class_names
                unlabelled += 1
            else:
                if text not in cache:  # about 27,000 distinct label lists in 160,861 rows
                    found: dict[str, None] = {}
                    other: list[str] = []
                    for term in parse_labels(text, where=f"{path}:{line}"):
                        finding = archive_finding("padchest", term)
                        if finding is not None:
                            found.setdefault(finding, None)
                            if finding not in known_classes:
                                other.append(finding)
                    cache[text] = (tuple(found), tuple(other))
                labels, other_terms = cache[text]
                outside.update(other_terms)
            records.append(Record(image_id=image_id, path=os.path.join(base, folder, image_id), labels=labels,
                                  patient_id=row.get("PatientID") or None, view=row.get("Projection") or None,
                                  unknown=unknown))
    return Archive(root=files[0].parent, classes=class_names, records=records, boxes=[], has_labels=True,
                   source="padchest", label_files=list(files),
                   details={"rows": len(records), "rows without labels": unlabelled,
                            "terms outside the class list": len(outside),
                            "most frequent outside terms": dict(outside.most_common(5)),
                            "ground truth": "image labels only (no boxes): miner eval scores AUC"})

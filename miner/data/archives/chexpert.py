"""CheXpert (Irvin et al., AAAI 2019): 224,316 radiographs of Stanford Hospital, 14 labels from reports.

Label files: ``train.csv`` and ``valid.csv`` (``Path, Sex, Age, Frontal/Lateral, AP/PA``, then 14 label columns).
A label is ``1`` (positive), ``0`` (negative), ``-1`` (uncertain) or blank (not mentioned: negative). The
uncertainty policy is `miner.config.ArchiveConfig.uncertain` (Irvin et al.'s U-Ones, U-Zeros, U-Ignore): ``ones``
makes ``-1`` a label, ``zeros`` a negative, ``ignore`` an unknown (`Record.unknown`). ``No Finding`` is no
label. ``Pleural Effusion`` is the canonical Effusion (`miner.findings.ARCHIVE_FINDINGS`).

``Path`` starts with the release's folder name (``CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg``): it is relative to the folder that holds that folder, i.e. the label file's parent when
the label file sits inside it (the download's layout); otherwise relative to the label file's folder. The image
id is the path as written (file names repeat across studies); the split is its ``train`` / ``valid`` folder.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from miner.data.archives.archive import Archive
from miner.data.archives.classes import class_list
from miner.data.archives.rows import dict_rows
from miner.data.records import Record
from miner.errors import ArchiveError
from miner.findings import ARCHIVE_FINDINGS

if TYPE_CHECKING:
    from miner.config import ArchiveConfig

VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}
SPLITS = ("train", "valid", "test")


def image_base(label_file: Path, first_path: str) -> Path:
    """The folder that `first_path` (the ``Path`` column) is relative to."""
    parts = PurePosixPath(first_path).parts
    if parts and label_file.parent.name == parts[0]:
        return label_file.parent.parent  # CheXpert-v1.0-small/train.csv with Path CheXpert-v1.0-small/...
    return label_file.parent


def read(files: Sequence[Path], *, classes: Sequence[str] | None, config: ArchiveConfig) -> Archive:

    policy = config.uncertain
    class_names = class_list("chexpert", classes)
    mapping = ARCHIVE_FINDINGS["chexpert"]
    records: list[Record] = []
    uncertain: Counter = Counter()
    rows = 0
    for path in files:
        base: str | None = None
        columns: list[str] = []
        # rows share few label patterns: one decision per distinct pattern (about 20,000 in 224,316 rows)
        patterns: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        seen_patterns: Counter = Counter()
        for line, row in dict_rows(path, ("Path",), also=(*mapping, "AP/PA", "Frontal/Lateral")):
            if base is None:
                columns = [c for c in row if c in mapping]
                if len(columns) < 2:
                    raise ArchiveError(f"{path}: no CheXpert label columns ({', '.join(list(mapping)[:4])}, ...)")
                base = str(image_base(path, row["Path"]))
            rows += 1
            written = row["Path"]
            if not written:
                raise ArchiveError(f"{path}:{line}: empty Path")
            values = tuple(row[c] for c in columns)
            if values not in patterns:
                patterns[values] = _labels(values, columns, mapping, policy, where=f"{path}:{line}")
            labels, unknown = patterns[values]
            seen_patterns[values] += 1
            parts = written.split("/")  # plain string work: pathlib costs seconds over 224k rows
            at = 1 if len(parts) > 1 and parts[1] in SPLITS else 0  # CheXpert-v1.0-small/train/patient.../...
            split = parts[at] if parts[at] in SPLITS else None
            patient = parts[at + 1] if len(parts) > at + 1 and parts[at + 1].startswith("patient") else None
            view = row.get("AP/PA") or row.get("Frontal/Lateral") or None
            records.append(Record(image_id=written, path=os.path.join(base, written), labels=labels,
                                  split=split, patient_id=patient, view=view, unknown=unknown))
        for values, n in seen_patterns.items():
            for column, text in zip(columns, values):
                if VALUES[text] == -1 and mapping[column] is not None:
                    uncertain[mapping[column]] += n
    return Archive(root=files[0].parent, classes=class_names, records=records, boxes=[], has_labels=True,
                   source="chexpert", label_files=list(files),
                   details={"rows": rows, "uncertain policy": policy,
                            "uncertain labels": dict(uncertain.most_common()),
                            "ground truth": "image labels only (no boxes): miner eval scores AUC"})


def _labels(values: tuple[str, ...], columns: Sequence[str], mapping: dict, policy: str, *,
            where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(labels, unknown findings) of one row's label values under the uncertainty policy."""
    labels, unknown = [], []
    for column, text in zip(columns, values):
        value = VALUES.get(text, "bad")
        if value == "bad":
            raise ArchiveError(f"{where}: {column} is {text!r}; expected 1, 0, -1 or blank")
        finding = mapping[column]
        if finding is None or value in (None, 0):
            continue
        if value == -1 and policy != "ones":
            if policy == "ignore":
                unknown.append(finding)
            continue
        labels.append(finding)
    return tuple(labels), tuple(unknown)

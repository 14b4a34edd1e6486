"""A plain folder of images: every image file below it (searched recursively), unlabelled.

An image's id is its file name, or its path below the folder when two files share a name. ``masks/`` at the top
(`miner.data.archives.archive.MASKS_DIR`) is not searched.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from miner.data.archives.archive import MASKS_DIR, Archive, masks_dir
from miner.data.archives.classes import root_class_list
from miner.data.image import IMAGE_SUFFIXES
from miner.data.records import Record
from miner.errors import ArchiveError


def read_folder(root: Path, classes: Sequence[str] | None) -> Archive:
    """Every image file below `root` (masks/ left out), unlabelled."""
    class_list, _ = root_class_list(root, classes)
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and MASKS_DIR not in p.relative_to(root).parts[:1]
    )
    if not files:
        raise ArchiveError(
            f"{root}: no Data_Entry_2017.csv, manifest or image files ({', '.join(IMAGE_SUFFIXES)}) found"
        )
    names = [p.name for p in files]
    unique = len(set(names)) == len(names)
    records = [
        Record(image_id=p.name if unique else p.relative_to(root).as_posix(), path=str(p.resolve()))
        for p in files
    ]
    return Archive(root=root, classes=class_list, records=records, boxes=[], masks_dir=masks_dir(root),
                   has_labels=False, source="folder")

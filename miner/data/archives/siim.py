"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019; ChestX-ray14 images as DICOM, masks by radiologists).

Label file: ``train-rle.csv`` (``ImageId, EncodedPixels``; also the stage 2 ``stage_2_train.csv``): one row per
pneumothorax mask of an image (``-1``: none), in the challenge's column-major run-length encoding on 1024 x 1024
(`miner.data.archives.rle`). Images: DICOMs named ``<SOPInstanceUID>.dcm`` anywhere below the label file's folder (the
download's ``dicom-images-train/<study>/<series>/``); a DICOM under another name is matched by the
SOPInstanceUID in its header.

Every non-empty mask gives one Pneumothorax box (the box around its pixels, `miner.data.archives.rle.rle_box`)
and keeps its mask for PxAP (`Archive.load_mask` decodes and joins an image's masks). Every image was read, so an
image without a mask is a negative (`Archive.exhaustive`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from miner.data.archives.archive import Archive
from miner.data.archives.classes import class_list
from miner.data.archives.rle import SIIM_MASK_SIZE, is_empty, rle_box
from miner.data.archives.rows import dict_rows
from miner.data.records import GroundTruthBox, Record
from miner.errors import ArchiveError
from miner.findings import ARCHIVE_FINDINGS

if TYPE_CHECKING:
    from miner.config import ArchiveConfig

FINDING = ARCHIVE_FINDINGS["siim"]["EncodedPixels"]
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")


def index_dicoms(root: Path, wanted: set[str]) -> tuple[dict[str, Path], int]:
    """(SOPInstanceUID -> file, files whose header was read) for the DICOMs below `root`.

    A file named ``<uid>.dcm`` with a wanted uid is taken by its name; any other DICOM file's header is read
    (SOPInstanceUID only, no pixels) so renamed files are found too.
    """
    found: dict[str, Path] = {}
    others: list[Path] = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            lower = name.lower()
            if not lower.endswith(DICOM_SUFFIXES):
                continue
            stem = name.rsplit(".", 1)[0]
            if stem in wanted and stem not in found:
                found[stem] = Path(folder) / name
            else:
                others.append(Path(folder) / name)
    read = 0
    if len(found) < len(wanted) and others:
        import pydicom

        for path in others:
            read += 1
            try:
                uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"],
                                          force=True).get("SOPInstanceUID", ""))
            except Exception:  # noqa: BLE001 - an unreadable file is reported when the job decodes it
                continue
            if uid in wanted and uid not in found:
                found[uid] = path
    return found, read


def read(files: Sequence[Path], *, classes: Sequence[str] | None, config: ArchiveConfig) -> Archive:

    class_names = class_list("siim", classes)
    masks: dict[str, list[str]] = {}
    boxes: list[GroundTruthBox] = []
    rows = 0
    for path in files:
        for line, row in dict_rows(path, ("ImageId", "EncodedPixels")):
            rows += 1
            image_id, text = row["ImageId"], row["EncodedPixels"]
            if not image_id:
                raise ArchiveError(f"{path}:{line}: empty ImageId")
            own = masks.setdefault(image_id, [])
            if not text:
                raise ArchiveError(f"{path}:{line}: empty EncodedPixels (write -1 for an image without a mask)")
            if is_empty(text):
                continue
            box = rle_box(text, SIIM_MASK_SIZE, where=f"{path}:{line}")
            if box is None:
                continue
            own.append(text)
            boxes.append(GroundTruthBox(image_id, FINDING, *box))
    root = files[0].parent
    located, headers_read = index_dicoms(root, set(masks))
    records = [Record(image_id=i, path=str(located.get(i, root / f"{i}.dcm")), labels=(FINDING,) if m else (),
                      split="train")
               for i, m in masks.items()]
    return Archive(root=root, classes=class_names, records=records, boxes=boxes, has_labels=True, source="siim",
                   exhaustive=True, mask_rle={(i, FINDING): m for i, m in masks.items() if m},
                   mask_size=SIIM_MASK_SIZE, label_files=list(files),
                   details={"rows": rows, "masks": len(boxes), "images with masks": sum(1 for m in masks.values() if m),
                            "DICOMs found": len(located), "DICOM headers read": headers_read,
                            "ground truth": "one Pneumothorax box per mask (the box around its pixels); masks for "
                                            "PxAP"})

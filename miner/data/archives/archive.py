"""`Archive`: the records, boxes and class list of one archive, as every reader returns it.

`read_archive` (`miner.data.archives.read`) builds one with the reader of its kind and then applies the archive-root
rule to it (`confine`; `miner.data.confine`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from miner.data.archives.rle import rle_decode
from miner.data.confine import check_inside, resolve_root
from miner.data.records import GroundTruthBox, Record
from miner.errors import ArchiveError, ImageError

MASKS_DIR = "masks"


@dataclass
class Archive:
    """Records, boxes and the class list of one archive.

    Attributes:
        root: the archive's folder (the manifest's folder for a manifest; the label file's folder for the kinds of
            `miner.data.archives.kinds`).
        classes: the class list in effect (the columns of `labels_matrix`).
        records: one per image, in the archive's order.
        boxes: every ground-truth box of the archive (BBox_List_2017 convention), in file order.
        masks_dir: ``root/masks`` when it exists (phantom archives written with masks), else None.
            Layout: ``masks/<image stem>_<Finding>.png``, 8-bit, 255 on the finding's lesions.
        has_labels: False for a plain image folder or a manifest without label columns (labels unknown,
            not "No Finding").
        source: ``"release"``, ``"manifest"``, ``"folder"`` or an archive kind of `miner.data.archives.kinds`
            (``"vindr"``, ``"rsna"``, ``"siim"``, ``"chexpert"``, ``"padchest"``, ``"google"``).
        exhaustive: readers looked at every image for boxes (VinDr-CXR, RSNA, SIIM): an image without a box
            of a finding is a known negative for it. False for ChestX-ray14, whose box list covers 880 images.
        mask_rle: run-length masks per (image_id, finding) (SIIM-ACR; `miner.data.archives.rle`), on ``mask_size``.
        mask_size: (H, W) of the run-length masks.
        label_files: the files the labels were read from.
        details: facts of this kind for ``miner inspect`` (readers, uncertainty policy, rows, ...).
        confined_to: the resolved folder that every image file must lie under (the archive-root rule,
            `miner.data.confine`): `root`, or the folder a reader names (VinDr-CXR's PhysioNet layout: the folder
            holding ``annotations/`` and ``train/``); None when read with ``allow_outside_archive``.
        duplicates: image id -> rows that listed it, for every id listed more than once (only its first row is
            read; module docstring).
    """

    root: Path
    classes: tuple[str, ...]
    records: list[Record]
    boxes: list[GroundTruthBox] = field(default_factory=list)
    masks_dir: Path | None = None
    has_labels: bool = True
    source: str = "release"
    exhaustive: bool = False
    mask_rle: dict[tuple[str, str], list[str]] | None = None
    mask_size: tuple[int, int] | None = None
    label_files: list[Path] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    confined_to: Path | None = None
    duplicates: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def labels_matrix(self) -> np.ndarray:
        """np.ndarray[N, C] float32: 1 where record n carries class c (labels outside `classes` ignored)."""
        index = {name: c for c, name in enumerate(self.classes)}
        out = np.zeros((len(self.records), len(self.classes)), dtype=np.float32)
        for n, record in enumerate(self.records):
            for label in record.labels:
                c = index.get(label)
                if c is not None:
                    out[n, c] = 1.0
        return out

    def known_matrix(self) -> np.ndarray:
        """np.ndarray[N, C] bool: False where record n's label of class c is unknown (`Record.unknown`)."""
        index = {name: c for c, name in enumerate(self.classes)}
        out = np.ones((len(self.records), len(self.classes)), dtype=bool)
        for n, record in enumerate(self.records):
            for label in record.unknown:
                c = index.get(label)
                if c is not None:
                    out[n, c] = False
        return out

    def subset(self, split: str) -> Archive:
        """The records of one split (``"train"`` or ``"test"``) and their boxes."""
        records = [r for r in self.records if r.split == split]
        ids = {r.image_id for r in records}
        return replace(self, records=records, boxes=[b for b in self.boxes if b.image_id in ids])

    def boxes_by_image(self) -> dict[str, list[GroundTruthBox]]:
        """image_id -> its boxes, in file order."""
        out: dict[str, list[GroundTruthBox]] = {}
        for b in self.boxes:
            out.setdefault(b.image_id, []).append(b)
        return out

    def has_masks(self) -> bool:
        """Whether the archive holds masks (a ``masks/`` folder or run-length masks)."""
        return self.masks_dir is not None or bool(self.mask_rle)

    def mask_path(self, image_id: str, finding: str) -> Path | None:
        """``masks/<stem>_<finding>.png`` when the archive has masks and this one exists, else None."""
        if self.masks_dir is None:
            return None
        path = self.masks_dir / f"{Path(image_id).stem}_{finding}.png"
        return path if path.is_file() else None

    def load_mask(self, image_id: str, finding: str) -> np.ndarray | None:
        """np.ndarray[H, W] bool: the finding's pixels in this image, or None without a mask.

        Run-length masks (SIIM-ACR) are decoded on `mask_size` and several masks of one image are joined.
        """
        import cv2

        if self.mask_rle is not None:
            texts = self.mask_rle.get((image_id, finding))
            if not texts:
                return None
            mask = np.zeros(self.mask_size, dtype=bool)
            for text in texts:
                mask |= rle_decode(text, self.mask_size, where=f"{image_id} {finding}")
            return mask
        path = self.mask_path(image_id, finding)
        if path is None:
            return None
        try:
            real = check_inside(path, self.confined_to)
        except ImageError as err:
            raise ArchiveError(f"{path}: mask {err.detail}") from None
        mask = cv2.imread(real, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ArchiveError(f"{path}: mask does not decode")
        return mask > 127


def masks_dir(root: Path) -> Path | None:
    """``root/masks`` when it exists (`Archive.masks_dir`), else None."""
    return root / MASKS_DIR if (root / MASKS_DIR).is_dir() else None


def confine(archive: Archive, *, allow: bool = False) -> Archive:
    """Set the root of `archive` and of each of its records (in place; returns it): `Archive.confined_to` (the
    reader's choice, else `Archive.root`) resolved once, or None for every one with `allow`."""
    root = None if allow else resolve_root(archive.confined_to or archive.root)
    archive.confined_to = root
    text = None if root is None else str(root)
    for record in archive.records:
        object.__setattr__(record, "root", text)  # Record is frozen; its root is set once, here
    return archive


def unconfined(archive: Archive) -> Archive:
    """`archive` with the rule lifted (``--allow-outside-archive`` given to a verb that reads a recorded archive)."""
    return confine(archive, allow=True)

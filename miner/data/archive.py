"""`read_archive`: an archive of labelled images as records, boxes and a class list.

These kinds of input are accepted (see `read_archive`):

1. the ChestX-ray14 release layout (`miner.data.nih`), as a folder or as the path of its Data_Entry file;
2. the archives of `miner.data.kinds`, recognised from their label files: VinDr-CXR, RSNA Pneumonia,
   SIIM-ACR Pneumothorax, CheXpert, PadChest and Google's ChestX-ray14 relabels (findings in the one vocabulary
   of `miner.findings`);
3. a manifest: CSV (plain or ``.csv.gz``) or Parquet with one row per image and a path column;
4. a plain folder of images (searched recursively; unlabelled).

For the release, a manifest and a folder the class list is, in order of precedence: the ``classes`` argument; a
``classes.txt`` in the archive's root (one finding per line, ``#`` comments allowed); the 14 ChestX-ray14 findings
(`miner.findings.CHESTXRAY14`). The other kinds default to the vocabulary findings they can name.

Two rules hold for every kind, applied once to what its reader returns (`read_archive`), so every verb inherits them:

- **duplicate rows**: an image id listed more than once (in a release's Data_Entry file, a manifest, a CheXpert,
  PadChest or Google label file) is read once, from its first row (its labels, path, split); the later rows are
  dropped, a warning (`miner.errors.MinerWarning`; one ``miner VERB: warning:`` line on the command line) names
  the label file, how many ids repeat and the first few, and `Archive.duplicates` keeps them for
  ``miner inspect``. (VinDr-CXR, RSNA and SIIM list one row per box or mask: their readers join an image's rows.)
- **the archive root**: image files may only resolve under the archive's root (`miner.data.confine`); each record
  carries that root (`Record.root`) and is checked right before its file is opened.
"""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from miner.data import nih
from miner.data.image import IMAGE_SUFFIXES
from miner.data.records import GroundTruthBox, Record
from miner.errors import ArchiveError, MinerWarning, UsageError
from miner.findings import CHESTXRAY14, canonical

CLASSES_FILE = "classes.txt"
MASKS_DIR = "masks"
MANIFEST_NAMES: tuple[str, ...] = ("manifest.parquet", "manifest.csv", "manifest.csv.gz")

_PATH_COLUMNS = ("path", "file", "filepath", "file_path", "image_path", "filename", "file_name")
_ID_COLUMNS = ("image_id", "image index", "image_index", "id")
_LABEL_COLUMNS = ("labels", "finding labels", "finding_labels", "findings")
_SPLIT_COLUMNS = ("split", "subset", "fold")
_PATIENT_COLUMNS = ("patient_id", "patient id", "patient")
_SPLIT_ALIASES = {"train_val": "train", "trainval": "train", "training": "train", "testing": "test"}


@dataclass
class Archive:
    """Records, boxes and the class list of one archive.

    Attributes:
        root: the archive's folder (the manifest's folder for a manifest; the label file's folder for the kinds of
            `miner.data.kinds`).
        classes: the class list in effect (the columns of `labels_matrix`).
        records: one per image, in the archive's order.
        boxes: every ground-truth box of the archive (BBox_List_2017 convention), in file order.
        masks_dir: ``root/masks`` when it exists (phantom archives written with masks), else None.
            Layout: ``masks/<image stem>_<Finding>.png``, 8-bit, 255 on the finding's lesions.
        has_labels: False for a plain image folder or a manifest without label columns (labels unknown,
            not "No Finding").
        source: ``"release"``, ``"manifest"``, ``"folder"`` or an archive kind of `miner.data.kinds`
            (``"vindr"``, ``"rsna"``, ``"siim"``, ``"chexpert"``, ``"padchest"``, ``"google"``).
        exhaustive: readers looked at every image for boxes (VinDr-CXR, RSNA, SIIM): an image without a box
            of a finding is a known negative for it. False for ChestX-ray14, whose box list covers 880 images.
        mask_rle: run-length masks per (image_id, finding) (SIIM-ACR; `miner.data.rle`), on ``mask_size``.
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
            from miner.data.rle import rle_decode

            mask = np.zeros(self.mask_size, dtype=bool)
            for text in texts:
                mask |= rle_decode(text, self.mask_size, where=f"{image_id} {finding}")
            return mask
        path = self.mask_path(image_id, finding)
        if path is None:
            return None
        from miner.data.confine import check_inside
        from miner.errors import ImageError

        try:
            real = check_inside(path, self.confined_to)
        except ImageError as err:
            raise ArchiveError(f"{path}: mask {err.detail}") from None
        mask = cv2.imread(real, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ArchiveError(f"{path}: mask does not decode")
        return mask > 127


def read_classes_file(path: Path) -> tuple[str, ...]:
    """The findings of a ``classes.txt``: one per line, ``#`` comments, read as `miner.data.textfile` states."""
    from miner.data.textfile import display_path, text_lines

    names = []
    for _, line in text_lines(path):
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(canonical(line))
    if not names:
        raise ArchiveError(f"{display_path(path)}: no class names (one finding per line expected)")
    if len(set(names)) != len(names):
        raise ArchiveError(f"{display_path(path)}: a class is listed twice")
    return tuple(names)


def _class_list(root: Path, classes: Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """(classes, declared): declared is False when the default list applies."""
    if classes is not None:
        names = tuple(canonical(c) for c in classes)
        if not names or len(set(names)) != len(names):
            raise ArchiveError(f"classes must be a non-empty list without repeats, got {list(classes)}")
        return names, True
    if (root / CLASSES_FILE).is_file():
        return read_classes_file(root / CLASSES_FILE), True
    return CHESTXRAY14, False


def _check_labels(records: list[Record], classes: tuple[str, ...], declared: bool, where: Path) -> None:
    if declared:
        return  # an explicit list may be a subset; labels outside it are kept but not in labels_matrix()
    known = set(classes)
    for r in records:
        for label in r.labels:
            if label not in known:
                raise ArchiveError(
                    f"{where}: image {r.image_id} has finding {label!r}, not one of the 14 ChestX-ray14 findings; "
                    f"declare the archive's classes in {CLASSES_FILE} (one per line) or pass classes="
                )


def _masks_dir(root: Path) -> Path | None:
    return root / MASKS_DIR if (root / MASKS_DIR).is_dir() else None


def _read_release(root: Path, data_entry: Path, classes: Sequence[str] | None) -> Archive:
    class_list, declared = _class_list(root, classes)
    rows = nih.read_data_entry(data_entry)
    splits: dict[str, str] = {}
    for name, split in ((nih.TRAIN_LIST_NAME, "train"), (nih.TEST_LIST_NAME, "test")):
        found = nih.find_file(root, name)
        if found is not None:
            for image_id in nih.read_split_list(found):
                splits[image_id] = split
    folders = nih.image_folders(root)
    location: dict[str, Path] = {}
    if len(folders) > 1:  # images_001/images ... images_012/images: index them once
        for folder in folders:
            with os.scandir(folder) as it:
                for entry in it:
                    location.setdefault(entry.name, folder)
    default = folders[0] if folders else root / "images"
    records = [
        Record(
            image_id=r.image_id,
            path=str(location.get(r.image_id, default) / r.image_id),
            labels=r.labels,
            split=splits.get(r.image_id),
            patient_id=r.patient_id,
            follow_up=r.follow_up,
            view=r.view,
        )
        for r in rows
    ]
    _check_labels(records, class_list, declared, data_entry)
    bbox = nih.find_file(root, nih.BBOX_LIST_NAME)
    boxes = nih.read_bbox_list(bbox) if bbox is not None else []
    return Archive(root=root, classes=class_list, records=records, boxes=boxes,
                   masks_dir=_masks_dir(root), has_labels=True, source="release",
                   label_files=[data_entry] + ([bbox] if bbox is not None else []))


def _read_table(path: Path) -> tuple[list[str], list[dict[str, object]]]:
    """(columns, rows) of a manifest: Parquet, or CSV read as `miner.data.textfile` states (UTF-8, limits).

    Raises:
        ArchiveError: an unreadable file, no header, no rows, or a text value holding a control character.
    """
    from miner.data.textfile import VALUE_CONTROL_RE2, brief, csv_rows, display_path

    where = display_path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError for non-Parquet bytes
            raise ArchiveError(f"{where}: not a readable Parquet file ({brief(err)})") from None
        if table.num_rows == 0:
            raise ArchiveError(f"{where}: holds no rows; a manifest lists one image per row")
        for column, values in zip(table.column_names, table.columns):
            if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                bad = pc.match_substring_regex(values, VALUE_CONTROL_RE2)
                if pc.any(bad).as_py():
                    row = pc.index(bad, True).as_py() + 1
                    raise ArchiveError(f"{where}: row {row}: {column!r} holds a control character or line break; "
                                       "manifest values are one-line printable text")
        return list(table.column_names), table.to_pylist()
    rows_of = csv_rows(path)
    try:
        first = next(rows_of, None)
        if first is None:
            raise ArchiveError(f"{where}: empty file; expected a header line naming the columns (path, labels, ...)")
        names = first[1]
        rows: list[dict[str, object]] = []
        for _, row in rows_of:
            if not row:
                continue  # a blank line (csv.DictReader skips them too)
            rows.append(dict(zip(names, row)) if len(row) >= len(names) else
                        {**dict.fromkeys(names), **dict(zip(names, row))})
    finally:
        rows_of.close()
    if not rows:
        raise ArchiveError(f"{where}: no rows below the header; a manifest lists one image per line")
    return [c for c in names if c], rows


def _pick(columns: list[str], candidates: Sequence[str]) -> str | None:
    lowered = {c.strip().lower(): c for c in columns}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    return None


def _truthy(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return value == value and float(value) > 0  # NaN-safe; -1 (uncertain) counts as negative
    text = str(value).strip().lower()
    if text in ("true", "yes", "y"):
        return True
    try:
        return float(text) > 0
    except ValueError:
        return False


def _read_manifest(path: Path, classes: Sequence[str] | None) -> Archive:
    root = path.parent.resolve()
    class_list, declared = _class_list(root, classes)
    columns, rows = _read_table(path)
    path_col = _pick(columns, _PATH_COLUMNS)
    if path_col is None:
        raise ArchiveError(f"{path}: no path column (one of {', '.join(_PATH_COLUMNS)}); found {columns}")
    id_col = _pick(columns, _ID_COLUMNS)
    label_col = _pick(columns, _LABEL_COLUMNS)
    split_col = _pick(columns, _SPLIT_COLUMNS)
    patient_col = _pick(columns, _PATIENT_COLUMNS)
    finding_cols = [(c, canonical(c)) for c in columns if canonical(c) in class_list] if label_col is None else []
    has_labels = label_col is not None or bool(finding_cols)

    paths = []
    for n, row in enumerate(rows):
        value = row.get(path_col)
        if value is None or not str(value).strip():
            raise ArchiveError(f"{path}: row {n + 1} has an empty {path_col!r}")
        p = Path(str(value).strip())
        paths.append((str(value).strip(), p if p.is_absolute() else root / p))
    files = {p for _, p in paths}  # a file listed twice is one file (read once, from its first row)
    unique_names = len({p.name for p in files}) == len(files)

    records = []
    for row, (written, full) in zip(rows, paths):
        if label_col is not None:
            labels = nih.split_labels(str(row.get(label_col) or ""))
        else:
            labels = tuple(name for col, name in finding_cols if _truthy(row.get(col)))
        split = str(row.get(split_col) or "").strip().lower() if split_col else ""
        patient = str(row.get(patient_col) or "").strip() if patient_col else ""
        image_id = str(row.get(id_col) or "").strip() if id_col else ""
        records.append(Record(
            image_id=image_id or (full.name if unique_names else written),
            path=str(full.resolve()),
            labels=labels,
            split=_SPLIT_ALIASES.get(split, split) or None,
            patient_id=patient or None,
        ))
    if label_col is not None:
        _check_labels(records, class_list, declared, path)
    bbox = nih.find_file(root, nih.BBOX_LIST_NAME)
    boxes = nih.read_bbox_list(bbox) if bbox is not None else []
    return Archive(root=root, classes=class_list, records=records, boxes=boxes,
                   masks_dir=_masks_dir(root), has_labels=has_labels, source="manifest",
                   label_files=[path] + ([bbox] if bbox is not None else []))


def _read_folder(root: Path, classes: Sequence[str] | None) -> Archive:
    class_list, _ = _class_list(root, classes)
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
    return Archive(root=root, classes=class_list, records=records, boxes=[], masks_dir=_masks_dir(root),
                   has_labels=False, source="folder")


def printable(text: str) -> str:
    """`text` on one line: control and format characters (newlines, U+202E, ...) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


#: duplicate image ids a warning names (all are counted)
SHOWN_DUPLICATES = 5


def _drop_duplicates(archive: Archive) -> Archive:
    """Keep the first row of every image id (in place; returns `archive`); warn naming the others."""
    counts: dict[str, int] = {}
    kept = []
    for record in archive.records:
        n = counts.get(record.image_id, 0)
        counts[record.image_id] = n + 1
        if n == 0:
            kept.append(record)
    if len(kept) == len(archive.records):
        return archive
    repeated = {image_id: n for image_id, n in counts.items() if n > 1}
    archive.records = kept
    archive.duplicates = repeated
    files = archive.label_files[:1] if archive.source in ("release", "manifest") else archive.label_files
    where = ", ".join(str(p) for p in files) or str(archive.root)
    shown = ", ".join(f"{printable(i)} x{n}" for i, n in list(repeated.items())[:SHOWN_DUPLICATES])
    more = len(repeated) - SHOWN_DUPLICATES
    ids = "1 image id is" if len(repeated) == 1 else f"{len(repeated)} image ids are"
    warnings.warn(f"{printable(where)}: {ids} listed more than once ({shown}"
                  f"{f', ... {more} more' if more > 0 else ''}); each is read once, from its first row",
                  MinerWarning, stacklevel=3)
    return archive


def read_archive(path: str | Path, *, classes: Sequence[str] | None = None, config: Any = None) -> Archive:
    """Read an archive's records, boxes and class list (image files are not opened).

    Args:
        path: one of
            - a ChestX-ray14 release folder (``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``, plain or
              ``.gz``; optional ``BBox_List_2017.csv``, ``train_val_list.txt``, ``test_list.txt``; images under
              ``images/`` or ``images_*/images/``), or the path of its Data_Entry file;
            - a manifest file (``.csv``, ``.csv.gz``, ``.parquet``), or a folder holding ``manifest.parquet`` /
              ``manifest.csv``: one row per image; a path column (``path``, ``file``, ...; relative paths are
              relative to the manifest's folder); optional ``image_id``, ``split``, ``patient_id`` columns; labels
              either as a ``labels`` / ``Finding Labels`` column (``|``-separated, ``No Finding``) or as one
              column per finding (named like a class; values > 0, ``true`` or ``yes`` mean present). A
              ``BBox_List_2017.csv`` beside the manifest is read too;
            - the label file of an archive kind in `miner.data.kinds` (VinDr-CXR, RSNA Pneumonia, SIIM-ACR,
              CheXpert, PadChest, Google's relabels), or a folder holding it (its header decides the kind);
            - any other folder: every image file below it (PNG, JPEG, TIFF, DICOM), unlabelled.
        classes: the class list; default: ``classes.txt`` in the archive's root, else the 14 ChestX-ray14
            findings (for the kinds of `miner.data.kinds`: the vocabulary findings the archive names). With the
            default list an unknown finding name in a release or manifest is an error (a typo or a different
            dataset); with a declared list, labels outside it are kept on the records but left out of
            `Archive.labels_matrix`.
        config: `miner.config.ArchiveConfig` (CheXpert's uncertainty policy; ``allow_outside_archive``); None = the
            defaults.

    Returns:
        The archive, an image id listed twice read once (module docstring), every record carrying the root its
        file must lie under (`Record.root`; None with ``allow_outside_archive``).

    Raises:
        ArchiveError: a path that is not an archive, or a file that cannot be read as one.
    """
    from miner.config import UNCERTAIN_POLICIES, ArchiveConfig
    from miner.data.confine import confine

    config = config or ArchiveConfig()
    if config.uncertain not in UNCERTAIN_POLICIES:
        raise UsageError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {config.uncertain!r}")
    archive = _read_any(Path(path).expanduser(), classes, config)
    return confine(_drop_duplicates(archive), allow=bool(getattr(config, "allow_outside_archive", False)))


def _read_any(path: Path, classes: Sequence[str] | None, config: Any) -> Archive:
    from miner.data import kinds

    if not path.exists():
        raise ArchiveError(f"{path}: no such file or folder; give an archive folder or a manifest file")
    if path.is_file():
        if path.name.startswith("Data_Entry"):
            return _read_release(path.parent.resolve(), path, classes)
        if kinds.is_label_file(path):
            found = kinds.detect(path)
            if found is not None:
                return kinds.read_kind(found[0], found[1], classes=classes, config=config)
        if path.name.lower().endswith((".csv", ".csv.gz", ".parquet")):
            return _read_manifest(path, classes)
        raise ArchiveError(f"{path}: not an archive; give a folder, a Data_Entry CSV, an archive's label file or "
                           "a CSV/Parquet manifest")
    root = path.resolve()
    data_entry = nih.find_data_entry(root)
    if data_entry is not None:
        return _read_release(root, data_entry, classes)
    found = kinds.detect(root)
    if found is not None:
        return kinds.read_kind(found[0], found[1], classes=classes, config=config)
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return _read_manifest(root / name, classes)
    return _read_folder(root, classes)

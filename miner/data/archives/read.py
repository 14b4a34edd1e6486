"""`read_archive`: an archive of labelled images as records, boxes and a class list.

These kinds of input are accepted (see `read_archive`):

1. the ChestX-ray14 release layout (`miner.data.archives.nih`), as a folder or as the path of its Data_Entry
   file;
2. the archives of `miner.data.archives.kinds`, recognised from their label files: VinDr-CXR, RSNA Pneumonia,
   SIIM-ACR Pneumothorax, CheXpert, PadChest and Google's ChestX-ray14 relabels (findings in the one vocabulary
   of `miner.findings`);
3. a manifest: CSV (plain or ``.csv.gz``) or Parquet with one row per image and a path column
   (`miner.data.archives.manifest`);
4. a plain folder of images (searched recursively; unlabelled; `miner.data.archives.folder`).

For the release, a manifest and a folder the class list is, in order of precedence: the ``classes`` argument; a
``classes.txt`` in the archive's root (one finding per line, ``#`` comments allowed); the 14 ChestX-ray14 findings
(`miner.findings.CHESTXRAY14`). The other kinds default to the vocabulary findings they can name
(`miner.data.archives.classes`).

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

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from miner.data.archives import chexpert, folder, google, kinds, manifest, nih, padchest, rsna, siim, vindr
from miner.data.archives.archive import Archive, confine
from miner.data.textfile import printable
from miner.errors import ArchiveError, MinerWarning, UsageError

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
            - the label file of an archive kind in `miner.data.archives.kinds` (VinDr-CXR, RSNA Pneumonia,
              SIIM-ACR, CheXpert, PadChest, Google's relabels), or a folder holding it (its header decides the
              kind);
            - any other folder: every image file below it (PNG, JPEG, TIFF, DICOM), unlabelled.
        classes: the class list; default: ``classes.txt`` in the archive's root, else the 14 ChestX-ray14
            findings (for the kinds of `miner.data.archives.kinds`: the vocabulary findings the archive names).
            With the default list an unknown finding name in a release or manifest is an error (a typo or a
            different dataset); with a declared list, labels outside it are kept on the records but left out of
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

    config = config or ArchiveConfig()
    if config.uncertain not in UNCERTAIN_POLICIES:
        raise UsageError(f"--uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {config.uncertain!r}")
    archive = _read_any(Path(path).expanduser(), classes, config)
    return confine(_drop_duplicates(archive), allow=bool(getattr(config, "allow_outside_archive", False)))


def _read_any(path: Path, classes: Sequence[str] | None, config: Any) -> Archive:
    if not path.exists():
        raise ArchiveError(f"{path}: no such file or folder; give an archive folder or a manifest file")
    if path.is_file():
        if path.name.startswith("Data_Entry"):
            return nih.read_release(path.parent.resolve(), path, classes)
        if kinds.is_label_file(path):
            found = kinds.detect(path)
            if found is not None:
                return _read_kind(found[0], found[1], classes=classes, config=config)
        if path.name.lower().endswith((".csv", ".csv.gz", ".parquet")):
            return manifest.read_manifest(path, classes)
        raise ArchiveError(f"{path}: not an archive; give a folder, a Data_Entry CSV, an archive's label file or "
                           "a CSV/Parquet manifest")
    root = path.resolve()
    data_entry = nih.find_data_entry(root)
    if data_entry is not None:
        return nih.read_release(root, data_entry, classes)
    found = kinds.detect(root)
    if found is not None:
        return _read_kind(found[0], found[1], classes=classes, config=config)
    for name in manifest.MANIFEST_NAMES:
        if (root / name).is_file():
            return manifest.read_manifest(root / name, classes)
    return folder.read_folder(root, classes)


#: the reader of each archive kind of `miner.data.archives.kinds`: ``read(files, *, classes, config) -> Archive``
READERS: dict[str, Callable[..., Archive]] = {
    "vindr": vindr.read,
    "rsna": rsna.read,
    "siim": siim.read,
    "chexpert": chexpert.read,
    "padchest": padchest.read,
    "google": google.read,
}


def _read_kind(kind: kinds.ArchiveKind, files: Sequence[Path], *, classes: Sequence[str] | None,
               config: Any) -> Archive:
    """Run `kind`'s reader on its label files."""
    return READERS[kind.name]([Path(f).resolve() for f in files], classes=classes, config=config)

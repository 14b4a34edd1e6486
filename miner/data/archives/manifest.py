"""A manifest: CSV (plain or ``.csv.gz``) or Parquet with one row per image and a path column.

Columns are found by name (`read_manifest`; the accepted spellings below): a path column, relative paths
relative to the manifest's folder; optional image id, split and patient columns; labels as one ``|``-separated
column (``No Finding``) or as one column per finding. A ``BBox_List_2017.csv`` beside the manifest is read too
(`miner.data.archives.nih`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from miner.data.archives import nih
from miner.data.archives.archive import Archive, masks_dir
from miner.data.archives.classes import check_labels, root_class_list
from miner.data.records import Record
from miner.data.textfile import VALUE_CONTROL_RE2, brief, csv_rows, display_path
from miner.errors import ArchiveError
from miner.findings import canonical

MANIFEST_NAMES: tuple[str, ...] = ("manifest.parquet", "manifest.csv", "manifest.csv.gz")

_PATH_COLUMNS = ("path", "file", "filepath", "file_path", "image_path", "filename", "file_name")
_ID_COLUMNS = ("image_id", "image index", "image_index", "id")
_LABEL_COLUMNS = ("labels", "finding labels", "finding_labels", "findings")
_SPLIT_COLUMNS = ("split", "subset", "fold")
_PATIENT_COLUMNS = ("patient_id", "patient id", "patient")
_SPLIT_ALIASES = {"train_val": "train", "trainval": "train", "training": "train", "testing": "test"}


def _read_table(path: Path) -> tuple[list[str], list[dict[str, object]]]:
    """(columns, rows) of a manifest: Parquet, or CSV read as `miner.data.textfile` states (UTF-8, limits).

    Raises:
        ArchiveError: an unreadable file, no header, no rows, or a text value holding a control character.
    """
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


def read_manifest(path: Path, classes: Sequence[str] | None) -> Archive:
    """The manifest `path` (`miner.data.archives.read_archive` states its columns)."""
    root = path.parent.resolve()
    class_list, declared = root_class_list(root, classes)
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
        check_labels(records, class_list, declared, path)
    bbox = nih.find_file(root, nih.BBOX_LIST_NAME)
    boxes = nih.read_bbox_list(bbox) if bbox is not None else []
    return Archive(root=root, classes=class_list, records=records, boxes=boxes,
                   masks_dir=masks_dir(root), has_labels=has_labels, source="manifest",
                   label_files=[path] + ([bbox] if bbox is not None else []))

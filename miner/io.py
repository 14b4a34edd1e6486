"""The mining job's output on disk: Parquet schemas, atomic per-shard writes, the manifest.

Layout of an output folder ``OUT`` (DESIGN.md, "Output contract")::

    OUT/boxes/part-000042.parquet    one row per box                    (BOXES_SCHEMA)
    OUT/errors/part-000042.parquet   one row per input that failed      (ERRORS_SCHEMA)
    OUT/images/part-000042.parquet   one row per image that was mined   (IMAGES_SCHEMA)
    OUT/_shards/000042.json          done-marker of shard 42, written last
    OUT/_manifest.json               model, configuration, shard boundaries, counts, timings, versions
    OUT/.lock                        held (flock) by the job writing OUT

Every file is written as a hidden ``.NAME.tmp`` beside its final name, flushed, fsynced, then moved in place
with `os.replace` (atomic on POSIX), and the folder is fsynced. A shard counts as done only when its marker
exists, and the marker is written after its three Parquet files are in place: a job killed at any moment
leaves whole files only, a rerun rewrites every shard without a marker under the same names, and the final
dataset holds each row exactly once. Hidden ``.tmp`` names are skipped by pyarrow/pandas (``.`` prefix) and
by ``*.parquet`` globs (DuckDB), so the folders can be read while a job runs; `ShardStore.clean_stale`
removes the leftovers of a killed job on start.

Every shard writes all three files, empty ones included, so a reader never meets a missing file and the
``images`` dataset tells "mined, no boxes" (a row with ``boxes == 0``) from "not mined" (no row).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from miner.errors import UsageError

#: one row per box (DESIGN.md): x, y, w, h in original image pixels (BBox_List_2017.csv convention)
BOXES_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("finding", pa.string(), nullable=False),
    pa.field("class_index", pa.int16(), nullable=False),
    pa.field("rank", pa.int8(), nullable=False),
    pa.field("x", pa.float32(), nullable=False),
    pa.field("y", pa.float32(), nullable=False),
    pa.field("w", pa.float32(), nullable=False),
    pa.field("h", pa.float32(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("prob", pa.float32(), nullable=False),
    pa.field("threshold", pa.float32(), nullable=False),
])

#: one row per input that could not be processed; ``kind`` is an `ImageError` kind (missing, empty,
#: truncated, corrupt, unsupported) or ``decode`` / ``model`` for an unexpected failure in that stage
ERRORS_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
])

#: one row per image that went through the model: its original size, how many boxes it gave, and the
#: classifier's probability of every class (in the order of the manifest's ``model.classes``)
IMAGES_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("boxes", pa.int32(), nullable=False),
    pa.field("probs", pa.list_(pa.float32()), nullable=False),
])

DATASETS: dict[str, pa.Schema] = {"boxes": BOXES_SCHEMA, "errors": ERRORS_SCHEMA, "images": IMAGES_SCHEMA}
MANIFEST_NAME = "_manifest.json"
SHARDS_DIR = "_shards"
LOCK_NAME = ".lock"
TMP_SUFFIX = ".tmp"
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")
_MARKER_RE = re.compile(r"^(\d{6,})\.json$")


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table with `schema` and no rows."""
    return schema.empty_table()


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """`rows` (dicts keyed by column name) as a table cast to `schema` exactly (column order and types)."""
    if not rows:
        return empty_table(schema)
    columns = {name: [row[name] for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, order and types (raises if a column is missing)."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing} of the output schema")
    return table.select(schema.names).cast(schema)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either its old content or all of `data`, never a part."""
    path = Path(path)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write `table` as one Parquet file at `path`, atomically (temporary file, fsync, `os.replace`)."""
    path = Path(path)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The manifest of output folder `out`, or None when there is none."""
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not a valid manifest ({err.msg}); use --overwrite to start OUT afresh") from err


def write_manifest(out: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write `manifest` as ``OUT/_manifest.json``, atomically."""
    atomic_write_bytes(Path(out) / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


class ShardStore:
    """Per-shard atomic outputs of one output folder.

    ``store.done()`` lists the finished shards; ``store.write_shard(k, boxes=..., errors=..., images=...,
    info=...)`` writes shard k's three Parquet files and then its marker. Hold ``store.lock()`` while
    writing so that two jobs never write the same folder.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    # -- paths -----------------------------------------------------------------------------------------
    def part_path(self, dataset: str, index: int) -> Path:
        return self.out / dataset / f"part-{index:06d}.parquet"

    def marker_path(self, index: int) -> Path:
        return self.out / SHARDS_DIR / f"{index:06d}.json"

    # -- state -----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folders (idempotent)."""
        for name in (*DATASETS, SHARDS_DIR):
            (self.out / name).mkdir(parents=True, exist_ok=True)

    def has_output(self) -> bool:
        """Whether the folder holds anything this store writes (a manifest, parts or markers)."""
        if (self.out / MANIFEST_NAME).exists():
            return True
        return any(self._listing(name) for name in (*DATASETS, SHARDS_DIR))

    def _listing(self, name: str) -> list[str]:
        folder = self.out / name
        return sorted(os.listdir(folder)) if folder.is_dir() else []

    def done(self) -> dict[int, dict[str, Any]]:
        """Finished shards: index -> the info its marker holds."""
        result: dict[int, dict[str, Any]] = {}
        for name in self._listing(SHARDS_DIR):
            match = _MARKER_RE.match(name)
            if match:
                result[int(match.group(1))] = json.loads((self.out / SHARDS_DIR / name).read_text())
        return result

    def clean_stale(self, *, done: Sequence[int] | None = None) -> int:
        """Remove leftovers of an interrupted job: every ``.*.tmp`` file, and the parts of shards whose marker
        is missing (they are rewritten when the shard runs again). Returns how many files went."""
        done_set = set(self.done() if done is None else done)
        removed = 0
        for name in (*DATASETS, SHARDS_DIR):
            for entry in self._listing(name):
                match = _PART_RE.match(entry)
                stale_tmp = entry.startswith(".") and entry.endswith(TMP_SUFFIX)
                orphan = match is not None and name in DATASETS and int(match.group(1)) not in done_set
                if stale_tmp or orphan:
                    (self.out / name / entry).unlink(missing_ok=True)
                    removed += 1
        manifest_tmp = _tmp_path(self.out / MANIFEST_NAME)
        if manifest_tmp.exists():
            manifest_tmp.unlink()
            removed += 1
        return removed

    def clear(self) -> None:
        """Remove everything this store writes (for ``--overwrite``); other files in OUT are left alone."""
        for name in (*DATASETS, SHARDS_DIR):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in (MANIFEST_NAME, f".{MANIFEST_NAME}{TMP_SUFFIX}"):
            (self.out / name).unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------------------------------
    def write_shard(self, index: int, *, boxes: pa.Table, errors: pa.Table, images: pa.Table,
                    info: Mapping[str, Any]) -> None:
        """Write shard `index`'s parts, each atomically, then its marker (holding `info`) last."""
        for dataset, table in (("boxes", boxes), ("errors", errors), ("images", images)):
            atomic_write_parquet(self.part_path(dataset, index), conform(table, DATASETS[dataset]))
        atomic_write_bytes(self.marker_path(index), (json.dumps(dict(info), sort_keys=True) + "\n").encode())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder for the duration (released by the kernel if the job dies)."""
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise UsageError(f"{self.out}: another job is writing this output folder; wait for it or "
                                     "choose another --out") from err
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)


def read_dataset(out: str | Path, dataset: str) -> pa.Table:
    """All rows of ``OUT/<dataset>/`` (boxes, errors or images) as one table with the dataset's schema."""
    import pyarrow.dataset as ds

    schema = DATASETS[dataset]
    folder = Path(out) / dataset
    if not folder.is_dir():
        return empty_table(schema)
    return ds.dataset(folder, format="parquet", schema=schema).to_table()

"""The mining job's output on disk: Parquet schemas, whole-shard commits, the manifest.

Layout of an output folder ``OUT`` (DESIGN.md, "Output contract")::

    OUT/boxes/part-000042.parquet    one row per box                    (BOXES_SCHEMA)
    OUT/errors/part-000042.parquet   one row per input that failed      (ERRORS_SCHEMA)
    OUT/images/part-000042.parquet   one row per image that was mined   (IMAGES_SCHEMA)
    OUT/_shards/000042.json          done-marker of shard 42, written last
    OUT/_manifest.json               model, configuration, shard boundaries, counts, timings, versions
    OUT/.lock                        held (flock) by the job writing OUT

How a shard is committed (`ShardStore.write_shard`):

1. its three tables are serialised to Parquet in memory;
2. each is written to a hidden ``.part-NNNNNN.parquet.tmp`` beside its final name, flushed and fsynced: every
   data block the shard needs is allocated here, so a full disk, a quota or a read-only file system stops
   the job in this step, before anything of the shard is visible;
3. the three are renamed in place with `os.replace` (atomic on POSIX, a metadata operation that writes no
   data), ``errors`` then ``boxes`` then ``images``, and the folders are fsynced;
4. the marker ``_shards/NNNNNN.json`` is written (same temporary-then-rename way). A shard is done only when
   its marker exists.

If any step fails (an `OSError`, or an interrupt such as Ctrl-C or ``ray job stop``'s SIGTERM), the shard is
rolled back before the error goes on: its temporary files and whatever of its parts were already renamed in
are removed (unlinking needs no space). So when the job ends, by a write error or otherwise, ``boxes/``,
``errors/`` and ``images/`` hold whole shards only, and what cannot be written becomes one `WriteError`
naming OUT, the cause and what to do (exit code 74).

What is not atomic, said plainly: three files in three folders cannot be renamed as one. A process killed
without warning (SIGKILL, power loss, a lost node) in the microseconds between step 3's renames leaves the
first one or two parts of that shard visible, without its ``images`` part and without a marker. The order
makes that state detectable and harmless: ``images`` is renamed last, so an image listed in ``images/`` always
has its boxes in ``boxes/`` (a reader that joins on ``images`` sees whole shards even then), and the next run
removes such orphans before it does anything else (`ShardStore.clean_stale`) and rewrites the shard. A rerun
rewrites every shard without a marker under the same names, so the final dataset holds each row exactly once.

Hidden ``.tmp`` names are skipped by pyarrow/pandas (``.`` prefix) and by ``*.parquet`` globs (DuckDB), so the
folders can be read while a job runs. Every shard writes all three files, empty ones included, so a reader
never meets a missing file and the ``images`` dataset tells "mined, no boxes" (a row with ``boxes == 0``) from
"not mined" (no row).
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

from miner.errors import UsageError, WriteError

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
#: truncated, corrupt, unsupported, too_large) or ``decode`` / ``model`` for an unexpected failure in that stage
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


# errno -> (cause, what to do); the action always ends in a rerun of the same command, which resumes
_WRITE_FAILURES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free space and rerun the same command to resume"),
    errno.EDQUOT: ("disk quota exceeded", "free space and rerun the same command to resume"),
    errno.EFBIG: ("file too large for the file system", "free space and rerun the same command to resume"),
    errno.EROFS: ("read-only file system", "make OUT writable and rerun the same command to resume"),
    errno.EACCES: ("permission denied", "make OUT writable and rerun the same command to resume"),
    errno.EPERM: ("operation not permitted", "make OUT writable and rerun the same command to resume"),
    errno.EIO: ("input/output error", "check the device and rerun the same command to resume"),
}


def write_error(out: str | Path, err: OSError, *, where: str | Path = "") -> WriteError:
    """The one-line `WriteError` for `err`, raised while writing output folder `out`."""
    cause, action = _WRITE_FAILURES.get(err.errno or 0, (
        err.strerror or type(err).__name__, "fix the cause and rerun the same command to resume"))
    where_text = str(where)
    if where_text:
        try:
            where_text = str(Path(where_text).relative_to(out))
        except ValueError:
            pass
    return WriteError(out, cause, action=action, where=where_text)


@contextlib.contextmanager
def writing(out: str | Path, where: str | Path = "") -> Iterator[None]:
    """Turn an `OSError` raised inside the block into the `WriteError` of output folder `out`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise write_error(out, err, where=where or getattr(err, "filename", None) or "") from err


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` to a new file `path` and fsync it (every data block allocated before this returns)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def parquet_bytes(table: pa.Table) -> bytes:
    """`table` as the bytes of one zstd-compressed Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` holds either its old content or all of `data`, never a part.
    On failure the temporary file is removed and the `OSError` raised."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write `table` as one Parquet file at `path`, atomically (temporary file, fsync, `os.replace`)."""
    atomic_write_bytes(path, parquet_bytes(table))


def _unlink_quietly(path: Path) -> None:
    """Remove `path` if it exists; a failure here (the file system went read-only) must not hide the error
    being handled, and the next run's `ShardStore.clean_stale` removes what is left."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


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
    """Write `manifest` as ``OUT/_manifest.json``, atomically.

    Raises:
        WriteError: OUT cannot be written (full, read-only, ...).
    """
    path = Path(out) / MANIFEST_NAME
    with writing(out, path):
        atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


class ShardStore:
    """Per-shard atomic outputs of one output folder.

    ``store.done()`` lists the finished shards; ``store.write_shard(k, boxes=..., errors=..., images=...,
    info=...)`` commits shard k's three Parquet files and then its marker (see the module docstring). Hold
    ``store.lock()`` while writing so that two jobs never write the same folder. Every method that writes
    raises `WriteError` (not a bare `OSError`) when OUT cannot be written.
    """

    #: the order in which a shard's parts are renamed in: ``images`` last (an image listed there always has
    #: its boxes and errors in place)
    COMMIT_ORDER = ("errors", "boxes", "images")

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
            with writing(self.out, self.out / name):
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
                    with writing(self.out, self.out / name / entry):
                        (self.out / name / entry).unlink(missing_ok=True)
                    removed += 1
        manifest_tmp = _tmp_path(self.out / MANIFEST_NAME)
        if manifest_tmp.exists():
            with writing(self.out, manifest_tmp):
                manifest_tmp.unlink()
            removed += 1
        return removed

    def clear(self) -> None:
        """Remove everything this store writes (for ``--overwrite``); other files in OUT are left alone."""
        for name in (*DATASETS, SHARDS_DIR):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in (MANIFEST_NAME, f".{MANIFEST_NAME}{TMP_SUFFIX}"):
            with writing(self.out, self.out / name):
                (self.out / name).unlink(missing_ok=True)

    # -- writing ---------------------------------------------------------------------------------------
    def write_shard(self, index: int, *, boxes: pa.Table, errors: pa.Table, images: pa.Table,
                    info: Mapping[str, Any]) -> None:
        """Commit shard `index`: its three parts as a whole (all written and fsynced under temporary names,
        then renamed in), then its marker holding `info`. On any failure the shard is rolled back (none of its
        files stays) and the error raised, an `OSError` as `WriteError`."""
        tables = {"boxes": boxes, "errors": errors, "images": images}
        payload = {name: parquet_bytes(conform(tables[name], DATASETS[name])) for name in self.COMMIT_ORDER}
        marker = (json.dumps(dict(info), sort_keys=True) + "\n").encode()
        staged: list[tuple[Path, Path]] = []
        committed: list[Path] = []
        current: Path = self.out
        try:
            for name in self.COMMIT_ORDER:
                current = self.part_path(name, index)
                tmp = _tmp_path(current)
                staged.append((tmp, current))
                _write_synced(tmp, payload[name])
            for tmp, final in staged:
                current = final
                os.replace(tmp, final)
                committed.append(final)
            for folder in dict.fromkeys(final.parent for _, final in staged):
                _fsync_dir(folder)
            current = self.marker_path(index)
            atomic_write_bytes(current, marker)
        except BaseException as err:
            for final in reversed(committed):
                _unlink_quietly(final)
            for tmp, _ in staged:
                _unlink_quietly(tmp)
            if isinstance(err, OSError):
                raise write_error(self.out, err, where=current) from err
            raise

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder for the duration (released by the kernel if the job dies)."""
        import fcntl

        with writing(self.out, self.out / LOCK_NAME):
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
            with writing(self.out, self.out / LOCK_NAME):
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

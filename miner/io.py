"""The mining job's output on disk: Parquet schemas, whole-shard commits, the manifest.

Layout of an output folder ``OUT`` (docs/design.md, "Output contract")::

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

Reading OUT back (``miner eval``, ``miner labels``, ``miner report``) treats it as untrusted input: every part is
checked against the contract before use (`read_part`: a regular file that opens as Parquet, exactly the
dataset's columns and types, no nulls, valid UTF-8, and the values readers rely on), and so are the manifest
(`read_manifest`, `check_manifest`) and the shard markers (`read_marker`). A damaged one is a `ContractError`:
one line naming the file, what is wrong and what to do (exit code 2). Text from OUT or an archive that a message
or a page shows goes through `visible` (control and bidirectional characters escaped).

The folders other verbs write whole (``miner report``'s, ``miner labels``'s) list their files, and a later run
replaces only those (`miner.outdir.install_folder`): a file of the user's in such a folder is never removed.

Hidden ``.tmp`` names are skipped by pyarrow/pandas (``.`` prefix) and by ``*.parquet`` globs (DuckDB), so the
folders can be read while a job runs. Every shard writes all three files, empty ones included, so a reader
never meets a missing file and the ``images`` dataset tells "mined, no boxes" (a row with ``boxes == 0``) from
"not mined" (no row).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from miner.errors import UsageError, WriteError

#: one row per box (docs/design.md): x, y, w, h in original image pixels (BBox_List_2017.csv convention)
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
#: truncated, corrupt, unsupported, too_large, outside_archive, non_finite) or ``decode`` / ``model`` for an
#: unexpected failure in that stage
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


# -- reading: every part and the manifest checked against the contract ---------------------------------------

class ContractError(UsageError):
    """A Parquet part, a shard marker or a manifest that breaks the output contract (exit code 2: the folder given
    is damaged or not a job's output). The message names the file, what is wrong and what to do."""


#: Unicode categories shown escaped wherever text from an archive or an output folder is shown (a report page,
#: a one-line message): controls (C0, C1), format characters (bidirectional controls U+202A-U+202E and
#: U+2066-U+2069, zero-width U+200B-U+200F, U+FEFF, ...), lone surrogates, line and paragraph separators
INVISIBLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def escape_code(char: str) -> str:
    """``\\u202e`` for one character (``\\U0001d173`` beyond the first plane)."""
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """`text` with every control, format (bidirectional, zero-width), surrogate and line-separator character
    replaced by its escape ``\\uXXXX``: what such a name holds can be seen, and it cannot reorder, hide or break
    the text around it."""
    text = str(text)
    if text.isprintable():  # the common case: nothing to escape (the escaped categories are all unprintable)
        return text
    import unicodedata

    return "".join(escape_code(c) if unicodedata.category(c) in INVISIBLE else c for c in text)


def shown(path: str | Path) -> str:
    """A path as a one-line message names it (`visible`)."""
    return visible(str(path))


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return visible(text[:300] + ("..." if len(text) > 300 else ""))


def _in_output(path: Path) -> bool:
    """Whether `path` lies in a dataset folder of a job's output folder (``OUT/boxes/...``)."""
    return path.parent.name in DATASETS and (path.parent.parent / MANIFEST_NAME).is_file()


def _repair(path: Path) -> str:
    """What to do about a damaged part `path`: in a job's output folder, have the job rewrite its shard."""
    folder, out = path.parent, path.parent.parent
    if _in_output(path):
        match = _PART_RE.match(path.name)
        if not match:
            return f"only part-NNNNNN.parquet files belong in {shown(folder)}: move it out"
        marker = out / SHARDS_DIR / f"{match.group(1)}.json"
        if marker.exists():
            return (f"the output folder is damaged: delete {shown(marker)} and rerun the same miner mine command to "
                    f"rewrite shard {int(match.group(1))}")
        return "the output folder is damaged: rerun the same miner mine command (it rewrites unfinished shards)"
    return "give a file or folder that miner mine wrote"


def part_error(path: str | Path, problem: str) -> ContractError:
    """The one-line `ContractError` of part `path`."""
    path = Path(path)
    return ContractError(f"{shown(path)}: {problem}; {_repair(path)}")


def _schema_problem(found: pa.Schema, schema: pa.Schema, dataset: str) -> str:
    names = found.names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"column {visible(twice[0])} appears {names.count(twice[0])} times"
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in names if n not in schema.names]
    wrong = [f"{n} is {found.field(n).type}, not {schema.field(n).type}" for n in schema.names
             if n in names and not found.field(n).type.equals(schema.field(n).type)]
    parts = ([f"missing column {', '.join(missing)}"] if missing else []) + (
        [f"unknown column {visible(', '.join(extra))}"] if extra else []) + wrong
    if not parts:
        return ""
    return f"not a {dataset} part of the output contract ({'; '.join(parts)})"


def _count_bad(column: pa.ChunkedArray, ok: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int]:
    """How many values of numeric `column` fail `ok` (a numpy predicate) and the row of the first."""
    with np.errstate(invalid="ignore"):
        bad = ~ok(column.to_numpy())
    count = int(bad.sum())
    return count, int(np.argmax(bad)) if count else -1


#: per dataset, (column, what its values must be, a numpy predicate): the values readers rely on
_VALUE_RULES: dict[str, tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...]] = {
    "boxes": (("x", "finite", np.isfinite), ("y", "finite", np.isfinite),
              ("w", "finite and > 0", lambda v: np.isfinite(v) & (v > 0)),
              ("h", "finite and > 0", lambda v: np.isfinite(v) & (v > 0)),
              ("rank", ">= 1", lambda v: v >= 1), ("class_index", ">= 0", lambda v: v >= 0)),
    "errors": (),
    "images": (("height", ">= 1", lambda v: v >= 1), ("width", ">= 1", lambda v: v >= 1),
               ("boxes", ">= 0", lambda v: v >= 0)),
}


def read_part(path: str | Path, dataset: str) -> pa.Table:
    """One Parquet part of ``OUT/<dataset>/`` (or a single Parquet file of that contract), checked before use.

    The file must be a regular file that opens as Parquet, with exactly the dataset's columns and types (order
    free, nullability free), no nulls, valid data (UTF-8 strings), and values the readers rely on (boxes: finite
    x, y and w, h > 0, rank >= 1; images: sizes >= 1). Returns it as a table of exactly the dataset's schema.

    Raises:
        ContractError: one line naming the file, what is wrong and what to do.
    """
    import stat

    schema = DATASETS[dataset]
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise part_error(path, f"cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise part_error(path, "not a regular file")
    if _in_output(path) and not _PART_RE.match(path.name):
        raise part_error(path, "not a part of the output contract")
    try:
        with pq.ParquetFile(path) as parquet:
            found = parquet.schema_arrow
            problem = _schema_problem(found, schema, dataset)
            if problem:
                raise part_error(path, problem)
            table = parquet.read(columns=schema.names)
        table.validate(full=True)
    except ContractError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError, TypeError) as err:
        raise part_error(path, f"not a readable Parquet file ({_first_line(err)})") from None
    for name in schema.names:
        column = table.column(name)
        nulls = column.null_count
        if pa.types.is_list(column.type) and not nulls:
            nulls = pa.concat_arrays([c.flatten() for c in column.chunks]).null_count if column.num_chunks else 0
        if nulls:
            raise part_error(path, f"column {name} holds {nulls} null {'value' if nulls == 1 else 'values'}")
    for name, rule, ok in _VALUE_RULES[dataset]:
        count, first = _count_bad(table.column(name), ok)
        if count:
            values = "value that is" if count == 1 else "values that are"
            raise part_error(path, f"column {name} holds {count} {values} not {rule} (first at row {first})")
    return table.select(schema.names).cast(schema)


def read_parts(paths: Sequence[str | Path], dataset: str) -> pa.Table:
    """The parts `paths` (each checked by `read_part`) as one table of the dataset's schema."""
    tables = [read_part(p, dataset) for p in paths]
    return pa.concat_tables(tables) if tables else empty_table(DATASETS[dataset])


def part_paths(folder: str | Path) -> list[Path]:
    """The parts of a dataset folder as pyarrow and pandas read it: every entry whose name starts with neither
    ``.`` nor ``_`` (a running job's ``.tmp`` files are skipped), sorted by name.

    Raises:
        ContractError: the folder holds a folder (the output contract has no partitions).
    """
    folder = Path(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise ContractError(f"{shown(folder)}: cannot be listed ({err.strerror or err})") from None
    paths = [folder / n for n in names if not n.startswith((".", "_"))]
    for path in paths:
        if path.is_dir():
            raise part_error(path, "a folder inside a dataset folder (the output contract has only part files)")
    return paths


def read_folder(folder: str | Path, dataset: str) -> pa.Table:
    """Every part of the dataset folder `folder` (`part_paths`), each checked (`read_part`), as one table."""
    return read_parts(part_paths(folder), dataset)


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
    """The manifest of output folder `out`, or None when there is none.

    Raises:
        ContractError: it is not UTF-8 JSON, not an object, or a field a reader uses has the wrong type
            (`check_manifest`).
    """
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        return None
    action = "rerun miner mine with --overwrite to write OUT afresh"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ContractError(f"{shown(path)}: cannot be read ({err.strerror or err}); make it readable") from None
    except UnicodeDecodeError as err:
        raise ContractError(f"{shown(path)}: not a valid manifest (not UTF-8 at byte {err.start}); {action}") from None
    except json.JSONDecodeError as err:
        raise ContractError(f"{shown(path)}: not a valid manifest ({err.msg}, line {err.lineno} column "
                            f"{err.colno}); {action}") from None
    except RecursionError:
        raise ContractError(f"{shown(path)}: not a valid manifest (nested too deeply); {action}") from None
    problem = check_manifest(data)
    if problem:
        raise ContractError(f"{shown(path)}: not a valid manifest ({problem}); {action}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_manifest(data: Any) -> str:
    """What is wrong with a parsed manifest for the readers (report, labels, eval, a resumed job), "" if nothing.

    Only the fields the readers use are checked, and only their types: a section that is there must be an
    object, ``model.classes`` a list of strings, the shard plan and the counts integers, run timings numbers.
    """
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for key in ("identity", "archive", "model", "config", "shards", "versions", "counts"):
        if key in data and not isinstance(data[key], dict):
            return f"{key} is not an object"
    for key in ("status", "created", "updated"):
        if key in data and not isinstance(data[key], str):
            return f"{key} is not a string"
    model, archive = data.get("model", {}), data.get("archive", {})
    classes = model.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return "model.classes is not a list of names"
    for key in ("path", "sha256"):
        if model.get(key) is not None and not isinstance(model[key], str):
            return f"model.{key} is not a string"
    if archive.get("path") is not None and not isinstance(archive["path"], str):
        return "archive.path is not a string"
    options = archive.get("options")
    if options is not None and not isinstance(options, dict):
        return "archive.options is not an object"
    if (options or {}).get("uncertain") is not None and not isinstance(options["uncertain"], str):
        return "archive.options.uncertain is not a string"
    if "allow_outside_archive" in (options or {}) and not isinstance(options["allow_outside_archive"], bool):
        return "archive.options.allow_outside_archive is not true or false"
    if "images" in archive and not (_is_int(archive["images"]) and archive["images"] >= 0):
        return "archive.images is not a count"
    if data.get("identity", {}).get("archive") is not None and not isinstance(data["identity"]["archive"], str):
        return "identity.archive is not a string"
    config = data.get("config", {})
    if "pipeline" in config and not isinstance(config["pipeline"], dict):
        return "config.pipeline is not an object"
    if config.get("backend_options") is not None and not isinstance(config["backend_options"], dict):
        return "config.backend_options is not an object"
    if config.get("classes") is not None and not isinstance(config["classes"], str):
        return "config.classes is not a string"
    if config.get("prob_threshold") is not None and not _is_number(config["prob_threshold"]):
        return "config.prob_threshold is not a number"
    shards = data.get("shards", {})
    if "count" in shards and not (_is_int(shards["count"]) and shards["count"] >= 0):
        return "shards.count is not a count"
    bounds = shards.get("bounds")
    if bounds is not None and not (isinstance(bounds, list) and all(
            isinstance(b, list) and len(b) == 2 and all(_is_int(v) and v >= 0 for v in b) for b in bounds)):
        return "shards.bounds is not a list of [start, stop] pairs"
    if "runs" in data:
        runs = data["runs"]
        if not (isinstance(runs, list) and all(isinstance(r, dict) for r in runs)):
            return "runs is not a list of objects"
        for r in runs:
            for key in ("seconds", "startup_seconds", "images_per_second", "steady_images_per_second"):
                if r.get(key) is not None and not _is_number(r[key]):
                    return f"runs[].{key} is not a number"
    return ""


def write_manifest(out: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write `manifest` as ``OUT/_manifest.json``, atomically.

    Raises:
        WriteError: OUT cannot be written (full, read-only, ...).
    """
    path = Path(out) / MANIFEST_NAME
    with writing(out, path):
        atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


def read_marker(path: str | Path) -> dict[str, Any]:
    """A shard's done-marker (``OUT/_shards/NNNNNN.json``), checked: a JSON object whose counts are integers."""
    path = Path(path)
    action = "delete it and rerun the same miner mine command to rewrite that shard"
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ContractError(f"{shown(path)}: cannot be read ({err.strerror or err}); make it readable") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        info = None
    if not isinstance(info, dict) or not all(_is_int(info[k]) and info[k] >= 0 for k in
                                             ("images", "boxes", "errors", "processed") if k in info):
        raise ContractError(f"{shown(path)}: not a valid shard marker (a JSON object of counts); {action}")
    return info


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
        """Finished shards: index -> the info its marker holds.

        Raises:
            ContractError: a marker that is not a JSON object with integer counts (one line, naming it).
        """
        result: dict[int, dict[str, Any]] = {}
        for name in self._listing(SHARDS_DIR):
            match = _MARKER_RE.match(name)
            if match:
                result[int(match.group(1))] = read_marker(self.out / SHARDS_DIR / name)
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
    """All rows of ``OUT/<dataset>/`` (boxes, errors or images) as one table with the dataset's schema, every part
    checked against the contract first (`read_part`; a damaged part raises `ContractError`)."""
    schema = DATASETS[dataset]
    folder = Path(out) / dataset
    if not folder.is_dir():
        return empty_table(schema)
    return read_folder(folder, dataset)


def json_safe(value: Any) -> Any:
    """`value` for strict JSON: every NaN or infinite float becomes None, recursively through dicts, lists and
    tuples (tuples become lists); other values are kept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value

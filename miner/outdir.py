"""Output folders of the verbs: create, refuse or overwrite (`prepare_out`), and install what a verb built.

Every verb that writes a folder goes through `prepare_out` with its own wording:

==================  ===========================  =============================================================
verb                folder                       with a non-empty folder
==================  ===========================  =============================================================
``miner demo``      OUT                          refused; ``--overwrite`` removes the demo's own items first
``miner phantoms``  OUT                          refused; ``--overwrite`` replaces ``images/`` and ``masks/``
``miner labels``    ``--to`` DIR                 refused; ``--overwrite`` replaces the files the export listed
``miner report``    ``--to`` (``OUT/report``)    replaces the files an earlier report listed, else refused
``miner eval``      ``--coco-dir``               its two files are written over
``miner mine``      ``--out`` (`check_out_folder`; resuming or ``--overwrite``: `miner.io.ShardStore`)
==================  ===========================  =============================================================

A folder a verb writes whole (``miner report``'s, ``miner labels``'s) lists its files in a listing file, and a
later run replaces only those (`install_folder`): a file of the user's in such a folder is never removed. Such a
folder is built beside its place first (`built_beside`) and moved in when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from miner.errors import UsageError
from miner.io import DATASETS, SHARDS_DIR, atomic_write_bytes, shown, writing


def prepare_out(
    path: Path,
    *,
    overwrite: bool,
    where: str,
    not_folder: str,
    not_empty: str = "is not empty; give a new folder or pass --overwrite",
    owned_by: Callable[[Path], set[str]] | None = None,
    remove: Sequence[str] = (),
    create: bool = False,
) -> set[str] | None:
    """The create / refuse / overwrite policy of the folder `path` a verb writes (module docstring).

    1. `path` exists and is not a folder: ``UsageError(f"{where} exists and is not a folder; {not_folder}")``.
    2. `path` is new or an empty folder: returns None.
    3. `path` holds something and not `overwrite`: ``UsageError(f"{where} {not_empty}")``.
    4. `path` holds something and `overwrite`: returns ``owned_by(path)``, the files of `path` the verb wrote
       before and may replace (it raises for a folder the verb did not write); without `owned_by`, the entries
       `remove` names are removed (a name ending in ``/``: only if it is a folder) and None is returned.

    `where` names the folder as the messages start (``"OUT: /data/demo"``); with `create`, the folder is made
    (with its parents) before returning.
    """
    if os.path.lexists(path) and not path.is_dir():
        raise UsageError(f"{where} exists and is not a folder; {not_folder}")
    owned = None
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UsageError(f"{where} {not_empty}")
        if owned_by is not None:
            owned = owned_by(path)
        for name in remove:
            entry = path / name.rstrip("/")
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists() and not name.endswith("/"):
                entry.unlink()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return owned


def check_out_folder(out: Path) -> None:
    """Refuse a job's OUT that is a regular file, or lies below one, before anything is written (`UsageError`,
    exit 2; writing would fail with a misleading I/O error)."""
    for candidate in (out, *out.parents):
        if os.path.lexists(candidate):
            if candidate.is_dir():
                return
            if candidate == out:
                raise UsageError(f"{out} is a file, not a folder; give --out a folder (new, or a job's output to "
                                 "resume)")
            raise UsageError(f"{out}: cannot make this folder, {candidate} is a file; give --out another path")


def check_not_in_data(out: Path, target: Path, option: str = "--to") -> None:
    """Refuse a folder to write (`target`) inside OUT's data (``boxes/``, ``errors/``, ``images/``, ``_shards/``):
    a folder there would break the output contract for every reader."""
    out, target = Path(out).resolve(), Path(target).resolve()
    for name in (*DATASETS, SHARDS_DIR):
        if target == out / name or out / name in target.parents:
            where = "" if target == out / name else "inside "
            raise UsageError(f"{option}: {shown(target)} is {where}{shown(out / name)}, which holds the job's data; "
                             "give another folder")


# -- folders a verb writes whole (miner report, miner labels): it replaces only the files it wrote -------------

def safe_relative(name: Any) -> bool:
    """Whether `name` is a relative POSIX path that stays inside its folder (no ``..``, no absolute path)."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def read_listing(path: Path) -> dict[str, Any] | None:
    """The JSON object of a verb's listing file `path`; None when it is missing, a symbolic link, unreadable or
    not a JSON object."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def listed_files(listing: dict[str, Any] | None) -> set[str] | None:
    """The files a listing names (``files``: relative paths inside the folder); None when it names none, or any
    that would leave the folder."""
    files = (listing or {}).get("files")
    if isinstance(files, list) and all(safe_relative(f) for f in files):
        return set(files)
    return None


def folder_files(root: Path) -> list[str]:
    """Every file and symbolic link under `root` (links not followed), as sorted relative POSIX paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            found.append((here / name).relative_to(root).as_posix())
    return sorted(found)


@contextlib.contextmanager
def built_beside(target: Path) -> Iterator[Path]:
    """A new hidden folder beside `target` to build it in (then `install_folder`); removed if the block raises.
    An `OSError` of making or filling it is the `miner.io.WriteError` of `target`."""
    with writing(target, target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        built = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with writing(target, built):
            yield built
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise


def _inside(target: Path, name: str) -> bool:
    """Whether ``target/name`` is reached without passing a symbolic link or a non-folder between `target` and
    the file itself (so removing or replacing it cannot touch anything outside `target`)."""
    here = target
    for part in name.split("/")[:-1]:
        here = here / part
        if os.path.islink(here) or (os.path.lexists(here) and not here.is_dir()):
            return False
    return True


def install_folder(built: Path, target: Path, *, owned: set[str] | None, listing: str,
                   listing_bytes: Callable[[Sequence[str]], bytes], verb: str) -> list[str]:
    """Move what a verb built in the hidden folder `built` into its folder `target`, replacing only its own files.

    - `owned` None (`target` does not exist, or is an empty folder): `built` is renamed to `target` (atomic).
    - Else `owned` holds the files of `target` the verb wrote before (its listing's): every other file there is
      the user's and is kept. A built file whose place holds a file the verb did not write, or lies below a
      symbolic link or a file, refuses the whole install before anything moves. Then the listing is rewritten
      to cover old and new files (a crash in between leaves it complete), the new files are moved in, the old
      files that are not written again are removed (and folders left empty by that), and the listing is
      replaced by the new one (`built/listing`, written by the caller with `listing_bytes`) last.

    Returns the relative paths of the files installed. Raises `UsageError` for a collision, `WriteError` when
    `target` cannot be written; `built` is removed either way.
    """
    try:
        written = folder_files(built)
        if owned is None:
            with writing(target, target):
                os.chmod(built, 0o755)  # mkdtemp makes it private
                os.replace(built, target)
            return written
        for name in written:
            path = target / name
            foreign = os.path.lexists(path) and (name not in owned or (path.is_dir() and not path.is_symlink()))
            if foreign or not _inside(target, name):
                raise UsageError(f"{shown(path)} was not written by miner {verb}; move it away or give another "
                                 "folder (miner never replaces a file it did not write)")
        with writing(target, target / listing):
            atomic_write_bytes(target / listing, listing_bytes(sorted(owned | set(written))))
        for name in written:
            if name == listing:
                continue
            with writing(target, target / name):
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(built / name, target / name)
        emptied = set()
        for name in sorted(owned - set(written) - {listing}):
            path = target / name
            if _inside(target, name) and os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
                with writing(target, path):
                    path.unlink()
                emptied.update(p for p in path.parents if target in p.parents)
        for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a user's file in it keeps it
        with writing(target, target / listing):
            os.replace(built / listing, target / listing)
        return written
    finally:
        shutil.rmtree(built, ignore_errors=True)

"""The archive-root rule: an archive reaches only the files under its own root.

An archive is untrusted input: a label file may name ``../../etc/passwd`` or ``/etc/shadow``, a manifest an
absolute path anywhere, and any archive may hold a symbolic link that points out of it. Every reader of image
files therefore checks, right before it opens one, that the file's real path (``os.path.realpath``: every
symbolic link followed, ``..`` resolved) lies under the archive's resolved root (`pathlib.PurePath.is_relative_to`,
component-wise: ``/data/arch2`` is not under ``/data/arch``). A file outside is never opened: the job writes an
error row of kind ``outside_archive`` (`miner.errors.ImageError`), ``miner inspect`` counts and names it,
``miner show`` refuses it, ``miner report`` shows the reason instead of its picture.

The root (`miner.data.archives.Archive.confined_to`, resolved once when the archive is read by
`miner.data.archives.archive.confine`, so an archive root that is itself a symbolic link is fine):

- a ChestX-ray14 release: its folder (the Data_Entry file's folder);
- a manifest: the manifest file's folder (relative paths are relative to it too);
- a plain image folder: that folder;
- an archive kind of `miner.data.archives.kinds`: the folder that holds its label file; for VinDr-CXR's PhysioNet
  layout (``annotations/annotations_train.csv`` beside ``train/``) the folder that holds both.

``--allow-outside-archive`` (`miner.config.ArchiveConfig.allow_outside_archive`) lifts the rule for an archive that
legitimately points elsewhere (a manifest of absolute paths into a mounted store): the records then carry no root
and nothing is checked. The job records the choice in its identity, so a rerun with the other setting is a
different job.

The check at the moment of opening (`check_inside`) is what protects: a path swapped for a symbolic link after
the archive was read is still caught. The check when the archive is read (`Resolver`, `outside_records`) only
reports; it resolves each folder once, so it costs one ``lstat`` per file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from miner.errors import ImageError

if TYPE_CHECKING:
    from miner.data.records import Record

#: the command-line flag that lifts the rule (the same name on every verb that reads images)
FLAG = "--allow-outside-archive"


def real_path(path: str | os.PathLike) -> str:
    """The path with every symbolic link followed and ``..`` resolved (``os.path.realpath``, not strict: a missing
    file resolves as far as it exists). A path that cannot even be looked up (a NUL byte) is returned as it is,
    made absolute: opening it fails (no other file is opened in its place)."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return os.path.join(os.getcwd(), os.fspath(path))


def resolve_root(root: str | os.PathLike) -> Path:
    """The root as the rule compares against: resolved once (a root that is a symbolic link is followed)."""
    return Path(real_path(root))


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path`, resolved, lies under `root` (resolved too; a path equal to the root counts as inside)."""
    return Path(real_path(path)).is_relative_to(resolve_root(root))


def check_inside(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """The real path to open, after checking it lies under `root` (None: no rule, the path as given).

    `root` is taken as it is, not resolved again: it was resolved once when the archive was read
    (`miner.data.archives.archive.confine`), so a root swapped for a symbolic link since then does not widen what
    the archive reaches.

    Raises:
        ImageError: kind ``outside_archive``, naming where the path leads and what to do.
    """
    if root is None:
        return os.fspath(path)
    real = real_path(path)
    base = Path(root)
    if not Path(real).is_relative_to(base):
        raise ImageError(path, "outside_archive", _detail(real, base))
    return real


def _detail(real: str, root: Path) -> str:
    return (f"it resolves to {real}, outside the archive's root {root}; not opened. Pass {FLAG} if the archive is "
            "meant to reach files elsewhere")


def load_inside(path: str | os.PathLike, root: str | os.PathLike | None, **options: Any):
    """`miner.data.load_image` of a file of an archive whose root is `root`: checked right before it is opened,
    and the resolved path (free of symbolic links when checked) is the one opened. What is left is the window of
    microseconds between the check and the open (POSIX has no portable ``openat2(RESOLVE_BENEATH)``).

    Raises:
        ImageError: ``outside_archive``, or any kind `load_image` raises.
    """
    from miner.data.image import load_image

    return load_image(check_inside(path, root), **options)


def load_record(record: Record | str, **options: Any):
    """`load_inside` of a `Record` (its path under its root); a plain path string is opened unchecked."""
    if isinstance(record, str):
        from miner.data.image import load_image

        return load_image(record, **options)
    return load_inside(record.path, record.root, **options)


class Resolver:
    """Real paths of many files below a few folders, fast: each folder is resolved once (cached), then only the
    file's own name is looked up (one ``lstat``: is it a symbolic link?). Agrees with `real_path`.

    Args:
        root: the resolved root (`resolve_root`; `Archive.confined_to`), taken as it is.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._root_text = str(self.root)
        self._folders: dict[str, str] = {}

    def real(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        head, tail = os.path.split(path)
        if not head or tail in ("", ".", "..") or "\x00" in path:
            return real_path(path)
        folder = self._folders.get(head)
        if folder is None:
            folder = self._folders[head] = real_path(head)
        candidate = os.path.join(folder, tail)
        try:
            if os.path.islink(candidate):
                return real_path(candidate)
        except ValueError:  # pragma: no cover - NUL bytes are handled above
            return real_path(path)
        return candidate

    def inside(self, path: str | os.PathLike) -> bool:
        return self.under(self.real(path))

    def under(self, real: str) -> bool:
        """Whether a real path (normalised, absolute: `real`) lies under the root: `PurePath.is_relative_to` on
        strings (component-wise: ``/data/arch2`` is not under ``/data/arch``), without building paths."""
        root = self._root_text
        return real == root or real.startswith(root if root.endswith(os.sep) else root + os.sep)


def outside_records(records: Sequence[Record], root: str | os.PathLike | None) -> list[tuple[Record, str]]:
    """(record, where it resolves) for every record whose file lies outside `root` (resolved, as
    `Archive.confined_to`; None: no rule, none outside). Reports only: the check that protects is `check_inside`,
    when a file is opened."""
    if root is None:
        return []
    resolver = Resolver(root)
    out = []
    for record in records:
        real = resolver.real(record.path)
        if not resolver.under(real):
            out.append((record, real))
    return out


def common_root(folders: Iterable[str | os.PathLike]) -> Path:
    """The deepest folder that holds all of `folders` (a kind reader's root when its label files' images sit in
    several places)."""
    return Path(os.path.commonpath([os.fspath(f) for f in folders]))

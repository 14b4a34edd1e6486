"""An archive's class list: declared (``classes=``, ``classes.txt``) or the default of its kind.

- The release, a manifest and a plain folder (`root_class_list`): the ``classes`` argument; a ``classes.txt`` in the
  archive's root (one finding per line, ``#`` comments allowed; `read_classes_file`); the 14 ChestX-ray14 findings
  (`miner.findings.CHESTXRAY14`). With that default an unknown finding name is an error (`check_labels`).
- The kinds of `miner.data.archives.kinds` (`class_list`): the ``classes`` argument, else every vocabulary finding
  the archive can name (`miner.findings.archive_classes`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from miner.data.records import Record
from miner.data.textfile import display_path, text_lines
from miner.errors import ArchiveError
from miner.findings import CHESTXRAY14, archive_classes, canonical

CLASSES_FILE = "classes.txt"


def _declared_list(classes: Sequence[str]) -> tuple[str, ...]:
    """A declared class list in canonical spelling.

    Raises:
        ArchiveError: an empty list or one with repeats.
    """
    names = tuple(canonical(c) for c in classes)
    if not names or len(set(names)) != len(names):
        raise ArchiveError(f"classes must be a non-empty list without repeats, got {list(classes)}")
    return names


def class_list(kind: str, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The declared class list (canonical spelling), else every vocabulary finding the archive can name."""
    if classes is None:
        return archive_classes(kind)
    return _declared_list(classes)


def read_classes_file(path: Path) -> tuple[str, ...]:
    """The findings of a ``classes.txt``: one per line, ``#`` comments, read as `miner.data.textfile` states."""
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


def root_class_list(root: Path, classes: Sequence[str] | None) -> tuple[tuple[str, ...], bool]:
    """(classes, declared) of a release, manifest or folder: declared is False when the default list applies."""
    if classes is not None:
        return _declared_list(classes), True
    if (root / CLASSES_FILE).is_file():
        return read_classes_file(root / CLASSES_FILE), True
    return CHESTXRAY14, False


def check_labels(records: list[Record], classes: tuple[str, ...], declared: bool, where: Path) -> None:
    """With the default list (not `declared`), refuse a finding outside it (a typo or a different dataset)."""
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

"""Rows and fields of an archive kind's label CSV, as every kind reader reads them.

Label files are read through `miner.data.textfile` (`dict_rows`): encodings, limits and faults as it states; a
quoted field may run over line ends only in a column the reader does not use.
"""
from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from miner.data.textfile import csv_rows, display_path, shown
from miner.errors import ArchiveError


def dict_rows(path: Path, required: Iterable[str], *,
              also: Iterable[str] | None = None) -> Iterable[tuple[int, dict[str, str]]]:
    """(line number, row with stripped column names and values) of a label CSV, after checking its header.

    `also`: the other columns wanted (those the file has); None = every column. Naming them saves a dict of
    every field per row (PadChest has 36 columns, 160,861 rows).

    A quoted field may run over line ends only in the columns not read (PadChest's CUI columns do).

    Raises:
        ArchiveError: an unreadable file (`miner.data.textfile`), an empty one, a missing column, a line break in
            a value read, or no row below the header.
    """
    where = display_path(path)
    rows = csv_rows(path, multiline=True)  # PadChest's CUI columns hold line breaks
    try:
        first = next(rows, None)
        if first is None:
            raise ArchiveError(f"{where}: empty file; expected a header line naming the columns")
        names = [c.strip() for c in first[1]]
        required = list(required)
        missing = [c for c in required if c not in names]
        if missing:
            raise ArchiveError(f"{where}:1: no {', '.join(repr(m) for m in missing)} column (found "
                               f"{shown(','.join(names[:8]), 160)})")
        wanted = names if also is None else [c for c in names if c in set(required) | set(also)]
        pick = operator.itemgetter(*(names.index(c) for c in wanted)) if len(wanted) > 1 else None
        width = len(names)
        strip = str.strip
        count = 0
        for line, row in rows:
            if len(row) <= 1 and not "".join(row).strip():
                continue  # a blank line
            if len(row) < width:
                row = row + [""] * (width - len(row))
            values = pick(row) if pick is not None else [row[names.index(wanted[0])]]
            if rows.spanned:  # a value this reader uses may not hold a line break (it would name an image)
                for column, value in zip(wanted, values):
                    if "\n" in value or "\r" in value:
                        raise ArchiveError(f"{where}:{line}: {column} {shown(value)} holds a line break; close "
                                           "the quote before it")
            count += 1
            yield line, dict(zip(wanted, map(strip, values)))
    finally:
        rows.close()
    if not count:
        raise ArchiveError(f"{where}: no rows below the header; is this the whole file?")


def stem_index(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """stem -> file for the files of `folder` (not recursive) whose names end in one of `suffixes`."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            lower = name.lower()
            for suffix in suffixes:
                if lower.endswith(suffix):
                    out.setdefault(name[: len(name) - len(suffix)], folder / name)
                    break
    return out


def number(value: str, *, path: Path, line: int, column: str) -> float:
    """A finite number of a label file's field (a box coordinate), or an `ArchiveError` naming its line."""
    try:
        out = float(value)
    except ValueError:
        raise ArchiveError(f"{display_path(path)}:{line}: {column} {shown(value)} is not a number") from None
    if not math.isfinite(out):
        raise ArchiveError(f"{display_path(path)}:{line}: {column} {shown(value)} is not a finite number")
    return out

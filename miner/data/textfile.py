"""Label text files read as untrusted input: every CSV and list an archive holds goes through `LabelText`.

The contract (docs/untrusted-input.md, "Label files"):

- **Encoding**: UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8" writes one). A file that starts with
  a UTF-16 or UTF-32 byte-order mark (Excel's "Unicode Text", PowerShell's default) is decoded as such. Bytes that
  are not UTF-8 (Latin-1 / Windows-1252 text, binary data) are refused, naming the line and the byte offset: save
  the file as UTF-8. Nothing is guessed: a wrong guess would silently rename images.
- **Compression**: ``NAME.gz`` (gzip) and ``NAME.zip`` (one member) are decompressed as they are read; a truncated
  or fake stream is refused with the line it broke off in.
- **Limits**: a line (and so a field) may hold at most `MAX_LINE_CHARS` characters, and a CSV row is one line: a
  quoted field may not run over a line end, except where a reader allows it for columns it does not read (`CsvRows`
  with ``multiline``; PadChest's CUI columns do), and then the row may hold `MAX_LINE_CHARS` characters in all. A
  longer line is refused after reading no more than the limit, so a 50 MB line or an unclosed quote costs the
  limit, not the file; ``csv.field_size_limit`` is neither raised nor relied on.
- **Characters**: NUL and other control characters (tab excepted; also U+2028/U+2029) are refused: label values
  are one-line text, and a NUL cannot be part of a file name.

Every failure is an `ArchiveError` of one line: ``FILE:LINE: what is wrong; what to do``.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import lzma
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

from miner.errors import ArchiveError

#: the longest line (characters, line end excluded) a label file may hold: csv's default field limit, so that
#: one number bounds both; the longest line of the archives read here is a few thousand characters
MAX_LINE_CHARS = 1 << 17
#: bytes read (and decompressed) at a time
CHUNK = 1 << 16

# characters refused anywhere in a label file: C0 controls but tab, CR and LF; DEL; C1 controls; the Unicode
# line and paragraph separators (str.splitlines would split on every one of these)
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")

# the UTF-8 bytes that may start one of those characters: text without them is not searched (a fast path)
_SUSPECT_UTF8 = bytes([*range(0x00, 0x09), 0x0b, 0x0c, *range(0x0e, 0x20), 0x7f, 0xc2, 0xe2])
_NOT_SUSPECT = bytes(sorted(set(range(256)) - set(_SUSPECT_UTF8)))

#: the same characters, and line breaks, as an RE2 pattern (pyarrow.compute) for values read from Parquet
VALUE_CONTROL_RE2 = r"[\x00-\x08\x0a-\x1f\x7f-\x{9f}\x{2028}\x{2029}]"

# byte-order marks, longest first (a UTF-32-LE mark starts with the UTF-16-LE one)
_BOMS: tuple[tuple[bytes, str, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)

# the starts of files that are often given where a CSV belongs
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed data", "name it *.gz"),
    (b"PK\x03\x04", "a zip archive (an Excel workbook?)", "save it as CSV UTF-8, or name a zipped CSV *.zip"),
    (b"PAR1", "a Parquet file", "give a Parquet manifest a name ending in .parquet"),
    (b"\x89PNG", "a PNG image", "give the label file here"),
    (b"\xd0\xcf\x11\xe0", "an old Excel workbook (.xls)", "save it as CSV UTF-8"),
)

# what a corrupt gzip or zip stream raises while it is read (zipfile and its codecs are not consistent)
_STREAM_ERRORS = (OSError, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error, lzma.LZMAError,
                  zipfile.BadZipFile, struct.error)


def shown(value: str, limit: int = 60) -> str:
    """`value` for an error message: quoted, escaped (one line whatever it holds), cut to `limit` characters."""
    if len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)


def display_path(path: Path | str) -> str:
    """A path as an error message shows it: as it is, unless its name holds characters that would break the line."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def printable(text: str) -> str:
    """`text` on one line: control and format characters (newlines, U+202E, ...) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class LabelText:
    """The lines of a label text file (line ends kept, as ``open(path, newline="")`` gives them), checked.

    Iterate once; `line` is the number of lines handed out so far (1-based number of the last one). Decoding,
    decompression and limit errors surface where the lines are iterated, as `ArchiveError` naming the line.

    Example::

        with LabelText(path) as text:
            for line in text:
                ...
    """

    def __init__(self, path: Path | str, *, max_line: int = MAX_LINE_CHARS) -> None:
        self.path = Path(path)
        self.max_line = max_line
        self.line = 0
        self.where = display_path(self.path)
        self._buf = ""  # decoded text after the last line handed out
        self._bytes = 0  # bytes of the (decompressed) stream read so far
        self._closers: list = []
        self._raw: BinaryIO = self._open()
        self._iterating = False

    # -- opening and closing ------------------------------------------------------------------------------

    def _open(self) -> BinaryIO:
        name = self.path.name.lower()
        try:
            if name.endswith(".gz"):
                raw = gzip.open(self.path, "rb")
            elif name.endswith(".zip"):
                return self._open_zip()
            else:
                raw = open(self.path, "rb")
        except OSError as err:
            raise ArchiveError(f"{self.where}: cannot be opened ({err.strerror or err})") from None
        self._closers.append(raw)
        return raw

    def _open_zip(self) -> BinaryIO:
        try:
            archive = zipfile.ZipFile(self.path)
        except OSError as err:
            raise ArchiveError(f"{self.where}: cannot be opened ({err.strerror or err})") from None
        except Exception as err:  # noqa: BLE001 - zipfile raises many types on corrupt bytes
            raise ArchiveError(f"{self.where}: not a readable zip file ({brief(err)})") from None
        self._closers.append(archive)
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            self.close()
            raise ArchiveError(f"{self.where}: a zipped label file must hold exactly one file, found "
                               f"{len(members)}")
        try:
            raw = archive.open(members[0])
        except Exception as err:  # noqa: BLE001 - encrypted, unsupported method, a bad local header, ...
            self.close()
            raise ArchiveError(f"{self.where}: its member {shown(members[0].filename)} cannot be read "
                               f"({brief(err)})") from None
        self._closers.append(raw)
        return raw

    def close(self) -> None:
        while self._closers:
            try:
                self._closers.pop().close()
            except _STREAM_ERRORS:
                pass

    def __enter__(self) -> LabelText:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        if self._iterating:
            raise RuntimeError("a LabelText is iterated once")
        self._iterating = True
        return self._lines()

    def _read(self) -> bytes:
        try:  # read1: what one read of the source gives, so that data before a corrupt spot is handed out first
            data = self._raw.read1(CHUNK)
        except _STREAM_ERRORS as err:
            self._refuse_stream(err)
        return data

    def _lines(self) -> Iterator[str]:
        head = b""
        while len(head) < 4:  # enough for any byte-order mark or magic number
            data = self._read()
            if not data:
                break
            head += data
        encoding, label, skip = "utf-8", "UTF-8", 0
        for bom, codec, name in _BOMS:
            if head.startswith(bom):
                encoding, label, skip = codec, name, len(bom)
                break
        else:
            for magic, what, fix in _MAGIC:
                if head.startswith(magic):
                    raise ArchiveError(f"{self.where}: is {what}, not CSV text; {fix}")
        self._encoding = label
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        data, self._bytes = head[skip:], skip
        while True:
            final = not data
            held = decoder.getstate()[0]  # bytes of a character that the last chunk cut in two
            pending = len(held)
            try:
                text, error = decoder.decode(data, final), None
            except UnicodeDecodeError as err:
                good = err.object[:err.start]
                text, error = good.decode(encoding), err
                offset = self._bytes - pending + err.start
            suspect = encoding != "utf-8" or bool((held + data).translate(None, _NOT_SUSPECT))
            lines, refusal = self._take(text, suspect)
            for line in lines:
                self.line += 1
                yield line
            if refusal is not None:
                refusal()
            if error is not None:
                self._refuse_decode(error, offset)
            if final:
                break
            self._bytes += len(data)
            data = self._read()
        if self._buf:
            self.line += 1
            yield self._buf
            self._buf = ""

    def _take(self, text: str, suspect: bool = True) -> tuple[list[str], Callable[[], None] | None]:
        """(the complete lines of the buffered text and `text`, the refusal due once they are handed out or None);
        the partial last line stays buffered. `suspect`: whether `text` may hold a character of _BAD_CHARS."""
        refusal = None
        bad = _BAD_CHARS.search(text) if suspect else None
        if bad is not None:
            text, refusal = text[:bad.start()], partial(self._refuse_char, bad.group())
        # only \r, \n and \r\n are line breaks here (_BAD_CHARS holds the others str.splitlines knows)
        pieces = (self._buf + text).splitlines(keepends=True)
        self._buf = ""
        if pieces and not pieces[-1].endswith("\n"):
            self._buf = pieces.pop()  # a partial line, or a "\r" whose "\n" may come with the next chunk
        if pieces and max(map(len, pieces)) > self.max_line:
            for i, piece in enumerate(pieces):
                if len(piece.rstrip("\r\n")) > self.max_line:
                    del pieces[i:]
                    self._buf = ""
                    return pieces, self._refuse_long
        if refusal is None and len(self._buf.rstrip("\r")) > self.max_line:
            refusal = self._refuse_long
        return pieces, refusal

    # -- refusing -----------------------------------------------------------------------------------------

    def _here(self) -> tuple[int, int]:
        """(line, column) of the next character after the text handed out and buffered."""
        if self._buf.endswith("\r"):
            return self.line + 2, 1
        return self.line + 1, len(self._buf) + 1

    def _refuse_char(self, char: str) -> None:
        line, column = self._here()
        if char == "\x00":
            raise ArchiveError(f"{self.where}:{line}: holds a NUL byte (column {column}): binary data, or UTF-16 "
                               "without a byte-order mark, not CSV text; save the file as UTF-8 text")
        raise ArchiveError(f"{self.where}:{line}: holds the control character U+{ord(char):04X} (column {column}); "
                           "a label file holds printable one-line values (tab excepted): remove it")

    def _refuse_decode(self, err: UnicodeDecodeError, offset: int) -> None:
        line, column = self._here()
        bad = err.object[err.start:max(err.end, err.start + 1)][:4]
        if self._encoding == "UTF-8":
            raise ArchiveError(f"{self.where}:{line}: not UTF-8 text (byte {bad.hex(' ')} at byte offset {offset}, "
                               f"column {column}): binary data or another encoding such as Latin-1; save the file "
                               "as UTF-8 (Excel: CSV UTF-8)")
        raise ArchiveError(f"{self.where}:{line}: not valid {self._encoding} text although it starts with a "
                           f"{self._encoding} byte-order mark (bytes {bad.hex(' ')} at byte offset {offset}); "
                           "save the file as UTF-8")

    def _refuse_long(self) -> None:
        line = self.line + 1
        raise ArchiveError(f"{self.where}:{line}: a line longer than {self.max_line} characters; a label file has "
                           "short lines (is this the right file, or is a quote left open?)")

    def _refuse_stream(self, err: BaseException) -> None:
        line = self._here()[0]
        kind = "gzip" if self.path.name.lower().endswith(".gz") else "zip" if self.path.name.lower().endswith(
            ".zip") else None
        if kind is None:
            raise ArchiveError(f"{self.where}:{line}: cannot be read ({brief(err)})") from None
        if isinstance(err, EOFError):
            raise ArchiveError(f"{self.where}:{line}: the {kind} data ends early (a truncated file?); download or "
                               "compress it again") from None
        if self._bytes == 0 and isinstance(err, gzip.BadGzipFile):
            raise ArchiveError(f"{self.where}: not gzip data ({brief(err)}); compress it with gzip or drop the "
                               ".gz from its name") from None
        raise ArchiveError(f"{self.where}:{line}: the {kind} data is corrupt ({brief(err)}); download or "
                           "compress it again") from None


def brief(err: BaseException) -> str:
    """An exception's message for an error line: one line, at most about 120 characters."""
    text = str(err) or type(err).__name__
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= 120 else text[:117] + "..."


class CsvRows:
    """(first line number, fields) of every row of a label CSV, blank lines included (as ``[]``); a context
    manager and an iterator.

    A row is one line unless `multiline` is True: then a quoted field may run over line ends (PadChest's CUI
    columns do), `spanned` tells whether the last row did, and a row may hold at most `max_line` characters in
    all. Either way no row costs more than `max_line` characters, whatever ``csv.field_size_limit`` says.

    Raises (while iterating):
        ArchiveError: the file cannot be read as UTF-8 (or BOM-marked UTF-16/32) CSV text within the limits.
    """

    def __init__(self, path: Path | str, *, multiline: bool = False, max_line: int = MAX_LINE_CHARS) -> None:
        self.text = LabelText(path, max_line=max_line)
        self.where = self.text.where
        self.multiline = multiline
        self.max_line = max_line
        self.spanned = False
        self._start = 0  # lines handed out before the row being read
        self._size = 0  # characters of the row being read
        self._reader = csv.reader(self._physical())

    def _physical(self) -> Iterator[str]:
        for line in self.text:
            if self.text.line - 1 != self._start:
                if not self.multiline:
                    raise ArchiveError(f"{self.where}:{self._start + 1}: a quoted field runs over the line end; "
                                       "close its quote (label values are one line each)")
                self._size += len(line)
                if self._size > self.max_line:
                    raise ArchiveError(f"{self.where}:{self._start + 1}: a row longer than {self.max_line} "
                                       f"characters (to line {self.text.line} at least); is a quote left open?")
            else:
                self._size = len(line)
            yield line

    def __iter__(self) -> CsvRows:
        return self

    def __next__(self) -> tuple[int, list[str]]:
        self._start = self.text.line
        try:
            row = next(self._reader)
        except StopIteration:
            self.close()
            raise
        except csv.Error as err:
            raise ArchiveError(f"{self.where}:{self.text.line}: not CSV ({brief(err)})") from None
        self.spanned = self.text.line > self._start + 1
        return self._start + 1, row

    def close(self) -> None:
        self.text.close()

    def __enter__(self) -> CsvRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def csv_rows(path: Path | str, *, multiline: bool = False, max_line: int = MAX_LINE_CHARS) -> CsvRows:
    """The rows of a label CSV: `CsvRows` (iterate it; close it, or use it in a ``with``, when stopping early)."""
    return CsvRows(path, multiline=multiline, max_line=max_line)


def text_lines(path: Path | str, *, max_line: int = MAX_LINE_CHARS) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of every non-blank line of a label text file (a list of names)."""
    with LabelText(path, max_line=max_line) as text:
        for line in text:
            stripped = line.strip()
            if stripped:
                yield text.line, stripped

"""Every decompression of a DICOM file bounded by what its header promises (decompression bombs behind an honest
header).

`miner.data.image.load_image` refuses a file whose header announces more than ``max_pixels`` pixels before any
decoding. A file can also keep an honest header and carry compressed data that decodes to far more than it
announces: a deflated data set (1.2.840.10008.1.2.1.99) of 256 x 256 whose stream inflates to 1 GB (a 1 MB file;
pydicom inflates a deflated data set whole, and decoding one peaked at 3.2 GB), an RLE segment that runs 64:1 past
its frame, a JPEG or JPEG 2000 codestream whose own frame header announces 60,000 x 60,000 (the decoders allocate by
the codestream, not by Rows/Columns). Here each is held to the header, before the memory is spent:

- **Deflated data sets** are inflated here, 64 KiB of output at a time (``zlib.decompressobj(-15).decompress(data,
  max_length)``), never past a ceiling: the pixel data the header promises (`ImageHeader.pixel_bytes`: Rows x
  Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames) plus `OTHER_ELEMENTS` (16 MiB) for every other
  element. The image header (the elements up to group 0028) must come within those 16 MiB. A stream that goes on
  past its ceiling is ``too_large`` after at most the ceiling was inflated; pydicom gets the inflated bytes.
- **RLE Lossless** frames: the segment count must be SamplesPerPixel x BitsAllocated/8 and the segment offsets must
  lie inside the frame, in order (else ``corrupt``); each segment's decoded length is counted from its run headers,
  without decoding, and may not pass Rows x Columns (+ `RLE_PADDING`; else ``too_large``).
- **JPEG, JPEG-LS and JPEG 2000** frames: the codestream's own size (the SOFn / SOF55 frame header, the SIZ marker)
  may not exceed Columns, Rows or SamplesPerPixel (else ``too_large``).
- **Native** pixel data: pydicom decodes only the frames the header announces (``allow_excess_frames=False``).

What precedes the data set (preamble, file meta group, command set) is read with pydicom's own functions
(`read_prelude`), so that the transfer syntax seen here is the one pydicom would act on.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

from miner.errors import ImageError

DEFLATED = "1.2.840.10008.1.2.1.99"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: inflated bytes a deflated data set may hold besides the pixel data its header promises (all its other elements)
OTHER_ELEMENTS = 16 << 20
#: bytes a decoded RLE segment may run past Rows x Columns (pydicom drops such padding with a warning)
RLE_PADDING = 1024
#: output of one inflation step, and input read at a time
CHUNK = 1 << 16
# the image header: the top-level elements up to group 0028 (Rows, Columns, NumberOfFrames, BitsAllocated, ...)
_IMAGE_HEADER_END = 0x0028FFFF


def one_line(err: object) -> str:
    """An exception's (or warning's) text on one line (pydicom's decoders list each plugin's failure on its own)."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """pydicom's errors while reading, and its end-of-file warnings, as ``truncated``/``corrupt`` ImageErrors."""
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (EOFError, struct.error) as err:
            raise ImageError(path, "truncated", f"DICOM data set ends early: {one_line(err)}") from None
        except (InvalidDicomError, ValueError, KeyError, TypeError, OSError) as err:
            raise ImageError(path, "corrupt", f"not a readable DICOM data set: {one_line(err)}") from None
    for warning in caught:
        # pydicom drops an encapsulated (compressed) PixelData element cut off by the end of the file
        if "end of file" in str(warning.message).lower():
            raise ImageError(path, "truncated", f"DICOM data set ends early: {one_line(warning.message)}")


@contextmanager
def untrusted(path: str | Path) -> Iterator[None]:
    """Around everything that touches a file's data set: pydicom converts element values when they are first
    used, and a hostile value raises whatever its converter raises; that is ``corrupt`` (MemoryError and our
    own ImageErrors pass). pydicom's warnings about a file's flaws are not printed: the error, if any, says."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except (ImageError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - see above
            raise ImageError(path, "corrupt", f"DICOM data set does not read ({type(err).__name__}: "
                             f"{one_line(err)})") from None


@dataclass(frozen=True)
class Prelude:
    """What precedes a file's data set, as pydicom reads it (`pydicom.filereader.read_partial`)."""

    preamble: bytes | None
    file_meta: object  # pydicom.dataset.FileMetaDataset
    command_set: object  # pydicom.dataset.Dataset
    start: int  # byte offset of the data set
    syntax: str | None  # TransferSyntaxUID


def read_prelude(fileobj: BinaryIO, path: str | Path) -> Prelude:
    """Preamble, file meta group and command set of the file open as `fileobj`, read from its start with the
    functions pydicom's `dcmread(force=True)` uses; `fileobj` is left at the start of the data set."""
    from pydicom import filereader

    fileobj.seek(0)
    with reading(path):
        preamble = filereader.read_preamble(fileobj, True)
        file_meta = filereader._read_file_meta_info(fileobj)  # what dcmread decides the syntax by
        command_set = filereader._read_command_set_elements(fileobj)
        syntax = file_meta.get("TransferSyntaxUID")  # converted here, where a hostile value is caught
        syntax = None if syntax is None else str(syntax)
    return Prelude(preamble, file_meta, command_set, fileobj.tell(), syntax)


@dataclass(frozen=True)
class ImageHeader:
    """The image a data set's header announces."""

    rows: int
    columns: int
    frames: int
    samples: int
    bits: int  # BitsAllocated

    @property
    def pixel_bytes(self) -> int:
        """Bytes of native pixel data the header promises (rounded up to even, as DICOM pads values)."""
        size = (self.rows * self.columns * self.frames * self.samples * self.bits + 7) // 8
        return size + (size & 1)

    def describe(self) -> str:
        frames = f" x {self.frames:,} frames" if self.frames > 1 else ""
        samples = f", {self.samples} samples" if self.samples > 1 else ""
        return f"{self.columns:,} x {self.rows:,}{frames}{samples} of {self.bits} bits"


def image_header(ds, path: str | Path) -> ImageHeader | None:
    """Rows, Columns, NumberOfFrames, SamplesPerPixel and BitsAllocated of `ds`; None without Rows/Columns."""
    if "Rows" not in ds or "Columns" not in ds:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except Exception as err:  # noqa: BLE001 - a hostile value's converter raises anything (see `untrusted`)
        raise ImageError(path, "corrupt", f"DICOM header with an unreadable image size ({one_line(err)})") from None
    if rows < 1 or columns < 1:
        raise ImageError(path, "corrupt", f"DICOM header with a size of {columns} x {rows}")
    if not 1 <= samples <= 4 or not 1 <= bits <= 64:
        raise ImageError(path, "corrupt", f"DICOM header with {samples} samples per pixel of {bits} bits allocated "
                         "(DICOM images have 1 or 3 samples of 1 to 64 bits)")
    return ImageHeader(rows, columns, max(frames, 1), samples, bits)


# ---------------------------------------------------------------------------------------------- deflate


class _Inflater:
    """A raw deflate stream read from a file object, inflated at most `CHUNK` bytes at a time."""

    def __init__(self, fileobj: BinaryIO, path: str | Path) -> None:
        self.fileobj, self.path = fileobj, path
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.pending = b""
        self.exhausted = False
        self.total = 0

    def read(self, limit: int) -> bytes:
        """Up to min(`limit`, CHUNK) inflated bytes; b"" at the end of the stream."""
        while not self.inflater.eof:
            if not self.pending and not self.exhausted:
                self.pending = self.fileobj.read(CHUNK)
                self.exhausted = not self.pending
            try:
                out = self.inflater.decompress(self.pending, max(1, min(limit, CHUNK)))
            except zlib.error as err:
                raise ImageError(self.path, "corrupt", f"deflated DICOM data does not inflate ({err})") from None
            self.pending = self.inflater.unconsumed_tail
            if out:
                self.total += len(out)
                return out
            if self.exhausted and not self.pending and not self.inflater.eof:
                raise ImageError(self.path, "truncated", "deflated DICOM data set ends early (its deflate stream "
                                 f"stops after {self.total:,} inflated bytes)")
        return b""


def _read_header(buffer: io.BytesIO, path: str | Path, *, final: bool):
    """The top-level elements inflated so far into `buffer` up to the image header's end, and whether that end was
    reached; `buffer` is left at its end. An element before it that declares more than `OTHER_ELEMENTS` bytes is
    ``too_large`` at once."""
    from pydicom.filereader import read_dataset

    ended: list[int] = []

    def past_image_header(tag, vr, length) -> bool:
        if tag > _IMAGE_HEADER_END:
            ended.append(tag)
            return True
        if length != 0xFFFFFFFF and length > OTHER_ELEMENTS:
            raise ImageError(path, "too_large", f"its deflated data set declares an element {tag} of {length:,} bytes "
                             f"before its image header (Rows, Columns, ...), more than the {OTHER_ELEMENTS:,} allowed "
                             "for all its elements but the pixel data (a decompression bomb?)")
        return False

    buffer.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a header cut inside an element reads as far as it goes
        try:
            # values over 4 KiB are skipped, not read: the image header's are small
            ds = read_dataset(buffer, False, True, stop_when=past_image_header, defer_size=4096)
        except (EOFError, struct.error, ValueError, KeyError, TypeError) as err:
            if not final:
                return None, False
            raise ImageError(path, "corrupt", f"deflated DICOM header does not read ({err})") from None
        finally:
            buffer.seek(0, io.SEEK_END)
    return ds, bool(ended)


def inflate_deflated(fileobj: BinaryIO, prelude: Prelude, path: str | Path, *, keep: bool = True,
                     header_only: bool = False):
    """Inflate the data set of a deflated file, bounded by what its header promises (see the module docstring).

    Args:
        fileobj: the file, open for reading; `prelude` from `read_prelude`.
        keep: keep the inflated bytes (False: only count them, in constant memory).
        header_only: stop after the image header (Rows, Columns, ... up to group 0028).

    Returns:
        (the header's elements as a pydicom Dataset, its `ImageHeader` or None, the inflated data set as a
        BytesIO at 0 or None when not `keep` or `header_only`).

    Raises:
        ImageError: ``too_large`` (the stream inflates past its ceiling, or past `OTHER_ELEMENTS` before its image
        header ends), ``corrupt`` (not a deflate stream, an unreadable header), ``truncated`` (the stream stops).
    """
    fileobj.seek(prelude.start)
    stream = _Inflater(fileobj, path)
    buffer = io.BytesIO()  # the inflated data set, parsed where it is (no copy)
    next_parse = CHUNK
    while True:
        out = stream.read(OTHER_ELEMENTS + 1 - buffer.tell())
        buffer.write(out)
        if buffer.tell() > OTHER_ELEMENTS:
            raise ImageError(path, "too_large", f"its deflated data set inflates past {OTHER_ELEMENTS:,} bytes before "
                             "its image header (Rows, Columns, ...) ends; not an image a scanner wrote (a "
                             "decompression bomb?)")
        if not out or buffer.tell() >= next_parse:
            ds, ended = _read_header(buffer, path, final=not out)
            next_parse = 2 * buffer.tell()
            if ended or not out:
                break
    image = image_header(ds, path)
    if header_only:
        return ds, image, None
    promised = image.pixel_bytes if image is not None else 0
    ceiling = promised + OTHER_ELEMENTS
    size = buffer.tell()
    if not keep:
        buffer = None
    while True:
        out = stream.read(ceiling + 1 - size)
        if not out:
            break
        size += len(out)
        if size > ceiling:
            what = (f"its header ({image.describe()}) promises {promised:,} bytes of pixel data"
                    if image is not None else "its header announces no image")
            raise ImageError(path, "too_large", f"its deflated data set inflates past {ceiling:,} bytes, while {what} "
                             f"and {OTHER_ELEMENTS:,} more are allowed for its other elements (a decompression bomb?)")
        if buffer is not None:
            buffer.write(out)
    if buffer is not None:
        buffer.seek(0)
    return ds, image, buffer


def read_deflated(fileobj: BinaryIO, prelude: Prelude, path: str | Path):
    """The whole data set of a deflated file as pydicom's `FileDataset`, inflated within its ceiling."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset

    _, _, buffer = inflate_deflated(fileobj, prelude, path)
    with reading(path):
        dataset = read_dataset(buffer, False, True)
    del buffer
    if prelude.command_set:
        dataset.update(prelude.command_set)
    ds = FileDataset(str(path), dataset, prelude.preamble, prelude.file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)  # as read_partial does
    return ds


# ---------------------------------------------------------------------------------------------- encapsulated


def check_frames(ds, path: str | Path) -> None:
    """Hold every encapsulated frame of `ds` to its header: RLE segments, JPEG/JPEG-LS/JPEG 2000 codestream sizes.

    Raises:
        ImageError: ``too_large`` (a frame decodes, or announces, more than the header), ``corrupt`` (an RLE
        header that does not fit the image or its frame).
    """
    from pydicom.uid import UID

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        encapsulated = syntax is not None and UID(str(syntax)).is_encapsulated
    except ValueError:  # not a transfer syntax: pixel_array says it cannot decode it
        return
    if not encapsulated or "PixelData" not in ds:
        return
    image = image_header(ds, path)
    if image is None:
        return
    from pydicom.encaps import generate_frames

    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=image.frames,
                                                      extended_offsets=offsets)):
            if str(syntax) == RLE_LOSSLESS:
                check_rle_frame(frame, image, path, index)
            else:
                check_codestream(frame, image, path, index)
    except ImageError:
        raise
    except (ValueError, TypeError, KeyError, struct.error) as err:  # pydicom's fragment parsing
        raise ImageError(path, "corrupt", f"DICOM encapsulated pixel data does not read: {one_line(err)}") from None


# PackBits run headers n: a literal run (n < 128) copies the next n + 1 bytes, a replicate run (n > 128) repeats the
# next byte 257 - n times, 128 does nothing; bytes each header moves past, and bytes it decodes to
_RLE_STEP = tuple(n + 2 if n < 128 else 1 if n == 128 else 2 for n in range(256))
_RLE_OUT = tuple(n + 1 if n < 128 else 0 if n == 128 else 257 - n for n in range(256))


def rle_segment_length(segment: bytes | memoryview, limit: int) -> int:
    """How many bytes a PackBits (DICOM RLE) segment decodes to, counted from its run headers without decoding
    (about half the time pydicom takes to decode it); the count stops as soon as it passes `limit`."""
    size = pos = 0
    end, step, out = len(segment), _RLE_STEP, _RLE_OUT
    while pos < end:
        n = segment[pos]
        pos += step[n]
        size += out[n]
        if size > limit:
            break
    return size


def check_rle_frame(frame: bytes, image: ImageHeader, path: str | Path, index: int = 0) -> None:
    """An RLE Lossless frame (PS3.5 G): its 64-byte header against the image header, and no segment that decodes
    past Rows x Columns (+ `RLE_PADDING`) bytes."""
    where = f"RLE frame {index + 1}"
    if len(frame) < 64:
        raise ImageError(path, "corrupt", f"its {where} has {len(frame)} bytes, less than the 64-byte RLE header")
    count, *offsets = struct.unpack("<16I", frame[:64])
    expected = image.samples * ((image.bits + 7) // 8)
    if count != expected or count > 15:
        raise ImageError(path, "corrupt", f"its {where} has {count} segments where SamplesPerPixel {image.samples} x "
                         f"BitsAllocated {image.bits} / 8 = {expected} are expected")
    starts = offsets[:count]
    bounds = [*starts, len(frame)]
    if starts[0] < 64 or any(not a < b for a, b in pairwise(bounds)):
        raise ImageError(path, "corrupt", f"its {where} has segment offsets {starts} that do not lie in order inside "
                         f"its {len(frame):,} bytes after the 64-byte header")
    plane = image.rows * image.columns
    limit = plane + RLE_PADDING
    for number, (start, stop) in enumerate(pairwise(bounds), 1):
        if 64 * (stop - start) <= limit:  # 2 bytes decode to at most 128
            continue
        if rle_segment_length(memoryview(frame)[start:stop], limit) > limit:
            raise ImageError(path, "too_large", f"its {where}, segment {number}, decodes to more than {limit:,} "
                             f"bytes, while its header ({image.describe()}) promises {plane:,} a segment "
                             "(a decompression bomb?)")


# SOFn frame headers (C0-CF less DHT C4, JPG C8, DAC CC) and JPEG-LS's SOF55 (F7)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI
_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC then SIZ: the start of a JPEG 2000 codestream


def codestream_size(frame: bytes) -> tuple[str, int, int, int] | None:
    """(format, height, width, components) as a frame's codestream announces them: the SOFn/SOF55 frame header of
    a JPEG/JPEG-LS codestream, the SIZ marker of a JPEG 2000 one (bare or in a JP2 file); None for other data.
    A JPEG height of 0 (defined later by a DNL marker) is returned as 0."""
    if frame[:2] == b"\xff\xd8":
        return _jpeg_sof(frame)
    at = 0 if frame[:4] == _J2K_SIZ else _jp2_codestream(frame)
    if at is not None and frame[at:at + 4] == _J2K_SIZ and len(frame) >= at + 42:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", frame[at + 8:at + 24])
        (components,) = struct.unpack(">H", frame[at + 40:at + 42])
        return "JPEG 2000", max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components
    return None


def _jp2_codestream(frame: bytes) -> int | None:
    """Where the codestream of a JP2 file starts (its ``jp2c`` box), walking the boxes from the signature box."""
    if frame[4:12] != b"jP  \r\n\x87\n":
        return None
    pos = 0
    while pos + 8 <= len(frame):
        length, kind = struct.unpack(">I4s", frame[pos:pos + 8])
        header = 8
        if length == 1:  # an 8-byte XLBox follows
            if pos + 16 > len(frame):
                return None
            (length,) = struct.unpack(">Q", frame[pos + 8:pos + 16])
            header = 16
        if kind == b"jp2c":
            return pos + header
        if length < header:  # 0: the box runs to the end (only the last box may), or a broken length
            return None
        pos += length
    return None


def _jpeg_sof(frame: bytes) -> tuple[str, int, int, int] | None:
    pos, end = 2, len(frame)
    while pos + 4 <= end:
        if frame[pos] != 0xFF:
            pos += 1  # garbage between segments: libjpeg skips it too
            continue
        code = frame[pos + 1]
        if code == 0xFF:  # a fill byte
            pos += 1
            continue
        if code in _STANDALONE or code == 0x00:
            pos += 2
            continue
        if code in (0xDA, 0xD9):  # scan data or the end before any frame header
            return None
        (length,) = struct.unpack(">H", frame[pos + 2:pos + 4])
        if code in _SOF:
            if pos + 10 > end:
                return None
            height, width = struct.unpack(">HH", frame[pos + 5:pos + 9])
            return ("JPEG-LS" if code == 0xF7 else "JPEG"), height, width, frame[pos + 9]
        pos += 2 + max(length, 2)
    return None


def check_codestream(frame: bytes, image: ImageHeader, path: str | Path, index: int = 0) -> None:
    """A JPEG, JPEG-LS or JPEG 2000 frame may not announce more rows, columns or components than the image header
    (its decoder would allocate by the codestream)."""
    size = codestream_size(frame)
    if size is None:
        return  # not a codestream read here: the decoder (if any) reports it
    name, height, width, components = size
    if height == 0 and name == "JPEG":
        raise ImageError(path, "unsupported", f"its JPEG frame {index + 1} has a height defined later by a DNL marker")
    if height > image.rows or width > image.columns or components > image.samples:
        raise ImageError(path, "too_large", f"its {name} frame {index + 1} announces {width:,} x {height:,} x "
                         f"{components} components, more than the {image.columns:,} x {image.rows:,} x "
                         f"{image.samples} of its header (a decompression bomb?)")

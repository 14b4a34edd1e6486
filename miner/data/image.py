"""Decoding one image file: PNG, JPEG, TIFF and DICOM to a float32 grey image in [0, 1].

The format is sniffed from the file's first bytes, never from its name, so a DICOM file called
``x.png`` decodes as DICOM and a text file called ``x.png`` is reported, not mis-decoded. Every
failure a user can act on raises `miner.errors.ImageError` with one of its kinds:

- ``missing``: the path does not exist (or is not a file);
- ``empty``: the file has zero bytes;
- ``truncated``: the file ends early (PNG without its ``IEND`` chunk, JPEG without its ``EOI``
  marker, DICOM with less pixel data than its header announces);
- ``corrupt``: the bytes claim a known format but do not decode;
- ``unsupported``: a format this reader does not decode (GIF, PDF, text, ...);
- ``too_large``: the header announces more pixels than ``max_pixels`` (a decompression bomb, or a
  whole-slide scan in a chest X-ray archive).

`cv2.imdecode` may return a partial image for a truncated file without raising, which is why the end
markers are checked before decoding. `load_image` is on the hot path of the mining job (about 10^5
decodes per archive): one sniff, one header read, one read of the file, one `cv2.imdecode(IMREAD_UNCHANGED)`,
one conversion.

The pixel limit is checked on the size the file's own header announces, read without decoding and without
reading more of the file than the header (`header_size`): PNG's IHDR chunk, JPEG's SOFn frame header,
TIFF's ImageWidth/ImageLength tags of the first IFD (the page OpenCV decodes), DICOM's Rows x Columns x
NumberOfFrames (pydicom decodes every frame; the header of a deflated data set is inflated only up to its
pixel data). A 1.5 MB PNG of 40,000 x 40,000 pixels is refused after reading 33 bytes; decoded, it would take
1.6 GB, and 6.4 GB more as float32. OpenCV has its own cap (2^30 pixels, ``OPENCV_IO_MAX_IMAGE_PIXELS`` read
when cv2 loads): an image between that cap and a higher ``max_pixels`` is ``too_large`` too, with that reason.
Text from OpenCV or pydicom reaches a message only inside this module's own sentence.

An honest header over compressed data that decodes to more than it announces is bounded too. OpenCV's PNG and
TIFF decoders (libpng, libtiff) allocate by the header and stop there: a 256 x 256 PNG whose IDAT, zTXt or iCCP
inflates to 256 MiB decodes in under 16 MiB (`tests/data/test_image.py`; the extra IDAT data still costs the
CPU time of inflating it). pydicom does not: a deflated data set is inflated whole, RLE segments and JPEG/JPEG
2000 codestreams are decoded by their own sizes, so `miner.data.dicom_bounds` holds each of them to the DICOM
header before anything is decoded (``too_large``; `probe_image` runs the deflated check as well).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from miner.config import MAX_PIXELS
from miner.errors import ImageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
DICOM_MAGIC_OFFSET = 128
#: file name endings a plain image folder is scanned for
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
# how far from the end of the file the end marker is looked for (some writers pad after it)
_TAIL = 4096
# bytes read first: enough to sniff every format (DICOM's magic is at 128)
_HEAD = DICOM_MAGIC_OFFSET + 4
#: OpenCV's own limit on the pixels of one image (``CV_IO_MAX_IMAGE_PIXELS``), read once when cv2 loads
OPENCV_MAX_PIXELS = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))

# magic bytes of formats that are recognised only to be reported as unsupported
_OTHER_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 (raw .jp2)"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"BM", "BMP"),
    (b"RIFF", "RIFF/WebP"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"),
)


def sniff_format(head: bytes, path: str | Path = "") -> str:
    """The format of a file from its first 132+ bytes: ``png``, ``jpeg``, ``tiff``, ``dicom`` or ``unknown``.

    A file without the DICOM preamble (``DICM`` at byte 128) counts as DICOM only when its name ends in
    ``.dcm``/``.dicom`` (raw data sets written without the Part 10 header).
    """
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    if head[:4] in TIFF_MAGICS:
        return "tiff"
    if str(path).lower().endswith((".dcm", ".dicom")):
        return "dicom"
    return "unknown"


def _describe_unknown(head: bytes) -> str:
    for magic, name in _OTHER_MAGICS:
        if head.startswith(magic):
            return f"{name} files are not supported; convert to PNG, JPEG, TIFF or DICOM"
    return "not a PNG, JPEG, TIFF or DICOM file (unrecognised first bytes)"


def _open(path: str | Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ImageError(path, "missing", "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "missing", "is a directory, not a file") from None
    except NotADirectoryError:
        raise ImageError(path, "missing", "no such file (a parent is not a folder)") from None
    except PermissionError:
        raise ImageError(path, "missing", "permission denied") from None


def _check_end_marker(path: str | Path, fmt: str, tail: bytes) -> None:
    if fmt == "png" and b"IEND" not in tail:
        raise ImageError(path, "truncated", "PNG ends before its IEND chunk")
    if fmt == "jpeg" and b"\xff\xd9" not in tail:
        raise ImageError(path, "truncated", "JPEG ends before its EOI marker")


def _to_unit_grey(img: np.ndarray, path: str | Path) -> np.ndarray:
    """uint8/uint16/float image, grey or BGR(A) -> float32 [H, W] in [0, 1]."""
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        else:
            raise ImageError(path, "unsupported", f"{img.shape[2]} channels")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535.0)
    if img.dtype in (np.float32, np.float64):
        return np.clip(img.astype(np.float32), 0.0, 1.0)
    raise ImageError(path, "unsupported", f"pixel type {img.dtype}")


def load_image(path: str | Path, *, dicom_window: str = "voi",
               max_pixels: int | None = MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image file to grey float32 in [0, 1].

    Args:
        path: a PNG (8/16-bit; grey, grey+alpha, palette, RGB or RGBA), JPEG, TIFF or DICOM file.
            Colour is converted with ITU-R BT.601 weights; alpha is dropped.
        dicom_window: how DICOM values map to [0, 1]; see `miner.data.dicom.decode_dicom`.
        max_pixels: refuse (kind ``too_large``) a file whose header announces more than this many pixels
            (height x width x frames), before any pixel is decoded; None = only the decoders' own limits.

    Returns:
        image (np.ndarray[H, W], float32, in [0, 1]; bright = dense, also for MONOCHROME1 DICOM) and
        its original size (H, W).

    Raises:
        ImageError: kind ``missing``, ``empty``, ``truncated``, ``corrupt``, ``unsupported`` or ``too_large``.
    """
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1 or None, got {max_pixels}")
    with _open(path) as f:
        head = f.read(_HEAD)
        if not head:
            raise ImageError(path, "empty", "zero bytes")
        fmt = sniff_format(head, path)
        if fmt == "unknown":
            raise ImageError(path, "unsupported", _describe_unknown(head[:16]))
        if fmt in ("png", "jpeg"):
            _check_end_marker(path, fmt, _tail(f))
        if max_pixels is not None or fmt != "dicom":
            _check_pixels(path, fmt, _header_size(f, fmt, path), max_pixels)
        f.seek(0)
        data = f.read()
    if fmt == "dicom":
        from miner.data.dicom import decode_dicom

        image = decode_dicom(data, path, window=dicom_window)
        return image, (int(image.shape[0]), int(image.shape[1]))
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageError(path, "corrupt", f"{fmt.upper()} data does not decode (OpenCV: {_last_line(err)})") from None
    if img is None or img.size == 0:
        raise ImageError(path, "corrupt", f"{fmt.upper()} data does not decode")
    image = _to_unit_grey(img, path)
    return image, (int(image.shape[0]), int(image.shape[1]))


def _last_line(err: BaseException) -> str:
    """The last non-empty line of an exception's text (OpenCV puts file and line first)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _tail(f: BinaryIO) -> bytes:
    f.seek(0, os.SEEK_END)
    f.seek(max(f.tell() - _TAIL, 0))
    return f.read()


def _check_pixels(path: str | Path, fmt: str, size: tuple[int, int, int] | None, max_pixels: int | None) -> None:
    """Raise ``too_large`` when `size` (height, width, frames) exceeds `max_pixels` or OpenCV's own cap."""
    if size is None:  # a DICOM header without Rows/Columns: decode_dicom reports what the file is
        return
    height, width, frames = size
    pixels = height * width * frames
    shape = f"{width:,} x {height:,}" + (f" x {frames:,} frames" if frames > 1 else "")
    if max_pixels is not None and pixels > max_pixels:
        raise ImageError(path, "too_large",
                         f"its {fmt.upper()} header announces {shape} = {pixels:,} pixels, more than the limit of "
                         f"{max_pixels:,}; raise --max-pixels to mine it")
    if fmt != "dicom" and pixels > OPENCV_MAX_PIXELS:
        raise ImageError(path, "too_large",
                         f"its {fmt.upper()} header announces {shape} = {pixels:,} pixels, more than OpenCV decodes "
                         f"({OPENCV_MAX_PIXELS:,}; set OPENCV_IO_MAX_IMAGE_PIXELS on every node to raise it)")


def header_size(path: str | Path) -> tuple[int, int, int]:
    """(height, width, frames) as the file's header announces them, without decoding any pixel.

    Frames is 1 except for multi-frame DICOM (NumberOfFrames). Reads the PNG IHDR chunk, the JPEG SOFn
    frame header, the first TIFF IFD or the DICOM header (up to its pixel data).

    Raises:
        ImageError: ``missing``, ``empty``, ``unsupported`` (not one of the four formats, or a DICOM object
        without an image), ``corrupt`` or ``truncated`` (the header cannot be read).
    """
    with _open(path) as f:
        head = f.read(_HEAD)
        if not head:
            raise ImageError(path, "empty", "zero bytes")
        fmt = sniff_format(head, path)
        if fmt == "unknown":
            raise ImageError(path, "unsupported", _describe_unknown(head[:16]))
        size = _header_size(f, fmt, path)
    if size is None:
        raise ImageError(path, "unsupported", "DICOM file without an image (no Rows/Columns)")
    return size


def _header_size(f: BinaryIO, fmt: str, path: str | Path) -> tuple[int, int, int] | None:
    if fmt == "png":
        return _png_size(f, path)
    if fmt == "jpeg":
        return _jpeg_size(f, path)
    if fmt == "tiff":
        return _tiff_size(f, path)
    from miner.data.dicom import dicom_header_size

    return dicom_header_size(f, path)


def _png_size(f: BinaryIO, path: str | Path) -> tuple[int, int, int]:
    """From the IHDR chunk, which PNG requires first: length, type, width, height (big-endian)."""
    f.seek(8)
    chunk = f.read(16)
    if len(chunk) < 16 or chunk[4:8] != b"IHDR":
        raise ImageError(path, "corrupt", "PNG without its IHDR chunk")
    width, height = struct.unpack(">II", chunk[8:16])
    if width == 0 or height == 0:
        raise ImageError(path, "corrupt", f"PNG header with a size of {width} x {height}")
    return int(height), int(width), 1


# SOFn markers (frame headers): C0-CF except DHT (C4), JPG (C8) and DAC (CC)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# markers without a length field: TEM, RSTn, SOI
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_size(f: BinaryIO, path: str | Path) -> tuple[int, int, int]:
    """From the first SOFn frame header, skipping the segments before it by their lengths (APPn metadata such
    as EXIF or ICC profiles may be large); no entropy-coded data is read."""
    f.seek(2)
    while True:
        byte = f.read(1)
        if not byte:
            raise ImageError(path, "corrupt", "JPEG without a frame header (SOF marker)")
        if byte != b"\xff":
            continue  # garbage between segments: libjpeg skips it too
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            raise ImageError(path, "corrupt", "JPEG without a frame header (SOF marker)")
        code = marker[0]
        if code in _STANDALONE_MARKERS or code == 0x00:
            continue
        if code in (0xDA, 0xD9):  # start of scan / end of image before any frame header
            raise ImageError(path, "corrupt", "JPEG without a frame header before its scan data")
        field = f.read(2)
        if len(field) < 2:
            raise ImageError(path, "corrupt", "JPEG ends inside a segment header")
        length = struct.unpack(">H", field)[0]
        if length < 2:
            raise ImageError(path, "corrupt", f"JPEG segment of length {length}")
        if code in _SOF_MARKERS:
            frame = f.read(5)
            if len(frame) < 5:
                raise ImageError(path, "corrupt", "JPEG ends inside its frame header")
            height, width = struct.unpack(">HH", frame[1:5])
            if width == 0 or height == 0:
                raise ImageError(path, "unsupported", f"JPEG frame header with a size of {width} x {height} "
                                 "(a height defined later by a DNL marker is not supported)")
            return int(height), int(width), 1
        f.seek(length - 2, os.SEEK_CUR)


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG


def _tiff_size(f: BinaryIO, path: str | Path) -> tuple[int, int, int]:
    """From the ImageWidth (256) and ImageLength (257) tags of the first IFD (the page OpenCV decodes); the
    IFD may sit anywhere in the file (libtiff writes it after the pixel data)."""
    f.seek(0)
    header = f.read(8)
    if len(header) < 8:
        raise ImageError(path, "truncated", "TIFF ends inside its header")
    order = "<" if header[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", header[4:8])
    f.seek(offset)
    field = f.read(2)
    if len(field) < 2:
        raise ImageError(path, "truncated", f"TIFF ends before its first IFD (at byte {offset})")
    (count,) = struct.unpack(order + "H", field)
    entries = f.read(12 * count)
    if len(entries) < 12 * count:
        raise ImageError(path, "truncated", "TIFF ends inside its first IFD")
    size: dict[int, int] = {}
    for i in range(count):
        tag, kind = struct.unpack(order + "HH", entries[12 * i:12 * i + 4])
        if tag in (256, 257):
            if kind not in _TIFF_TYPES:
                raise ImageError(path, "corrupt", f"TIFF tag {tag} of field type {kind}, not SHORT or LONG")
            code, width = _TIFF_TYPES[kind]
            (size[tag],) = struct.unpack(order + code, entries[12 * i + 8:12 * i + 8 + width])
    if 256 not in size or 257 not in size:
        raise ImageError(path, "corrupt", "TIFF without ImageWidth/ImageLength tags in its first IFD")
    if size[256] == 0 or size[257] == 0:
        raise ImageError(path, "corrupt", f"TIFF header with a size of {size[256]} x {size[257]}")
    return int(size[257]), int(size[256]), 1


def to_model_input(image: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """The one resize used by training and mining alike.

    Args:
        image (np.ndarray[H, W], float32 in [0, 1]): from `load_image`.
        size: S (square) or (height, width).

    Returns:
        np.ndarray[1, S, S] (or [1, height, width]), float32 in [0, 1], C-contiguous; resized with
        `cv2.INTER_AREA`. No mean/std normalisation (models apply their own).
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if image.ndim != 2:
        raise ValueError(f"expected a grey image [H, W], got shape {image.shape}")
    image = np.asarray(image, dtype=np.float32)
    if image.shape != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(image, 0.0, 1.0)[None]


# ----------------------------------------------------------------------------------------------
# cheap checks (no full decode): used by `miner inspect`


def probe_image(path: str | Path) -> tuple[str, tuple[int, int]]:
    """Check a file cheaply (existence, size, magic, end marker, header) without decoding its pixels.

    Returns:
        (format, (H, W) as its header announces it; see `header_size`).

    Raises:
        ImageError: for what can be seen without a full decode (missing, empty, truncated PNG/JPEG,
        unsupported format, corrupt header; ``too_large``: a deflated DICOM data set that inflates past what its
        header promises, counted in constant memory).
    """
    try:
        size = os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(path, "missing", "no such file") from None
    if not os.path.isfile(path):
        raise ImageError(path, "missing", "not a regular file")
    if size == 0:
        raise ImageError(path, "empty", "zero bytes")
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
            if size > len(head):
                f.seek(max(size - _TAIL, 0))
                tail = f.read()
            else:
                tail = head[-_TAIL:]
    except PermissionError:
        raise ImageError(path, "missing", "permission denied") from None
    fmt = sniff_format(head, path)
    if fmt == "unknown":
        raise ImageError(path, "unsupported", _describe_unknown(head[:16]))
    if fmt == "dicom":
        from miner.data.dicom import dicom_size

        return fmt, dicom_size(path)
    _check_end_marker(path, fmt, tail)
    height, width, _ = header_size(path)
    return fmt, (height, width)

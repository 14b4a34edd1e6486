"""Decoding one image file: PNG, JPEG, TIFF and DICOM to a float32 grey image in [0, 1].

The format is sniffed from the file's first bytes, never from its name, so a DICOM file called
``x.png`` decodes as DICOM and a text file called ``x.png`` is reported, not mis-decoded. Every
failure a user can act on raises `miner.errors.ImageError` with one of its kinds:

- ``missing``: the path does not exist (or is not a file);
- ``empty``: the file has zero bytes;
- ``truncated``: the file ends early (PNG without its ``IEND`` chunk, JPEG without its ``EOI``
  marker, DICOM with less pixel data than its header announces);
- ``corrupt``: the bytes claim a known format but do not decode;
- ``unsupported``: a format this reader does not decode (GIF, PDF, text, ...).

`cv2.imdecode` may return a partial image for a truncated file without raising, which is why the end
markers are checked before decoding. `load_image` is on the hot path of the mining job (about 10^5
decodes per archive): one read, one sniff, one `cv2.imdecode(IMREAD_UNCHANGED)`, one conversion.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from miner.errors import ImageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
DICOM_MAGIC_OFFSET = 128
#: file name endings a plain image folder is scanned for
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
# how far from the end of the file the end marker is looked for (some writers pad after it)
_TAIL = 4096

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


def _read_bytes(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError(path, "missing", "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "missing", "is a directory, not a file") from None
    except PermissionError:
        raise ImageError(path, "missing", "permission denied") from None
    if not data:
        raise ImageError(path, "empty", "zero bytes")
    return data


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


def load_image(path: str | Path, *, dicom_window: str = "voi") -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image file to grey float32 in [0, 1].

    Args:
        path: a PNG (8/16-bit; grey, grey+alpha, palette, RGB or RGBA), JPEG, TIFF or DICOM file.
            Colour is converted with ITU-R BT.601 weights; alpha is dropped.
        dicom_window: how DICOM values map to [0, 1]; see `miner.data.dicom.decode_dicom`.

    Returns:
        image (np.ndarray[H, W], float32, in [0, 1]; bright = dense, also for MONOCHROME1 DICOM) and
        its original size (H, W).

    Raises:
        ImageError: kind ``missing``, ``empty``, ``truncated``, ``corrupt`` or ``unsupported``.
    """
    data = _read_bytes(path)
    fmt = sniff_format(data[:DICOM_MAGIC_OFFSET + 4], path)
    if fmt == "dicom":
        from miner.data.dicom import decode_dicom

        image = decode_dicom(data, path, window=dicom_window)
        return image, (int(image.shape[0]), int(image.shape[1]))
    if fmt == "unknown":
        raise ImageError(path, "unsupported", _describe_unknown(data[:16]))
    _check_end_marker(path, fmt, data[-_TAIL:])
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(path, "corrupt", f"{fmt.upper()} data does not decode")
    image = _to_unit_grey(img, path)
    return image, (int(image.shape[0]), int(image.shape[1]))


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


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(H, W) from the first SOFn marker of a JPEG, or None if not within `head`."""
    i = 2
    n = len(head)
    while i + 9 < n:
        if head[i] != 0xFF:
            i += 1
            continue
        marker = head[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", head[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", head[i + 5:i + 9])
            return int(h), int(w)
        i += 2 + length
    return None


def probe_image(path: str | Path) -> tuple[str, tuple[int, int] | None]:
    """Check a file cheaply (existence, size, magic, end marker, header) without decoding its pixels.

    Returns:
        (format, (H, W) or None when the header does not tell it cheaply, e.g. some TIFFs).

    Raises:
        ImageError: for what can be seen without a full decode (missing, empty, truncated PNG/JPEG,
        unsupported format, corrupt header).
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
    if fmt == "png":
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageError(path, "corrupt", "PNG without IHDR chunk")
        w, h = struct.unpack(">II", head[16:24])
        return fmt, (int(h), int(w))
    if fmt == "jpeg":
        return fmt, _jpeg_size(head)
    return fmt, None

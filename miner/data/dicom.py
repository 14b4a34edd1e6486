"""DICOM pixel data to a float32 grey image in [0, 1] (pydicom; JPEG 2000 through pylibjpeg-openjpeg).

The mapping follows the DICOM grey-scale pipeline (PS3.3 C.7.6.3, C.11):

1. stored values, masked to ``BitsStored`` (unsigned data whose unused high bits hold overlays or
   garbage) and sign-extended for ``PixelRepresentation`` 1 (pydicom does the latter);
2. modality LUT: ``value * RescaleSlope + RescaleIntercept``;
3. VOI: the first ``WindowCenter``/``WindowWidth`` pair (``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``)
   when ``window="voi"`` and the file has one; otherwise the full range that ``BitsStored`` allows,
   passed through the modality LUT (``window="range"``), or the image's own min..max (``"minmax"``);
4. ``MONOCHROME1`` (0 = white) is inverted so that, as for MONOCHROME2 and PNG, bright means dense.

Multi-frame files give their first frame; colour files are converted to grey.

`dicom_header_size` reads Rows, Columns and NumberOfFrames without the pixel data, so that an image too large
to decode is refused first (`miner.data.image.load_image`'s ``max_pixels``). pydicom inflates the whole of a
deflated data set (transfer syntax 1.2.840.10008.1.2.1.99) even when told to stop before the pixel data, so
the header of such a file is inflated here, incrementally, only up to the pixel data element.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from miner.errors import ImageError

WINDOWS: tuple[str, ...] = ("voi", "range", "minmax")


def _read(source, path: str | Path, *, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(source, force=True, stop_before_pixels=stop_before_pixels)
        except (EOFError, struct.error) as err:
            raise ImageError(path, "truncated", f"DICOM data set ends early: {err}") from None
        except (InvalidDicomError, ValueError, KeyError, TypeError, OSError) as err:
            raise ImageError(path, "corrupt", f"not a readable DICOM data set: {err}") from None
    for warning in caught:
        # pydicom drops an encapsulated (compressed) PixelData element cut off by the end of the file
        if "end of file" in str(warning.message).lower():
            raise ImageError(path, "truncated", f"DICOM data set ends early: {warning.message}")
    return ds


def _first(value) -> float:
    """The first value of a possibly multi-valued DICOM element."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return float(-(1 << (bits - 1))), float((1 << (bits - 1)) - 1)
    return 0.0, float((1 << bits) - 1)


def _voi(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3: window to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        return (values - (center - width / 2.0)) / max(width, 1e-6)
    # LINEAR (the default): c - 0.5 and w - 1
    width = max(width, 1.0)
    return (values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5


def decode_dicom(data: bytes, path: str | Path, *, window: str = "voi") -> np.ndarray:
    """DICOM bytes -> np.ndarray[H, W] float32 in [0, 1] (see the module docstring for the mapping).

    Raises:
        ImageError: ``corrupt`` (not a data set), ``truncated`` (less pixel data than announced),
        ``unsupported`` (no pixel data, or a transfer syntax without an installed decoder).
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    ds = _read(io.BytesIO(data), path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds:
            raise ImageError(path, "truncated", "DICOM image header without its pixel data")
        if data[128:132] != b"DICM":
            raise ImageError(path, "corrupt", "named like DICOM but neither a Part 10 file nor an image data set")
        raise ImageError(path, "unsupported", "DICOM file without pixel data (not an image object)")
    for keyword in ("Rows", "Columns"):
        if keyword not in ds:
            raise ImageError(path, "corrupt", f"DICOM image without {keyword}")
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageError(path, "unsupported", f"cannot decode transfer syntax {name}: {err}") from None
    except (ValueError, EOFError) as err:
        message = str(err)
        if "length" in message or "less than" in message or "expected" in message or isinstance(err, EOFError):
            raise ImageError(path, "truncated", f"DICOM pixel data shorter than announced: {message}") from None
        raise ImageError(path, "corrupt", f"DICOM pixel data does not decode: {message}") from None
    except Exception as err:  # decoder plugins raise their own types for broken codestreams
        raise ImageError(path, "corrupt", f"DICOM pixel data does not decode: {type(err).__name__}: {err}") from None

    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples == 3:
        lo, hi = _stored_range(ds)
        rgb = arr.astype(np.float32)
        grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return np.clip((grey - lo) / max(hi - lo, 1.0), 0.0, 1.0).astype(np.float32)
    if arr.ndim != 2:
        raise ImageError(path, "unsupported", f"DICOM pixel array of shape {arr.shape}")

    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    if arr.dtype.kind == "u" and bits_stored < arr.dtype.itemsize * 8:
        arr = arr & np.array((1 << bits_stored) - 1, dtype=arr.dtype)

    slope = _first(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = _first(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = arr.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        values = values * np.float32(slope) + np.float32(intercept)

    center = ds.get("WindowCenter")
    width = ds.get("WindowWidth")
    if window == "voi" and center is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        out = _voi(values, _first(center), _first(width), function)
    elif window == "minmax":
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / max(hi - lo, 1e-12)
    else:
        lo, hi = _stored_range(ds)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        out = (values - lo) / max(hi - lo, 1e-12)
    out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(Rows, Columns) from the header only (no pixel data read)."""
    ds = _read(path, path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageError(path, "unsupported", "DICOM file without an image (no Rows/Columns)")
    return int(ds.Rows), int(ds.Columns)


DEFLATED = "1.2.840.10008.1.2.1.99"
# the (7FE0,0010) PixelData tag as explicit VR little endian writes it
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
# how much of a deflated data set is inflated to find its header; real headers take a few kB
_DEFLATED_HEADER_LIMIT = 16 << 20


def dicom_header_size(fileobj: BinaryIO, path: str | Path) -> tuple[int, int, int] | None:
    """(Rows, Columns, NumberOfFrames) of the DICOM file open as `fileobj`, read without its pixel data; None
    when the data set has no Rows/Columns (not an image: `decode_dicom` says what it is)."""
    fileobj.seek(0)
    head = fileobj.read(132)
    fileobj.seek(0)
    if head[128:132] == b"DICM" and _transfer_syntax(path) == DEFLATED:
        ds = _read_deflated_header(fileobj, path)
    else:
        ds = _read(fileobj, path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as err:
        raise ImageError(path, "corrupt", f"DICOM header with an unreadable image size ({err})") from None
    return rows, columns, max(frames, 1)


def _transfer_syntax(path: str | Path) -> str | None:
    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - a broken meta group: `_read` then classifies the file (truncated, corrupt)
        return None
    syntax = meta.get("TransferSyntaxUID")
    return None if syntax is None else str(syntax)


def _read_deflated_header(fileobj: BinaryIO, path: str | Path):
    """The data set elements before PixelData of a deflated file, inflating at most 16 MiB."""
    import pydicom
    from pydicom.filereader import read_dataset

    meta = pydicom.filereader.read_file_meta_info(path)
    length = meta.get("FileMetaInformationGroupLength")
    if length is None:
        raise ImageError(path, "unsupported", "deflated DICOM without a file meta group length")
    fileobj.seek(132 + 12 + int(length))  # preamble + "DICM", the group length element, the rest of the group
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    header = bytearray()
    pending = b""
    while len(header) < _DEFLATED_HEADER_LIMIT:
        if not pending:
            pending = fileobj.read(1 << 16)
            if not pending:
                break
        try:  # 64 KiB of output at a time: a few kB of deflated zeros inflate to megabytes
            header += inflater.decompress(pending, min(1 << 16, _DEFLATED_HEADER_LIMIT - len(header)))
        except zlib.error as err:
            raise ImageError(path, "corrupt", f"deflated DICOM data does not inflate ({err})") from None
        pending = inflater.unconsumed_tail
        at = header.find(_PIXEL_DATA_TAG)
        if at >= 0 and len(header) >= at + 12:  # tag, VR, reserved, 4-byte length
            break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a header cut inside an element reads as far as it goes
        try:
            return read_dataset(io.BytesIO(bytes(header)), False, True,
                                stop_when=lambda tag, vr, length: tag == 0x7FE00010)
        except (EOFError, struct.error, ValueError, KeyError, TypeError) as err:
            raise ImageError(path, "corrupt", f"deflated DICOM header does not read ({err})") from None

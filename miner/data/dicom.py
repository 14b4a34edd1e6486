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
such a data set is inflated here, in steps, never past what its header promises; RLE segments and JPEG/JPEG 2000
codestreams are held to the header before they are decoded too (`miner.data.dicom_bounds`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

from miner.data.dicom_bounds import (
    DEFLATED,
    check_frames,
    inflate_deflated,
    one_line,
    read_deflated,
    read_prelude,
    reading,
    untrusted,
)
from miner.errors import ImageError

WINDOWS: tuple[str, ...] = ("voi", "range", "minmax")


def _read(source, path: str | Path, *, stop_before_pixels: bool = False):
    import pydicom

    with reading(path):
        return pydicom.dcmread(source, force=True, stop_before_pixels=stop_before_pixels)


def _dataset(fileobj: BinaryIO, path: str | Path):
    """The whole data set of the file open as `fileobj`; a deflated one inflated within what its header promises."""
    prelude = read_prelude(fileobj, path)
    if prelude.syntax == DEFLATED:
        return read_deflated(fileobj, prelude, path)
    fileobj.seek(0)
    return _read(fileobj, path)


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
        ``unsupported`` (no pixel data, or a transfer syntax without an installed decoder), ``too_large``
        (compressed data that inflates or decodes past what the header promises; `miner.data.dicom_bounds`).
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    with untrusted(path):
        return _decode(data, path, window)


def _decode(data: bytes, path: str | Path, window: str) -> np.ndarray:
    ds = _dataset(io.BytesIO(data), path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if "Rows" in ds:
            raise ImageError(path, "truncated", "DICOM image header without its pixel data")
        if data[128:132] != b"DICM":
            raise ImageError(path, "corrupt", "named like DICOM but neither a Part 10 file nor an image data set")
        raise ImageError(path, "unsupported", "DICOM file without pixel data (not an image object)")
    for keyword in ("Rows", "Columns"):
        if keyword not in ds:
            raise ImageError(path, "corrupt", f"DICOM image without {keyword}")
    check_frames(ds, path)  # RLE segments, JPEG/JPEG 2000 codestreams: no more than the header promises
    ds.pixel_array_options(allow_excess_frames=False)  # native data: only the frames the header announces
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageError(path, "unsupported", f"cannot decode transfer syntax {name}: {one_line(err)}") from None
    except (ValueError, EOFError) as err:
        message = one_line(err)
        if "length" in message or "less than" in message or "expected" in message or isinstance(err, EOFError):
            raise ImageError(path, "truncated", f"DICOM pixel data shorter than announced: {message}") from None
        raise ImageError(path, "corrupt", f"DICOM pixel data does not decode: {message}") from None
    except Exception as err:  # decoder plugins raise their own types for broken codestreams
        raise ImageError(path, "corrupt", f"DICOM pixel data does not decode: {type(err).__name__}: "
                         f"{one_line(err)}") from None

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
    """(Rows, Columns) from the header, without decoding pixel data; a deflated data set is inflated (in constant
    memory, not kept) to check that it holds no more than its header promises.

    Raises:
        ImageError: ``unsupported`` (no Rows/Columns), ``too_large`` (a deflated data set that inflates past what
        its header promises), ``corrupt`` or ``truncated`` (the header does not read).
    """
    with open(path, "rb") as fileobj, untrusted(path):
        prelude = read_prelude(fileobj, path)
        if prelude.syntax == DEFLATED:
            _, image, _ = inflate_deflated(fileobj, prelude, path, keep=False)
            size = None if image is None else (image.rows, image.columns)
        else:
            fileobj.seek(0)
            ds = _read(fileobj, path, stop_before_pixels=True)
            size = None if "Rows" not in ds or "Columns" not in ds else (int(ds.Rows), int(ds.Columns))
    if size is None:
        raise ImageError(path, "unsupported", "DICOM file without an image (no Rows/Columns)")
    return size


def dicom_header_size(fileobj: BinaryIO, path: str | Path) -> tuple[int, int, int] | None:
    """(Rows, Columns, NumberOfFrames) of the DICOM file open as `fileobj`, read without its pixel data; None
    when the data set has no Rows/Columns (not an image: `decode_dicom` says what it is)."""
    with untrusted(path):
        prelude = read_prelude(fileobj, path)
        if prelude.syntax == DEFLATED:
            ds, _, _ = inflate_deflated(fileobj, prelude, path, header_only=True)
        else:
            fileobj.seek(0)
            ds = _read(fileobj, path, stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:
            return None
        try:
            rows, columns = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError) as err:
            raise ImageError(path, "corrupt", f"DICOM header with an unreadable image size ({one_line(err)})") from None
    return rows, columns, max(frames, 1)

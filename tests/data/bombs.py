"""Decompression bombs for the pixel-limit tests: small files whose headers announce huge images.

Every file here is a real, valid file of its format: a small instance decodes with OpenCV/pydicom to an all-zero
image of the announced size (tests/data/test_image.py checks that). The pixel data are zeros, compressed
without ever holding them in memory: a block of zeros is deflated once with a full flush (which leaves the
compressor with no history, so the block's output is independent of what came before) and repeated; the
checksums are computed arithmetically (zeros leave Adler-32's first sum unchanged).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

_BLOCK = 1 << 24  # zeros per repeated deflate block (16 MiB)
_ADLER = 65521


def _raw_deflate(data: bytes, *, flush: int = zlib.Z_FULL_FLUSH) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(flush)


def raw_deflate_zeros(zeros: int, *, prefix: bytes = b"") -> bytes:
    """A raw deflate stream (no zlib header) of `prefix` followed by `zeros` zero bytes."""
    parts = [_raw_deflate(prefix)] if prefix else []
    full, rest = divmod(zeros, _BLOCK)
    if full:
        parts.append(_raw_deflate(bytes(_BLOCK)) * full)
    if rest:
        parts.append(_raw_deflate(bytes(rest)))
    parts.append(b"\x03\x00")  # an empty final block (BFINAL=1, fixed Huffman, end-of-block)
    return b"".join(parts)


def zlib_zeros(zeros: int) -> bytes:
    """A zlib stream (header, raw deflate, Adler-32) of `zeros` zero bytes."""
    adler = ((zeros % _ADLER) << 16) | 1  # a = 1 + sum of bytes = 1, b = sum of a after each byte = zeros
    return b"\x78\xda" + raw_deflate_zeros(zeros) + struct.pack(">I", adler)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: str | Path, width: int, height: int) -> Path:
    """An 8-bit grey PNG of `width` x `height` zeros (40,000 x 40,000: 1.5 MB on disk, 1.6 GB decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib_zeros((width + 1) * height)  # each row: filter byte 0 + the pixels
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))
    return path


def tiff_bomb(path: str | Path, width: int, height: int) -> Path:
    """An 8-bit grey, deflate-compressed, single-strip little-endian TIFF of zeros."""
    strip = zlib_zeros(width * height)
    tags = [  # (tag, type, count, value): SHORT = 3, LONG = 4
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8),  # size, 8 bits, deflate
        (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(strip)),
    ]
    ifd_offset = 8 + len(strip)
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                        else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    path = Path(path)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + strip + ifd)
    return path


def _dicom_dataset(rows: int, columns: int, frames: int, syntax: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def dicom_frames_bomb(path: str | Path, rows: int, columns: int, frames: int) -> Path:
    """An explicit-VR little-endian DICOM whose header announces `frames` frames of `rows` x `columns`
    16-bit pixels, followed by 4 bytes of pixel data."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _dicom_dataset(rows, columns, frames, ExplicitVRLittleEndian)
    ds.PixelData = bytes(4)
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def dicom_deflated_bomb(path: str | Path, rows: int, columns: int, frames: int = 1) -> Path:
    """A deflated (1.2.840.10008.1.2.1.99) DICOM of zero pixels: pydicom inflates a deflated data set whole, so
    a 16,384 x 16,384 x 2-frame one (1 GiB of pixel data) is a 1 MB file that asks for 1 GiB before any check."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dicom_dataset(rows, columns, frames, DeflatedExplicitVRLittleEndian)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixels = rows * columns * frames * 2
    element = b"\xe0\x7f\x10\x00" + b"OW" + b"\x00\x00" + struct.pack("<I", pixels)  # (7FE0,0010) OW
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path = Path(path)
    path.write_bytes(bytes(128) + b"DICM" + meta.getvalue()
                     + raw_deflate_zeros(pixels, prefix=body.getvalue() + element))
    return path


def _explicit_le(ds) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    return body.getvalue()


def _element(tag: int, vr: bytes, length: int) -> bytes:
    """The header of an explicit-VR little-endian element with a 4-byte length (OB, OW, ...)."""
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + b"\x00\x00" + struct.pack("<I", length)


def _raw_deflate_parts(parts: list[bytes | int]) -> bytes:
    """A raw deflate stream of `parts` in order: bytes as they are, an int as that many zero bytes."""
    blocks: dict[int, bytes] = {}  # each size of zeros deflated once

    def zeros(count: int) -> bytes:
        if count not in blocks:
            blocks[count] = _raw_deflate(bytes(count))
        return blocks[count]

    out = []
    for part in parts:
        if isinstance(part, int):
            full, rest = divmod(part, _BLOCK)
            out += [zeros(_BLOCK)] * full + ([zeros(rest)] if rest else [])
        elif part:
            out.append(_raw_deflate(part))
    return b"".join(out) + b"\x03\x00"  # an empty final block


def dicom_deflated_lie(path: str | Path, rows: int, columns: int, inflated: int, *, where: str = "pixels") -> Path:
    """A deflated DICOM whose header honestly announces `rows` x `columns` 16-bit pixels (one frame) and whose
    stream inflates to about `inflated` bytes anyway (zeros; a 1 GiB one is a 1 MB file):

    - ``pixels``: the PixelData element itself holds `inflated` bytes (the issue's bomb);
    - ``declared``: one private OB element (0009,1001) of `inflated` bytes comes before the image header;
    - ``before``: private OB elements of at most 1 MiB each, `inflated` bytes in all, before the image header;
    - ``after``: honest pixel data, then a DataSetTrailingPadding (FFFC,FFFC) of `inflated` bytes.
    """
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dicom_dataset(rows, columns, 1, DeflatedExplicitVRLittleEndian)
    pixels = rows * columns * 2
    low, high = Dataset(), Dataset()  # the elements before group 0009 and the rest
    for element in ds:
        (low if element.tag.group < 0x0009 else high).add(element)
    honest = [_explicit_le(high) + _element(0x7FE00010, b"OW", pixels), pixels]
    if where == "pixels":
        parts = [_explicit_le(ds) + _element(0x7FE00010, b"OW", inflated), inflated]
    elif where == "declared":
        parts = [_explicit_le(low) + _element(0x00091001, b"OB", inflated), inflated, *honest]
    elif where == "before":
        parts = [_explicit_le(low)]
        for number, start in enumerate(range(0, inflated, 1 << 20)):
            size = min(1 << 20, inflated - start)
            parts += [_element(0x00091000 + number, b"OB", size), size]
        parts += honest
    elif where == "after":
        parts = [_explicit_le(low), *honest, _element(0xFFFCFFFC, b"OB", inflated), inflated]
    else:
        raise ValueError(f"where must be pixels, declared, before or after, not {where!r}")
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path = Path(path)
    path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + _raw_deflate_parts(parts))
    return path


def png_lie(path: str | Path, width: int, height: int, inflated: int, *, where: str = "idat") -> Path:
    """An 8-bit grey PNG whose IHDR honestly announces `width` x `height` zero pixels, with zlib data that inflates
    to `inflated` bytes anyway: its IDAT stream (``idat``: far more rows than announced), or a ``ztxt``/``iccp``
    chunk (compressed text, an ICC profile) before it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    honest = zlib.compress(bytes((width + 1) * height), 9)
    chunks = [_png_chunk(b"IHDR", ihdr)]
    if where == "idat":
        chunks.append(_png_chunk(b"IDAT", zlib_zeros(inflated)))
    elif where in ("ztxt", "iccp"):
        kind, head = (b"zTXt", b"Comment\x00\x00") if where == "ztxt" else (b"iCCP", b"ICC profile\x00\x00")
        chunks += [_png_chunk(kind, head + zlib_zeros(inflated)), _png_chunk(b"IDAT", honest)]
    else:
        raise ValueError(f"where must be idat, ztxt or iccp, not {where!r}")
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _png_chunk(b"IEND", b""))
    return path


def tiff_lie(path: str | Path, width: int, height: int, inflated: int) -> Path:
    """An 8-bit grey TIFF whose tags announce `width` x `height` (one deflate strip) and whose strip inflates to
    `inflated` bytes of zeros."""
    strip = zlib_zeros(inflated)
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
            (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(strip))]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                        else struct.pack("<I", value))
    path = Path(path)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(strip)) + strip + ifd + struct.pack("<I", 0))
    return path

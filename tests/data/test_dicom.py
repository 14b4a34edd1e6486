from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from miner.data.image import load_image
from miner.errors import ImageError

# J2KI is lossy: against the lossless original (UNCR) its decoded image differs by at most 403 of the 30000
# window (0.0134) and by 50 on average (0.0017); the tolerances below leave a little room for decoder versions.
J2KI_MAX_ABS = 0.02
J2KI_MEAN_ABS = 0.003


@pytest.fixture(scope="module")
def rg1(rg1_dicom):
    return {name: load_image(path) for name, path in rg1_dicom.items()}


def test_rg1_size_is_rows_by_columns(rg1):
    for name, (image, size) in rg1.items():
        # the DICOM header says Rows 1955, Columns 1841; (H, W) = (rows, columns)
        assert size == (1955, 1841), name
        assert image.shape == (1955, 1841) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0


def test_rg1_lossless_jpeg2000_is_pixel_identical(rg1):
    np.testing.assert_array_equal(rg1["RG1_J2KR"][0], rg1["RG1_UNCR"][0])


def test_rg1_lossy_jpeg2000_is_close(rg1):
    diff = np.abs(rg1["RG1_J2KI"][0] - rg1["RG1_UNCR"][0])
    assert diff.max() <= J2KI_MAX_ABS
    assert diff.mean() <= J2KI_MEAN_ABS
    assert diff.max() > 0  # it is lossy: not the same file decoded twice
    np.testing.assert_array_equal(rg1["RG1_J2KI"][0], rg1["RG1_UNCI"][0])  # UNCI is J2KI decompressed


def test_rg1_monochrome1_is_inverted(rg1, rg1_dicom):
    image = rg1["RG1_UNCR"][0]
    # MONOCHROME1 stores air bright; after inversion the (air-filled) right lung field is darker than the spine
    lung = image[400:700, 380:680].mean()  # patient's right upper/mid lung (image left)
    spine = image[400:1200, 900:950].mean()  # the central column: spine and mediastinum
    assert lung < spine - 0.2
    # and the window maps the stored values linearly: hand-computed for one pixel
    import pydicom

    ds = pydicom.dcmread(rg1_dicom["RG1_UNCR"])
    v = float(ds.pixel_array[1000, 900])
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1.0 - np.clip((v - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    assert image[1000, 900] == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------- synthetic


def _write_dicom(path, pixels, *, bits_stored, photometric="MONOCHROME2", signed=False, **elements):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_bits_stored_rescale_and_window(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 4096, size=(16, 24), dtype=np.uint16)
    garbage = stored | np.uint16(0xA000) * (rng.random((16, 24)) < 0.3).astype(np.uint16)  # overlay bits above bit 11
    path = _write_dicom(tmp_path / "a.dcm", garbage, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100,
                        WindowCenter=3000, WindowWidth=4001)
    values = stored.astype(np.float64) * 2 - 100
    expected_voi = np.clip((values - 2999.5) / 4000 + 0.5, 0, 1)
    image, size = load_image(path)
    assert size == (16, 24)
    np.testing.assert_allclose(image, expected_voi, atol=1e-6)
    # without the window: the 12-bit range through the rescale, i.e. stored / 4095
    ranged, _ = load_image(path, dicom_window="range")
    np.testing.assert_allclose(ranged, stored / 4095.0, atol=1e-6)


def test_monochrome1_and_signed_data(tmp_path):
    pixels = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    path = _write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1", signed=True)
    image, _ = load_image(path)
    np.testing.assert_allclose(image[0], 1.0 - (pixels[0] + 2048) / 4095.0, atol=1e-6)


def test_dicom_without_extension_or_with_png_name(tmp_path):
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    path = _write_dicom(tmp_path / "scan.png", pixels, bits_stored=16)
    image, _ = load_image(path)
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-7)


@pytest.mark.parametrize("name,kind", [("RG1_UNCR", "truncated"), ("RG1_J2KR", "truncated")])
def test_truncated_dicom(tmp_path, rg1_dicom, name, kind):
    data = rg1_dicom[name].read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.kind == kind


def test_non_dicom_named_dcm_is_corrupt(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"hello" * 40)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.kind == "corrupt"


# ---------------------------------------------------------------------------------------- honest headers, lying data
# (miner.data.dicom_bounds: every decompression bounded by what the header promises)


def _dataset(pixels, syntax, *, bits_stored=None, **elements):
    """A pydicom Dataset of `pixels` ([R, C] or [F, R, C], uint8/uint16 grey) for the transfer syntax `syntax`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def _encapsulated(path, frames: list[bytes], rows: int, columns: int, syntax: str, *, bits: int = 8):
    """A DICOM file of already encoded `frames` (one codestream or RLE frame each) under `syntax`."""
    from pydicom.encaps import encapsulate

    ds = _dataset(np.zeros((len(frames), rows, columns) if len(frames) > 1 else (rows, columns),
                           np.uint8 if bits == 8 else np.uint16), syntax)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _refused(path, kind):
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.kind == kind, info.value
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("frames,trailing", [(1, False), (3, False), (1, True)])
def test_deflated_decodes_like_the_same_data_set_uncompressed(tmp_path, frames, trailing):
    """Inflated here (bounded) instead of by pydicom: the same image, to the bit."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 4096, size=(frames, 33, 47) if frames > 1 else (33, 47), dtype=np.uint16)
    images = []
    for name, syntax in (("plain.dcm", ExplicitVRLittleEndian), ("deflated.dcm", DeflatedExplicitVRLittleEndian)):
        ds = _dataset(pixels, syntax, bits_stored=12, WindowCenter=2000, WindowWidth=3000)
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        if trailing:
            ds.DataSetTrailingPadding = bytes(1000)
        ds.save_as(tmp_path / name, enforce_file_format=True)
        images.append(load_image(tmp_path / name))
    assert (tmp_path / "deflated.dcm").stat().st_size < (tmp_path / "plain.dcm").stat().st_size
    np.testing.assert_array_equal(images[0][0], images[1][0])
    assert images[0][1] == images[1][1] == (33, 47)


@pytest.mark.parametrize("where", ["pixels", "declared", "before", "after"])
def test_a_deflated_stream_past_its_header_is_too_large(tmp_path, where):
    """256 x 256 announced, 64 MiB inflated: refused by load_image and by inspect's cheap probe, with the numbers."""
    from miner.data.image import header_size, probe_image

    from .bombs import dicom_deflated_lie

    path = dicom_deflated_lie(tmp_path / "lie.dcm", 256, 256, 64 << 20, where=where)
    message = _refused(path, "too_large")
    with pytest.raises(ImageError) as probed:
        probe_image(path)
    assert probed.value.kind == "too_large" and str(probed.value) == message
    if where == "declared":  # one element before Rows says it holds 64 MiB: refused on its length
        assert ("declares an element (0009,1001) of 67,108,864 bytes before its image header (Rows, Columns, ...), "
                "more than the 16,777,216 allowed") in message
        return
    if where == "before":  # 16 MiB of other elements before Rows: no header to trust
        assert "inflates past 16,777,216 bytes before its image header (Rows, Columns, ...) ends" in message
        return
    # 256 x 256 x 2 bytes = 131,072 of pixel data + 16 MiB for the other elements = 16,908,288
    assert header_size(path) == (256, 256, 1)  # the header itself is honest
    assert ("its deflated data set inflates past 16,908,288 bytes, while its header (256 x 256 of 16 bits) "
            "promises 131,072 bytes of pixel data and 16,777,216 more are allowed") in message


def test_a_deflated_stream_that_stops_or_is_not_deflate(tmp_path):
    from .bombs import dicom_deflated_lie

    path = dicom_deflated_lie(tmp_path / "lie.dcm", 16, 16, 4096, where="after")
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-3])  # the final deflate block lost
    assert "deflate stream stops" in _refused(cut, "truncated")
    meta_end = data.index(b"1.2.840.10008.1.2.1.99") + 22
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(data[:meta_end] + b"\xff" * 64)
    assert "does not inflate" in _refused(junk, "corrupt")


# RLE Lossless (PS3.5 G): a 64-byte header (segment count, 15 offsets), then PackBits segments


def _rle_frame(*segments: bytes) -> bytes:
    offsets, at = [], 64
    for segment in segments:
        offsets.append(at)
        at += len(segment)
    return struct.pack("<16I", len(segments), *offsets, *[0] * (15 - len(segments))) + b"".join(segments)


def test_rle_decodes_like_the_uncompressed_image(tmp_path):
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    rng = np.random.default_rng(2)
    for dtype, bits in ((np.uint8, 8), (np.uint16, 12)):
        pixels = rng.integers(0, 1 << bits, size=(2, 37, 41), dtype=dtype)
        pixels[:, 10:20] = 7  # runs
        images = []
        for name, syntax in (("plain.dcm", ExplicitVRLittleEndian), ("rle.dcm", RLELossless)):
            ds = _dataset(pixels, ExplicitVRLittleEndian, bits_stored=bits)
            ds.PixelData = pixels.tobytes()
            if syntax == RLELossless:
                ds.compress(RLELossless, encoding_plugin="pydicom")
            ds.save_as(tmp_path / name, enforce_file_format=True)
            images.append(load_image(tmp_path / name)[0])
        np.testing.assert_array_equal(images[0], images[1])


def test_rle_segment_length_is_what_pydicom_decodes():
    """The count from run headers equals pydicom's decoded length, for hand-made and random segments."""
    from pydicom.pixels.decoders.rle import _rle_decode_segment

    from miner.data.dicom_bounds import rle_segment_length

    # literal of 3 (n = 2), replicate x 5 (n = 257 - 5 = 252), no-op (128), replicate x 128 (n = 129)
    segment = bytes([2, 1, 2, 3, 252, 9, 128, 129, 0])
    assert rle_segment_length(segment, 1 << 20) == 3 + 5 + 128 == len(_rle_decode_segment(segment))
    assert rle_segment_length(b"\x81\x00" * 1000, 500) <= 500 + 128  # stops right after passing the limit
    rng = np.random.default_rng(0)
    for _ in range(200):
        runs = []
        for n in rng.integers(0, 256, size=rng.integers(1, 40)):
            runs.append(bytes([n]) + (rng.bytes(n + 1) if n < 128 else b"" if n == 128 else rng.bytes(1)))
        segment = b"".join(runs)
        assert rle_segment_length(segment, 1 << 20) == len(_rle_decode_segment(segment))


def test_an_rle_frame_that_decodes_past_its_header_is_too_large(tmp_path):
    """64 x 64 x 8 bits = 4,096 bytes a segment; 2 bytes of replicate run decode to 128: 4 KiB of them would
    decode to 256 KiB (pydicom decodes a whole segment before it compares its length)."""
    from pydicom.uid import RLELossless

    honest = b"\x81\x00" * 32  # 32 x 128 = 4,096 zeros
    path = _encapsulated(tmp_path / "ok.dcm", [_rle_frame(honest)], 64, 64, RLELossless)
    assert load_image(path)[1] == (64, 64)
    path = _encapsulated(tmp_path / "bomb.dcm", [_rle_frame(b"\x81\x00" * 2048)], 64, 64, RLELossless)
    message = _refused(path, "too_large")
    assert ("its RLE frame 1, segment 1, decodes to more than 5,120 bytes, while its header (64 x 64 of 8 bits) "
            "promises 4,096 a segment") in message
    # the second of two frames lies: every frame is checked
    path = _encapsulated(tmp_path / "second.dcm", [_rle_frame(honest), _rle_frame(honest * 64)], 64, 64, RLELossless)
    assert "its RLE frame 2, segment 1" in _refused(path, "too_large")


@pytest.mark.parametrize("frame,detail", [
    (_rle_frame(b"\x81\x00" * 32, b"\x81\x00" * 32),
     "has 2 segments where SamplesPerPixel 1 x BitsAllocated 8 / 8 = 1"),
    (struct.pack("<16I", 1, 4000, *[0] * 14) + b"\x81\x00" * 32, "segment offsets [4000] that do not lie in order"),
    (struct.pack("<16I", 1, 8, *[0] * 14) + b"\x81\x00" * 32, "segment offsets [8]"),
    (b"\x01\x00\x00\x00", "has 4 bytes, less than the 64-byte RLE header"),
])
def test_an_rle_header_that_does_not_fit_the_image_is_corrupt(tmp_path, frame, detail):
    from pydicom.uid import RLELossless

    path = _encapsulated(tmp_path / "bad.dcm", [frame], 64, 64, RLELossless)
    assert detail in _refused(path, "corrupt")


# JPEG, JPEG-LS and JPEG 2000 frames: the codestream's own size against Rows, Columns, SamplesPerPixel


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels)
    assert ok
    return data.tobytes()


def _resized_jpeg(data: bytes, height: int, width: int) -> bytes:
    at = data.index(b"\xff\xc0")  # baseline SOF0: FF C0, length, precision, height, width
    return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]


def _j2k(pixels: np.ndarray) -> bytes:
    import openjpeg

    return bytes(openjpeg.encode(pixels, bits_stored=8, codec_format=0))


def _resized_j2k(data: bytes, height: int, width: int) -> bytes:
    # SIZ: FF51, Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz (one tile as large as the image)
    at = data.index(b"\xff\x51")
    return data[:at + 6] + struct.pack(">II", width, height) + data[at + 14:at + 22] \
        + struct.pack(">II", width, height) + data[at + 30:]


def test_jpeg_and_jpeg2000_frames_decode_when_they_fit(tmp_path):
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    rng = np.random.default_rng(4)
    pixels = (rng.integers(0, 200, size=(40, 48)) + np.arange(48)).astype(np.uint8)
    path = _encapsulated(tmp_path / "jpeg.dcm", [_jpeg(pixels)], 40, 48, JPEGBaseline8Bit)
    decoded = cv2.imdecode(np.frombuffer(_jpeg(pixels), np.uint8), cv2.IMREAD_UNCHANGED) / 255.0
    assert np.abs(load_image(path)[0] - decoded).max() <= 2 / 255  # Pillow's libjpeg vs OpenCV's: IDCT rounding
    path = _encapsulated(tmp_path / "j2k.dcm", [_j2k(pixels)], 40, 48, JPEG2000Lossless)
    np.testing.assert_allclose(load_image(path)[0], pixels / 255.0, atol=1e-7)  # lossless


@pytest.mark.parametrize("codec", ["jpeg", "j2k"])
def test_a_codestream_larger_than_its_header_is_too_large(tmp_path, codec):
    """A 40 x 48 header over a codestream whose own header says 20,000 x 30,000: the decoder would allocate by the
    codestream (600 Mpixels; Pillow's own bomb check would stop at 179 M, a smaller lie would pass it)."""
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    pixels = np.zeros((40, 48), np.uint8)
    encode, resize, syntax, name = ((_jpeg, _resized_jpeg, JPEGBaseline8Bit, "JPEG") if codec == "jpeg"
                                    else (_j2k, _resized_j2k, JPEG2000Lossless, "JPEG 2000"))
    path = _encapsulated(tmp_path / "lie.dcm", [resize(encode(pixels), 20_000, 30_000)], 40, 48, syntax)
    assert (f"its {name} frame 1 announces 30,000 x 20,000 x 1 components, more than the 48 x 40 x 1 of its "
            "header") in _refused(path, "too_large")


def test_codestream_sizes_read_from_their_headers():
    from miner.data.dicom_bounds import codestream_size

    pixels = np.zeros((40, 48), np.uint8)
    assert codestream_size(_jpeg(pixels)) == ("JPEG", 40, 48, 1)
    assert codestream_size(_jpeg(np.zeros((40, 48, 3), np.uint8))) == ("JPEG", 40, 48, 3)
    assert codestream_size(_j2k(pixels)) == ("JPEG 2000", 40, 48, 1)
    # JPEG-LS: SOI, SOF55 (FF F7), length 11, precision 16, height 300, width 200, 1 component
    assert codestream_size(b"\xff\xd8\xff\xf7\x00\x0b\x10\x01\x2c\x00\xc8\x01\x01\x11\x00") == ("JPEG-LS", 300, 200, 1)
    # a JP2 file: signature box, a file-type box, then the codestream in its jp2c box
    codestream = _j2k(pixels)
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 20) + b"ftypjp2 " + bytes(8)
           + struct.pack(">I", 8 + len(codestream)) + b"jp2c" + codestream)
    assert codestream_size(jp2) == ("JPEG 2000", 40, 48, 1)
    assert codestream_size(b"\x00" * 100) is None  # not a codestream read here: left to the decoder


def test_real_encoders_frames_pass_the_checks(rg1_dicom):
    """No false alarm: every encapsulated file of pydicom's test data (JPEG, JPEG-LS, JPEG 2000, RLE, from
    several encoders) fits its header, except the one whose SIZ marker is broken on purpose."""
    import glob
    import warnings
    from pathlib import Path

    import pydicom
    from pydicom.uid import UID

    from miner.data.dicom_bounds import check_frames

    folders = [Path(pydicom.__file__).parent / "data" / "test_files", Path(rg1_dicom["RG1_J2KR"]).parent]
    checked = 0
    for name in sorted({p for folder in folders for p in glob.glob(str(folder / "**" / "*.dcm"), recursive=True)}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(name)
                syntax = UID(str(ds.file_meta.TransferSyntaxUID))
            except Exception:  # noqa: BLE001 - test files of broken data sets
                continue
        if not syntax.is_encapsulated or "PixelData" not in ds:
            continue
        checked += 1
        if name.endswith("JPEG2000-embedded-sequence-delimiter.dcm"):
            with pytest.raises(ImageError):
                check_frames(ds, name)
            continue
        check_frames(ds, name)
    assert checked >= 50  # 58 in pydicom 3.0 and pydicom-data 1.0


# VmHWM (this process's peak RSS): see tests/data/test_image.py's _PEAK_RSS for why not ru_maxrss
_PEAK_RSS = """
import sys
from miner.data.image import load_image, probe_image
from miner.errors import ImageError

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

load_image(sys.argv[1])  # warm-up: imports, pydicom and its decoders initialised before the baseline
base = peak()
for path in sys.argv[2:]:
    try:  # the cheap probe reads headers only: it catches the deflated bombs, not the encapsulated ones
        probe_image(path)
    except ImageError as err:
        assert err.kind == "too_large", err
    try:
        load_image(path)
    except ImageError as err:
        assert err.kind == "too_large", err
    else:
        assert "control" in path, path
print(peak() - base)
"""


def test_the_bounds_allocate_nothing_near_a_bomb(tmp_path):
    """Peak memory of a process that meets 1 GiB deflated streams, a 256 MiB RLE segment and 12,000^2 codestreams
    behind 256 x 256 headers stays below the inflation ceiling (16 MiB + the pixels); the same measurement sees an
    honest 4,096^2 deflated image decode (so it would have seen a bomb)."""
    import subprocess
    import sys

    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        RLELossless,
    )

    from .bombs import dicom_deflated_lie

    warm = _encapsulated(tmp_path / "warm.dcm", [_j2k(np.zeros((40, 48), np.uint8))], 40, 48, JPEG2000Lossless)
    bombs = [dicom_deflated_lie(tmp_path / f"{where}.dcm", 256, 256, 1 << 30, where=where)
             for where in ("pixels", "declared", "before", "after")]
    bombs.append(_encapsulated(tmp_path / "rle.dcm", [_rle_frame(b"\x81\x00" * (2 << 20))], 256, 256, RLELossless))
    bombs.append(_encapsulated(tmp_path / "j2k.dcm", [_resized_j2k(_j2k(np.zeros((40, 48), np.uint8)), 12_000,
                                                                   12_000)], 40, 48, JPEG2000Lossless))
    bombs.append(_encapsulated(tmp_path / "jpeg.dcm", [_resized_jpeg(_jpeg(np.zeros((40, 48), np.uint8)), 12_000,
                                                                     12_000)], 40, 48, JPEGBaseline8Bit))
    control = tmp_path / "control.dcm"
    ds = _dataset(np.zeros((4096, 4096), np.uint16), DeflatedExplicitVRLittleEndian)
    ds.PixelData = bytes(4096 * 4096 * 2)
    ds.save_as(control, enforce_file_format=True)

    def peak(*paths) -> int:
        done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(warm), *map(str, paths)], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    grown = peak(*bombs)
    assert grown < 32 << 20, grown  # at most one ceiling (16 MiB + the pixels); the smallest bomb: 256 MiB
    decoded = peak(control)
    assert decoded > 4 * 32 << 20, decoded  # 32 MiB of pixels: inflated, read, as uint16 and as float32

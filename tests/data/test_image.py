from __future__ import annotations

import cv2
import numpy as np
import pytest

from miner.data.image import load_image, probe_image, to_model_input
from miner.errors import ImageError


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


# ---------------------------------------------------------------------------------------------- PNG / JPEG


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_png_grey_round_trip_is_exact(tmp_path, rng, dtype, scale):
    pixels = rng.integers(0, int(scale) + 1, size=(37, 53), dtype=dtype)
    path = tmp_path / "grey.png"
    assert cv2.imwrite(str(path), pixels)
    image, size = load_image(path)
    assert size == (37, 53)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, pixels.astype(np.float32) / np.float32(scale))


@pytest.mark.parametrize("channels,code", [(3, cv2.COLOR_BGR2GRAY), (4, cv2.COLOR_BGRA2GRAY)])
@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_png_colour_is_converted_to_grey(tmp_path, rng, channels, code, dtype, scale):
    pixels = rng.integers(0, int(scale) + 1, size=(20, 30, channels), dtype=dtype)
    path = tmp_path / "colour.png"
    assert cv2.imwrite(str(path), pixels)
    image, size = load_image(path)
    assert size == (20, 30)
    expected = cv2.cvtColor(pixels, code).astype(np.float32) / np.float32(scale)
    np.testing.assert_allclose(image, expected, atol=1e-7)
    # BT.601 weights, hand-computed for one pixel (to within cv2's fixed-point rounding)
    b, g, r = (float(v) for v in pixels[0, 0, :3])
    assert abs(image[0, 0] * scale - (0.114 * b + 0.587 * g + 0.299 * r)) <= 1.0  # cv2 fixed-point rounding


def test_jpeg_decodes_like_cv2(tmp_path, rng):
    pixels = cv2.GaussianBlur(rng.integers(0, 256, size=(64, 48), dtype=np.uint8), (5, 5), 0)
    path = tmp_path / "x.jpg"
    assert cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    image, size = load_image(path)
    assert size == (64, 48)
    np.testing.assert_array_equal(image, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) / np.float32(255.0))
    assert np.abs(image * 255 - pixels).mean() < 2.0  # quality 95 of a smooth image


def test_format_is_sniffed_not_taken_from_the_name(tmp_path, rng):
    pixels = rng.integers(0, 256, size=(8, 9), dtype=np.uint8)
    ok, data = cv2.imencode(".png", pixels)
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(data.tobytes())
    image, _ = load_image(path)
    np.testing.assert_array_equal(image, pixels / np.float32(255.0))


# ---------------------------------------------------------------------------------------------- bad files


def _png_bytes(rng) -> bytes:
    return cv2.imencode(".png", rng.integers(0, 256, size=(40, 40), dtype=np.uint8))[1].tobytes()


def _jpeg_bytes(rng) -> bytes:
    return cv2.imencode(".jpg", rng.integers(0, 256, size=(40, 40), dtype=np.uint8))[1].tobytes()


def _bad_files(tmp_path, rng):
    png, jpeg = _png_bytes(rng), _jpeg_bytes(rng)
    corrupt = bytearray(png)
    corrupt[40:200] = bytes(160)  # IDAT data and CRC destroyed, signature and IEND kept
    cases = {
        "missing": (tmp_path / "nope.png", None),
        "empty": (tmp_path / "empty.png", b""),
        "truncated-png": (tmp_path / "cut.png", png[: len(png) // 2]),
        "truncated-jpeg": (tmp_path / "cut.jpg", jpeg[: len(jpeg) // 2]),
        "corrupt-png": (tmp_path / "corrupt.png", bytes(corrupt)),
        "unsupported-gif": (tmp_path / "x.gif", b"GIF89a" + bytes(40)),
        "unsupported-text": (tmp_path / "notes.png", b"this is not an image\n" * 5),
    }
    for path, data in cases.values():
        if data is not None:
            path.write_bytes(data)
    return cases


@pytest.mark.parametrize("case", ["missing", "empty", "truncated-png", "truncated-jpeg", "corrupt-png",
                                  "unsupported-gif", "unsupported-text"])
def test_each_bad_file_kind_raises_the_typed_error(tmp_path, rng, case):
    path, _ = _bad_files(tmp_path, rng)[case]
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.kind == case.split("-")[0]
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["missing", "empty", "truncated-png", "truncated-jpeg",
                                  "unsupported-gif", "unsupported-text"])
def test_probe_sees_the_cheap_kinds_without_decoding(tmp_path, rng, case):
    path, _ = _bad_files(tmp_path, rng)[case]
    with pytest.raises(ImageError) as info:
        probe_image(path)
    assert info.value.kind == case.split("-")[0]


def test_probe_reads_sizes_from_headers(tmp_path, rng, rg1_dicom):
    pixels = rng.integers(0, 256, size=(31, 77), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    cv2.imwrite(str(tmp_path / "a.jpg"), pixels)
    assert probe_image(tmp_path / "a.png") == ("png", (31, 77))
    assert probe_image(tmp_path / "a.jpg") == ("jpeg", (31, 77))
    assert probe_image(rg1_dicom["RG1_J2KR"]) == ("dicom", (1955, 1841))


def test_image_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ImageError("/x.png", "truncated", "cut")))
    assert (err.path, err.kind, err.detail) == ("/x.png", "truncated", "cut")


# ---------------------------------------------------------------------------------------------- resize


def test_to_model_input_matches_inter_area_and_keeps_the_input(rng):
    image = rng.random((100, 80), dtype=np.float32)
    before = image.copy()
    out = to_model_input(image, 32)
    assert out.shape == (1, 32, 32) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0], cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(image, before)
    assert to_model_input(image, (40, 20)).shape == (1, 40, 20)
    # INTER_AREA by an integer factor is the block mean
    block = to_model_input(np.kron(np.eye(2, dtype=np.float32), np.ones((4, 4), np.float32)), 2)
    np.testing.assert_array_equal(block[0], np.eye(2, dtype=np.float32))
    same = to_model_input(image[:32, :32], 32)
    np.testing.assert_array_equal(same[0], image[:32, :32])


# ---------------------------------------------------------------------------------------------- pixel limit


def _dicom(path, pixels: np.ndarray, *, frames: bool = False, syntax: str | None = None):
    """A DICOM file written by pydicom: uint16 grey, one frame [R, C] or several [F, R, C]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def _written(tmp_path, rng):
    """Files written by OpenCV and pydicom, each with the shape its decoder returns: {name: (path, (H, W, F))}."""
    grey8 = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, size=(61, 29), dtype=np.uint16)
    colour = rng.integers(0, 256, size=(23, 71, 3), dtype=np.uint8)
    files = {}
    for name, pixels, params in [
        ("png8.png", grey8, []), ("png16.png", grey16, []), ("colour.png", colour, []),
        ("base.jpg", grey8, []), ("colour.jpg", colour, []),
        ("progressive.jpg", colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        ("grey.tif", grey8, []), ("grey16.tif", grey16, []), ("colour.tif", colour, []),
    ]:
        path = tmp_path / name
        assert cv2.imwrite(str(path), pixels, params)
        decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        files[name] = (path, (decoded.shape[0], decoded.shape[1], 1))
    one = rng.integers(0, 4096, size=(45, 38), dtype=np.uint16)
    many = rng.integers(0, 4096, size=(3, 17, 26), dtype=np.uint16)
    for name, pixels, frames, syntax in [("one.dcm", one, False, None), ("frames.dcm", many, True, None),
                                         ("deflated.dcm", one, False, "1.2.840.10008.1.2.1.99")]:
        path = _dicom(tmp_path / name, pixels, frames=frames, syntax=syntax)
        import pydicom

        shape = pydicom.dcmread(path).pixel_array.shape
        files[name] = (path, (shape[-2], shape[-1], shape[0] if len(shape) == 3 else 1))
    return files


def test_header_size_is_the_decoded_size(tmp_path, rng, rg1_dicom):
    """The size read from the header equals what OpenCV/pydicom decode, for every format and writer here."""
    from miner.data.image import header_size

    for name, (path, decoded) in _written(tmp_path, rng).items():
        assert header_size(path) == decoded, name
    assert header_size(rg1_dicom["RG1_J2KR"]) == (1955, 1841, 1)  # the real radiograph (JPEG 2000)
    assert header_size(rg1_dicom["RG1_UNCR"]) == (1955, 1841, 1)
    # a JPEG whose frame header comes after 70 kB of APP1 metadata is read by skipping segments
    path, decoded = _written(tmp_path, rng)["base.jpg"]
    data = path.read_bytes()
    app1 = b"\xff\xe1" + (65533 + 2).to_bytes(2, "big") + bytes(65533)
    padded = tmp_path / "exif.jpg"
    padded.write_bytes(data[:2] + app1 + app1 + data[2:])
    assert header_size(padded) == decoded == (cv2.imread(str(padded), cv2.IMREAD_UNCHANGED).shape + (1,))[:2] + (1,)


@pytest.mark.parametrize("name", ["png8.png", "base.jpg", "progressive.jpg", "grey.tif", "one.dcm",
                                  "frames.dcm", "deflated.dcm"])
def test_the_limit_is_exact(tmp_path, rng, name):
    """max_pixels = the image's pixels decodes; one less is too_large, with the size in the message."""
    path, (height, width, frames) = _written(tmp_path, rng)[name]
    pixels = height * width * frames
    image, size = load_image(path, max_pixels=pixels)
    assert size == (height, width)
    with pytest.raises(ImageError) as info:
        load_image(path, max_pixels=pixels - 1)
    assert info.value.kind == "too_large"
    assert f"= {pixels:,} pixels, more than the limit of {pixels - 1:,}; raise --max-pixels" in str(info.value)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """The issue's bombs: {name: (path, pixels announced)}."""
    from .bombs import dicom_deflated_bomb, dicom_frames_bomb, png_bomb, tiff_bomb

    root = tmp_path_factory.mktemp("bombs")
    return {
        "png": (png_bomb(root / "bomb.png", 40_000, 40_000), 40_000 ** 2),
        "png30k": (png_bomb(root / "bomb30k.png", 30_000, 30_000), 30_000 ** 2),
        "tiff": (tiff_bomb(root / "bomb.tif", 40_000, 40_000), 40_000 ** 2),
        "dicom": (dicom_frames_bomb(root / "frames.dcm", 4096, 4096, 64), 4096 * 4096 * 64),
        "deflated": (dicom_deflated_bomb(root / "deflated.dcm", 16_384, 16_384, 2), 16_384 ** 2 * 2),
    }


@pytest.mark.parametrize("name", ["png", "png30k", "tiff", "dicom", "deflated"])
def test_a_bomb_is_too_large_with_our_sentence(bombs, name):
    path, pixels = bombs[name]
    assert path.stat().st_size < 2_000_000  # each decodes to hundreds of MB or more
    with pytest.raises(ImageError) as info:
        load_image(path)  # the default limit, 2^28
    message = str(info.value)
    assert info.value.kind == "too_large"
    assert message.startswith(f"{path}: too_large image (its ") and f"= {pixels:,} pixels" in message
    assert "268,435,456" in message and "OpenCV(" not in message and "\n" not in message


def test_opencv_s_own_cap_is_named_not_quoted(bombs):
    """Without our limit OpenCV would refuse 40,000^2 with its assertion text; we refuse it first, saying why."""
    from miner.data.image import OPENCV_MAX_PIXELS

    path, pixels = bombs["png"]
    assert pixels > OPENCV_MAX_PIXELS
    with pytest.raises(ImageError) as info:
        load_image(path, max_pixels=None)
    assert info.value.kind == "too_large" and "more than OpenCV decodes" in str(info.value)
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" in str(info.value) and "Assertion" not in str(info.value)


def test_opencv_errors_come_behind_our_sentence(tmp_path, rng, monkeypatch):
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), rng.integers(0, 256, size=(8, 8), dtype=np.uint8))

    def broken(*args, **kwargs):
        raise cv2.error("OpenCV(5.1.0) /io/loadsave.cpp:77: error: (-215:Assertion failed) something in "
                        "function 'imdecode_'\n")

    monkeypatch.setattr(cv2, "imdecode", broken)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.kind == "corrupt"
    assert str(info.value) == (f"{path}: corrupt image (PNG data does not decode (OpenCV: OpenCV(5.1.0) "
                               "/io/loadsave.cpp:77: error: (-215:Assertion failed) something in function "
                               "'imdecode_'))")


# VmHWM (this process's peak RSS), not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent
# through fork and exec, so a child of a large pytest process would start at the parent's size
_PEAK_RSS = """
import sys
from miner.data.image import load_image
from miner.errors import ImageError

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

for path in sys.argv[1:3]:  # warm-up: imports, OpenCV and pydicom initialised before the baseline
    load_image(path)
base = peak()
for path in sys.argv[3:]:
    try:
        load_image(path, max_pixels=None if path.endswith("control.png") else 1 << 28)
    except ImageError as err:
        assert err.kind == "too_large", err
print(peak() - base)
"""


def test_the_limit_allocates_nothing(bombs, tmp_path):
    """Peak memory of a process that meets every bomb stays far below any bomb's decoded size; the same
    measurement sees a real decode of a 36-Mpixel image (so it would have seen a bomb being decoded)."""
    import subprocess
    import sys

    from .bombs import png_bomb

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((16, 16), np.uint8))
    dicom = tmp_path / "small.dcm"
    _dicom(dicom, np.zeros((16, 16), np.uint16))
    control = png_bomb(tmp_path / "control.png", 6000, 6000)

    def peak(*paths) -> int:
        done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(small), str(dicom), *map(str, paths)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    grown = peak(*(path for path, _ in bombs.values()))
    assert grown < 32 << 20, grown  # < 32 MiB, while the smallest bomb decodes to 512 MiB of uint16
    assert min(pixels for _, pixels in bombs.values()) >= 1 << 29
    decoded = peak(control)
    assert decoded > 36_000_000 * 5 * 0.9, decoded  # uint8 + float32 copies of 36 M pixels: the method sees it


_PEAK_DECODE = """
import sys
import numpy as np
from miner.data.image import load_image

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

load_image(sys.argv[1])
base = peak()
for path in sys.argv[2:]:
    image, size = load_image(path)
    assert size == (256, 256) and not image.any(), (path, size)
print(peak() - base)
"""


def test_png_and_tiff_data_past_the_header_are_not_decoded(tmp_path):
    """Honest headers, lying zlib data: a 256 x 256 PNG whose IDAT, zTXt or iCCP inflates to 256 MiB and a TIFF whose
    strip does. OpenCV (libpng, libtiff) stops at the size the header announces: each decodes to its 256 x 256 zeros
    and the peak memory grows by less than 16 MiB."""
    import subprocess
    import sys

    from .bombs import png_lie, tiff_lie

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((16, 16), np.uint8))
    lies = [png_lie(tmp_path / f"{where}.png", 256, 256, 256 << 20, where=where) for where in ("idat", "ztxt", "iccp")]
    lies.append(tiff_lie(tmp_path / "strip.tif", 256, 256, 256 << 20))
    done = subprocess.run([sys.executable, "-c", _PEAK_DECODE, str(small), *map(str, lies)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) < 16 << 20, done.stdout

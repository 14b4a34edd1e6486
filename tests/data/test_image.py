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

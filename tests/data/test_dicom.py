from __future__ import annotations

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
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

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

"""Tiny archives of every kind of `miner.data.archives.kinds`, built from the real label rows torchxrayvision ships.

Each builder copies the header and the rows of a few ids of the real label file (csv module: every value kept) into
a folder laid out as the archive is downloaded, and writes a synthetic radiograph under each image's real name and
a plausible size (DICOM where the archive is DICOM): brighter where the archive has a box, so a map has something
to find. Pixels are drawn at low resolution and upscaled (fast); the headers carry the full size.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import _package_dir

VINDR = "vinbigdata-train.csv.gz"
RSNA = "kaggle_stage_2_train_labels.csv.zip"
SIIM = "siim-pneumothorax-train-rle.csv.gz"
CHEXPERT = "chexpert_train.csv.gz"
PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
GOOGLE = "google2019_nih-chest-xray-labels.csv.gz"


def real_file(name: str) -> Path:
    return _package_dir("torchxrayvision") / "data" / name


def read_rows(name: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a real label file, as the csv module reads them."""
    path = real_file(name)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            text = z.read(z.namelist()[0]).decode("utf-8-sig")
    else:
        text = gzip.open(path, "rb").read().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return rows[0], [r for r in rows[1:] if r]


def stream_rows(name: str):
    """(header, iterator over rows) of a real gzipped label file, read lazily (builders stop early)."""
    f = io.TextIOWrapper(gzip.open(real_file(name), "rb"), encoding="utf-8-sig", newline="")
    reader = csv.reader(f)
    return next(reader), reader


def sampled(image_id: str, every: int) -> bool:
    """A reproducible pseudo-random 1-in-`every` sample of ids (crc32), independent of the file's order."""
    return zlib.crc32(image_id.encode()) % every == 0


def pick(rows: list[list[str]], key: int, *, positive, count: int, negatives: int, seed: int = 0) -> list[str]:
    """`count` ids whose rows satisfy `positive` and `negatives` ids without, drawn reproducibly."""
    rng = np.random.default_rng(seed)
    ids = list(dict.fromkeys(r[key] for r in rows))
    pos = sorted({r[key] for r in rows if positive(r)})
    neg = sorted(set(ids) - set(pos))
    chosen = list(rng.choice(pos, size=count, replace=False)) + list(rng.choice(neg, size=negatives, replace=False))
    return [str(c) for c in chosen]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def radiograph(height: int, width: int, boxes, *, seed: int) -> np.ndarray:
    """np.ndarray[height, width] float32 in [0, 1]: a chest-like picture, bright inside `boxes` (x, y, w, h)."""
    rng = np.random.default_rng(seed)
    scale = min(1.0, 256 / max(height, width))
    h, w = max(8, int(round(height * scale))), max(8, int(round(width * scale)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.35 + 0.25 * np.cos((xx / w - 0.5) * math.pi) * np.cos((yy / h - 0.5) * math.pi)
    for cx in (0.3, 0.7):  # two darker lungs
        img -= 0.15 * np.exp(-(((xx / w - cx) / 0.17) ** 2 + ((yy / h - 0.45) / 0.28) ** 2))
    for x, y, bw, bh in boxes:
        x0, y0 = int(x * scale), int(y * scale)
        x1, y1 = int(math.ceil((x + bw) * scale)), int(math.ceil((y + bh) * scale))
        img[y0:y1, x0:x1] += 0.3
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def write_dicom(path: Path, image: np.ndarray, *, bits: int, monochrome1: bool = False, uid: str | None = None) -> None:
    """An uncompressed DICOM radiograph (Part 10 file) of `image` in [0, 1] with `bits` stored bits."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    top = (1 << bits) - 1
    values = np.round((1.0 - image if monochrome1 else image) * top)
    pixels = values.astype(np.uint8 if bits <= 8 else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _png(path: Path, image: np.ndarray, *, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = (1 << bits) - 1
    pixels = np.round(image * top).astype(np.uint8 if bits <= 8 else np.uint16)
    level = 0 if bits > 8 else 1  # 16-bit PNGs compress slowly here; size matters less than time
    assert cv2.imwrite(str(path), pixels, [cv2.IMWRITE_PNG_COMPRESSION, level])


def _side(extent: float) -> int:
    """A plausible detector side that holds `extent` pixels: 2048 or more, a multiple of 256."""
    return max(2048, int(math.ceil((extent + 32) / 256)) * 256)


# ----------------------------------------------------------------------------------------------- builders


def vindr(root: Path, *, count: int = 6, negatives: int = 4, missing: int = 1) -> dict:
    """Kaggle layout: ``train.csv`` + ``train/<image_id>.dicom`` (12-bit, every other one MONOCHROME1).
    The last `missing` ids get no image file (error rows)."""
    header, rows = read_rows(VINDR)
    ids = pick(rows, 0, positive=lambda r: r[1] == "Nodule/Mass", count=count, negatives=negatives, seed=1)
    chosen = [r for r in rows if r[0] in set(ids)]
    write_rows(root / "train.csv", header, chosen)
    sizes = {}
    for n, image_id in enumerate(ids[: len(ids) - missing]):
        own = [r for r in chosen if r[0] == image_id and r[4]]
        boxes = [(float(r[4]), float(r[5]), float(r[6]) - float(r[4]), float(r[7]) - float(r[5])) for r in own]
        height = _side(max((b[1] + b[3] for b in boxes), default=0))
        width = _side(max((b[0] + b[2] for b in boxes), default=0))
        write_dicom(root / "train" / f"{image_id}.dicom", radiograph(height, width, boxes, seed=n), bits=12,
                    monochrome1=bool(n % 2))
        sizes[image_id] = (height, width)
    return {"root": root, "ids": ids, "rows": chosen, "header": header, "sizes": sizes,
            "missing": ids[len(ids) - missing:]}


def rsna(root: Path, *, count: int = 6, negatives: int = 4) -> dict:
    """``stage_2_train_labels.csv`` + ``stage_2_train_images/<patientId>.dcm`` (8-bit, 1024 x 1024)."""
    header, rows = read_rows(RSNA)
    ids = pick(rows, 0, positive=lambda r: r[5] == "1", count=count, negatives=negatives, seed=2)
    chosen = [r for r in rows if r[0] in set(ids)]
    write_rows(root / "stage_2_train_labels.csv", header, chosen)
    for n, pid in enumerate(ids):
        boxes = [tuple(float(v) for v in r[1:5]) for r in chosen if r[0] == pid and r[5] == "1"]
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", radiograph(1024, 1024, boxes, seed=n), bits=8)
    return {"root": root, "ids": ids, "rows": chosen, "header": header}


def siim(root: Path, *, count: int = 6, negatives: int = 4) -> dict:
    """``train-rle.csv`` + ``dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm`` (8-bit, 1024 x 1024);
    the first image is stored under another file name (found by its header's SOPInstanceUID)."""
    from miner.data.archives.rle import rle_decode

    header, rows = read_rows(SIIM)
    ids = pick(rows, 0, positive=lambda r: r[1].strip() != "-1", count=count, negatives=negatives, seed=3)
    chosen = [r for r in rows if r[0] in set(ids)]
    write_rows(root / "train-rle.csv", header, chosen)
    for n, uid in enumerate(ids):
        mask = np.zeros((1024, 1024), bool)
        for r in chosen:
            if r[0] == uid and r[1].strip() != "-1":
                mask |= rle_decode(r[1])
        image = radiograph(1024, 1024, [], seed=n) + 0.3 * mask
        name = "renamed.dcm" if n == 0 else f"{uid}.dcm"
        write_dicom(root / "dicom-images-train" / f"1.2.{n}" / f"1.3.{n}" / name, np.clip(image, 0, 1), bits=8,
                    uid=uid)
    return {"root": root, "ids": ids, "rows": chosen, "header": header}


def chexpert(root: Path, *, count: int = 10) -> dict:
    """``CheXpert-v1.0-small/train.csv`` + the JPEGs its ``Path`` column names (390 x 320); rows sampled by a hash
    of Path, the file read only until enough are found."""
    header, rows = stream_rows(CHEXPERT)
    chosen = []
    for r in rows:
        if sampled(r[0], 4000):
            chosen.append(r)
            if len(chosen) == count:
                break
    folder = root / "CheXpert-v1.0-small"
    write_rows(folder / "train.csv", header, chosen)
    for n, r in enumerate(chosen):
        path = root / r[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), np.round(radiograph(320, 390, [], seed=n) * 255).astype(np.uint8))
    return {"root": folder, "rows": chosen, "header": header}


def padchest(root: Path, *, count: int = 10) -> dict:
    """The PadChest CSV + ``<ImageDir>/<ImageID>`` 16-bit PNGs at the row's ``Rows_DICOM`` x ``Columns_DICOM``:
    half the rows name a finding a ChestX-ray14 model knows; all among the smaller images (this machine writes
    16-bit PNGs slowly). Rows are sampled by a hash of ImageID and the file is read only until enough are found."""
    header, rows = stream_rows(PADCHEST)
    col = {name: i for i, name in enumerate(header)}
    common = ("'cardiomegaly'", "'pleural effusion'", "'pneumonia'", "'atelectasis'")  # findings a model may know
    positive: list[list[str]] = []
    others: list[list[str]] = []
    for r in rows:
        if not (sampled(r[col["ImageID"]], 5) and r[col["Labels"]]
                and int(r[col["Rows_DICOM"]]) * int(r[col["Columns_DICOM"]]) < 3.2e6):
            continue
        group = positive if any(t in r[col["Labels"]] for t in common) else others
        if len(group) < (count // 2 if group is positive else count - count // 2):
            group.append(r)
        if len(positive) + len(others) == count:
            break
    chosen = positive + others
    write_rows(root / PADCHEST.removesuffix(".gz"), header, chosen)
    for n, r in enumerate(chosen):
        height, width = int(r[col["Rows_DICOM"]]), int(r[col["Columns_DICOM"]])
        _png(root / r[col["ImageDir"]] / r[col["ImageID"]], radiograph(height, width, [], seed=n), bits=12)
    return {"root": root, "rows": chosen, "header": header}


def google(root: Path, *, count: int = 10) -> dict:
    """The relabel CSV + ChestX-ray14's ``images/<Image Index>`` (8-bit PNG, 1024 x 1024)."""
    header, rows = read_rows(GOOGLE)
    col = {name: i for i, name in enumerate(header)}
    ids = pick(rows, 0, positive=lambda r: r[col["Pneumothorax"]] == "YES", count=count // 2,
               negatives=count - count // 2, seed=6)
    chosen = [r for r in rows if r[0] in set(ids)]
    write_rows(root / GOOGLE.removesuffix(".gz"), header, chosen)
    for n, r in enumerate(chosen):
        _png(root / "images" / r[0], radiograph(1024, 1024, [], seed=n), bits=8)
    return {"root": root, "rows": chosen, "header": header}

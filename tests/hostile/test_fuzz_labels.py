"""Property-based fuzzing of the label-file readers (issue 22, case 3), in-process.

Whatever bytes a label file holds (binary junk, text in any encoding, with or without a valid header, gzipped,
truncated), each reader either returns or raises `ArchiveError` (`UsageError` for ``--afp-bounds``) whose message is
one line. Anything else (UnicodeDecodeError, csv.Error, EOFError, ValueError, ...) fails the property.

Budget: the "hostile" profile of tests/hostile/conftest.py (200 derandomized examples a property, the same every
run), 14 properties (one per kind for the kinds' label files). Random rows rarely put a given odd value in a given
column, so `test_every_piece_in_every_column` also tries each of `PIECES` in each column of a sound row, every run
(about 4,000 reads).
"""
from __future__ import annotations

import gzip
import io
import warnings
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from miner.data.archives import kinds, nih, read_archive  # noqa: E402
from miner.data.archives.classes import read_classes_file  # noqa: E402
from miner.data.textfile import csv_rows  # noqa: E402
from miner.errors import ArchiveError, MinerError, UsageError  # noqa: E402
from miner.findings import ARCHIVE_FINDINGS  # noqa: E402
from miner.metrics.bounds import load_bounds  # noqa: E402

# fields that have broken readers before or are likely to: quotes, separators, line breaks, NUL and other control
# characters, bidi marks, numbers Python reads oddly (superscripts, Arabic digits, 5000 digits, inf/nan), BOMs,
# and one field past the line limit
PIECES = ["", "a", "00000001_000.png", "../../etc/passwd", "/etc/shadow", "Effusion", "No Finding", "Mass|Nodule",
          "Infiltrate", "1", "0", "-1", "-3", "0.5", "nan", "inf", "1e999", "²", "٣", "9" * 5000, '"', '""', '"a,b"',
          ",", "\n", "\r", "\r\n", "\x00", "\x1b[2J", "\x85", "\u2028", "\u202e", "é", "\ufeff", " ", "\t",
          "['normal']", "['pleural effusion', 'cardiomegaly']", "[" * 300, "-" * 3000 + "1", "YES", "NO", "x" * 200,
          "1 3 10 5", '"a\nb"', '"a\r\nb"', '"\u2028"', '"\x00"', "patient00001",
          "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"]
FIELD = st.one_of(st.sampled_from(PIECES), st.text(max_size=24))
LINE = st.lists(FIELD, max_size=12).map(",".join)
BODY = st.lists(LINE, max_size=8).map("\n".join)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]
PACKING = ["plain", "gz", "gz-truncated", "zip", "zip-corrupt"]

HEADERS = {
    "data_entry": nih.DATA_ENTRY_HEADER,
    "bbox": nih.BBOX_HEADER,
    "manifest": "path,image_id,labels,split,patient_id",
    "vindr": "image_id,class_name,rad_id,x_min,y_min,x_max,y_max",
    "rsna": "patientId,x,y,width,height,Target",
    "siim": "ImageId, EncodedPixels",
    "chexpert": "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(list(ARCHIVE_FINDINGS["chexpert"])[:6]),
    "padchest": "ImageID,ImageDir,PatientID,Projection,Labels",
    "google": "Image Index,Patient ID,Follow-up #,View Position,Set Id," + ",".join(ARCHIVE_FINDINGS["google"]),
    "bounds": "metric,threshold,finding,afp",
}


#: one sound row of each file, mutated field by field below (so that most rows get past the header checks)
ROWS = {
    "data_entry": "00000001_000.png,Effusion,0,1,59,M,PA,96,96,0.14,0.14,",
    "bbox": "00000001_000.png,Effusion,64.0,43.0,18.0,26.0",
    "manifest": "images/00000001_000.png,00000001_000.png,Effusion,train,1",
    "vindr": "abc,Aortic enlargement,R1,10,20,30,40",
    "rsna": "p1,10,20,30,40,1",
    "siim": "1.2.3, 1 3 10 5",
    "chexpert": "CheXpert-v1.0-small/valid/patient00001/study1/view1_frontal.jpg,Male,68,Frontal,AP,1.0,,0.0,-1.0,,",
    "padchest": "a.png,0,p1,PA,['normal']",
    "google": "00000001_000.png,1,0,PA,test,NO,NO,YES,NO",
    "bounds": "iou,0.1,Mass,0.5",
}


@st.composite
def mutated_rows(draw, kind: str) -> str:
    """Rows of `kind`: its sound row with a few fields replaced, added or cut off."""
    lines = []
    for _ in range(draw(st.integers(1, 5))):
        row = ROWS[kind].split(",")
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(row)))
            piece = draw(FIELD)
            row[at:at + 1] = [piece]
        if draw(st.integers(0, 5)) == 0:
            row = row[: draw(st.integers(0, len(row)))]
        lines.append(",".join(row))
    return "\n".join(lines)


def _encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace" if encoding in ("latin-1", "cp1252") else "surrogatepass")


@st.composite
def label_bytes(draw, kind: str | None) -> bytes:
    """A label file's bytes: junk, or text (the header of `kind` or none; its rows mutated, or random ones) in
    some encoding."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=600))
    body = draw(mutated_rows(kind)) if kind is not None and draw(st.integers(0, 3)) else draw(BODY)
    if kind is not None and draw(st.integers(0, 4)):
        body = HEADERS[kind] + draw(st.sampled_from(["\n", "\r\n", "\r"])) + body
    if draw(st.integers(0, 9)) == 0:
        body += "\n" + "x" * 140_000  # one line past the limit
    return _encode(body, draw(st.sampled_from(ENCODINGS)) if draw(st.integers(0, 2)) == 0 else "utf-8")


def _write(folder: Path, name: str, data: bytes, packing: str) -> Path:
    """Write `data` as `name` in `folder`: plain, gzipped (whole or cut in half), or zipped (sound or corrupt)."""
    for old in folder.iterdir():
        if old.is_file():
            old.unlink()
    if packing == "plain":
        path = folder / name
        path.write_bytes(data)
    elif packing.startswith("gz"):
        path = folder / f"{name}.gz"
        packed = gzip.compress(data)
        path.write_bytes(packed[: len(packed) // 2] if packing == "gz-truncated" else packed)
    else:
        path = folder / f"{name}.zip"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name, data)
        packed = bytearray(buffer.getvalue())
        if packing == "zip-corrupt" and len(packed) > 40:
            for i in range(30, min(len(packed), 90), 7):  # the member's compressed bytes
                packed[i] ^= 0x5A
        path.write_bytes(bytes(packed))
    return path


def _returns_or_refuses(call, errors: tuple[type[MinerError], ...] = (ArchiveError,)) -> None:
    """`call()` returns, or raises one of `errors` with a one-line message; anything else fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except errors as err:
        message = str(err)
        assert message.strip(), "an empty error message"
        assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, repr(message)


@pytest.fixture
def folder(tmp_path) -> Path:
    out = tmp_path / "fuzz"
    out.mkdir()
    return out


@given(data=label_bytes("data_entry"), packing=st.sampled_from(PACKING))
def test_data_entry_reader(folder, data, packing):
    path = _write(folder, "Data_Entry_2017.csv", data, packing)
    _returns_or_refuses(lambda: nih.read_data_entry(path))


@given(data=label_bytes("bbox"), packing=st.sampled_from(PACKING))
def test_bbox_list_reader(folder, data, packing):
    path = _write(folder, "BBox_List_2017.csv", data, packing)
    _returns_or_refuses(lambda: nih.read_bbox_list(path))


@given(data=label_bytes(None), name=st.sampled_from(["test_list.txt", "train_val_list.txt", "classes.txt"]))
def test_list_readers(folder, data, name):
    path = _write(folder, name, data, "plain")
    _returns_or_refuses(lambda: nih.read_split_list(path))
    _returns_or_refuses(lambda: read_classes_file(path))


@given(data=label_bytes("manifest"), packing=st.sampled_from(["plain", "gz", "gz-truncated"]))
def test_manifest_reader(folder, data, packing):
    path = _write(folder, "manifest.csv", data, packing)
    _returns_or_refuses(lambda: read_archive(path))


@given(data=label_bytes("manifest"))
def test_release_folder(folder, data):
    """The whole release reader on a folder whose Data_Entry file is fuzzed (its split lists and box list too)."""
    path = _write(folder, "Data_Entry_2017.csv", data, "plain")
    (folder / "test_list.txt").write_bytes(data[:80])
    (folder / "BBox_List_2017.csv").write_bytes(data[::-1])
    _returns_or_refuses(lambda: read_archive(path.parent))


KIND_FILES = {"vindr": "train.csv", "rsna": "stage_2_train_labels.csv", "siim": "train-rle.csv",
              "chexpert": "valid.csv", "padchest": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
              "google": "google2019_nih-chest-xray-labels.csv"}


@pytest.mark.parametrize("kind", list(KIND_FILES))
@given(data=st.data())
def test_kind_readers(folder, kind, data):
    """Each kind's label file, read as a file and as a folder (kind detection reads every CSV's header)."""
    content = data.draw(label_bytes(kind))
    packing = data.draw(st.sampled_from(["plain", "gz", "zip", "zip-corrupt"]))
    path = _write(folder, KIND_FILES[kind], content, packing)
    _returns_or_refuses(lambda: kinds.header(path))
    _returns_or_refuses(lambda: kinds.detect(folder))
    _returns_or_refuses(lambda: read_archive(path))


def _packed(method: str) -> bytes:
    text = (HEADERS["manifest"] + "\n" + (ROWS["manifest"] + "\n") * 300).encode()
    if method == "gzip":
        return gzip.compress(text)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", getattr(zipfile, f"ZIP_{method.upper()}")) as z:
        z.writestr("manifest.csv", text)
    return buffer.getvalue()


@given(method=st.sampled_from(["gzip", "deflated", "bzip2", "lzma", "stored"]),
       edits=st.lists(st.tuples(st.sampled_from(["set", "cut", "insert"]), st.floats(0, 1), st.binary(max_size=8)),
                      min_size=1, max_size=4))
def test_damaged_compressed_files(folder, method, edits):
    """A sound gzip or zip (each method zipfile reads) with bytes changed, cut off or inserted anywhere: read to
    the end, or one `ArchiveError` line (zipfile, gzip, bz2 and lzma raise a dozen types between them)."""
    data = bytearray(_packed(method))
    for op, where, payload in edits:
        at = int(where * max(len(data) - 1, 0))
        if op == "set" and payload:
            data[at:at + len(payload)] = payload
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = payload
    path = folder / ("manifest.csv.gz" if method == "gzip" else "manifest.csv.zip")
    path.write_bytes(bytes(data))

    def read() -> None:
        with csv_rows(path) as rows:
            for _ in rows:
                pass

    _returns_or_refuses(read)


SWEEP_FILES = {**KIND_FILES, "data_entry": "Data_Entry_2017.csv", "bbox": "BBox_List_2017.csv",
               "manifest": "manifest.csv", "bounds": "bounds.csv"}


@pytest.mark.parametrize("kind", list(ROWS))
def test_every_piece_in_every_column(folder, kind):
    """Each of `PIECES` in each column of `kind`'s sound row, below its header (found google's "²" patient id and
    PadChest's deeply nested Labels, which random rows missed)."""
    fields = ROWS[kind].split(",")
    path = folder / SWEEP_FILES[kind]
    reader = {"bbox": lambda: nih.read_bbox_list(path), "data_entry": lambda: nih.read_data_entry(path)}.get(
        kind, lambda: read_archive(path))
    errors = (UsageError,) if kind == "bounds" else (ArchiveError,)
    if kind == "bounds":
        reader = lambda: load_bounds(path)  # noqa: E731
    for column in range(len(fields)):
        for piece in PIECES:
            row = fields[:column] + [piece] + fields[column + 1:]
            path.write_text(HEADERS[kind] + "\n" + ",".join(row) + "\n", encoding="utf-8")
            _returns_or_refuses(reader, errors)


@given(data=label_bytes("bounds"), suffix=st.sampled_from([".csv", ".json"]))
def test_bounds_reader(folder, data, suffix):
    path = _write(folder, f"bounds{suffix}", data, "plain")
    _returns_or_refuses(lambda: load_bounds(path), errors=(UsageError,))


@given(text=st.text(max_size=400))
def test_bounds_json(folder, text):
    """JSON-shaped bounds files: nested values of the wrong type are refused in one line."""
    path = folder / "bounds.json"
    path.write_text('{"iou": {"0.1": {"Mass": ' + text + "}}}", encoding="utf-8", errors="surrogatepass")
    _returns_or_refuses(lambda: load_bounds(path), errors=(UsageError,))

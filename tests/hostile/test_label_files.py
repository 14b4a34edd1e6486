"""Issue 22, case 3: label files that crashed the readers end in one line naming the file, the line and the fault.

Through the real CLI (`miner inspect`, the cheapest verb that reads every label file; one `miner mine` and the
`miner eval --gt` / `--afp-bounds` files): binary junk, Latin-1, UTF-16 without a byte-order mark, a 50 MB line,
a truncated or fake ``.gz``, a corrupt ``.zip``, a NUL byte in an image name, an empty file, a header only, ragged
rows, an unclosed quote, and the same faults in the box list, split lists, ``classes.txt``, manifests (CSV, CSV.gz,
Parquet) and the label files of the other archive kinds. Each run: exit 2, one stderr line holding the file name
and line, no traceback, the test's folder unchanged.

In-process: what is accepted reads the same as plain UTF-8 (a UTF-16 or UTF-8 byte-order mark, CR or CRLF line
ends, gzip, zip), line numbers and byte offsets are the hand-computed ones across chunk boundaries, and a 50 MB
line costs the line limit, not the file (tracemalloc).
"""
from __future__ import annotations

import codecs
import gzip
import io
import random
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from miner.data.archives import kinds, nih, read_archive
from miner.data.textfile import CHUNK, MAX_LINE_CHARS, LabelText, csv_rows
from miner.errors import ArchiveError
from tests.hostile.harness import assert_refused, assert_untouched, run_miner

DATA_ENTRY = "Data_Entry_2017.csv"
BBOX = "BBox_List_2017.csv"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write_lines(path: Path, lines: list[str], encoding: str = "utf-8", end: str = "\n") -> None:
    path.write_bytes((end.join(lines) + end).encode(encoding))


def _gzip(path: Path, *, keep: float = 1.0) -> Path:
    """Replace `path` with `path`.gz (cut to the first `keep` of its compressed bytes)."""
    packed = gzip.compress(path.read_bytes())
    target = path.with_name(path.name + ".gz")
    target.write_bytes(packed[: int(len(packed) * keep)])
    path.unlink()
    return target


def _inspect_refused(target: Path, tmp_path: Path, watched, *contains: str) -> str:
    before = watched()
    result = run_miner(["inspect", target], cwd=tmp_path)
    line = assert_refused(result, 2, contains=contains)
    assert_untouched(before, watched())
    return line


# ------------------------------------------------------------------------------------------------------------
# the release's Data_Entry_2017.csv through `miner inspect`


def _latin1_row3(archive: Path) -> int:
    """Write "é" as Latin-1 into line 3 of the Data_Entry file; returns its byte offset in the file."""
    path = archive / DATA_ENTRY
    lines = _lines(path)
    lines[2] = lines[2].replace(",M,", ",Mé,").replace(",F,", ",Fé,")
    _write_lines(path, lines, encoding="latin-1")
    return len(lines[0]) + 1 + len(lines[1]) + 1 + lines[2].index("é")


def test_latin1_data_entry_names_line_and_byte(archive, tmp_path, watched):
    offset = _latin1_row3(archive)
    _inspect_refused(archive, tmp_path, watched, f"{DATA_ENTRY}:3:", f"byte offset {offset}", "byte e9",
                     "save the file as UTF-8")


def _binary(archive: Path) -> None:
    (archive / DATA_ENTRY).write_bytes(b"\xfc" + random.Random(0).randbytes(4000))


def _utf16_without_bom(archive: Path) -> None:
    path = archive / DATA_ENTRY
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16-le"))


def _nul_in_name(archive: Path) -> None:
    path = archive / DATA_ENTRY
    lines = _lines(path)
    lines[2] = "0000\x00" + lines[2]
    _write_lines(path, lines)


def _escape_in_name(archive: Path) -> None:
    path = archive / DATA_ENTRY
    lines = _lines(path)
    lines[3] = "\x1b[2J" + lines[3]
    _write_lines(path, lines)


def _empty(archive: Path) -> None:
    (archive / DATA_ENTRY).write_bytes(b"")


def _header_only(archive: Path) -> None:
    _write_lines(archive / DATA_ENTRY, [nih.DATA_ENTRY_HEADER])


def _ragged(archive: Path) -> None:
    path = archive / DATA_ENTRY
    lines = _lines(path)
    lines[3] = lines[3].split(",")[0]
    _write_lines(path, lines)


def _unclosed_quote(archive: Path) -> None:
    path = archive / DATA_ENTRY
    lines = _lines(path)
    lines[4] = '"' + lines[4]
    _write_lines(path, lines)


def _no_header(archive: Path) -> None:
    path = archive / DATA_ENTRY
    _write_lines(path, _lines(path)[1:])


def _workbook(archive: Path) -> None:
    path = archive / DATA_ENTRY
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    path.write_bytes(buffer.getvalue())


def _gz_truncated(archive: Path) -> None:
    path = archive / DATA_ENTRY
    path.write_text(path.read_text() * 400)  # large enough for the stream to break off past its first lines
    _gzip(path, keep=0.5)


def _gz_fake(archive: Path) -> None:
    path = archive / DATA_ENTRY
    path.rename(path.with_name(DATA_ENTRY + ".gz"))


DATA_ENTRY_CASES = {
    "binary": (_binary, [f"{DATA_ENTRY}:1:", "not UTF-8"]),
    "utf16-without-bom": (_utf16_without_bom, [f"{DATA_ENTRY}:1:", "NUL byte", "UTF-16"]),
    "nul-in-image-name": (_nul_in_name, [f"{DATA_ENTRY}:3:", "NUL byte (column 5)"]),
    "escape-in-image-name": (_escape_in_name, [f"{DATA_ENTRY}:4:", "control character U+001B"]),
    "empty": (_empty, [DATA_ENTRY, "empty file"]),
    "header-only": (_header_only, [DATA_ENTRY, "no image rows below the header"]),
    "ragged-row": (_ragged, [f"{DATA_ENTRY}:4:", "1 fields"]),
    "unclosed-quote": (_unclosed_quote, [f"{DATA_ENTRY}:5:", "quote"]),
    "no-header": (_no_header, [f"{DATA_ENTRY}:1:", "no 'Image Index' column"]),
    "excel-workbook": (_workbook, [DATA_ENTRY, "zip archive", "CSV UTF-8"]),
    "gz-truncated": (_gz_truncated, [f"{DATA_ENTRY}.gz:", "ends early"]),
    "gz-fake": (_gz_fake, [f"{DATA_ENTRY}.gz", "not gzip data"]),
}


@pytest.mark.parametrize("case", list(DATA_ENTRY_CASES))
def test_data_entry_refused(case, archive, tmp_path, watched):
    make, contains = DATA_ENTRY_CASES[case]
    make(archive)
    _inspect_refused(archive, tmp_path, watched, *contains)


def test_a_50_mb_line_is_refused_at_the_limit(archive, tmp_path, watched):
    with open(archive / DATA_ENTRY, "a") as f:
        f.write("x" * (50 << 20) + ",No Finding\n")
    line = _inspect_refused(archive, tmp_path, watched, f"{DATA_ENTRY}:14:", f"longer than {MAX_LINE_CHARS}")
    assert "field limit" not in line


def test_mine_refuses_with_the_same_line(archive, tiny_model, tmp_path, watched):
    _latin1_row3(archive)
    out = tmp_path / "out"
    inspect = run_miner(["inspect", archive], cwd=tmp_path)
    before = watched(out)
    mine = run_miner(["mine", archive, "--model", tiny_model, "--out", out], cwd=tmp_path)
    line = assert_refused(mine, 2, contains=[f"{DATA_ENTRY}:3:", "not UTF-8"])
    assert_untouched(before, watched(out))
    assert line.split(": error: ", 1)[1] == assert_refused(inspect, 2).split(": error: ", 1)[1]


# ------------------------------------------------------------------------------------------------------------
# the other files of a release: box list, split lists, classes.txt


def _bbox_latin1(archive: Path) -> None:
    path = archive / BBOX
    lines = _lines(path)
    lines[1] = lines[1].replace("Effusion", "Effusión", 1).replace("Mass", "Massé", 1)
    _write_lines(path, lines, encoding="latin-1")


def _bbox_ragged(archive: Path) -> None:
    path = archive / BBOX
    lines = _lines(path)
    lines[2] = ",".join(lines[2].split(",")[:3])
    _write_lines(path, lines)


def _bbox_nan(archive: Path) -> None:
    path = archive / BBOX
    lines = _lines(path)
    lines[1] = ",".join(lines[1].split(",")[:2] + ["nan", "1", "2", "3"])
    _write_lines(path, lines)


def _bbox_empty(archive: Path) -> None:
    (archive / BBOX).write_bytes(b"")


def _split_binary(archive: Path) -> None:
    (archive / "test_list.txt").write_bytes(b"\xfc\xfd\xfe\n")


def _classes_latin1(archive: Path) -> None:
    (archive / "classes.txt").write_bytes("Effusion\nÉpanchement\n".encode("latin-1"))


RELEASE_FILE_CASES = {
    "bbox-latin1": (_bbox_latin1, [f"{BBOX}:2:", "not UTF-8"]),
    "bbox-ragged": (_bbox_ragged, [f"{BBOX}:3:", "3 fields"]),
    "bbox-nan": (_bbox_nan, [f"{BBOX}:2:", "not finite"]),
    "bbox-empty": (_bbox_empty, [BBOX, "empty file"]),
    "split-list-binary": (_split_binary, ["test_list.txt:1:", "not UTF-8"]),
    "classes-latin1": (_classes_latin1, ["classes.txt:2:", "not UTF-8"]),
}


@pytest.mark.parametrize("case", list(RELEASE_FILE_CASES))
def test_release_files_refused(case, archive, tmp_path, watched):
    make, contains = RELEASE_FILE_CASES[case]
    make(archive)
    _inspect_refused(archive, tmp_path, watched, *contains)


# ------------------------------------------------------------------------------------------------------------
# manifests


def _manifest(archive: Path, name: str = "manifest.csv") -> Path:
    (archive / DATA_ENTRY).unlink()
    images = sorted(p.name for p in (archive / "images").iterdir())
    lines = ["path,labels"] + [f"images/{n},No Finding" for n in images]
    _write_lines(archive / name, lines)
    return archive / name


def test_manifest_latin1(archive, tmp_path, watched):
    path = _manifest(archive)
    lines = _lines(path)
    lines[2] = lines[2].replace("No Finding", "Hernia ¿?")
    _write_lines(path, lines, encoding="cp1252")
    _inspect_refused(path, tmp_path, watched, "manifest.csv:3:", "not UTF-8")


def test_manifest_gz_truncated(archive, tmp_path, watched):
    path = _manifest(archive)
    path.write_text(path.read_text() + "".join(f"images/x{i}.png,No Finding\n" for i in range(5000)))
    target = _gzip(path, keep=0.5)
    _inspect_refused(target, tmp_path, watched, "manifest.csv.gz:", "ends early")


def test_manifest_header_only(archive, tmp_path, watched):
    path = _manifest(archive)
    _write_lines(path, ["path,labels"])
    _inspect_refused(path, tmp_path, watched, "manifest.csv", "no rows below the header")


def test_manifest_parquet_corrupt(archive, tmp_path, watched):
    (archive / DATA_ENTRY).unlink()
    (archive / "manifest.parquet").write_bytes(b"PAR1" + random.Random(1).randbytes(3000) + b"PAR1")
    _inspect_refused(archive, tmp_path, watched, "manifest.parquet", "not a readable Parquet file")


def test_manifest_parquet_nul_in_path(archive, tmp_path, watched):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (archive / DATA_ENTRY).unlink()
    pq.write_table(pa.table({"path": ["images/00000001_000.png", "images/0000\x00x.png"],
                             "labels": ["No Finding", "Effusion"]}), archive / "manifest.parquet")
    _inspect_refused(archive, tmp_path, watched, "manifest.parquet", "row 2", "'path'", "control character")


# ------------------------------------------------------------------------------------------------------------
# the label files of the other kinds (detection reads the header of every CSV of a folder)

VINDR = ["image_id,class_name,rad_id,x_min,y_min,x_max,y_max", "a1,Aortic enlargement,R9,10,20,30,40",
         "a2,No finding,R9,,,,", "a3,Nodule/Mass,R9,1,2,3,4"]
RSNA = ["patientId,x,y,width,height,Target", "p1,10,20,30,40,1", "p2,,,,,0", "p3,,,,,0"]


def test_kind_label_file_latin1(tmp_path, watched):
    folder = tmp_path / "rsna"
    folder.mkdir()
    lines = list(RSNA)
    lines[2] = "pé,,,,,0"
    _write_lines(folder / "stage_2_train_labels.csv", lines, encoding="latin-1")
    _inspect_refused(folder, tmp_path, watched, "stage_2_train_labels.csv:3:", "not UTF-8")


def test_kind_detection_on_a_junk_csv(tmp_path, watched, clean_archive):
    folder = tmp_path / "images_only"
    shutil.copytree(clean_archive / "images", folder)
    (folder / "notes.csv").write_bytes(random.Random(2).randbytes(2000).replace(b"\xef", b"\xff"))
    _inspect_refused(folder, tmp_path, watched, "notes.csv:1:", "not UTF-8")


def test_kind_label_file_zip_corrupt(tmp_path, watched):
    folder = tmp_path / "vindr"
    folder.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train.csv", "\n".join(VINDR * 50))
    packed = bytearray(buffer.getvalue())
    packed[60:70] = b"\x00" * 10  # inside the member's deflated data
    (folder / "train.csv.zip").write_bytes(bytes(packed))
    _inspect_refused(folder, tmp_path, watched, "train.csv.zip", "zip")


def test_kind_label_file_not_a_zip(tmp_path, watched):
    folder = tmp_path / "vindr"
    folder.mkdir()
    (folder / "train.csv.zip").write_text("\n".join(VINDR))
    _inspect_refused(folder, tmp_path, watched, "train.csv.zip", "not a readable zip file")


def test_kind_value_with_a_line_break(tmp_path, watched):
    folder = tmp_path / "vindr"
    folder.mkdir()
    _write_lines(folder / "train.csv", VINDR[:2] + ['"a\n2",No finding,R9,,,,'])
    _inspect_refused(folder, tmp_path, watched, "train.csv:3:", "image_id", "line break")


def test_kind_label_file_utf16_is_read(tmp_path):
    """A UTF-16 label file with its byte-order mark (Excel's "Unicode Text") reads as its UTF-8 twin."""
    for name, encoding in (("plain", "utf-8"), ("wide", "utf-16")):
        (tmp_path / name).mkdir()
        _write_lines(tmp_path / name / "train.csv", VINDR, encoding=encoding, end="\r\n")
    plain, wide = (run_miner(["inspect", tmp_path / n], cwd=tmp_path) for n in ("plain", "wide"))
    assert plain.returncode == 0 and wide.returncode == 0, wide.describe()
    assert wide.stdout.replace(f"{tmp_path}/wide", f"{tmp_path}/plain") == plain.stdout
    assert "VinDr-CXR" in plain.stdout


# ------------------------------------------------------------------------------------------------------------
# the files `miner eval` reads: --gt and --afp-bounds


def test_eval_gt_latin1(clean_archive, tmp_path, watched):
    gt = tmp_path / "gt.csv"
    lines = _lines(clean_archive / BBOX)
    lines[3] = lines[3].replace(",", "é,", 1)
    _write_lines(gt, lines, encoding="latin-1")
    before = watched()
    result = run_miner(["eval", clean_archive / BBOX, "--gt", gt], cwd=tmp_path)
    assert_refused(result, 2, contains=["gt.csv:4:", "not UTF-8"])
    assert_untouched(before, watched())


def test_eval_gt_gz_fake_and_bounds_junk(clean_archive, tmp_path, watched):
    gt = tmp_path / "gt.csv.gz"
    gt.write_bytes((clean_archive / BBOX).read_bytes())
    bounds = tmp_path / "bounds.csv"
    bounds.write_bytes(b"metric,threshold,finding,afp\niou,0.1,Mass,\xff\n")
    before = watched()
    bad_gt = run_miner(["eval", clean_archive / BBOX, "--gt", gt], cwd=tmp_path)
    assert_refused(bad_gt, 2, contains=["gt.csv.gz", "not gzip data"])
    bad_bounds = run_miner(["eval", clean_archive / BBOX, "--gt", clean_archive / BBOX, "--afp-bounds", bounds],
                           cwd=tmp_path)
    assert_refused(bad_bounds, 2, contains=["--afp-bounds", "bounds.csv:2:", "not UTF-8"])
    assert_untouched(before, watched())


# ------------------------------------------------------------------------------------------------------------
# in-process: what is accepted reads as plain UTF-8; where a fault is reported; what a long line costs


@pytest.mark.parametrize("variant", ["utf-8-sig", "utf-16", "utf-16-be-bom", "utf-32", "crlf", "cr", "gz", "zip"])
def test_accepted_variants_read_like_utf8(clean_archive, tmp_path, variant):
    plain = nih.read_data_entry(clean_archive / DATA_ENTRY)
    lines = _lines(clean_archive / DATA_ENTRY)
    path = tmp_path / DATA_ENTRY
    if variant in ("utf-8-sig", "utf-16", "utf-32"):
        _write_lines(path, lines, encoding=variant)
    elif variant == "utf-16-be-bom":
        path.write_bytes(codecs.BOM_UTF16_BE + ("\n".join(lines) + "\n").encode("utf-16-be"))
    elif variant in ("crlf", "cr"):
        _write_lines(path, lines, end="\r\n" if variant == "crlf" else "\r")
    elif variant == "gz":
        _write_lines(path, lines)
        path = _gzip(path)
    else:
        path = tmp_path / (DATA_ENTRY + ".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(DATA_ENTRY, "\n".join(lines) + "\n")
    assert nih.read_data_entry(path) == plain


def test_line_numbers_and_offsets_across_chunks(tmp_path):
    """A two-byte character cut by a chunk boundary is no fault; a CR/LF pair cut by one is one line end; the
    Latin-1 byte after them is reported at its own line and byte offset."""
    first = "a" * (CHUNK - 1) + "é\n"  # "é" is bytes CHUNK - 1 and CHUNK: the first boundary cuts it
    second = "b" * (CHUNK - 3) + "\r\n"  # its "\r" is the last byte of the second chunk
    data = (first + second).encode() + b"d,\xe9\n"
    assert data.index(b"\r") == 2 * CHUNK - 1
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    rows = []
    with pytest.raises(ArchiveError) as err, csv_rows(path) as reader:
        for line, row in reader:
            rows.append((line, row))
    assert str(err.value) == (f"{path}:3: not UTF-8 text (byte e9 at byte offset {offset}, column 3): binary data "
                              "or another encoding such as Latin-1; save the file as UTF-8 (Excel: CSV UTF-8)")
    assert rows == [(1, [first[:-1]]), (2, [second[:-2]])]
    lines = []
    with pytest.raises(ArchiveError), LabelText(path) as text:
        for line in text:
            lines.append(line)
    assert lines == [first, second]


def test_header_reads_only_the_first_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(("\n".join(VINDR[:2]) + "\n").encode() + b"a9,\xe9,R1,,,,\n")
    assert kinds.header(path) == VINDR[0].split(",")
    assert kinds.detect(path)[0].name == "vindr"
    with pytest.raises(ArchiveError, match=r"train\.csv:3: not UTF-8"):
        read_archive(path)


def test_multiline_values_only_in_unread_columns(tmp_path):
    """PadChest's CUI columns hold quoted line breaks: accepted there, refused in a column the reader uses."""
    path = tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    header = "ImageID,ImageDir,Labels,labelCUIS"
    _write_lines(path, [header, "a.png,0,['normal'],\"['C1'\n 'C2']\"", "b.png,0,['normal'],"])
    archive = read_archive(path)
    assert [r.image_id for r in archive.records] == ["a.png", "b.png"]
    _write_lines(path, [header, "a.png,0,\"['normal',\n 'pleural effusion']\",", "b.png,0,['normal'],"])
    with pytest.raises(ArchiveError, match=r":2: Labels .* holds a line break"):
        read_archive(path)


def test_a_50_mb_line_costs_the_limit_not_the_file(tmp_path):
    path = tmp_path / DATA_ENTRY
    with open(path, "w") as f:
        f.write(nih.DATA_ENTRY_HEADER + "\n" + "x" * (50 << 20) + ",No Finding\n")
    packed = tmp_path / (DATA_ENTRY + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    for target in (path, packed):
        tracemalloc.start()
        try:
            with pytest.raises(ArchiveError, match=rf":2: a line longer than {MAX_LINE_CHARS} characters"):
                nih.read_data_entry(target)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * MAX_LINE_CHARS + 4 * CHUNK, f"{target.name}: {peak} bytes at peak"


def test_unclosed_quote_costs_the_limit(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("path,labels\n\"images/a.png,No Finding\n" + "images/b.png,No Finding\n" * 20000)
    with pytest.raises(ArchiveError, match=r"manifest\.csv:2: a quoted field runs over the line end"):
        read_archive(path)
    with pytest.raises(ArchiveError, match=r"train\.csv:2: a row longer than"):
        path = tmp_path / "train.csv"
        path.write_text(VINDR[0] + "\n\"a1" + ",x,R1,1,2,3,4\n" * 20000)
        read_archive(path)


def test_a_folder_where_the_file_belongs(tmp_path):
    path = tmp_path / DATA_ENTRY
    path.mkdir()
    with pytest.raises(ArchiveError, match=rf"{DATA_ENTRY}: cannot be opened \(Is a directory\)"):
        nih.read_data_entry(path)

"""Issue 22, case 2: an archive reaches only files under its own root (README "The archive root").

A label-file row naming ``../../outside.png``, an absolute path or ``/etc/passwd``, and an entry of any archive kind
that is a symbolic link out of the archive, are never opened: ``miner mine`` writes an ``outside_archive`` error row,
``miner inspect`` counts and names it, ``miner show`` refuses it with one line, ``miner report`` says why it has no
picture and ``miner labels`` leaves it out. ``--allow-outside-archive`` lifts the rule and is part of the job's
identity. The rule is checked again when a file is opened, so a file swapped for a link after the archive was read
is caught too. The outside file in these tests is a real PNG: had it been opened it would have decoded and been
mined, so "no images row for it" shows it was not read.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.hostile.harness import assert_refused, assert_untouched, run_miner

PASSWD = "../../../../../../../../../../../../etc/passwd"
ROW = "{},Pneumonia,0,99,50,F,PA,96,96,0.14,0.14,"  # a Data_Entry_2017.csv row (the phantom archive's layout)


def _png(clean_archive: Path) -> Path:
    return sorted((clean_archive / "images").glob("*.png"))[0]


def _outside_png(clean_archive: Path, tmp_path: Path) -> Path:
    """A real, decodable PNG beside the archive (outside its root)."""
    target = tmp_path / "elsewhere" / "outside.png"
    target.parent.mkdir()
    shutil.copy(_png(clean_archive), target)
    return target


def _table(out: Path, name: str) -> list[dict]:
    return ds.dataset(out / name, format="parquet").to_table().to_pylist()


# ------------------------------------------------------------------------------------------------------------
# one tiny archive of every kind, one of its entries a symbolic link out of the archive


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def _place(folder: Path, inside: str, link: str, png: Path, outside: Path) -> None:
    """`folder/inside`: a real image; `folder/link`: a symbolic link to `outside`."""
    (folder / inside).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, folder / inside)
    (folder / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, folder / link)


def build_kind(kind: str, folder: Path, png: Path, outside: Path) -> str:
    """An archive of `kind` in `folder` whose entry with the returned image id is a link to `outside`."""
    folder.mkdir(parents=True)
    if kind == "release":
        from miner.data.archives.nih import DATA_ENTRY_HEADER

        (folder / "Data_Entry_2017.csv").write_text(DATA_ENTRY_HEADER + "\n" + ROW.format("in.png") + "\n"
                                                   + ROW.format("link.png") + "\n")
        _place(folder, "images/in.png", "images/link.png", png, outside)
        return "link.png"
    if kind == "manifest":
        _write_csv(folder / "manifest.csv", [["path", "labels"], ["images/in.png", "No Finding"],
                                             ["images/link.png", "Effusion"]])
        _place(folder, "images/in.png", "images/link.png", png, outside)
        return "link.png"
    if kind == "folder":
        _place(folder, "in.png", "sub/link.png", png, outside)
        return "link.png"
    if kind == "vindr":
        _write_csv(folder / "train.csv", [["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max",
                                           "y_max"], ["in", "No finding", "14", "R1", "", "", "", ""],
                                          ["link", "Nodule/Mass", "8", "R2", "1", "2", "30", "40"]])
        _place(folder, "train/in.png", "train/link.png", png, outside)
        return "link"
    if kind == "rsna":
        _write_csv(folder / "stage_2_train_labels.csv", [["patientId", "x", "y", "width", "height", "Target"],
                                                        ["in", "", "", "", "", "0"],
                                                        ["link", "1", "2", "30", "40", "1"]])
        _place(folder, "stage_2_train_images/in.png", "stage_2_train_images/link.png", png, outside)
        return "link"
    if kind == "siim":
        _write_csv(folder / "train-rle.csv", [["ImageId", "EncodedPixels"], ["1.2.3", "-1"], ["1.2.4", "-1"]])
        _place(folder, "dicom-images-train/a/1.2.3.dcm", "dicom-images-train/b/1.2.4.dcm", png, outside)
        return "1.2.4"
    if kind == "chexpert":
        header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Atelectasis", "Cardiomegaly"]
        _write_csv(folder / "train.csv", [header, ["train/patient1/study1/view1_frontal.jpg", "F", "50", "Frontal",
                                                   "PA", "1.0", "", ""],
                                          ["train/patient2/study1/view1_frontal.jpg", "M", "60", "Frontal", "PA",
                                           "", "1.0", ""]])
        _place(folder, "train/patient1/study1/view1_frontal.jpg", "train/patient2/study1/view1_frontal.jpg", png,
               outside)
        return "train/patient2/study1/view1_frontal.jpg"
    if kind == "padchest":
        _write_csv(folder / "padchest_labels.csv", [["ImageID", "ImageDir", "Labels"], ["in.png", "0", "['normal']"],
                                                    ["link.png", "0", "['pleural effusion']"]])
        _place(folder, "0/in.png", "0/link.png", png, outside)
        return "link.png"
    if kind == "google":
        _write_csv(folder / "google2019_nih-chest-xray-labels.csv",
                   [["Image Index", "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"],
                    ["in.png", "NO", "NO", "NO", "NO"], ["link.png", "NO", "YES", "NO", "NO"]])
        _place(folder, "images/in.png", "images/link.png", png, outside)
        return "link.png"
    raise ValueError(kind)


KINDS = ("release", "manifest", "folder", "vindr", "rsna", "siim", "chexpert", "padchest", "google")


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_names_a_link_out_of_every_archive_kind(kind, clean_archive, tmp_path, watched):
    outside = _outside_png(clean_archive, tmp_path)
    link_id = build_kind(kind, tmp_path / kind, _png(clean_archive), outside)
    before = watched()
    result = run_miner(["inspect", tmp_path / kind, "--json"], cwd=tmp_path)
    assert_untouched(before, watched())
    assert result.returncode == 0 and not result.stderr.strip(), result.describe()
    report = json.loads(result.stdout)
    assert report["root"] == str(tmp_path / kind)
    assert report["problem_counts"] == {"outside_archive": 1}
    (problem,) = report["problems"]
    assert problem["image_id"] == link_id and problem["kind"] == "outside_archive"
    assert str(outside) in problem["detail"]
    assert report["checked"] == report["images"] == 2


def test_inspect_with_the_flag_checks_the_file_behind_the_link(clean_archive, tmp_path, watched):
    outside = _outside_png(clean_archive, tmp_path)
    build_kind("manifest", tmp_path / "m", _png(clean_archive), outside)
    before = watched()
    result = run_miner(["inspect", tmp_path / "m", "--json", "--allow-outside-archive"], cwd=tmp_path)
    assert_untouched(before, watched())
    assert result.returncode == 0, result.describe()
    report = json.loads(result.stdout)
    assert report["root"] is None and report["problem_counts"] == {}
    assert report["formats"] == {"png": 2}  # the file behind the link was read: it is a PNG


def test_a_symlinked_archive_root_is_resolved_once(archive, tmp_path, watched):
    alias = tmp_path / "alias"
    os.symlink(archive, alias)
    before = watched()
    result = run_miner(["inspect", alias, "--json"], cwd=tmp_path)
    assert_untouched(before, watched())
    assert result.returncode == 0, result.describe()
    report = json.loads(result.stdout)
    assert report["root"] == str(archive) and report["problem_counts"] == {} and report["checked"] == 12


def test_decode_rechecks_the_path_right_before_opening(clean_archive, tmp_path):
    """The job's decode step (in process, every kind): the link out is an error row, never decoded; and a file
    swapped for a link after the archive was read is caught as well."""
    from miner.data import read_archive
    from miner.pipeline import decode_batch

    outside = _outside_png(clean_archive, tmp_path)
    for kind in KINDS:
        link_id = build_kind(kind, tmp_path / kind, _png(clean_archive), outside)
        arch = read_archive(tmp_path / kind)
        payload = [(r.image_id, r.path, r.labels, r.root) for r in arch.records]
        batch = decode_batch(payload, input_size=32)
        assert [(e["image_id"], e["kind"]) for e in batch.errors if e["kind"] == "outside_archive"] == \
               [(link_id, "outside_archive")], kind
        assert link_id not in batch.image_ids
        # the other entry: swapped for a link out after the archive was read
        other = next(r for r in arch.records if r.image_id != link_id)
        os.replace(other.path, tmp_path / "moved.bin")
        os.symlink(outside, other.path)
        again = decode_batch(payload, input_size=32)
        assert {e["image_id"]: e["kind"] for e in again.errors} == {link_id: "outside_archive",
                                                                    other.image_id: "outside_archive"}, kind
        assert again.image_ids == []
        os.unlink(other.path)
        # the rule lifted: both decode (the link's target is a real PNG)
        assert len(decode_batch([(i, p, lab, None) for i, p, lab, _ in payload], input_size=32)) == 1, kind


# ------------------------------------------------------------------------------------------------------------
# miner mine, report, labels, show


@pytest.fixture(scope="module")
def mined(clean_archive, tiny_model, tmp_path_factory):
    """`miner mine` on a release whose Data_Entry file names ../../outside.png, an absolute path, /etc/passwd and
    a link out of the archive (one run of the real CLI; the tests below read what it wrote)."""
    tmp = tmp_path_factory.mktemp("root_mined")
    root = tmp / "archive"
    shutil.copytree(clean_archive, root)
    outside = _outside_png(clean_archive, tmp)
    os.symlink(outside, root / "images" / "link.png")
    hostile = {"../../elsewhere/outside.png": "dotdot", str(outside): "absolute", PASSWD: "passwd",
               "link.png": "link"}
    with open(root / "Data_Entry_2017.csv", "a") as f:
        f.writelines(ROW.format(name) + "\n" for name in hostile)
    from tests.hostile.harness import snapshot

    before = snapshot([tmp], exclude=[tmp / "out"])
    result = run_miner(["mine", root, "--model", tiny_model, "--out", tmp / "out", "--no-progress",
                        "--num-cpus", "2", "--shard-size", "8"], cwd=tmp)
    after = snapshot([tmp], exclude=[tmp / "out"])
    return {"tmp": tmp, "root": root, "out": tmp / "out", "outside": outside, "hostile": hostile,
            "result": result, "before": before, "after": after}


def test_mine_writes_outside_archive_error_rows_and_never_reads_the_files(mined):
    result = mined["result"]
    assert result.returncode == 0, result.describe()
    assert "Traceback" not in result.stderr + result.stdout
    assert_untouched(mined["before"], mined["after"])
    errors = _table(mined["out"], "errors")
    assert {e["image_id"]: e["kind"] for e in errors} == {name: "outside_archive" for name in mined["hostile"]}
    passwd = next(e for e in errors if e["image_id"] == PASSWD)
    assert "resolves to /etc/passwd" in passwd["error"] and "--allow-outside-archive" in passwd["error"]
    images = {row["image_id"] for row in _table(mined["out"], "images")}
    boxes = {row["image_id"] for row in _table(mined["out"], "boxes")}
    assert len(images) == 12 and not images & set(mined["hostile"]) and not boxes & set(mined["hostile"])
    manifest = json.loads((mined["out"] / "_manifest.json").read_text())
    assert manifest["archive"]["options"]["allow_outside_archive"] is False
    assert "allow_outside_archive" not in manifest["identity"]


def test_report_and_labels_leave_out_a_file_swapped_for_a_link_after_mining(mined, tmp_path):
    """A mined image of the archive swapped for a link out of it after mining (restored afterwards): the report's
    gallery entry says why it has no picture; labels leaves it out (skipped.csv), linking nothing outside."""
    from tests.hostile.harness import snapshot

    root, out = mined["root"], mined["out"]
    swapped = max(_table(out, "boxes"), key=lambda b: b["score"])["image_id"]
    image = root / "images" / swapped
    os.replace(image, tmp_path / "was.png")
    os.symlink(mined["outside"], image)
    try:
        before = snapshot([mined["tmp"]], exclude=[out])
        report_dir, labels_dir = tmp_path / "report", tmp_path / "labels"
        result = run_miner(["report", out, "--to", report_dir], cwd=tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.describe()
        page = next(p for p in (report_dir / "findings").glob("*.html") if swapped in p.read_text())
        text = page.read_text()
        assert "outside_archive" in text and "not opened" in text
        result = run_miner(["labels", out, "--format", "yolo", "--to", labels_dir], cwd=tmp_path)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.describe()
        with open(labels_dir / "skipped.csv") as f:
            assert {"image_id": swapped, "reason": "outside_archive"} in list(csv.DictReader(f))
        links = {p.name: os.readlink(p) for p in (labels_dir / "images").iterdir()}
        assert links and swapped not in links
        assert all(Path(p).resolve().is_relative_to(root) for p in links.values())
        assert_untouched(before, snapshot([mined["tmp"]], exclude=[out]))
    finally:
        os.unlink(image)
        os.replace(tmp_path / "was.png", image)


def test_show_refuses_a_link_out_with_one_line(clean_archive, tmp_path, watched):
    outside = _outside_png(clean_archive, tmp_path)
    build_kind("release", tmp_path / "arch", _png(clean_archive), outside)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nlink.png,Effusion,1,2,30,40\n")
    png = tmp_path / "out" / "link.png"
    before = watched(tmp_path / "out")
    result = run_miner(["show", boxes, "link.png", "--archive", tmp_path / "arch", "--out", png], cwd=tmp_path)
    line = assert_refused(result, 2, contains=["link.png", str(outside), "outside the archive's root",
                                               "--allow-outside-archive"])
    assert line.startswith("miner show: error: ")
    assert not png.exists()
    assert_untouched(before, watched(tmp_path / "out"))
    result = run_miner(["show", boxes, "link.png", "--archive", tmp_path / "arch", "--out", png,
                        "--allow-outside-archive"], cwd=tmp_path)
    assert result.returncode == 0 and png.is_file(), result.describe()
    assert_untouched(before, watched(tmp_path / "out"))


def test_the_flag_mines_files_outside_and_is_part_of_the_job(clean_archive, tiny_model, tmp_path, watched):
    """A manifest of absolute paths into another store, mined with --allow-outside-archive; resuming without the
    flag is a different job (refused with one line, nothing changed)."""
    store = tmp_path / "store"
    shutil.copytree(clean_archive / "images", store)
    names = sorted(p.name for p in store.glob("*.png"))[:4]
    _write_csv(tmp_path / "m" / "manifest.csv", [["path", "labels"], *([str(store / n), "Effusion"] for n in names)])
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(["mine", tmp_path / "m", "--model", tiny_model, "--out", out, "--no-progress",
                        "--num-cpus", "2", "--allow-outside-archive"], cwd=tmp_path)
    assert result.returncode == 0, result.describe()
    assert_untouched(before, watched(out))
    assert sorted(r["image_id"] for r in _table(out, "images")) == names
    assert not (out / "errors").exists() or not _table(out, "errors")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["identity"]["allow_outside_archive"] is True
    assert manifest["archive"]["options"]["allow_outside_archive"] is True
    kept = (out / "_manifest.json").read_bytes()
    before = watched()
    result = run_miner(["mine", tmp_path / "m", "--model", tiny_model, "--out", out, "--no-progress",
                        "--num-cpus", "2"], cwd=tmp_path)
    assert_refused(result, 2, contains=["different job", "allow_outside_archive"])
    assert_untouched(before, watched())
    assert (out / "_manifest.json").read_bytes() == kept


def test_vindr_physionet_layout_root_holds_annotations_and_images(clean_archive, tmp_path):
    """VinDr-CXR as PhysioNet serves it: annotations/annotations_train.csv beside train/: the root is their
    parent, so the images beside the label file's folder are inside."""
    from miner.data import read_archive
    from miner.data.confine import outside_records

    base = tmp_path / "vindr"
    _write_csv(base / "annotations" / "annotations_train.csv",
               [["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], ["a", "No finding", "", "", "", ""]])
    (base / "train").mkdir()
    shutil.copy(_png(clean_archive), base / "train" / "a.png")
    arch = read_archive(base / "annotations")
    assert arch.root == base / "annotations" and arch.confined_to == base
    assert arch.records[0].path == str(base / "train" / "a.png") and arch.records[0].root == str(base)
    assert outside_records(arch.records, arch.confined_to) == []


def test_a_mask_linked_out_of_the_archive_is_refused(tmp_path):
    """Masks are archive files too (``masks/<stem>_<Finding>.png``, read by miner eval for PxAP)."""
    from miner.data import read_archive
    from miner.errors import ArchiveError
    from miner.phantoms import make_phantoms

    arch = make_phantoms(tmp_path / "arch", images=4, size=32, seed=1, masks=True)
    mask = sorted((tmp_path / "arch" / "masks").glob("*.png"))[0]
    image_id, finding = next((r.image_id, f) for r in arch.records for f in r.labels
                             if arch.mask_path(r.image_id, f) == mask)
    assert arch.load_mask(image_id, finding).any()
    outside = tmp_path / "outside.png"
    os.replace(mask, outside)
    os.symlink(outside, mask)
    with pytest.raises(ArchiveError, match="outside the archive's root"):
        read_archive(tmp_path / "arch").load_mask(image_id, finding)

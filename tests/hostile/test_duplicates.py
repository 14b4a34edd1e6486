"""Issue 22, case 7: an image listed twice in a label file is read once, from its first row (README "Duplicate
rows").

`miner.data.read_archive` drops the later rows of an image id for every archive kind, so every verb inherits it:
``miner mine`` mines the image once, ``miner eval`` and ``miner labels`` count it once, ``miner inspect`` names the
duplicates, and each verb that reads the archive says so in one warning line naming the label file, how many ids
repeat and the first few.
"""
from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from miner.errors import MinerWarning
from tests.hostile.harness import assert_untouched, run_miner


def _entries(archive: Path) -> list[str]:
    return (archive / "Data_Entry_2017.csv").read_text().splitlines()


def _repeat(archive: Path, rows: dict[int, int], *, relabel: str | None = None) -> list[str]:
    """Append data row k of Data_Entry_2017.csv `rows[k]` more times (labels replaced by `relabel`); the ids."""
    lines = _entries(archive)
    ids = []
    with open(archive / "Data_Entry_2017.csv", "a") as f:
        for k, times in rows.items():
            fields = lines[k + 1].split(",")
            if relabel is not None:
                fields[1] = relabel
            f.writelines(",".join(fields) + "\n" for _ in range(times))
            ids.append(fields[0])
    return ids


def _warning_lines(stderr: str, verb: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"miner {verb}: warning:")]


def test_inspect_counts_a_duplicated_image_once_and_names_it(archive, clean_archive, tmp_path, watched):
    from miner.data import read_archive

    (dup,) = _repeat(archive, {0: 2}, relabel="Hernia")  # listed three times; the later rows say Hernia
    before = watched()
    result = run_miner(["inspect", archive, "--json"], cwd=tmp_path)
    assert_untouched(before, watched())
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.describe()
    (line,) = result.err_lines
    assert line == (f"miner inspect: warning: {archive / 'Data_Entry_2017.csv'}: 1 image id is listed more than once "
                    f"({dup} x3); each is read once, from its first row")
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["checked"] == 12
    assert report["duplicates"] == {"images": 1, "rows dropped": 2, "first": {dup: 3}}
    clean = read_archive(clean_archive)
    labels = Counter(label for r in clean.records for label in r.labels)
    assert {f: v["images"] for f, v in report["findings"].items() if v["images"]} == dict(labels)  # no Hernia


def test_mine_eval_and_labels_count_a_duplicated_image_once(archive, tiny_model, tmp_path, watched):
    twice, thrice = _repeat(archive, {3: 1, 5: 2})
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(["mine", archive, "--model", tiny_model, "--out", out, "--no-progress", "--num-cpus", "2",
                        "--shard-size", "5"], cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.describe()
    warning = f"2 image ids are listed more than once ({twice} x2, {thrice} x3); each is read once, from its first row"
    assert [line.endswith(warning) for line in _warning_lines(result.stderr, "mine")] == [True]
    images = ds.dataset(out / "images", format="parquet").to_table().column("image_id").to_pylist()
    assert sorted(images) == sorted(set(images)) and len(images) == 12
    boxes = ds.dataset(out / "boxes", format="parquet").to_table().to_pylist()
    keys = Counter((b["image_id"], b["finding"], b["rank"]) for b in boxes)
    assert boxes and max(keys.values()) == 1
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["archive"]["images"] == 12 and manifest["counts"]["images"] == 12

    report = tmp_path / "eval.json"
    result = run_miner(["eval", out, "--json", report], cwd=tmp_path)
    assert result.returncode == 0, result.describe()
    assert [line.endswith(warning) for line in result.err_lines] == [True]
    scored = json.loads(report.read_text())
    assert scored["images"] == 12
    assert f"{len(boxes)} mined boxes" in result.stdout

    to = tmp_path / "coco"
    result = run_miner(["labels", out, "--format", "coco", "--to", to], cwd=tmp_path)
    assert result.returncode == 0, result.describe()
    assert [line.endswith(warning) for line in result.err_lines] == [True]
    coco = json.loads((to / "annotations.json").read_text())
    names = [image["image_id"] for image in coco["images"]]
    assert len(names) == len(set(names))
    with open(to / "skipped.csv") as f:
        skipped = [row["image_id"] for row in csv.DictReader(f)]
    assert sorted(names + skipped) == sorted(images)
    assert_untouched(before, watched(out, report, to))


# ------------------------------------------------------------------------------------------------------------
# every archive kind, in process


def _csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


CHEXPERT = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Atelectasis", "Cardiomegaly"]
GOOGLE = ["Image Index", "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]

# kind -> (label file name, rows; the id listed twice; its first row's labels)
DUPLICATED = {
    "manifest": ("manifest.csv", [["image_id", "path", "labels"], ["a", "x/a.png", "Mass"], ["b", "x/b.png", "Nodule"],
                                  ["a", "y/other.png", "Effusion"]], "a", ("Mass",)),
    "chexpert": ("train.csv", [CHEXPERT, ["train/p1/s1/v1.jpg", "F", "50", "Frontal", "PA", "", "1.0", ""],
                               ["train/p2/s1/v1.jpg", "F", "50", "Frontal", "PA", "1.0", "", ""],
                               ["train/p1/s1/v1.jpg", "F", "50", "Frontal", "PA", "", "", "1.0"]],
                 "train/p1/s1/v1.jpg", ("Atelectasis",)),
    "padchest": ("padchest.csv", [["ImageID", "ImageDir", "Labels"], ["a.png", "0", "['pleural effusion']"],
                                  ["b.png", "0", "['normal']"], ["a.png", "1", "['cardiomegaly']"]],
                 "a.png", ("Effusion",)),
    "google": ("google2019_nih-chest-xray-labels.csv", [GOOGLE, ["a.png", "YES", "NO", "NO", "NO"],
                                                        ["b.png", "NO", "NO", "NO", "NO"],
                                                        ["a.png", "NO", "YES", "NO", "NO"]], "a.png", ("Fracture",)),
}


@pytest.mark.parametrize("kind", sorted(DUPLICATED))
def test_every_kind_reads_a_duplicated_image_from_its_first_row(kind, tmp_path):
    from miner.data import read_archive

    name, rows, dup, labels = DUPLICATED[kind]
    label_file = _csv(tmp_path / kind / name, rows)
    with pytest.warns(MinerWarning) as caught:
        arch = read_archive(tmp_path / kind)
    assert [str(w.message) for w in caught] == [f"{label_file}: 1 image id is listed more than once ({dup} x2); "
                                                "each is read once, from its first row"]
    assert arch.source == kind and len(arch) == 2 and arch.duplicates == {dup: 2}
    first = next(r for r in arch.records if r.image_id == dup)
    assert first.labels == labels
    first_path = {"manifest": "x/a.png", "chexpert": "train/p1/s1/v1.jpg", "padchest": "0/a.png",
                  "google": "images/a.png"}[kind]
    assert first.path == str(tmp_path / kind / first_path)


def test_a_manifest_listing_a_file_twice_keeps_the_other_ids(tmp_path):
    """A repeated row does not turn every id into its path (ids are file names while file names are unique)."""
    from miner.data import read_archive

    _csv(tmp_path / "m.csv", [["path"], ["a/x.png"], ["b/y.png"], ["a/x.png"]])
    with pytest.warns(MinerWarning, match=r"x\.png x2"):
        arch = read_archive(tmp_path / "m.csv")
    assert [r.image_id for r in arch.records] == ["x.png", "y.png"]


@pytest.mark.parametrize("kind", ["vindr", "rsna", "siim"])
def test_kinds_with_a_row_per_box_join_rows_without_a_warning(kind, tmp_path):
    from miner.data import read_archive

    rows = {
        "vindr": [["image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"],
                  ["a", "Nodule/Mass", "R1", "1", "2", "30", "40"], ["a", "Nodule/Mass", "R2", "2", "3", "31", "41"]],
        "rsna": [["patientId", "x", "y", "width", "height", "Target"], ["a", "1", "2", "30", "40", "1"],
                 ["a", "50", "60", "30", "40", "1"]],
        "siim": [["ImageId", "EncodedPixels"], ["a", "10 5"], ["a", "2000 5"]],
    }[kind]
    _csv(tmp_path / kind / "train.csv", rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinerWarning)
        arch = read_archive(tmp_path / kind)
    assert [r.image_id for r in arch.records] == ["a"] and arch.duplicates == {} and len(arch.boxes) == 2


def test_the_warning_stays_on_one_line_and_names_the_first_few(tmp_path):
    from miner.data import read_archive
    from miner.data.archives.read import SHOWN_DUPLICATES

    ids = [f"img{k}\u202e.png" for k in range(SHOWN_DUPLICATES + 3)]
    _csv(tmp_path / "m.csv", [["image_id", "path"], *([i, f"{k}.png"] for k, i in enumerate(ids)),
                              *([i, f"{k}.png"] for k, i in enumerate(ids))])
    with pytest.warns(MinerWarning) as caught:
        read_archive(tmp_path / "m.csv")
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message and "\u202e" not in message and "\\u202e" in message
    assert f"{len(ids)} image ids are listed more than once" in message and ", ... 3 more)" in message

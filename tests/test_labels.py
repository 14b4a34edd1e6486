"""`miner labels`: COCO JSON that pycocotools loads and the YOLO layout read back into the same boxes, on a job
output written by hand (every image group: boxes, negative, filtered, unboxed, unknown, error row)."""
from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from miner.cli import main
from miner.io import BOXES_SCHEMA, ERRORS_SCHEMA, IMAGES_SCHEMA, table_from_rows

CLASSES = ("Atelectasis", "Effusion", "Pneumothorax")
HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
          "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
          "Fracture,Support Devices")
# (path, labels as {column: value}, (height, width) or None for an error row)
IMAGES = [
    ("train/patient1/study1/view1_frontal.jpg", {"Atelectasis": "1.0"}, (320, 390)),
    ("train/patient2/study1/view1_frontal.jpg", {"Pleural Effusion": "1.0"}, (320, 390)),
    ("train/patient3/study1/view1_frontal.jpg", {"No Finding": "1.0"}, (400, 300)),
    ("valid/patient4/study1/view1_frontal.jpg", {"Pneumothorax": "1.0"}, (320, 390)),
    ("valid/patient5/study1/view1_frontal.jpg", {"Atelectasis": "-1.0"}, (320, 390)),
    ("valid/patient6/study1/view1_frontal.jpg", {}, None),
    ("valid/patient7/study1/view2_lateral.jpg", {"Fracture": "1.0"}, (390, 320)),
]
PREFIX = "CheXpert-v1.0-small/"
# (image index, finding, rank, x, y, w, h, score)
BOXES = [
    (0, "Atelectasis", 1, 12.25, 40.5, 101.75, 60.125, 0.8),
    (0, "Atelectasis", 2, 200.0, 10.0, 30.0, 20.0, 0.2),
    (0, "Effusion", 1, 0.0, 250.5, 389.5, 69.5, 0.6),
    (1, "Effusion", 1, 20.0, 30.0, 40.0, 50.0, 0.3),
]


@pytest.fixture
def job(tmp_path):
    """A CheXpert archive (images present) and a complete job output over it, written by hand."""
    root = tmp_path / "chexpert"
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir(parents=True)
    columns = HEADER.split(",")
    with open(folder / "valid.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for path, labels, _ in IMAGES:
            writer.writerow([PREFIX + path, "F", "50", "Frontal", "PA"] + [labels.get(c, "") for c in columns[5:]])
            (root / PREFIX / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / PREFIX / path), np.zeros((8, 8), np.uint8))
    out = tmp_path / "out"
    for name in ("boxes", "images", "errors"):
        (out / name).mkdir(parents=True)
    ids = [PREFIX + p for p, _, _ in IMAGES]
    box_rows = [{"image_id": ids[i], "finding": f, "class_index": CLASSES.index(f), "rank": r, "x": x, "y": y,
                 "w": w, "h": h, "score": s, "prob": 0.9, "threshold": 0.5} for i, f, r, x, y, w, h, s in BOXES]
    image_rows = [{"image_id": ids[i], "height": size[0], "width": size[1],
                   "boxes": sum(1 for b in BOXES if b[0] == i), "probs": [0.1, 0.2, 0.3]}
                  for i, (_, _, size) in enumerate(IMAGES) if size is not None]
    error_rows = [{"image_id": ids[5], "path": str(root / ids[5]), "kind": "corrupt", "error": "does not decode"}]
    pq.write_table(table_from_rows(box_rows, BOXES_SCHEMA), out / "boxes" / "part-000000.parquet")
    pq.write_table(table_from_rows(image_rows, IMAGES_SCHEMA), out / "images" / "part-000000.parquet")
    pq.write_table(table_from_rows(error_rows, ERRORS_SCHEMA), out / "errors" / "part-000000.parquet")
    manifest = {"status": "complete", "model": {"classes": list(CLASSES), "sha256": "0" * 64},
                "archive": {"path": str(folder), "options": {"uncertain": "ignore"}}}
    (out / "_manifest.json").write_text(json.dumps(manifest))
    return {"root": root, "folder": folder, "out": out, "ids": ids}


def _skipped(folder):
    with open(folder / "skipped.csv") as f:
        return {row["image_id"]: row["reason"] for row in csv.DictReader(f)}


def test_coco_export_loads_in_pycocotools(job, tmp_path, capsys):
    from pycocotools.coco import COCO

    to = tmp_path / "coco"
    assert main(["labels", str(job["out"]), "--format", "coco", "--min-score", "0.5", "--to", str(to)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("miner labels: coco") and "3 images (1 with boxes, 2 negatives), 2 boxes" in line
    coco = COCO(str(to / "annotations.json"))
    ids = job["ids"]
    images = {e["image_id"]: e for e in coco.dataset["images"]}
    # image 0 with its two boxes of score >= 0.5; 2 (No Finding) and 6 (Fracture: no exported finding) negatives
    assert set(images) == {ids[0], ids[2], ids[6]}
    assert (images[ids[2]]["height"], images[ids[2]]["width"]) == (400, 300)
    assert images[ids[0]]["file_name"] == "train/patient1/study1/view1_frontal.jpg"
    assert coco.dataset["info"]["image_root"] == str(job["folder"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[images[ids[0]]["id"]]))
    got = sorted((coco.cats[a["category_id"]]["name"], *a["bbox"], a["score"], a["rank"]) for a in anns)
    want = sorted((f, x, y, w, h, pytest.approx(s, rel=1e-6), r) for i, f, r, x, y, w, h, s in BOXES
                  if i == 0 and s >= 0.5)
    assert got == want and all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in anns)
    assert coco.getAnnIds(imgIds=[images[ids[2]]["id"]]) == []  # a negative: an image without annotations
    # the split files and the explicit lists of what was left out
    train = json.loads((to / "annotations_train.json").read_text())
    valid = json.loads((to / "annotations_valid.json").read_text())
    assert [e["image_id"] for e in train["images"]] == [ids[0], ids[2]]
    assert [e["image_id"] for e in valid["images"]] == [ids[6]]
    assert _skipped(to) == {ids[1]: "filtered", ids[3]: "unboxed", ids[4]: "unknown"}
    with open(to / "errors.csv") as f:
        assert [(r["image_id"], r["kind"]) for r in csv.DictReader(f)] == [(ids[5], "corrupt")]


def test_yolo_layout_reads_back_into_the_same_boxes(job, tmp_path):
    to = tmp_path / "yolo"
    assert main(["labels", str(job["out"]), "--format", "yolo", "--to", str(to), "--min-score", "0.5",
                 "--filtered", "negative"]) == 0
    ids = job["ids"]
    data = yaml.safe_load((to / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(CLASSES)) and data["nc"] == 3 and data["path"] == str(to)
    assert (data["train"], data["val"]) == ("train.txt", "valid.txt")
    listed = (to / "images.txt").read_text().split()
    # with --filtered negative the image whose only box scored too low is a negative too
    names = {i: i.replace("/", "__") for i in (ids[0], ids[1], ids[2], ids[6])}
    assert listed == [f"./images/{names[i]}" for i in (ids[0], ids[1], ids[2], ids[6])]
    assert (to / "train.txt").read_text().split() == [f"./images/{names[i]}" for i in ids[:3]]
    for image_id, name in names.items():
        link = to / "images" / name
        assert link.is_symlink() and os.readlink(link) == str(job["root"] / image_id)  # linked, not copied
        label = to / "labels" / (name.rsplit(".", 1)[0] + ".txt")
        lines = [ln.split() for ln in label.read_text().splitlines()]
        height, width = next(size for p, _, size in IMAGES if PREFIX + p == image_id)
        back = sorted((CLASSES[int(k)], (float(cx) - float(w) / 2) * width, (float(cy) - float(h) / 2) * height,
                       float(w) * width, float(h) * height) for k, cx, cy, w, h in lines)
        want = sorted((f, x, y, w, h) for i, f, r, x, y, w, h, s in BOXES if ids[i] == image_id and s >= 0.5)
        assert len(back) == len(want), image_id
        for b, t in zip(back, want):
            assert b[0] == t[0]
            np.testing.assert_allclose(np.array(b[1:]) / [width, height, width, height],
                                       np.array(t[1:]) / [width, height, width, height], rtol=0, atol=1e-6)
    for negative in (ids[1], ids[2], ids[6]):  # empty label files
        assert (to / "labels" / (names[negative].rsplit(".", 1)[0] + ".txt")).read_text() == ""


def test_findings_rank_filters_and_errors(job, tmp_path, capsys):
    to = tmp_path / "eff"
    assert main(["labels", str(job["out"]), "--format", "coco", "--findings", "pleural effusion", "--to", str(to),
                 "--min-score", "0.5"]) == 0
    data = json.loads((to / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["Effusion"] and len(data["annotations"]) == 1
    ids = job["ids"]
    # Pneumothorax and the uncertain Atelectasis are not exported: those images are negatives for Effusion
    assert {e["image_id"] for e in data["images"]} == {ids[0], ids[2], ids[3], ids[4], ids[6]}
    assert _skipped(to) == {ids[1]: "filtered"}
    to2 = tmp_path / "rank1"
    assert main(["labels", str(job["out"]), "--format", "coco", "--max-rank", "1", "--to", str(to2)]) == 0
    assert sorted(a["rank"] for a in json.loads((to2 / "annotations.json").read_text())["annotations"]) == [1, 1, 1]
    capsys.readouterr()
    # one line and exit 2 for what a user can fix
    assert main(["labels", str(job["out"]), "--format", "coco", "--to", str(to)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["labels", str(job["out"]), "--format", "coco", "--to", str(to), "--overwrite"]) == 0
    assert main(["labels", str(job["out"]), "--format", "yolo", "--findings", "Mass", "--to", str(tmp_path / "x")]) == 2
    assert "Mass not among the model's classes (Atelectasis, Effusion, Pneumothorax)" in capsys.readouterr().err
    manifest = json.loads((job["out"] / "_manifest.json").read_text())
    (job["out"] / "_manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    assert main(["labels", str(job["out"]), "--format", "yolo", "--to", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "running, not complete" in err and err.count("\n") == 1
    assert main(["labels", str(tmp_path), "--format", "coco", "--to", str(tmp_path / "z")]) == 2
    assert "not a mining job's output folder" in capsys.readouterr().err

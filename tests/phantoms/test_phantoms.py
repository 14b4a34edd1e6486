from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from miner.config import PhantomConfig
from miner.data import read_archive
from miner.data.archives.nih import BBOX_HEADER, DATA_ENTRY_HEADER
from miner.phantoms import make_phantoms
from miner.phantoms.generator import plan_archive, render_image

N, SIZE, SEED = 40, 96, 11


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "arch"
    archive = make_phantoms(out, images=N, size=SIZE, seed=SEED, masks=True)
    return out, archive


def _folder_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_release_layout_is_exact(phantom):
    out, archive = phantom
    assert sorted(p.name for p in out.iterdir()) == [
        "BBox_List_2017.csv", "Data_Entry_2017.csv", "images", "masks", "test_list.txt", "train_val_list.txt"]
    entry = (out / "Data_Entry_2017.csv").read_text().splitlines()
    assert entry[0] == DATA_ENTRY_HEADER and len(entry) == N + 1
    assert all(line.count(",") == DATA_ENTRY_HEADER.count(",") for line in entry)
    bbox = (out / "BBox_List_2017.csv").read_text().splitlines()
    assert bbox[0] == BBOX_HEADER
    assert all(len(line.split(",")) == 6 for line in bbox[1:])
    assert not any(",Infiltration," in line for line in bbox)  # the box file spells Infiltrate
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == sorted(r.image_id for r in archive.records)
    for r in archive.records:
        pid, follow_up = r.image_id[:-4].split("_")
        assert (int(pid), int(follow_up)) == (int(r.patient_id), r.follow_up)
        image = cv2.imread(r.path, cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)


def test_splits_are_patient_disjoint_and_complete(phantom):
    _, archive = phantom
    assert {r.split for r in archive.records} == {"train", "test"}
    train = {r.patient_id for r in archive.records if r.split == "train"}
    test = {r.patient_id for r in archive.records if r.split == "test"}
    assert not train & test


def test_read_back_gives_exactly_the_generated_labels_and_boxes(phantom):
    _, archive = phantom
    config = replace(PhantomConfig(), images=N, size=SIZE, seed=SEED, masks=True)
    plans = plan_archive(config)
    expected_boxes = []
    for plan, record in zip(plans, archive.records, strict=True):
        image, lesions = render_image(plan, config)
        np.testing.assert_array_equal(cv2.imread(record.path, cv2.IMREAD_UNCHANGED), image)
        assert record.image_id == plan.image_id and record.split == plan.split
        assert record.labels == tuple(sorted({lesion.finding for lesion in lesions}))
        assert set(record.labels) == set(plan.lesions)  # every planned finding found room
        expected_boxes += [(plan.image_id, lesion.finding, *lesion.box) for lesion in lesions]
    assert [(b.image_id, b.finding, b.x, b.y, b.w, b.h) for b in archive.boxes] == expected_boxes


def test_every_box_is_inside_its_image_and_covers_its_lesion(phantom):
    _, archive = phantom
    by_image = archive.boxes_by_image()
    for record in archive.records:
        boxes = by_image.get(record.image_id, [])
        assert {b.finding for b in boxes} == set(record.labels)
        for finding in record.labels:
            mask = archive.load_mask(record.image_id, finding)
            own = [b for b in boxes if b.finding == finding]
            covered = np.zeros_like(mask)
            for b in own:
                assert 0 <= b.x and 0 <= b.y and b.x + b.w <= SIZE and b.y + b.h <= SIZE
                x, y, w, h = (int(v) for v in (b.x, b.y, b.w, b.h))
                assert (x, y, w, h) == (b.x, b.y, b.w, b.h)  # pixel edges
                inside = mask[y:y + h, x:x + w]
                # the box is tight: lesion pixels on all four of its edges
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
                covered[y:y + h, x:x + w] = True
            assert not (mask & ~covered).any(), (record.image_id, finding)  # no lesion pixel outside its boxes
    # no mask file for negative image-findings
    assert archive.load_mask(archive.records[0].image_id, "Hernia") is None


def test_same_seed_same_bytes_other_seed_other_bytes(phantom, tmp_path):
    out, _ = phantom
    again = tmp_path / "again"
    make_phantoms(again, images=N, size=SIZE, seed=SEED, masks=True)
    assert _folder_digest(again) == _folder_digest(out)
    other = tmp_path / "other"
    make_phantoms(other, images=N, size=SIZE, seed=SEED + 1, masks=True)
    assert _folder_digest(other) != _folder_digest(out)


def test_worker_processes_write_the_same_bytes(tmp_path):
    make_phantoms(tmp_path / "one", images=40, size=64, seed=9, masks=True, workers=1)
    make_phantoms(tmp_path / "two", images=40, size=64, seed=9, masks=True, workers=2)
    assert _folder_digest(tmp_path / "one") == _folder_digest(tmp_path / "two")


def test_archive_statistics(tmp_path):
    # a bigger archive at a small size: prevalence, multi-label, multi-lesion, lesion sizes per finding
    archive = make_phantoms(tmp_path / "a", images=300, size=64, seed=3)
    labels = [r.labels for r in archive.records]
    assert 0.25 < sum(1 for lab in labels if not lab) / len(labels) < 0.45  # No Finding ~ 35 %
    assert sum(1 for lab in labels if len(lab) >= 2) > 30  # multi-label images
    per_image = Counter((b.image_id, b.finding) for b in archive.boxes)
    findings = Counter(b.finding for b in archive.boxes)
    assert set(findings) == {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                             "Pneumonia", "Pneumothorax"}
    nodule_mass = [n for (_, f), n in per_image.items() if f in ("Nodule", "Mass")]
    assert 0.25 < np.mean([n >= 2 for n in nodule_mass]) < 0.5  # the case attention mining is for
    widths = {f: np.median([b.w / 64 for b in archive.boxes if b.finding == f]) for f in findings}
    assert widths["Nodule"] < widths["Mass"] < widths["Cardiomegaly"]
    assert widths["Cardiomegaly"] >= 0.42


def test_separate_lesions_of_one_finding_do_not_touch(phantom):
    _, archive = phantom
    by_image = archive.boxes_by_image()
    for image_id, boxes in by_image.items():
        for finding in {b.finding for b in boxes}:
            own = [b for b in boxes if b.finding == finding]
            if len(own) < 2:
                continue
            mask = archive.load_mask(image_id, finding)
            _, count = ndimage.label(mask, structure=np.ones((3, 3)))
            assert count >= len(own) or finding == "Infiltration"  # infiltrates are patchy: more parts
            for i, a in enumerate(own):
                for b in own[i + 1:]:
                    assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y


@pytest.mark.parametrize("argv,message", [
    (["--images", "0"], "argument --images: must be an integer in [1, 10000000], got '0'"),
    (["--size", "8"], "argument --size: must be an integer in [32, 8192], got '8'"),
    (["--findings", "Hernia"], "cannot draw findings"),
    (["--no-finding", "2"], "argument --no-finding: must be a number in [0, 1], got '2'"),
])
def test_cli_bad_input_is_one_line_without_traceback(tmp_path, argv, message):
    result = subprocess.run([sys.executable, "-m", "miner", "phantoms", str(tmp_path / "o"), *argv],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_writes_and_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "miner", "phantoms", str(out), "--images", "6", "--size", "64", "--seed", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote 6 images")
    assert len(read_archive(out)) == 6
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_real_background(tmp_path):
    archive = make_phantoms(tmp_path / "real", images=12, size=96, seed=4, masks=True, real_background=True)
    assert len(archive) == 12
    by_image = archive.boxes_by_image()
    for record in archive.records:
        image = cv2.imread(record.path, cv2.IMREAD_UNCHANGED)
        assert image.shape == (96, 96) and image.dtype == np.uint8
        assert {b.finding for b in by_image.get(record.image_id, [])} == set(record.labels)
        for finding in record.labels:
            mask = archive.load_mask(record.image_id, finding)
            covered = np.zeros_like(mask)
            for b in by_image[record.image_id]:
                if b.finding == finding:
                    covered[int(b.y):int(b.y + b.h), int(b.x):int(b.x + b.w)] = True
            assert mask.any() and not (mask & ~covered).any()
    # the film shows through: its lungs are darker than its mediastinum in every image
    for record in archive.records:
        image = cv2.imread(record.path, cv2.IMREAD_UNCHANGED).astype(float)
        assert image[20:60, 10:30].mean() < image[20:60, 44:52].mean()


def test_real_background_without_pydicom_data_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from miner.errors import UsageError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "data_store" else real_find_spec(name, *a))
    with pytest.raises(UsageError, match="pydicom-data"):
        make_phantoms(tmp_path / "x", images=2, size=64, seed=0, real_background=True)
    assert not (tmp_path / "x").exists()  # nothing written

"""The detector's loader reads what ``miner labels`` writes, unchanged (YOLO and COCO give the same boxes, equal to
the boxes exported), and refuses a malformed label set with one line naming FILE:LINE."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from miner.detector.data import read_labels
from miner.errors import ArchiveError, UsageError
from miner.metrics import read_boxes
from tests.detector.conftest import FINDINGS


def _expected(truth_output, split_ids):
    """The true boxes of the images of `split_ids` as (x0, y0, x1, y1) fractions of the image, by image stem."""
    from miner.output import read_output

    output = read_output(truth_output)
    boxes = read_boxes(truth_output)
    out: dict[str, list[tuple[int, list[float]]]] = {i.rsplit(".", 1)[0]: [] for i in split_ids}
    for n in range(len(boxes)):
        image_id = str(boxes.image_id[n])
        if image_id not in split_ids:
            continue
        height, width = output.sizes[image_id]
        x, y, w, h = boxes.xywh[n]
        box = [max(x, 0) / width, max(y, 0) / height, min(x + w, width) / width, min(y + h, height) / height]
        out[image_id.rsplit(".", 1)[0]].append((FINDINGS.index(str(boxes.finding[n])), box))
    return out


def _as_dict(labels):
    return {img.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]: sorted(zip(img.classes.tolist(), img.boxes.tolist()))
            for img in labels.images}


def test_yolo_reads_the_exported_boxes(phantom_archive, truth_output, label_dirs):
    from miner.data import read_archive

    arch = read_archive(phantom_archive)
    train = {r.image_id for r in arch.records if r.split == "train"}
    labels = read_labels(label_dirs["yolo"], split="train", archive=phantom_archive)
    assert labels.classes == FINDINGS and labels.layout == "yolo"
    assert {i.name for i in labels.images} == train  # data.yaml's train list: the train split, every image once
    got, want = _as_dict(labels), _expected(truth_output, train)
    assert set(got) == set(want)
    for stem, boxes in want.items():
        assert len(got[stem]) == len(boxes)
        for (k, box), (k2, box2) in zip(sorted(boxes), got[stem]):
            assert k == k2
            np.testing.assert_allclose(box2, box, atol=2e-6)  # 6 decimals in the YOLO files
    # the images are the archive's files (the layout links to them)
    assert all(os.path.realpath(i.path).startswith(os.path.realpath(phantom_archive)) for i in labels.images)


def test_coco_and_yolo_agree(label_dirs):
    yolo = _as_dict(read_labels(label_dirs["yolo"], split="all"))
    coco = _as_dict(read_labels(label_dirs["coco"], split="all"))
    assert set(yolo) == set(coco)
    for stem in yolo:
        assert [k for k, _ in yolo[stem]] == [k for k, _ in coco[stem]]
        np.testing.assert_allclose([b for _, b in yolo[stem]], [b for _, b in coco[stem]], atol=2e-6)


def test_split_choice(label_dirs):
    every = read_labels(label_dirs["yolo"], split="all")
    test = read_labels(label_dirs["yolo"], split="test")
    train = read_labels(label_dirs["yolo"], split="train")
    assert len(train.images) + len(test.images) == len(every.images)
    with pytest.raises(UsageError, match="no list of the valid split"):
        read_labels(label_dirs["yolo"], split="valid")
    assert train.fingerprint() != test.fingerprint()
    assert train.fingerprint() == read_labels(label_dirs["yolo"], split="train").fingerprint()


@pytest.fixture
def yolo_copy(label_dirs, tmp_path):
    target = tmp_path / "yolo"
    shutil.copytree(label_dirs["yolo"], target, symlinks=True)
    return target


def _first_label(folder):
    for line in (folder / "train.txt").read_text().splitlines():
        stem = line.rsplit("/", 1)[1].rsplit(".", 1)[0]
        path = folder / "labels" / f"{stem}.txt"
        if path.read_text().strip():
            return path
    raise AssertionError("no image with boxes")


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "4 fields; a YOLO box is 'class cx cy w h'"),
    ("x 0.5 0.5 0.2 0.2", "is not 'class cx cy w h'"),
    ("8 0.5 0.5 0.2 0.2", "class 8 is not among data.yaml's 8 names"),
    ("1 0.5 0.5 0 0.2", "width and height above 0"),
    ("1 0.5 0.5 nan 0.2", "width and height above 0"),
    ("1 0.95 0.5 0.2 0.2", "the box leaves the image"),
])
def test_a_malformed_line_is_named(yolo_copy, line, message):
    path = _first_label(yolo_copy)
    path.write_text(path.read_text() + line + "\n")
    number = len(path.read_text().splitlines())
    with pytest.raises(ArchiveError) as err:
        read_labels(yolo_copy)
    text = str(err.value)
    assert f"{path.name}:{number}:" in text and message in text and "\n" not in text


def test_list_entries_stay_in_the_folder(yolo_copy):
    (yolo_copy / "train.txt").write_text("../../etc/passwd\n")
    with pytest.raises(ArchiveError, match=r"train.txt:1: '../../etc/passwd' is not a path under the folder's"):
        read_labels(yolo_copy)


def test_names_must_match_nc(yolo_copy):
    text = (yolo_copy / "data.yaml").read_text().replace("nc: 8", "nc: 9")
    (yolo_copy / "data.yaml").write_text(text)
    with pytest.raises(ArchiveError, match="nc is 9 but names lists 8 classes"):
        read_labels(yolo_copy)


def test_an_image_outside_the_archive_is_refused(yolo_copy, tmp_path):
    stranger = tmp_path / "elsewhere.png"
    stranger.write_bytes(b"\x89PNG")
    first = (yolo_copy / "train.txt").read_text().splitlines()[0]
    link = yolo_copy / first
    link.unlink()
    link.symlink_to(stranger)
    archive = os.path.realpath(next(iter((yolo_copy / "images").iterdir())).resolve().parent.parent)
    with pytest.raises(ArchiveError, match="outside the archive"):
        read_labels(yolo_copy, archive=archive)


def test_not_a_label_folder(tmp_path):
    with pytest.raises(UsageError, match="neither data.yaml"):
        read_labels(tmp_path)
    with pytest.raises(UsageError, match="not a folder"):
        read_labels(tmp_path / "missing")

from __future__ import annotations

import gzip
import shutil
from collections import Counter

import cv2
import numpy as np
import pytest

from miner.data import GroundTruthBox, read_archive
from miner.data.archives.nih import BBOX_HEADER, DATA_ENTRY_HEADER
from miner.errors import ArchiveError
from miner.findings import CHESTXRAY14

NIH_BOXES_PER_FINDING = {
    "Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153, "Infiltration": 123,
    "Mass": 85, "Nodule": 79, "Pneumonia": 120, "Pneumothorax": 98,
}


@pytest.fixture(scope="module")
def nih_archive(tmp_path_factory, nih_data_entry, nih_bbox_list):
    root = tmp_path_factory.mktemp("nih")
    shutil.copy(nih_data_entry, root)  # read gzipped, as shipped
    shutil.copy(nih_bbox_list, root)
    return read_archive(root)


def test_real_nih_release_counts(nih_archive):
    assert len(nih_archive) == 112_120
    assert nih_archive.classes == CHESTXRAY14
    assert len(nih_archive.boxes) == 984
    assert len({b.image_id for b in nih_archive.boxes}) == 880
    assert Counter(b.finding for b in nih_archive.boxes) == NIH_BOXES_PER_FINDING  # "Infiltrate" read as Infiltration
    assert nih_archive.source == "release" and nih_archive.has_labels


def test_real_nih_first_rows_and_labels(nih_archive):
    first = nih_archive.records[0]
    assert first.image_id == "00000001_000.png"
    assert first.labels == ("Cardiomegaly",)
    assert (first.patient_id, first.follow_up, first.view) == ("1", 0, "PA")
    assert first.path.endswith("/images/00000001_000.png")
    assert nih_archive.records[1].labels == ("Cardiomegaly", "Emphysema")
    assert nih_archive.records[3].labels == ()  # No Finding
    matrix = nih_archive.labels_matrix()
    assert matrix.shape == (112_120, 14) and matrix.dtype == np.float32
    no_finding = sum(1 for r in nih_archive.records if not r.labels)
    assert no_finding == 60_361  # the published count of "No Finding" images
    assert int((matrix.sum(1) == 0).sum()) == no_finding
    assert int(matrix[:, CHESTXRAY14.index("Hernia")].sum()) == 227


def test_real_nih_box_values(nih_archive):
    box = nih_archive.boxes[0]
    assert box == GroundTruthBox("00013118_008.png", "Atelectasis", 225.084745762712, 547.019216763771,
                                 86.7796610169491, 79.1864406779661)
    assert box.xyxy == pytest.approx((225.084745762712, 547.019216763771, 311.8644067796611, 626.2056574417371),
                                     rel=1e-12)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_release_layout_2017_header_splits_and_subset(tmp_path):
    _write(tmp_path / "Data_Entry_2017.csv", DATA_ENTRY_HEADER + "\n"
           "00000001_000.png,Cardiomegaly|Infiltration,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n"
           "00000001_001.png,No Finding,1,1,58,M,PA,2894,2729,0.143,0.143,\n"
           "00000002_000.png,Nodule,0,2,81,F,AP,2500,2048,0.171,0.171,\n")
    _write(tmp_path / "BBox_List_2017.csv", BBOX_HEADER + "\n"
           "00000002_000.png,Nodule,10.5,20,30,40\n"
           "00000001_000.png,Infiltrate,1,2,3,4,,,\n")
    _write(tmp_path / "train_val_list.txt", "00000001_000.png\n00000001_001.png\n")
    _write(tmp_path / "test_list.txt", "00000002_000.png\n")
    archive = read_archive(tmp_path / "Data_Entry_2017.csv")  # the file itself works too
    assert [r.labels for r in archive.records] == [("Cardiomegaly", "Infiltration"), (), ("Nodule",)]
    assert [r.split for r in archive.records] == ["train", "train", "test"]
    assert archive.records[2].view == "AP" and archive.records[2].patient_id == "2"
    assert archive.boxes == [GroundTruthBox("00000002_000.png", "Nodule", 10.5, 20, 30, 40),
                             GroundTruthBox("00000001_000.png", "Infiltration", 1, 2, 3, 4)]
    test = archive.subset("test")
    assert [r.image_id for r in test.records] == ["00000002_000.png"] and len(test.boxes) == 1
    expected = np.zeros((3, 14), np.float32)
    expected[0, [1, 3]] = 1
    expected[2, 5] = 1
    np.testing.assert_array_equal(archive.labels_matrix(), expected)


def test_images_in_unpacked_tarball_folders(tmp_path):
    _write(tmp_path / "Data_Entry_2017.csv", DATA_ENTRY_HEADER + "\n"
           "00000001_000.png,No Finding,0,1,58,M,PA,1,1,0.1,0.1,\n"
           "00000002_000.png,No Finding,0,2,58,M,PA,1,1,0.1,0.1,\n")
    for folder, name in (("images_001", "00000001_000.png"), ("images_002", "00000002_000.png")):
        (tmp_path / folder / "images").mkdir(parents=True)
        (tmp_path / folder / "images" / name).write_bytes(b"x")
    archive = read_archive(tmp_path)
    assert [r.path for r in archive.records] == [
        str(tmp_path / "images_001" / "images" / "00000001_000.png"),
        str(tmp_path / "images_002" / "images" / "00000002_000.png"),
    ]


def test_unknown_finding_needs_a_declared_class_list(tmp_path):
    _write(tmp_path / "Data_Entry_2017_v2020.csv", "Image Index,Finding Labels\na.png,Covid|Nodule\nb.png,No Finding\n")
    with pytest.raises(ArchiveError, match="Covid.*classes.txt"):
        read_archive(tmp_path)
    _write(tmp_path / "classes.txt", "# our findings\nNodule\nCovid\n")
    archive = read_archive(tmp_path)
    assert archive.classes == ("Nodule", "Covid")
    np.testing.assert_array_equal(archive.labels_matrix(), [[1, 1], [0, 0]])
    only = read_archive(tmp_path, classes=["Covid"])
    assert only.classes == ("Covid",) and only.records[0].labels == ("Covid", "Nodule")
    np.testing.assert_array_equal(only.labels_matrix(), [[1], [0]])


def test_csv_manifest_with_label_column(tmp_path):
    (tmp_path / "imgs").mkdir()
    _write(tmp_path / "list.csv", "path,labels,split,patient_id\n"
           "imgs/a.png,Mass|Infiltrate,train,7\n/abs/b.jpg,No Finding,val,8\nimgs/c.dcm,,test,\n")
    archive = read_archive(tmp_path / "list.csv")
    assert archive.source == "manifest" and archive.has_labels
    assert [r.image_id for r in archive.records] == ["a.png", "b.jpg", "c.dcm"]
    assert archive.records[0].path == str(tmp_path / "imgs" / "a.png")
    assert archive.records[1].path == "/abs/b.jpg"
    assert [r.labels for r in archive.records] == [("Mass", "Infiltration"), (), ()]
    assert [r.split for r in archive.records] == ["train", "val", "test"]
    assert [r.patient_id for r in archive.records] == ["7", "8", None]


def test_gzipped_csv_manifest_with_one_column_per_finding(tmp_path):
    with gzip.open(tmp_path / "m.csv.gz", "wt") as f:
        f.write("file,Nodule,Effusion,Pleural Thickening,age\nx/1.png,1,0,1.0,50\ny/1.png,0,-1,,60\n")
    archive = read_archive(tmp_path / "m.csv.gz")
    assert [r.image_id for r in archive.records] == ["x/1.png", "y/1.png"]  # basenames collide
    assert [r.labels for r in archive.records] == [("Nodule", "Pleural_Thickening"), ()]


def test_parquet_manifest_and_unlabelled(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_id": ["i1", "i2"], "path": ["a.png", "b.png"],
                             "Cardiomegaly": [True, False]}), tmp_path / "manifest.parquet")
    archive = read_archive(tmp_path)  # a folder with manifest.parquet
    assert [r.image_id for r in archive.records] == ["i1", "i2"]
    assert [r.labels for r in archive.records] == [("Cardiomegaly",), ()]
    pq.write_table(pa.table({"path": ["a.png"]}), tmp_path / "bare.parquet")
    assert not read_archive(tmp_path / "bare.parquet").has_labels


def test_plain_image_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "sub/c.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    archive = read_archive(tmp_path)
    assert archive.source == "folder" and not archive.has_labels
    assert [r.image_id for r in archive.records] == ["a.jpg", "b.png", "c.png"]
    assert archive.labels_matrix().shape == (3, 14)


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "nowhere", "no such file"),
    (lambda p: p, "no Data_Entry"),
    (lambda p: _write(p / "m.csv", "name,labels\nx,Nodule\n"), "no path column"),
    (lambda p: _write(p / "notes.txt", "x"), "not an archive"),
])
def test_bad_archives_raise_archive_error(tmp_path, make, match):
    with pytest.raises(ArchiveError, match=match):
        read_archive(make(tmp_path))

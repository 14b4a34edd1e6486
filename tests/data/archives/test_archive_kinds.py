"""The archive kinds of `miner.data.archives.kinds` on the real label files (counts computed here with pandas and
compared with the issue's numbers), and their options and errors on small hand-written files."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from miner.config import ArchiveConfig
from miner.data import read_archive
from miner.data.archives.rle import rle_box, rle_decode, rle_encode
from miner.errors import ArchiveError, UsageError
from miner.findings import ARCHIVE_FINDINGS, CHESTXRAY14, VOCABULARY, archive_classes, canonical
from tests.data.archives import kinds_data as K

# ----------------------------------------------------------------------------------------- the real label files


def test_vindr_real_counts():
    df = pd.read_csv(K.real_file(K.VINDR))
    archive = read_archive(K.real_file(K.VINDR))
    boxed = df[df.x_min.notna()]
    # the numbers, computed independently here
    assert (len(df), df.image_id.nunique(), len(boxed), df.rad_id.nunique()) == (67_914, 15_000, 36_096, 17)
    per_class = boxed.class_name.value_counts().to_dict()
    assert (per_class["Aortic enlargement"], per_class["Nodule/Mass"], per_class["Pneumothorax"]) == (7162, 2580, 226)
    # the reader agrees
    assert archive.source == "vindr" and archive.exhaustive and archive.details["rows"] == len(df)
    assert len(archive) == df.image_id.nunique() and len(archive.boxes) == len(boxed)
    assert archive.details["readers"] == df.rad_id.nunique()
    mapped = Counter(b.finding for b in archive.boxes)
    assert mapped == {ARCHIVE_FINDINGS["vindr"][name]: n for name, n in per_class.items()}
    assert mapped["Effusion"] == per_class["Pleural effusion"] and mapped["Nodule/Mass"] == 2580
    assert Counter(b.reader for b in archive.boxes) == boxed.rad_id.value_counts().to_dict()
    # box values: x, y, w, h from x_min .. y_max; labels = findings any reader boxed
    first = boxed.iloc[0]
    box = next(b for b in archive.boxes if b.image_id == first.image_id and b.reader == first.rad_id)
    assert (box.x, box.y, box.w, box.h) == (first.x_min, first.y_min, first.x_max - first.x_min,
                                            first.y_max - first.y_min)
    no_finding = df.groupby("image_id").class_name.apply(lambda s: set(s) == {"No finding"})
    assert sum(1 for r in archive.records if not r.labels) == int(no_finding.sum())
    assert set(archive.classes) == set(mapped) and archive.classes == archive_classes("vindr")


def test_rsna_real_counts():
    df = pd.read_csv(K.real_file(K.RSNA))
    archive = read_archive(K.real_file(K.RSNA))
    positive = df[df.Target == 1]
    assert (len(df), df.patientId.nunique(), positive.x.notna().sum(), positive.patientId.nunique()) == (
        30_227, 26_684, 9_555, 6_012)
    assert archive.details["rows"] == len(df) and len(archive) == df.patientId.nunique()
    assert len(archive.boxes) == 9_555 and {b.finding for b in archive.boxes} == {"Pneumonia"}
    assert sum(1 for r in archive.records if r.labels == ("Pneumonia",)) == 6_012
    assert len({b.image_id for b in archive.boxes}) == 6_012
    assert [r.image_id for r in archive.records] == list(dict.fromkeys(df.patientId))
    row = positive.iloc[0]
    assert (archive.boxes[0].image_id, archive.boxes[0].x, archive.boxes[0].w) == (row.patientId, row.x, row.width)


def test_siim_real_counts_and_rle_round_trip():
    df = pd.read_csv(K.real_file(K.SIIM))
    df.columns = [c.strip() for c in df.columns]
    text = df.EncodedPixels.astype(str).str.strip()
    masked = df[text != "-1"]
    assert (len(df), df.ImageId.nunique(), len(masked), masked.ImageId.nunique()) == (12_954, 12_047, 3_576, 2_669)
    archive = read_archive(K.real_file(K.SIIM))
    assert archive.details["rows"] == len(df) and len(archive) == df.ImageId.nunique()
    assert len(archive.boxes) == 3_576 and len({b.image_id for b in archive.boxes}) == 2_669
    assert sum(1 for r in archive.records if r.labels) == 2_669 and archive.mask_size == (1024, 1024)
    # every RLE decoded and re-encoded gives its string back; the box from the runs = the box of the mask
    strings = text[text != "-1"].tolist()
    assert all(rle_encode(rle_decode(s)) == s for s in strings)
    for s in strings[:: len(strings) // 60]:
        ys, xs = np.nonzero(rle_decode(s))
        assert rle_box(s) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    # an image with two masks: its mask is their union, it has two boxes
    two = masked.ImageId.value_counts()
    image_id = two.index[0]
    union = np.zeros((1024, 1024), bool)
    for s in masked[masked.ImageId == image_id].EncodedPixels:
        union |= rle_decode(s)
    np.testing.assert_array_equal(archive.load_mask(image_id, "Pneumothorax"), union)
    assert sum(1 for b in archive.boxes if b.image_id == image_id) == two.iloc[0] >= 2


def test_chexpert_real_counts():
    df = pd.read_csv(K.real_file(K.CHEXPERT))
    assert len(df) == 223_414
    assert ((df.Atelectasis == 1).sum(), (df.Atelectasis == -1).sum()) == (33_376, 33_739)
    archive = read_archive(K.real_file(K.CHEXPERT))  # default policy: ignore
    assert archive.details["rows"] == len(df) == len(archive)
    positives = Counter(f for r in archive.records for f in r.labels)
    unknown = Counter(f for r in archive.records for f in r.unknown)
    for column, finding in ARCHIVE_FINDINGS["chexpert"].items():
        if finding is None:
            continue
        assert positives[finding] == (df[column] == 1).sum(), column
        assert unknown[finding] == (df[column] == -1).sum(), column
    assert sum(1 for r in archive.records if not r.labels) == int((df.iloc[:, 6:] == 1).sum(axis=1).eq(0).sum())
    first = archive.records[0]
    assert first.image_id == df.Path[0] and first.split == "train" and first.patient_id == "patient00001"


def test_padchest_real_counts():
    df = pd.read_csv(K.real_file(K.PADCHEST), usecols=["ImageID", "ImageDir", "Labels"])
    assert len(df) == 160_861
    archive = read_archive(K.real_file(K.PADCHEST))
    assert len(archive) == archive.details["rows"] == len(df)
    assert archive.details["rows without labels"] == df.Labels.isna().sum() == 103
    assert sum(1 for r in archive.records if r.unknown == archive.classes) == 103
    labels = df.Labels.fillna("")
    found = Counter(f for r in archive.records for f in r.labels)
    for finding, terms in (("Cardiomegaly", ["cardiomegaly"]), ("Hernia", ["hiatal hernia"]),
                           ("Effusion", ["pleural effusion", "loculated pleural effusion",
                                         "loculated fissural effusion"])):
        # a term is quoted, sometimes with spaces inside the quotes (' cardiomegaly')
        pattern = "|".join(rf"'\s*{t}\s*'" for t in terms)
        assert found[finding] == labels.str.contains(pattern, regex=True).sum(), finding
    record = archive.records[1]
    row = df.iloc[1]
    assert record.path.endswith(f"/{row.ImageDir}/{row.ImageID}") and "Fibrosis" in record.labels
    assert "chronic changes" in record.labels  # a term outside the vocabulary stays, outside the class list
    assert "chronic changes" not in archive.classes


def test_google_relabels_real_counts():
    df = pd.read_csv(K.real_file(K.GOOGLE))
    assert len(df) == 4_376 and df["Set Id"].value_counts().to_dict() == {"val": 2_414, "test": 1_962}
    archive = read_archive(K.real_file(K.GOOGLE))
    assert len(archive) == 4_376 and Counter(r.split for r in archive.records) == {"val": 2_414, "test": 1_962}
    for column, finding in ARCHIVE_FINDINGS["google"].items():
        assert sum(1 for r in archive.records if finding in r.labels) == (df[column] == "YES").sum()
    assert archive.records[0].path.endswith("/images/00000013_008.png")


# ----------------------------------------------------------------------------------------- vocabulary, RLE


def test_vocabulary_maps_meet_and_do_not_conflict():
    assert VOCABULARY[:14] == CHESTXRAY14 and len(set(VOCABULARY)) == len(VOCABULARY)
    for kind, mapping in ARCHIVE_FINDINGS.items():
        assert all(v is None or v in VOCABULARY for v in mapping.values()), kind
    lowered: dict[str, set] = {}
    for mapping in ARCHIVE_FINDINGS.values():
        for name, finding in mapping.items():
            if finding is not None:
                lowered.setdefault(name.lower(), set()).add(finding)
    assert all(len(v) == 1 for v in lowered.values())  # one name never means two findings
    assert canonical("Pleural effusion") == canonical("Pleural Effusion") == "Effusion"
    assert canonical("Nodule or mass") == canonical("nodule/mass") == "Nodule/Mass"
    assert canonical("Infiltrate") == "Infiltration" and canonical("Something else") == "Something else"
    # where findings meet: a ChestX-ray14 model scores VinDr-CXR on these five
    assert set(archive_classes("vindr")) & set(CHESTXRAY14[:8]) == {
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Pneumothorax"}


def test_readme_vocabulary_table_is_the_map():
    """docs/archives.md's table of the vocabulary lists, per canonical finding, exactly the names each archive maps
    to it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "archives.md").read_text()
    head = "| finding | ChestX-ray14 | VinDr-CXR | CheXpert | PadChest terms | Google relabels | RSNA | SIIM-ACR |"
    lines = text[text.index(head):].splitlines()[2:2 + len(VOCABULARY)]
    kinds = ("release", "vindr", "chexpert", "padchest", "google", "rsna", "siim")
    for finding, line in zip(VOCABULARY, lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == finding
        for kind, cell in zip(kinds, cells[1:]):
            names = {n for n, v in ARCHIVE_FINDINGS[kind].items() if v == finding}
            if kind in ("rsna", "siim"):
                assert bool(cell) == bool(names), (finding, kind)
            else:
                assert set(filter(None, (c.strip() for c in cell.split(", ")))) == names, (finding, kind)


def test_rle_hand_cases():
    mask = np.zeros((4, 3), bool)
    mask[0, 0] = mask[3, 0] = mask[0, 1] = True  # column-major flat indices 0, 3, 4
    assert rle_encode(mask) == "0 1 2 2"  # run at 0 (1 px); next run starts 2 after its end, 2 px
    np.testing.assert_array_equal(rle_decode("0 1 2 2", (4, 3)), mask)
    assert rle_encode(np.zeros((4, 3))) == "-1" and not rle_decode(" -1", (4, 3)).any()
    assert rle_box("0 1 2 2", (4, 3)) == (0.0, 0.0, 2.0, 4.0)
    with pytest.raises(ArchiveError, match="pairs"):
        rle_decode("1 2 3", (4, 3))
    with pytest.raises(ArchiveError, match="beyond"):
        rle_decode("10 5", (4, 3))


# ----------------------------------------------------------------------------------------- small files


def _csv(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices\n")


@pytest.mark.parametrize("policy,labels,unknown", [
    ("ignore", [("Atelectasis",), ()], [("Effusion",), ("Cardiomegaly",)]),
    ("zeros", [("Atelectasis",), ()], [(), ()]),
    ("ones", [("Atelectasis", "Effusion"), ("Cardiomegaly",)], [(), ()]),
])
def test_chexpert_uncertainty_policies_and_paths(tmp_path, policy, labels, unknown):
    folder = tmp_path / "CheXpert-v1.0-small"
    prefix = "CheXpert-v1.0-small/valid/"
    _csv(folder / "valid.csv", CHEXPERT_HEADER
         + prefix + "patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,,,0.0,,,,,,1.0,,-1.0,,,\n"
         + prefix + "patient64542/study1/view2_lateral.jpg,Male,70,Lateral,,1.0,,-1,,,,,,,,,,,\n")
    archive = read_archive(folder, config=ArchiveConfig(uncertain=policy))
    assert archive.source == "chexpert" and [r.labels for r in archive.records] == labels
    assert [r.unknown for r in archive.records] == unknown
    first = archive.records[0]
    assert first.path == str(tmp_path / "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg")
    assert (first.split, first.patient_id, first.view) == ("valid", "patient64541", "AP")
    known = archive.known_matrix()
    assert known.shape == (2, len(archive.classes))
    assert (~known).sum() == (2 if policy == "ignore" else 0)


def test_chexpert_bad_value_and_unknown_policy(tmp_path):
    path = _csv(tmp_path / "train.csv", CHEXPERT_HEADER + "x/train/p/s/v.jpg,F,1,Frontal,PA,,,2.0,,,,,,,,,,,\n")
    with pytest.raises(ArchiveError, match=r"train.csv:2: Cardiomegaly is '2.0'"):
        read_archive(path)
    with pytest.raises(UsageError, match="--uncertain"):
        read_archive(path, config=ArchiveConfig(uncertain="maybe"))


def test_kind_detection_folder_file_and_ambiguity(tmp_path):
    vindr = _csv(tmp_path / "v" / "train.csv", "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                 "a,Nodule/Mass,8,R1,10,20,30,60\na,Nodule/Mass,8,R2,12,20,30,62\nb,No finding,14,R1,,,,\n")
    (tmp_path / "v" / "train").mkdir()
    (tmp_path / "v" / "train" / "a.png").write_bytes(b"")  # a conversion is found under its stem
    archive = read_archive(tmp_path / "v")
    assert archive.source == "vindr" and [r.image_id for r in archive.records] == ["a", "b"]
    assert [r.labels for r in archive.records] == [("Nodule/Mass",), ()]
    assert archive.records[0].path.endswith("train/a.png") and archive.records[1].path.endswith("train/b.dicom")
    assert [(b.x, b.y, b.w, b.h, b.reader) for b in archive.boxes] == [(10, 20, 20, 40, "R1"), (12, 20, 18, 42, "R2")]
    assert read_archive(vindr).source == "vindr"
    # a second archive's label file beside it: the folder is ambiguous, the file is not
    shutil.copy(vindr, tmp_path / "v" / "other.csv")
    _csv(tmp_path / "v" / "train-rle.csv", "ImageId, EncodedPixels\nx, -1\n")
    with pytest.raises(ArchiveError, match="several archives"):
        read_archive(tmp_path / "v")
    assert read_archive(tmp_path / "v" / "train-rle.csv").source == "siim"
    # PhysioNet layout: annotations/annotations_test.csv (no rad_id) with images in test/
    _csv(tmp_path / "p" / "annotations" / "annotations_test.csv",
         "image_id,class_name,x_min,y_min,x_max,y_max\nc,Pleural effusion,1,2,3,4\n")
    (tmp_path / "p" / "test").mkdir()
    physionet = read_archive(tmp_path / "p" / "annotations" / "annotations_test.csv")
    assert physionet.records[0].split == "test" and physionet.records[0].path == str(tmp_path / "p/test/c.dicom")
    assert physionet.boxes[0].finding == "Effusion" and physionet.boxes[0].reader is None


def test_reader_errors_are_one_line(tmp_path):
    cases = {
        "stage_2_train_labels.csv": ("patientId,x,y,width,height,Target\np,,,,,0\np,1,2,3,4,1\n",
                                     "Target 0 and Target 1"),
        "train-rle.csv": ("ImageId, EncodedPixels\nq, 5 x\n", "not a run-length string"),
        "labels.csv": ("ImageID,ImageDir,Labels\nr.png,0,['normal'\n", "not a list of terms"),
        "google.csv": ("Image Index,Fracture,Pneumothorax,Airspace opacity,Nodule or mass\ns.png,YES,MAYBE,NO,NO\n",
                       "expected YES or NO"),
        "vindr.csv": ("image_id,class_name,rad_id,x_min,y_min,x_max,y_max\nt,Cardiomegaly,R1,5,5,,9\n",
                      "blank coordinate"),
    }
    for name, (text, message) in cases.items():
        path = _csv(tmp_path / name.split(".")[0] / name, text)
        with pytest.raises(ArchiveError, match=message) as err:
            read_archive(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_padchest_and_google_small_files(tmp_path):
    pad = read_archive(_csv(tmp_path / "pc" / "labels.csv", "ImageID,ImageDir,Labels,PatientID,Projection\n"
                            "a.png,3,\"['normal']\",p1,PA\n"
                            "b.png,3,\"['pleural effusion', 'COPD signs', 'loculated pleural effusion']\",p2,L\n"
                            "c.png,4,,p3,PA\n"))
    assert [r.labels for r in pad.records] == [(), ("Effusion", "COPD signs"), ()]
    assert pad.records[2].unknown == pad.classes and pad.records[1].path == str(tmp_path / "pc/3/b.png")
    google = read_archive(_csv(tmp_path / "g" / "four_findings_expert_labels_validation_labels.csv",
                               "Image Index,Patient ID,Patient Age,Patient Gender,View Position,Fracture,"
                               "Pneumothorax,Airspace opacity,Nodule or mass\n"
                               "00000001_000.png,1,58,M,PA,NO,NO,YES,YES\n"))
    assert google.records[0].split == "val" and google.records[0].labels == ("Lung Opacity", "Nodule/Mass")
    assert google.records[0].patient_id == "1"


def test_siim_dicom_found_by_sop_instance_uid(tmp_path):
    uid = "1.2.276.0.7230010.3.1.4.8323329.1.1.1"
    _csv(tmp_path / "train-rle.csv", f"ImageId, EncodedPixels\n{uid}, 1 2\n")
    K.write_dicom(tmp_path / "dicom-images-train" / "s" / "x" / "renamed.dcm", np.zeros((8, 8), np.float32), bits=8,
                  uid=uid)
    archive = read_archive(tmp_path)
    assert archive.records[0].path == str(tmp_path / "dicom-images-train/s/x/renamed.dcm")
    assert archive.details["DICOM headers read"] == 1 and archive.boxes[0].finding == "Pneumothorax"


def test_inspect_shows_the_kind_and_what_it_holds(tmp_path, capsys):
    from miner.cli import main

    info = K.rsna(tmp_path / "rsna", count=2, negatives=1)
    assert main(["inspect", str(info["root"])]) == 0
    text = capsys.readouterr().out
    assert "(RSNA Pneumonia Detection): 3 images" in text and "stage_2_train_labels.csv" in text
    assert "positive images: 2" in text and "none bad" in text and "1024x1024 (3)" in text
    (tmp_path / "bad").mkdir()
    _csv(tmp_path / "bad" / "stage_2_train_labels.csv", "patientId,x,y,width,height,Target\np,,,,,2\n")
    assert main(["inspect", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Target must be 0 or 1" in err

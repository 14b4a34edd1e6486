"""Every archive kind end to end: a tiny archive built from the real label rows (`tests.data.kinds_data`) goes
through `miner mine` (Ray) then `miner eval`, and `miner labels` exports what was mined. One local Ray serves
every job of the module. The model is a random tiny ResNet-18-MSA over findings that meet every archive: nothing
here depends on how good its boxes are, only on the pipeline's contract and on metrics recomputed independently."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from scipy.stats import mannwhitneyu

from miner.cli import main
from miner.findings import ARCHIVE_FINDINGS
from tests.data.archives import kinds_data as K

pytestmark = pytest.mark.ray

CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Nodule/Mass", "Lung Opacity",
           "Fracture")
MINE = ["--workers", "1", "--shard-size", "8", "--batch-size", "4", "--no-progress"]
EVAL = ["--iou", "0.3", "--iobb", "0.5"]


@pytest.fixture(scope="module")
def ray_session(short_tmp):
    """One local Ray for every job of this module (run_job reuses a session it did not start)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(short_tmp / "kinds"), logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import torch

    from miner.models import create_model
    from miner.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = create_model("resnet18_msa", classes=CLASSES, width=0.125)
    return save_checkpoint(tmp_path_factory.mktemp("kinds_model") / "tiny.pt", net, meta={"input_size": 64})


@pytest.fixture(scope="module")
def mined(ray_session, model, tmp_path_factory):
    """kind -> (builder info, OUT, eval report): built, mined and evaluated once per kind, on first use."""
    cache: dict[str, tuple] = {}

    def get(kind: str):
        if kind not in cache:
            base = tmp_path_factory.mktemp(kind)
            info = getattr(K, kind)(base / "archive")
            out = base / "out"
            assert main(["mine", str(info["root"]), "--model", str(model), "--out", str(out), *MINE]) == 0
            extra = ["--model", str(model)] if kind == "siim" else []
            extra += ["--readers", "any"] if kind == "vindr" else []
            assert main(["eval", str(out), "--json", str(base / "eval.json"), "--coco-dir", str(base / "coco"),
                         *EVAL, *extra]) == 0
            cache[kind] = (info, out, json.loads((base / "eval.json").read_text()), base)
        return cache[kind]

    return get


def _table(out: Path, name: str):
    return ds.dataset(out / name, format="parquet").to_table()


def _contract(out: Path, expected_ids: set[str], errors: set[str], labels: dict[str, set[str]]) -> None:
    """Every record in exactly one of images/ and errors/; boxes only for labelled findings the model knows."""
    mined = set(_table(out, "images").column("image_id").to_pylist())
    failed = set(_table(out, "errors").column("image_id").to_pylist())
    assert mined == expected_ids - errors and failed == errors
    boxes = _table(out, "boxes").to_pydict()
    assert boxes["image_id"], "the job wrote no boxes"
    for image_id, finding in zip(boxes["image_id"], boxes["finding"]):
        assert finding in CLASSES and finding in labels[image_id], (image_id, finding)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["archive"]["options"] == {"uncertain": "ignore",
                                                                                   "allow_outside_archive": False}


def _coco_matches_pycocotools(report: dict, folder: Path) -> None:
    """eval's COCO numbers = pycocotools run directly on the JSON eval wrote (every image counts: catIds=[k])."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / "ground_truth.json"))
        dt = gt.loadRes(str(folder / "detections.json"))
        for category, result in zip(gt.dataset["categories"], report["coco"]["findings"]):
            assert category["name"] == result["finding"]
            e = COCOeval(gt, dt, "bbox")
            e.params.catIds = [category["id"]]
            e.evaluate()
            e.accumulate()
            e.summarize()
            got = [result[f] for f in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100")]
            np.testing.assert_allclose(got, np.array(e.stats)[[0, 1, 2, 6, 7, 8]], atol=1e-12)
    assert report["coco"]["negatives"] == "all"  # VinDr-CXR, RSNA, SIIM: readers saw every image


def test_vindr_mine_eval_labels(mined, tmp_path):
    info, out, report, base = mined("vindr")
    vindr = {k: v for k, v in ARCHIVE_FINDINGS["vindr"].items() if v}
    labels = {i: {vindr[r[1]] for r in info["rows"] if r[0] == i and r[1] in vindr} for i in info["ids"]}
    _contract(out, set(info["ids"]), set(info["missing"]), labels)
    # --readers any: every reader's box of a finding the model knows, on the mined images
    mined_ids = set(info["ids"]) - set(info["missing"])
    expected = {}
    for r in info["rows"]:
        if r[0] in mined_ids and r[4] and vindr[r[1]] in CLASSES:
            expected[vindr[r[1]]] = expected.get(vindr[r[1]], 0) + 1
    assert {c["finding"]: c["gt_boxes"] for c in report["coco"]["findings"]} == expected
    assert "Nodule/Mass" in expected and {c["finding"] for c in report["cells"]} == set(expected)
    _coco_matches_pycocotools(report, base / "coco")
    gt = json.loads((base / "coco" / "ground_truth.json").read_text())
    sizes = {e["file_name"]: (e["height"], e["width"]) for e in gt["images"]}
    assert sizes == {i: info["sizes"][i] for i in mined_ids}  # the DICOM headers' sizes went through the job
    # pseudo-labels of the mined DICOM archive: every mined image exported or listed, the error row listed
    for fmt in ("coco", "yolo"):
        to = tmp_path / fmt
        assert main(["labels", str(out), "--format", fmt, "--to", str(to)]) == 0
        with open(to / "errors.csv") as f:
            assert [r["image_id"] for r in csv.DictReader(f)] == info["missing"]
        with open(to / "skipped.csv") as f:
            skipped = {r["image_id"] for r in csv.DictReader(f)}
        if fmt == "coco":
            exported = {e["image_id"] for e in json.loads((to / "annotations.json").read_text())["images"]}
        else:
            exported = {p.name.removesuffix(".dicom") for p in (to / "images").iterdir()}
            assert all((to / "images" / f"{i}.dicom").resolve() == (info["root"] / "train" / f"{i}.dicom")
                       for i in exported)
        assert exported | skipped == mined_ids and not exported & skipped


def test_rsna_mine_eval(mined):
    info, out, report, base = mined("rsna")
    labels = {i: ({"Pneumonia"} if any(r[0] == i and r[5] == "1" for r in info["rows"]) else set())
              for i in info["ids"]}
    _contract(out, set(info["ids"]), set(), labels)
    [pneumonia] = report["coco"]["findings"]
    assert pneumonia["finding"] == "Pneumonia" and pneumonia["images"] == len(info["ids"])
    assert pneumonia["gt_boxes"] == sum(1 for r in info["rows"] if r[5] == "1")
    _coco_matches_pycocotools(report, base / "coco")


def test_siim_mine_eval_with_masks(mined):
    info, out, report, base = mined("siim")
    positive = {r[0] for r in info["rows"] if r[1].strip() != "-1"}
    _contract(out, set(info["ids"]), set(), {i: {"Pneumothorax"} if i in positive else set() for i in info["ids"]})
    [ptx] = report["coco"]["findings"]
    assert ptx["gt_boxes"] == sum(1 for r in info["rows"] if r[1].strip() != "-1")
    _coco_matches_pycocotools(report, base / "coco")
    # the masks of train-rle.csv reach PxAP (the image stored under another name was found by its header too)
    wsol = report["wsol"]["Pneumothorax"]
    assert wsol["pxap_images"] == wsol["images"] == len(positive) and 0 <= wsol["pxap"] <= 1


def _auc_checks(report: dict, out: Path, truth: dict[str, dict[str, bool | None]]) -> None:
    """eval's AUC per finding = the Mann-Whitney U of the job's probabilities over images with a known label."""
    images = _table(out, "images").to_pydict()
    probs = dict(zip(images["image_id"], images["probs"]))
    checked = 0
    for result in report["auc"]:
        c = CLASSES.index(result["finding"])
        known = {i: v[result["finding"]] for i, v in truth.items() if v[result["finding"]] is not None}
        pos = [probs[i][c] for i, v in known.items() if v]
        neg = [probs[i][c] for i, v in known.items() if not v]
        assert (result["images"], result["positives"]) == (len(known), len(pos)), result
        if pos and neg:
            assert result["auc"] == pytest.approx(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))
            checked += 1
        else:
            assert result["auc"] is None  # undefined (NaN in the table, null in the JSON)
    assert checked >= 1


def test_chexpert_mine_eval_labels(mined, tmp_path):
    info, out, report, base = mined("chexpert")
    col = {name: i for i, name in enumerate(info["header"])}
    columns = {f: ("Pleural Effusion" if f == "Effusion" else f) for f in CLASSES if f in
               ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Lung Opacity", "Fracture")}
    truth = {}
    for r in info["rows"]:
        values = {f: r[col[c]] for f, c in columns.items()}
        truth[r[0]] = {f: (None if v in ("-1", "-1.0") else v in ("1", "1.0")) for f, v in values.items()}
    _contract(out, set(truth), set(), {i: {f for f, v in t.items() if v} for i, t in truth.items()})
    assert [r["finding"] for r in report["auc"]] == list(columns) and "coco" not in report
    _auc_checks(report, out, truth)
    to = tmp_path / "yolo"
    assert main(["labels", str(out), "--format", "yolo", "--to", str(to)]) == 0
    names = sorted(p.name for p in (to / "images").iterdir())
    assert len(set(names)) == len(names) and all(n.startswith("CheXpert-v1.0-small__train__patient") for n in names)


def test_padchest_mine_eval(mined):
    from miner.data import read_archive

    info, out, report, base = mined("padchest")
    archive = read_archive(info["root"])
    labels = {r.image_id: set(r.labels) for r in archive.records}
    col = {name: i for i, name in enumerate(info["header"])}
    assert set(labels) == {r[col["ImageID"]] for r in info["rows"]}
    _contract(out, set(labels), set(), labels)
    truth = {i: {f: f in own for f in CLASSES} for i, own in labels.items()}
    assert {r["finding"] for r in report["auc"]} == set(CLASSES) & set(archive.classes)
    _auc_checks(report, out, truth)


def test_google_relabels_mine_eval(mined):
    info, out, report, base = mined("google")
    col = {name: i for i, name in enumerate(info["header"])}
    names = {"Pneumothorax": "Pneumothorax", "Nodule/Mass": "Nodule or mass", "Lung Opacity": "Airspace opacity",
             "Fracture": "Fracture"}
    truth = {r[0]: {f: r[col[c]] == "YES" for f, c in names.items()} for r in info["rows"]}
    _contract(out, set(truth), set(), {i: {f for f, v in t.items() if v} for i, t in truth.items()})
    assert [r["finding"] for r in report["auc"]] == ["Pneumothorax", "Nodule/Mass", "Lung Opacity", "Fracture"]
    _auc_checks(report, out, truth)

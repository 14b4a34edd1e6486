"""``miner detector train`` and ``predict`` on a tiny archive: a few iterations train, a stopped training resumes to
the very weights of an uninterrupted one, and the predictions are a job output that ``miner eval``, ``miner labels``
and ``miner report`` read unchanged."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from miner.config import DetectorTrainConfig
from miner.errors import UsageError
from tests.detector._extra import needs_torchvision

pytestmark = needs_torchvision
CFG = DetectorTrainConfig(epochs=2, batch=4, size=64, seed=3)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def trained(label_dirs, phantom_archive, tmp_path_factory):
    from miner.detector.train import train_detector

    to = tmp_path_factory.mktemp("det") / "straight"
    result = train_detector(label_dirs["yolo"], to, config=CFG, archive=phantom_archive, progress=False)
    return result


def test_training_writes_its_files(trained):
    files = sorted(p.name for p in trained.to.iterdir())
    assert files == ["detector.pt", "last.pt", "log.jsonl", "miner-detector.json", "train.json"]
    log = [json.loads(line) for line in (trained.to / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    assert log[-1]["lr_end"] < CFG.lr  # the cosine decay ran
    assert trained.resumed_from == 0 and trained.epochs == 2


def test_a_stopped_training_resumes_to_the_same_weights(trained, label_dirs, phantom_archive, tmp_path):
    from miner.detector.model import read_detector
    from miner.detector.train import train_detector

    to = tmp_path / "stopped"

    def stop_after_first(line):
        if line.startswith("epoch 1/"):
            raise Stop

    with pytest.raises(Stop):
        train_detector(label_dirs["yolo"], to, config=CFG, archive=phantom_archive, progress=False,
                       log=stop_after_first)
    assert not (to / "detector.pt").exists() and len((to / "log.jsonl").read_text().splitlines()) == 1
    resumed = train_detector(label_dirs["yolo"], to, config=CFG, archive=phantom_archive, progress=False)
    assert resumed.resumed_from == 1
    a = read_detector(trained.detector)["state_dict"]
    b = read_detector(resumed.detector)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_other_options_or_labels_are_refused(trained, label_dirs, phantom_archive, tmp_path):
    from dataclasses import replace

    from miner.detector.train import train_detector

    with pytest.raises(UsageError, match="holds a training on other options"):
        train_detector(label_dirs["yolo"], trained.to, config=replace(CFG, lr=0.01), progress=False)
    with pytest.raises(UsageError, match="holds a training on another label set"):
        train_detector(label_dirs["yolo"], trained.to, config=replace(CFG, split="all"), progress=False)
    # --overwrite replaces only a training's files: a user's file stays
    copy = tmp_path / "copy"
    shutil.copytree(trained.to, copy)
    (copy / "notes.txt").write_text("mine")
    one = replace(CFG, epochs=1)
    result = train_detector(label_dirs["yolo"], copy, config=one, progress=False, overwrite=True)
    assert (copy / "notes.txt").read_text() == "mine" and result.epochs == 1
    user = tmp_path / "user"
    user.mkdir()
    (user / "data.csv").write_text("x")
    with pytest.raises(UsageError, match="holds no earlier detector training"):
        train_detector(label_dirs["yolo"], user, config=one, progress=False, overwrite=True)
    assert (user / "data.csv").read_text() == "x"


@pytest.fixture(scope="module")
def predicted(trained, phantom_archive, tmp_path_factory):
    from miner.detector.predict import predict_archive

    out = tmp_path_factory.mktemp("pred") / "out"
    result = predict_archive(trained.detector, phantom_archive, out, split="test", min_score=0.0, progress=False)
    return result


def test_predictions_follow_the_output_contract(predicted, phantom_archive):
    from miner.data import read_archive
    from miner.io import read_dataset
    from miner.output import read_output

    output = read_output(predicted.out)
    assert output.manifest["status"] == "complete"
    assert output.manifest["producer"]["verb"] == "miner detector predict"
    arch = read_archive(phantom_archive)
    records = {r.image_id: r for r in arch.records}
    test_ids = [r.image_id for r in arch.records if r.split == "test"]
    assert sorted(output.image_ids) == sorted(test_ids)
    boxes = read_dataset(predicted.out, "boxes").to_pylist()
    assert len(boxes) == predicted.boxes > 0
    seen: dict[tuple[str, str], list[int]] = {}
    for row in boxes:
        height, width = output.sizes[row["image_id"]]
        assert row["finding"] in records[row["image_id"]].labels  # --classes labels
        assert 0 <= row["x"] and row["x"] + row["w"] <= width + 1e-3 and row["w"] > 0
        assert 0 <= row["y"] and row["y"] + row["h"] <= height + 1e-3 and row["h"] > 0
        seen.setdefault((row["image_id"], row["finding"]), []).append((row["rank"], row["score"]))
    for ranks in seen.values():
        assert [r for r, _ in ranks] == list(range(1, len(ranks) + 1)) and len(ranks) <= 3
        scores = [s for _, s in ranks]
        assert scores == sorted(scores, reverse=True)
    # an image's probs: each class's highest detector score, at least its best kept box's score
    index = {i: n for n, i in enumerate(output.image_ids)}
    for row in boxes:
        assert output.probs[index[row["image_id"]], row["class_index"]] >= row["score"] - 1e-6


def test_eval_labels_and_report_read_the_predictions(predicted, tmp_path, capsys):
    from miner.cli import main

    assert main(["eval", str(predicted.out)]) == 0
    assert "COCO detection metrics" in capsys.readouterr().out
    assert main(["labels", str(predicted.out), "--format", "yolo", "--to", str(tmp_path / "yolo")]) == 0
    assert (tmp_path / "yolo" / "data.yaml").is_file()
    assert main(["report", str(predicted.out), "--to", str(tmp_path / "report"), "--top", "2", "--sample", "2"]) == 0
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_broken_file_is_an_error_row(trained, phantom_archive, tmp_path):
    from miner.detector.predict import predict_archive
    from miner.output import read_output

    archive = tmp_path / "archive"
    shutil.copytree(phantom_archive, archive)
    victim = sorted((archive / "images").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])
    result = predict_archive(trained.detector, archive, tmp_path / "out", progress=False)
    output = read_output(result.out)
    assert [e["image_id"] for e in output.errors] == [victim.name]
    assert output.errors[0]["kind"] == "truncated"
    assert len(output.image_ids) == 23


def test_predict_refuses_a_used_folder(trained, phantom_archive, tmp_path):
    from miner.detector.predict import predict_archive

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    with pytest.raises(UsageError, match="holds files; give a new folder"):
        predict_archive(trained.detector, phantom_archive, tmp_path / "out", progress=False)
    with pytest.raises(UsageError, match="no image in split 'valid'"):
        predict_archive(trained.detector, phantom_archive, tmp_path / "new", split="valid", progress=False)
    assert not (tmp_path / "new").exists()

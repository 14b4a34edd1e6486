"""The detector's model: its trunk is the classifier's (weights and batch-norm statistics carried over exactly), a
checkpoint round-trips to the same outputs, and a file that is not a detector checkpoint is one line."""
from __future__ import annotations

import pickle

import pytest
import torch

from miner.errors import ModelError
from tests.detector._extra import needs_torchvision

pytestmark = needs_torchvision
EMBEDDED = "miner/assets/default_model.pt"


def _detector():
    from miner.detector.model import build_detector, detector_meta, trunk_from_checkpoint

    classifier, spec = trunk_from_checkpoint(EMBEDDED)
    meta = detector_meta(list(classifier.classes), size=64, trunk=spec["trunk"], mean=spec["mean"], std=spec["std"],
                         backbone=EMBEDDED)
    return classifier, build_detector(meta, classifier=classifier), meta


def test_trunk_is_the_classifiers():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from miner.models.checkpoint import load_checkpoint

    _, model, _ = _detector()
    reference, _ = load_checkpoint(EMBEDDED)
    body = model.backbone.body
    torch.testing.assert_close(body.conv1.weight, reference.conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(body.layer4[-1].conv2.weight, reference.layer4[-1].conv2.weight, rtol=0, atol=0)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    torch.testing.assert_close(body.bn1.running_mean, reference.bn1.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(body.layer2[0].bn2.running_var, reference.layer2[0].bn2.running_var, rtol=0, atol=0)
    # the trunk computes what the classifier's stages compute (frozen batch norm = eval-mode batch norm)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ours = body(x)
        theirs = reference.stages(x)[1:]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    from miner.detector.model import load_detector, save_detector

    _, model, meta = _detector()
    model.eval()
    path = save_detector(tmp_path / "d.pt", model, meta)
    loaded, meta2 = load_detector(path)
    assert meta2 == meta
    images = [torch.rand(1, 64, 64)]
    with torch.no_grad():
        a, b = model(images)[0], loaded(images)[0]
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_foreign_files_are_one_line(tmp_path):
    from miner.detector.model import load_detector

    cases = {"missing": tmp_path / "nope.pt", "classifier": EMBEDDED}
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"format": "attention-miner-detector/1", "meta": object()}))
    cases["pickled"] = pickled
    broken = tmp_path / "broken.pt"
    torch.save({"format": "attention-miner-detector/1", "meta": {"classes": []}, "state_dict": {}}, broken)
    cases["broken"] = broken
    messages = {}
    for name, path in cases.items():
        with pytest.raises(ModelError) as err:
            load_detector(path)
        messages[name] = str(err.value)
        assert "\n" not in messages[name]
    assert "no such detector checkpoint" in messages["missing"]
    assert "not a detector checkpoint of miner detector train" in messages["classifier"]
    assert "not a readable checkpoint (UnpicklingError" in messages["pickled"]
    assert "names no classes" in messages["broken"]

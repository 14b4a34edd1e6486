"""Recipes: what a checkpoint records, how every backend and the pipeline find it, and several archives at once."""
from __future__ import annotations

import math
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from miner.backends import open_backend
from miner.config import DEFAULT_RECIPE, BoxConfig, MiningConfig
from miner.errors import UsageError
from miner.models import create_model, load_checkpoint, read_checkpoint, save_checkpoint
from miner.pipeline import Pipeline
from miner.recipes import RECIPES, get_recipe, inference_settings, recorded
from miner.train import train
from tests.train.test_trainer import tiny_config
from tests.train.toy import CLASSES, write_toy_archive


def test_registry_and_the_seed_recipe_is_todays_defaults():
    assert DEFAULT_RECIPE in RECIPES and "cai2018" in RECIPES
    seed = get_recipe("cai2018")
    # the seed's recipe is exactly what MiningConfig() / BoxConfig() have always meant
    assert seed.mining == MiningConfig() and seed.boxes == BoxConfig()
    assert seed.model_options == {"msa_stride": 16, "pooling": "avg"}
    with pytest.raises(UsageError, match="unknown recipe 'nope'"):
        get_recipe("nope")
    # a model made before recipes is mined the seed's way
    name, mining, boxes = inference_settings({})
    assert (name, mining, boxes) == ("cai2018", MiningConfig(), BoxConfig())
    # a recorded record wins, field by field (lists from JSON back to tuples)
    rec = {"recipe": "peaks", "mining": {"threshold": 0.7}, "boxes": {"thresholds": [0.4, 0.6],
                                                                      "finding_levels": {"Nodule": 0.95}}}
    name, mining, boxes = inference_settings(rec)
    assert name == "peaks" and mining == replace(RECIPES["peaks"].mining, threshold=0.7)
    assert boxes.thresholds == (0.4, 0.6) and boxes.finding_levels == {"Nodule": 0.95}
    assert boxes.rule == "steps"


def test_options_apply_where_the_arch_takes_them():
    peaks = get_recipe("peaks")
    assert peaks.options_for("resnet18_msa") == dict(peaks.model_options)
    assert "msa_stride" not in peaks.options_for("resnet18")  # the plain trunk of the base stage
    assert peaks.options_for("unet") == {}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_archive(tmp_path_factory.mktemp("toy") / "archive", images=40, size=64)


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """One tiny default-recipe model and one cai2018 model (1 step per epoch)."""
    folder = tmp_path_factory.mktemp("recipes")
    out = {}
    for recipe in (DEFAULT_RECIPE, "cai2018"):
        path = folder / f"{recipe}.pt"
        train(toy, path, tiny_config(recipe=recipe, max_steps=1, am_epochs=0,
                                     stages=("base", "msa-init", "end2end")))
        out[recipe] = path
    return out


def test_checkpoints_record_their_recipe_and_build_its_maps(trained):
    for recipe, path in trained.items():
        record = read_checkpoint(path)
        want = get_recipe(recipe)
        assert record["recipe"] == recipe
        assert record["mining"] == asdict(want.mining)
        assert record["boxes"]["rule"] == want.boxes.rule
        model, _ = load_checkpoint(path)
        for key, value in want.model_options.items():
            assert model.options[key] == value
        assert model.msa_stride == want.model_options["msa_stride"]
        assert model.head_pooling == want.model_options["pooling"]
    base = read_checkpoint(trained[DEFAULT_RECIPE].with_name(f"{DEFAULT_RECIPE}.base.pt"))
    assert base["arch"] == "resnet18" and "msa_stride" not in base["options"]  # base stage: the plain trunk
    assert base["options"]["pooling"] == "avg"


def test_pipeline_uses_the_models_settings_unless_told(trained):
    backend = open_backend(trained[DEFAULT_RECIPE], backend="torch", device="cpu")
    assert backend.meta.inference == recorded(read_checkpoint(trained[DEFAULT_RECIPE]))
    assert backend.meta.cell_origin == "corner"
    assert backend.meta.method == "layercam" == get_recipe(DEFAULT_RECIPE).method  # the recipe's map method
    assert open_backend(trained["cai2018"], backend="torch", device="cpu").meta.method == "cam"
    own = Pipeline(backend)
    peaks = get_recipe("peaks")
    assert own.recipe == "peaks" and own.mining == peaks.mining and own.box_config == peaks.boxes
    assert own.shift == pytest.approx((-3.5 / 8, -3.5 / 8))  # 64 px input, 8x8 maps: stride 8
    # a dict overrides single fields; a config object is used as it is; recipe= switches the base
    part = Pipeline(backend, mining={"steps": 2}, boxes={"step_level": 0.7})
    assert part.mining == replace(peaks.mining, steps=2) and part.box_config == replace(peaks.boxes, step_level=0.7)
    assert Pipeline(backend, mining=MiningConfig()).mining == MiningConfig()
    seed = Pipeline(backend, recipe="cai2018")
    assert seed.mining == MiningConfig() and seed.box_config == BoxConfig()
    with pytest.raises(UsageError, match="unknown MiningConfig option"):
        Pipeline(backend, mining={"stepz": 2})
    # a checkpoint made before recipes (no record) is mined the seed's way
    model = create_model("resnet18_msa", classes=CLASSES, width=0.125)
    old = trained[DEFAULT_RECIPE].with_name("old.pt")
    save_checkpoint(old, model, meta={"input_size": 64})
    assert Pipeline(open_backend(old, backend="torch", device="cpu")).mining == MiningConfig()


def test_the_onnx_graph_carries_the_record_and_mines_alike(trained, tmp_path):
    from miner.export.onnx import export_checkpoint
    from miner.models.checkpoint import write_record
    from miner.models.meta import read_onnx_metadata
    from tests.test_box_regression import constant_regressor

    # a calibrated record: per-finding box shapes, a box regressor (boxes 1.5x as wide as the map's, a quarter of a
    # box right), and an input size chosen on validation above the training size
    record = read_checkpoint(trained[DEFAULT_RECIPE])
    regressor = constant_regressor((0.3, 0.2, 0.1))
    regressor.box[-1] = torch.tensor([math.log(1.5), 0.0, 0.25, 0.0], dtype=torch.float64)
    regressors = {CLASSES[1]: regressor.to_record()}
    record["boxes"] = {**dict(record.get("boxes") or {}), "finding_shapes": {CLASSES[0]: [0.8, 1.2, 0.1, -0.1]},
                       "regressors": regressors}
    record["trained_input_size"], record["input_size"] = record["input_size"], 96
    ckpt = write_record(tmp_path / "shaped.pt", record)
    result = export_checkpoint(ckpt, tmp_path / "m.onnx")
    assert result.parity.ok, result.parity.line()
    meta = read_onnx_metadata(tmp_path / "m.onnx")
    assert meta.method == "layercam"
    assert meta.inference == recorded(read_checkpoint(ckpt)) and meta.cell_origin == "corner"
    ort = open_backend(tmp_path / "m.onnx", backend="onnxruntime")
    eager = open_backend(ckpt, backend="torch", device="cpu")
    p_ort, p_eager = Pipeline(ort), Pipeline(eager)
    assert (p_ort.recipe, p_ort.mining, p_ort.box_config, p_ort.shift) == (
        p_eager.recipe, p_eager.mining, p_eager.box_config, p_eager.shift)
    assert p_ort.box_config.finding_shapes == {CLASSES[0]: [0.8, 1.2, 0.1, -0.1]}
    assert p_ort.box_config.regressors == regressors
    assert ort.meta.input_size == eager.meta.input_size == (96, 96)
    images = torch.rand(3, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    chosen = np.ones((3, len(CLASSES)), bool)
    (_, a), (_, b) = (p.mine_maps(p.backend.run(images)[1], images, chosen, [(96, 96)] * 3) for p in (p_ort, p_eager))
    assert [[(r["class_index"], r["rank"]) for r in boxes] for boxes in a] == \
           [[(r["class_index"], r["rank"]) for r in boxes] for boxes in b]
    for boxes_a, boxes_b in zip(a, b):
        for ra, rb in zip(boxes_a, boxes_b):
            assert abs(float(ra["x"]) - float(rb["x"])) <= 1 and abs(float(ra["w"]) - float(rb["w"])) <= 1
    # the regressed finding's boxes are scored by their expected IoU: the step's constant quality (0.3, 0.2, 0.1)
    regressed = [r for boxes in b for r in boxes if r["class_index"] == 1]
    assert regressed and all(float(r["score"]) in (np.float32(0.3), np.float32(0.2), np.float32(0.1))
                             for r in regressed)


def test_training_on_several_archives_keeps_their_patients_apart(toy, tmp_path):
    second = write_toy_archive(tmp_path / "second", images=24, size=64, seed=5)
    from miner.train.trainer import Trainer

    trainer = Trainer([toy, second], tmp_path / "m.pt", tiny_config())
    from miner.train import distributed as D

    trainer.rt = D.setup("cpu", threads=1)
    try:
        trainer._data()
    finally:
        D.teardown()
    ids = [r.image_id for r in trainer.train_ds.records + trainer.val_ds.records + trainer.test_ds.records]
    assert len(ids) == 40 + 24 and len(set(ids)) == len(ids)  # both archives name their images 00000001_000.png..
    assert {i.split(":")[0] for i in ids} == {"0", "1"}

"""The settings record (`miner.settings.InferenceSettings`): one reader, one writer, and the documented rules for
every record a model can carry (docs/design.md, "The settings record")."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from miner.config import DEFAULT_RECIPE, RECIPE_SETTINGS, SEED_RECIPE, BoxConfig, MiningConfig
from miner.errors import ModelError, UsageError
from miner.models import create_model, read_checkpoint, save_checkpoint
from miner.models.meta import ModelMeta
from miner.recipes import RECIPES, get_recipe
from miner.settings import RECORD_KEYS, InferenceSettings
from tests.train.toy import CLASSES, write_toy_archive

EMBEDDED = str(Path(__file__).resolve().parent.parent / "miner" / "assets" / "default_model.pt")


def _meta(**changes) -> ModelMeta:
    """A graph's record as an ONNX file or an engine carries it."""
    values = dict(classes=("Mass", "Nodule"), method="cam", layer="x", input_size=(64, 64), in_chans=1,
                  mean=(0.5,), std=(0.5,), head_is_linear=True, map_size=(8, 8), shortcut_exact=True)
    values.update(changes)
    return ModelMeta(**values)


@pytest.fixture(scope="module")
def embedded() -> dict:
    return read_checkpoint(EMBEDDED)


# -- round trips ------------------------------------------------------------------------------------------------


def test_the_recipes_and_the_defaults_are_one_table():
    assert set(RECIPES) == set(RECIPE_SETTINGS) and DEFAULT_RECIPE in RECIPES and SEED_RECIPE == "cai2018"
    # the seed's recipe is the config dataclasses' own defaults
    seed = InferenceSettings.for_recipe(SEED_RECIPE)
    assert (seed.method, seed.mining, seed.boxes) == ("cam", MiningConfig(), BoxConfig())
    peaks = InferenceSettings.for_recipe("peaks")
    assert peaks.method == "layercam" and peaks.mining == MiningConfig(steps=3, threshold=0.8)
    assert peaks.boxes == BoxConfig(rule="steps", step_level=0.85, dedup_iou=0.5, dedup_iobb=0.8, align_cells=True)
    with pytest.raises(UsageError, match=r"^unknown recipe 'nope': choose one of cai2018, peaks$"):
        InferenceSettings.for_recipe("nope")


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_round_trips(name):
    settings = get_recipe(name).settings
    record = settings.to_record()
    assert list(record) == ["recipe", "method", "mining", "boxes"]  # no stage weights, no sizes: none set
    assert record == get_recipe(name).record()
    assert json.loads(json.dumps(record)) == record  # JSON-ready: lists, not tuples
    assert record["boxes"]["thresholds"] == [0.3, 0.5, 0.7]
    back = InferenceSettings.from_record(record)
    assert back == settings and back.to_record() == record
    assert back.boxes.thresholds == (0.3, 0.5, 0.7)  # back to the dataclass's tuple
    # with everything a calibrated checkpoint adds
    boxes = replace(settings.boxes, finding_levels={"Mass": 0.8}, finding_shapes={"Mass": [0.7, 0.7, 0.1, -0.1]})
    full = replace(settings, stage_weights={"Nodule": {"layer4": 0.25}}, input_size=320, trained_input_size=256,
                   boxes=boxes)
    assert InferenceSettings.from_record(json.loads(json.dumps(full.to_record()))) == full


def test_the_embedded_models_record_round_trips_identically(embedded):
    record = {k: embedded[k] for k in RECORD_KEYS if k in embedded}
    assert set(record) == set(RECORD_KEYS)  # a calibrated model: every key of the record
    settings = InferenceSettings.from_checkpoint(embedded, source=EMBEDDED)
    assert (settings.recipe, settings.method, settings.input_size, settings.trained_input_size) == (
        "peaks", "layercam", 288, 256)
    assert settings.boxes.finding_shapes["Mass"] == [0.9, 0.9, 0.2, -0.2]
    assert settings.to_record() == record
    assert json.dumps(settings.to_record()) == json.dumps(record)  # same keys, same order, same values
    assert settings.into_checkpoint(embedded) == embedded  # a rewrite changes nothing in the checkpoint
    # its graph's record is the same, less the input sizes (the graph's own size is ModelMeta.input_size)
    graph_record = settings.without_sizes().to_record()
    assert graph_record == {k: v for k, v in record.items() if k not in ("input_size", "trained_input_size")}


def test_the_torch_backend_and_an_engine_carry_the_record(embedded, tmp_path):
    from miner.backends import open_backend
    from miner.pipeline import Pipeline

    backend = open_backend(EMBEDDED, backend="torch", device="cpu")
    settings = InferenceSettings.from_checkpoint(embedded)
    assert backend.meta.inference == settings.without_sizes().to_record()
    assert backend.meta.input_size == (288, 288)
    # an engine's side file and a graph's metadata_props hold the same record and read it back
    meta = backend.meta
    assert ModelMeta.from_json(meta.to_json()).inference == meta.inference
    assert ModelMeta.from_props(meta.to_props()).inference == meta.inference
    # the effective settings of a pipeline on it (what a job's manifest records): the model's, as it runs them
    pipeline = Pipeline(backend, mining={"steps": 2})
    assert pipeline.settings == replace(settings.without_sizes(), mining=replace(settings.mining, steps=2),
                                        input_size=(288, 288))
    assert pipeline.settings.to_record()["input_size"] == [288, 288]


# -- the rules ----------------------------------------------------------------------------------------------------


def test_a_record_without_a_recipe_reads_as_the_seeds():
    """A model made before recipes: no recipe keys at all (its meta holds other keys: ignored)."""
    old = {"arch": "resnet18_msa", "classes": ["Mass"], "input_size": 64, "stage": "am", "history": []}
    settings = InferenceSettings.from_checkpoint(old)
    seed = InferenceSettings.for_recipe("cai2018")
    assert settings == InferenceSettings(recipe="cai2018", method=None, mining=seed.mining, boxes=seed.boxes,
                                         input_size=64)
    assert settings.mining == MiningConfig() and settings.boxes == BoxConfig() and settings.stage_weights is None
    assert settings.method is None  # the model's own default map method, not the seed recipe's
    assert settings.to_record() == {"input_size": 64}  # written back as it was
    assert InferenceSettings.from_record({}) == InferenceSettings() and InferenceSettings().to_record() == {}
    assert InferenceSettings.from_record(None) == InferenceSettings()
    assert InferenceSettings.from_record({"recipe": None, "stage_weights": {}}) == InferenceSettings()  # None: absent
    # a partial record: the recorded recipe's values for the fields it leaves out
    part = InferenceSettings.from_record({"recipe": "peaks", "mining": {"steps": 1}, "boxes": {"upsample": 1}})
    peaks = InferenceSettings.for_recipe("peaks")
    assert part.mining == replace(peaks.mining, steps=1) and part.boxes == replace(peaks.boxes, upsample=1)


@pytest.mark.parametrize("record,message", [
    ({"recipe": "nope"}, "names recipe 'nope', which this miner does not know (known: cai2018, peaks)"),
    ({"recipe": "peaks", "colour": "red"}, "holds unknown key(s) ['colour']"),
    ({"recipe": "peaks", "mining": {"stepz": 2}}, "holds unknown mining key(s) ['stepz']"),
    ({"boxes": {"rule": "steps", "shape": 1}}, "holds unknown boxes key(s) ['shape']"),
    ({"mining": [3]}, "gives mining as a list, not an object"),
    ({"input_size": "big"}, "gives input_size 'big', not a side or [height, width]"),
])
def test_an_unknown_recipe_or_key_is_a_one_line_error(record, message):
    with pytest.raises(ModelError) as err:
        InferenceSettings.from_record(record, source="m.pt")
    text = str(err.value)
    assert text.startswith("m.pt: its settings record ") and message in text
    assert "\n" not in text and text.endswith("mine it with the version of miner that wrote it")
    assert err.value.exit_code == 2
    with pytest.raises(ModelError, match=r"^the model's settings record "):  # no file known
        InferenceSettings.from_record(record)


def test_a_graph_or_engine_with_an_unknown_recipe_is_refused_naming_its_file():
    bad = _meta(inference={"recipe": "nope", "mining": {"steps": 1}})
    with pytest.raises(ModelError, match=r"^m\.onnx: its settings record names recipe 'nope'"):
        ModelMeta.from_props(bad.to_props(), source="m.onnx")
    with pytest.raises(ModelError, match=r"^m\.engine\.json: its settings record holds unknown key\(s\) \['x'\]"):
        ModelMeta.from_json(_meta(inference={"x": 1}).to_json(), source="m.engine.json")
    good = _meta(inference={"recipe": "peaks"})
    assert ModelMeta.from_props(good.to_props(), source="m.onnx").inference == {"recipe": "peaks"}


def test_a_checkpoint_with_an_unknown_recipe_is_refused_naming_its_file(tmp_path):
    from miner.backends import open_backend
    from miner.cli import main

    model = create_model("resnet18_msa", classes=CLASSES, width=0.125)
    path = save_checkpoint(tmp_path / "new.pt", model, meta={"input_size": 64, **get_recipe("peaks").record(),
                                                              "recipe": "sharper"})
    with pytest.raises(ModelError, match=rf"^{tmp_path / 'new.pt'}: its settings record names recipe 'sharper'"):
        open_backend(path, backend="torch", device="cpu")
    archive = write_toy_archive(tmp_path / "archive", images=2, size=64)
    assert main(["mine", str(archive), "--model", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()


# -- options ------------------------------------------------------------------------------------------------------


def test_overrides_change_single_fields_or_switch_the_recipe():
    model = InferenceSettings.from_record({**get_recipe("peaks").record(), "stage_weights": {"Mass": {"layer4": 0.5}},
                                           "input_size": 96})
    steps = model.with_overrides(mining={"steps": 2, "threshold": 0.6})
    assert steps.mining == MiningConfig(steps=2, threshold=0.6) and steps.boxes == model.boxes
    rule = model.with_overrides(boxes={"rule": "levels", "thresholds": [0.4, 0.6]})
    assert rule.boxes == replace(model.boxes, rule="levels", thresholds=(0.4, 0.6)) and rule.mining == model.mining
    assert model.with_overrides() == model == model.with_overrides(mining={}, boxes={})
    assert model.with_overrides(mining=MiningConfig(steps=1)).mining == MiningConfig(steps=1)  # used as it is
    # --recipe: that recipe's mining and boxes; the model's maps (method, stage weights) and size stay
    seed = model.with_overrides(recipe="cai2018", mining={"steps": 1})
    assert (seed.recipe, seed.mining, seed.boxes) == ("cai2018", MiningConfig(steps=1), BoxConfig())
    assert (seed.method, seed.stage_weights, seed.input_size) == ("layercam", {"Mass": {"layer4": 0.5}}, 96)
    with pytest.raises(UsageError, match=r"^unknown MiningConfig option\(s\) \['stepz'\]; options: "):
        model.with_overrides(mining={"stepz": 2})
    with pytest.raises(UsageError, match=r"^unknown BoxConfig option\(s\) \['colour'\]"):
        model.with_overrides(boxes={"colour": 1})
    with pytest.raises(UsageError, match="unknown recipe 'nope'"):
        model.with_overrides(recipe="nope")


def test_the_settings_are_frozen():
    with pytest.raises(AttributeError):
        InferenceSettings().recipe = "peaks"  # type: ignore[misc]


@pytest.mark.ray
def test_the_jobs_manifest_records_the_effective_settings(tmp_path):
    from miner.config import JobConfig
    from miner.job import run_job

    torch.manual_seed(0)
    model = create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, meta={"input_size": 64, **get_recipe("peaks").record()})
    archive = write_toy_archive(tmp_path / "archive", images=6, size=64)
    run_job(archive, ckpt, tmp_path / "out", config=JobConfig(shard_size=6, batch_size=3, classes="all", workers=1),
            pipeline_options={"mining": {"steps": 2}, "boxes": {"max_boxes": 1}}, num_cpus=1, progress=False,
            log=lambda _: None)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    want = replace(get_recipe("peaks").settings.with_overrides(mining={"steps": 2}, boxes={"max_boxes": 1}),
                   input_size=(64, 64))
    assert manifest["settings"] == want.to_record()
    assert InferenceSettings.from_record(manifest["settings"]) == want
    assert manifest["config"]["pipeline"] == {"mining": {"steps": 2}, "boxes": {"max_boxes": 1}}  # the overrides

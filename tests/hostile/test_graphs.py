"""Case 10, graphs that lie: a model file is checked against its own record when it is opened, on the first
batches, and for finite values.

The hostile graphs are the product's own export of the tiny checkpoint (`miner.export.onnx.export_checkpoint`,
what `miner export onnx` runs), edited with the onnx library while the miner metadata stays as exported:

- ``nan``: maps multiplied by a NaN constant (every image, every batch);
- ``wrong_classes``: maps sliced to 13 of the 14 classes, and declared so;
- ``batch_lie``: declared [batch, 14, 4, 4], but one class is sliced off when the batch holds more than 2 images
  (passes every check at open time and the test batch: only the job's own batches show it);
- ``data_nan``: maps divided by each image's darkest pixel: finite for an image without a black pixel,
  infinite or NaN for one with a black pixel (4 of the 12 phantoms have none).

Decision (README): a model that gives NaN or infinite logits or maps on a plain test batch is a model error
(exit 2, before Ray starts and before OUT is touched); NaN or infinite outputs for some images only are error
rows of kind ``non_finite`` for those images (no boxes, no images row) and the job ends with exit 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from miner.errors import ModelError
from tests.hostile.harness import assert_refused, assert_untouched, run_miner

C = 14  # the tiny model's classes (ChestX-ray14)


# -- graphs --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def clean_graph(tiny_model, tmp_path_factory) -> Path:
    """The tiny checkpoint exported with the product's exporter (parity check left out: seconds saved)."""
    from miner.export.onnx import export_checkpoint

    return export_checkpoint(tiny_model, tmp_path_factory.mktemp("graphs") / "clean.onnx", check=False).path


def _edit(src: Path, dst: Path, build) -> Path:
    """Copy `src` to `dst` with the ``maps`` output produced by ``build(graph, raw_name)`` from the exported maps
    (renamed `raw_name`); metadata and declared outputs unchanged unless `build` changes them."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == "maps":
                node.output[i] = "maps_raw"
    build(graph, "maps_raw")
    onnx.save(model, str(dst))
    return dst


def _const(graph, name: str, value) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def nan_graph(src: Path, dst: Path) -> Path:
    from onnx import helper

    def build(graph, raw):
        graph.node.append(helper.make_node("Mul", [raw, _const(graph, "nan", np.float32(np.nan))], ["maps"]))
    return _edit(src, dst, build)


def wrong_classes_graph(src: Path, dst: Path) -> Path:
    from onnx import helper

    def build(graph, raw):
        graph.node.append(helper.make_node("Slice", [raw, _const(graph, "s0", np.array([0], np.int64)),
                                                     _const(graph, "s1", np.array([C - 1], np.int64)),
                                                     _const(graph, "ax", np.array([1], np.int64))], ["maps"]))
        out = next(o for o in graph.output if o.name == "maps")
        out.type.tensor_type.shape.dim[1].dim_value = C - 1
    return _edit(src, dst, build)


def batch_lie_graph(src: Path, dst: Path) -> Path:
    """Declared [batch, 14, 4, 4]; 13 classes come out when the batch holds more than 2 images."""
    import onnx
    from onnx import helper

    def build(graph, raw):
        graph.node.extend([
            helper.make_node("Shape", [raw], ["lie_b"], start=0, end=1),
            helper.make_node("Greater", ["lie_b", _const(graph, "two", np.array([2], np.int64))], ["lie_big"]),
            helper.make_node("Cast", ["lie_big"], ["lie_drop"], to=onnx.TensorProto.INT64),
            helper.make_node("Sub", [_const(graph, "c", np.array([C], np.int64)), "lie_drop"], ["lie_end"]),
            helper.make_node("Slice", [raw, _const(graph, "s0", np.array([0], np.int64)), "lie_end",
                                       _const(graph, "ax", np.array([1], np.int64))], ["maps"]),
        ])
    return _edit(src, dst, build)


def data_nan_graph(src: Path, dst: Path) -> Path:
    """maps / min(image): inf or NaN for an image that holds a black pixel, finite for the others."""
    from onnx import helper

    def build(graph, raw):
        graph.node.extend([
            helper.make_node("ReduceMin", ["images", _const(graph, "axes", np.array([1, 2, 3], np.int64))],
                             ["dn_min"], keepdims=1),
            helper.make_node("Reciprocal", ["dn_min"], ["dn_scale"]),
            helper.make_node("Mul", [raw, "dn_scale"], ["maps"]),
        ])
    return _edit(src, dst, build)


def _retyped(src: Path, dst: Path, change) -> Path:
    """Copy of `src` with its declared inputs/outputs or metadata changed by ``change(model)``."""
    import onnx

    model = onnx.load(str(src))
    change(model)
    onnx.save(model, str(dst))
    return dst


def _set_prop(model, key: str, value: str) -> None:
    next(p for p in model.metadata_props if p.key == key).value = value


# -- opened in process: one ModelError naming the file and what to do ------------------------------------------

def test_clean_graph_passes_every_check(clean_graph):
    from miner.backends import check_model, open_backend

    assert check_model(clean_graph).classes.__len__() == C
    backend = open_backend(clean_graph, provider="cpu")
    logits, maps = backend.run(np.random.default_rng(1).random((5, 1, 64, 64), dtype=np.float32))
    assert tuple(logits.shape) == (5, C) and tuple(maps.shape) == (5, C, 4, 4)


LIES = {
    # what the declared graph or its record says -> a phrase of the one-line error
    "maps lose a class": (None, "output 'maps' is [?, 13, 4, 4] float32, its metadata promises [B, 14, 4, 4]"),
    "record lists 13 classes": (lambda m: _set_prop(m, "miner.classes", json.dumps([f"c{i}" for i in range(C - 1)])),
                                "output 'logits' is [?, 14] float32, its metadata promises [B, 13]"),
    "record's map grid 8x8": (lambda m: _set_prop(m, "miner.map_size", "[8, 8]"), "promises [B, 14, 8, 8]"),
    "record's input 96 px": (lambda m: _set_prop(m, "miner.input_size", "[96, 96]"),
                             "input 'images' is [?, 1, 64, 64] float32, its metadata promises [B, 1, 96, 96]"),
    "record says 3 channels": (lambda m: _set_prop(m, "miner.in_chans", "3"), "promises [B, 3, 64, 64]"),
    "record says masks input": (lambda m: _set_prop(m, "miner.masks_input", "true"),
                                "inputs are ['images'], its metadata promises ['images', 'masks']"),
    "input renamed": (lambda m: [setattr(m.graph.input[0], "name", "pixels"),
                                 [n.input.__setitem__(i, "pixels") for n in m.graph.node
                                  for i, x in enumerate(n.input) if x == "images"]],
                      "inputs are ['pixels'], its metadata promises ['images']"),
    "input rank 3": (lambda m: m.graph.input[0].type.tensor_type.shape.dim.pop(), "input 'images' is [?, 1, 64]"),
    "input float16": (lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 10),
                      "input 'images' is float16, miner runs float32"),
    "fixed batch": (lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value", 1),
                    "has a fixed batch of 1"),
    "no maps output": (lambda m: m.graph.output.pop(), "outputs are ['logits'], its metadata promises"),
    "repeated classes": (lambda m: _set_prop(m, "miner.classes", json.dumps(["a"] * C)),
                         "class names repeat (a)"),
    "maps finer than input": (lambda m: (_set_prop(m, "miner.map_size", "[128, 128]")), "finer than the 64x64"),
    "maps of another stride": (lambda m: (_set_prop(m, "miner.map_size", "[4, 16]")), "at one stride"),
    "zero std": (lambda m: _set_prop(m, "miner.std", "[0.0]"), "std must be positive"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_graph_that_breaks_its_record_fails_on_open(clean_graph, tmp_path, lie):
    from miner.backends import check_model, open_backend

    change, phrase = LIES[lie]
    path = tmp_path / "lie.onnx"
    if lie == "maps lose a class":
        wrong_classes_graph(clean_graph, path)
    else:
        _retyped(clean_graph, path, change)
    for opening in (lambda: open_backend(path, provider="cpu"), lambda: check_model(path)):
        with pytest.raises(ModelError) as err:
            opening()
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"{path}: ") and phrase in line, line
        assert "miner export onnx" in line


def test_a_dynamic_axis_that_lies_fails_on_the_batch_that_shows_it(clean_graph, tmp_path):
    from miner.backends import check_model, open_backend

    path = batch_lie_graph(clean_graph, tmp_path / "lie.onnx")
    check_model(path)  # declared shapes agree, and batches of 1 and 2 are as promised
    backend = open_backend(path, provider="cpu")
    with pytest.raises(ModelError, match=r"returned maps of shape \[3, 13, 4, 4\] for a batch of 3, its metadata "
                                         r"promises \[3, 14, 4, 4\]"):
        backend.run(np.zeros((3, 1, 64, 64), np.float32))


def test_a_nan_graph_fails_its_probe(clean_graph, tmp_path):
    from miner.backends import check_model

    path = nan_graph(clean_graph, tmp_path / "nan.onnx")
    with pytest.raises(ModelError, match="gives NaN or infinite maps on a plain test image"):
        check_model(path)


def test_a_graph_that_fails_to_run_fails_its_probe(clean_graph, tmp_path):
    """Declared shapes as promised, but a Reshape no batch fits: ONNX Runtime's error becomes one ModelError."""
    from onnx import helper

    from miner.backends import check_model

    def build(graph, raw):
        graph.node.append(helper.make_node("Reshape", [raw, _const(graph, "to", np.array([-1, C + 1, 4, 4], np.int64))],
                                           ["maps"]))
    path = _edit(clean_graph, tmp_path / "broken.onnx", build)
    with pytest.raises(ModelError) as err:
        check_model(path)
    line = str(err.value)
    assert line.startswith(f"{path}: the model fails on a plain test batch of 2 images (") and "\n" not in line
    assert line.endswith("export it again with `miner export onnx CHECKPOINT`")


def test_a_checkpoint_with_nan_weights_fails_its_probe(tiny_model, tmp_path):
    import torch

    from miner.backends import check_model
    from miner.models.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_model)
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if name.endswith("weight")).fill_(float("nan"))
    path = save_checkpoint(tmp_path / "nan.pt", model, meta=meta)
    with pytest.raises(ModelError) as err:
        check_model(path)
    assert str(err.value).startswith(f"{path}: the model gives NaN or infinite logits and maps")
    assert "train it again, or take an earlier checkpoint" in str(err.value)


def test_an_engine_record_that_contradicts_itself_fails_before_tensorrt(clean_graph, tmp_path):
    """An engine's side file is checked on the driver (no GPU needed there)."""
    from miner.backends import check_model
    from miner.models.meta import read_onnx_metadata

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not read here")
    meta = read_onnx_metadata(clean_graph)
    side = tmp_path / "m.engine.json"
    side.write_text(meta.to_json())
    assert check_model(engine).map_size == (4, 4)
    record = json.loads(meta.to_json())
    record["map_size"] = [4, 64]  # a grid no stride of the 64 x 64 input gives
    side.write_text(json.dumps(record))
    with pytest.raises(ModelError, match=r"m.engine.json: its miner metadata is inconsistent: .*miner export trt"):
        check_model(engine)


def test_engine_io_reads_an_engine_as_declared():
    """The TensorRT backend's view of an engine (a stand-in with TensorRT 10's name-based I/O API)."""
    import types

    from miner.backends.tensorrt_backend import engine_io
    from miner.models.meta import check_io

    trt = types.SimpleNamespace(float32="F32", float16="F16", TensorIOMode=types.SimpleNamespace(INPUT="in"))
    tensors = {"images": ((-1, 1, 64, 64), "F32", "in"), "logits": ((-1, C), "F32", "out"),
               "maps": ((-1, C - 1, 4, 4), "F32", "out")}
    engine = types.SimpleNamespace(
        num_io_tensors=3, get_tensor_name=lambda i: list(tensors)[i],
        get_tensor_shape=lambda n: tensors[n][0], get_tensor_dtype=lambda n: tensors[n][1],
        get_tensor_mode=lambda n: tensors[n][2])
    inputs, outputs = engine_io(engine, trt)
    assert [(s.name, s.dims, s.dtype) for s in inputs] == [("images", (None, 1, 64, 64), "float32")]
    meta = types.SimpleNamespace(classes=tuple(f"c{i}" for i in range(C)), input_size=(64, 64), in_chans=1,
                                 map_size=(4, 4), masks_input=False)
    with pytest.raises(ModelError, match=r"e.engine: the graph's output 'maps' is \[\?, 13, 4, 4\] float32"):
        check_io(meta, inputs, outputs, source="e.engine", dynamic_batch=False)


# -- the real CLI --------------------------------------------------------------------------------------------

def _mine(archive: Path, model: Path, out: Path, *extra: str):
    return run_miner(["mine", archive, "--model", model, "--out", out, "--no-progress", "--num-cpus", "2", *extra],
                     cwd=out.parent)


@pytest.mark.parametrize("kind, phrase", [
    ("nan", "the model gives NaN or infinite maps on a plain test image"),
    ("wrong_classes", "the graph's output 'maps' is [?, 13, 4, 4] float32, its metadata promises [B, 14, 4, 4]"),
])
def test_mine_refuses_a_lying_graph_before_ray_and_before_out(clean_graph, archive, tmp_path, watched, kind, phrase):
    graph = {"nan": nan_graph, "wrong_classes": wrong_classes_graph}[kind](clean_graph, tmp_path / f"{kind}.onnx")
    out = tmp_path / "out"
    before = watched(out)
    result = _mine(archive, graph, out)
    line = assert_refused(result, 2, contains=[f"miner mine: error: {graph}: ", phrase, "miner export onnx"])
    assert "Ray" not in result.stderr, line  # refused before the cluster started
    assert not out.exists()
    assert_untouched(before, watched(out))


def test_mine_turns_a_dynamic_lie_into_one_line_from_the_actor(clean_graph, archive, tmp_path, watched):
    """Batches of 1 and 2 are as promised (the driver's probe and the actors' warm-up pass); the job's batch of 4
    comes out with 13 classes: the actor's ModelError reaches the driver as one error line, exit 2."""
    graph = batch_lie_graph(clean_graph, tmp_path / "lie.onnx")
    out = tmp_path / "out"
    before = watched(out)
    result = _mine(archive, graph, out, "--batch-size", "4")
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr + result.stdout, result.describe()
    errors = [line for line in result.err_lines if "error" in line.lower()]
    assert errors == [result.err_lines[-1]], result.describe()
    assert errors[0].startswith(f"miner mine: error: {graph}: the model returned maps of shape [4, 13, 4, 4] for a "
                                "batch of 4, its metadata promises [4, 14, 4, 4]"), result.describe()
    # the other stderr lines are the job's own information lines (the Ray line), not Ray's worker logs
    assert all(not line.startswith("(") and "pid=" not in line for line in result.err_lines), result.describe()
    assert_untouched(before, watched(out))
    assert not list(out.glob("_shards/*.json"))  # no shard was written


def test_mine_gives_images_with_nan_maps_error_rows_and_keeps_their_neighbours(clean_graph, archive, tmp_path,
                                                                                 watched):
    """The data-dependent NaN graph: images with a black pixel are `non_finite` error rows (no boxes, no images
    row), in the same batches as images that mine normally; exit 0 and the summary counts them."""
    import pyarrow.parquet as pq

    from miner.data import read_archive
    from miner.pipeline import decode_batch

    graph = data_nan_graph(clean_graph, tmp_path / "data_nan.onnx")
    records = [(r.image_id, r.path, r.labels) for r in read_archive(archive).records]
    pixels = decode_batch(records, input_size=64).images
    black = {r[0] for r, img in zip(records, pixels) if img.min() == 0}
    assert 0 < len(black) < len(records)
    out = tmp_path / "out"
    before = watched(out)
    result = _mine(archive, graph, out, "--batch-size", "4", "--classes", "all")
    assert result.returncode == 0, result.describe()
    assert "Traceback" not in result.stderr + result.stdout
    assert_untouched(before, watched(out))
    errors = pq.read_table(out / "errors").to_pylist()
    assert {e["image_id"]: e["kind"] for e in errors} == {i: "non_finite" for i in black}
    assert all("NaN or infinite" in e["error"] and e["path"] in e["error"] for e in errors)
    images = set(pq.read_table(out / "images").column("image_id").to_pylist())
    assert images == {r[0] for r in records} - black
    boxed = set(pq.read_table(out / "boxes").column("image_id").to_pylist())
    assert boxed and boxed <= images
    # the finite images' boxes are those of the clean graph: a positive factor per image leaves min-max normalised
    # maps, and so the boxes, as they were
    from miner.backends import open_backend
    from miner.pipeline import Pipeline

    batch = decode_batch(records, input_size=64)
    kept = batch.take([i for i, image_id in enumerate(batch.image_ids) if image_id in images])
    want = Pipeline(open_backend(clean_graph, provider="cpu"), classes="all").run(kept).boxes.to_pylist()
    got = pq.read_table(out / "boxes").to_pylist()
    def key(b):
        return b["image_id"], b["class_index"], b["rank"]

    assert sorted(map(key, got)) == sorted(map(key, want))
    for g, w in zip(sorted(got, key=key), sorted(want, key=key)):
        np.testing.assert_allclose([g[k] for k in "xywh"], [w[k] for k in "xywh"], atol=1e-3)
    assert f"{len(black)} errors" in result.stdout

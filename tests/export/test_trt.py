"""TensorRT engine build: everything up to `build_serialized_network` with a fake module; the real build on a GPU."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from miner.backends.tensorrt_backend import import_tensorrt
from miner.errors import BackendUnavailable, ModelError, UsageError
from miner.export.trt import EngineSettings, build_engine, define_network, has_qdq
from miner.models.meta import engine_metadata_path
from tests.export.fake_tensorrt import make_fake_tensorrt
from tests.export.graphs import CASES, exported, model_for


@pytest.fixture(scope="module")
def int8_graph(graphs_dir):
    from miner.export.quantize import calibration_images, quantize_onnx

    src = exported("resnet18-cam", graphs_dir).path
    dst = graphs_dir / "resnet18-cam.int8-trt.onnx"
    if not dst.exists():
        quantize_onnx(src, dst, target="tensorrt", images=calibration_images((64, 64), 1, count=4))
    return dst


def test_profile_flags_and_workspace(graphs_dir):
    trt = make_fake_tensorrt()
    path = exported("resnet18-cam", graphs_dir).path
    plan = define_network(trt, path, EngineSettings(fp16=True, min_batch=2, opt_batch=8, max_batch=16, workspace_gb=2))
    assert plan.profile.shapes == {"images": ((2, 1, 64, 64), (8, 1, 64, 64), (16, 1, 64, 64))}
    assert plan.config.profiles == [plan.profile]
    assert plan.config.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.TF32}
    assert plan.config.pools == {trt.MemoryPoolType.WORKSPACE: 2 << 30}
    assert plan.network.flags == 0  # TensorRT 10: explicit batch is implied, weakly typed
    assert not plan.strongly_typed
    assert trt.calls[0] == ("create_network", 0) and trt.calls[1] == ("parse_from_file", str(path))


def test_masks_input_gets_its_own_shapes(graphs_dir):
    trt = make_fake_tensorrt()
    result = exported("mlp-gradcam", graphs_dir)
    plan = define_network(trt, result.path, EngineSettings(min_batch=1, opt_batch=4, max_batch=8, tf32=False))
    h, w = result.meta.map_size
    assert plan.shapes["images"] == ((1, 1, 64, 64), (4, 1, 64, 64), (8, 1, 64, 64))
    assert plan.shapes["masks"] == ((1, 3, h, w), (4, 3, h, w), (8, 3, h, w))
    assert plan.config.flags == set()  # fp32 without TF32


def test_int8_needs_qdq_nodes(graphs_dir):
    path = exported("resnet18-cam", graphs_dir).path
    assert not has_qdq(path)
    with pytest.raises(UsageError, match="explicit Q/DQ"):
        define_network(make_fake_tensorrt(), path, EngineSettings(int8=True))


def test_int8_from_qdq_graph_is_strongly_typed(int8_graph):
    assert has_qdq(int8_graph)
    trt = make_fake_tensorrt()
    plan = define_network(trt, int8_graph, EngineSettings(int8=True))
    assert plan.strongly_typed
    assert plan.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert trt.BuilderFlag.INT8 not in plan.config.flags  # precision comes from the Q/DQ nodes
    # with --fp16 as well: weakly typed, INT8 + FP16 flags
    plan = define_network(make_fake_tensorrt(), int8_graph, EngineSettings(int8=True, fp16=True))
    assert not plan.strongly_typed
    assert {trt.BuilderFlag.INT8, trt.BuilderFlag.FP16} <= plan.config.flags


def test_tensorrt_8_gets_explicit_batch(graphs_dir):
    trt = make_fake_tensorrt(version="8.6.1")
    plan = define_network(trt, exported("resnet18-cam", graphs_dir).path, EngineSettings())
    assert plan.network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def test_parse_errors_are_reported(graphs_dir):
    trt = make_fake_tensorrt(parse_errors=("In node 3 (importConvTranspose): UNSUPPORTED_NODE",))
    with pytest.raises(ModelError, match="cannot parse this graph: In node 3"):
        define_network(trt, exported("resnet18-cam", graphs_dir).path, EngineSettings())


@pytest.mark.parametrize(
    "settings", [EngineSettings(min_batch=4, opt_batch=2, max_batch=8), EngineSettings(workspace_gb=0)]
)
def test_bad_settings(graphs_dir, settings):
    with pytest.raises(UsageError):
        define_network(make_fake_tensorrt(), exported("resnet18-cam", graphs_dir).path, settings)


def test_build_engine_writes_engine_and_metadata(graphs_dir, tmp_path):
    trt = make_fake_tensorrt()
    result = exported("resnet18-cam", graphs_dir)
    engine = build_engine(result.path, tmp_path / "m.engine", EngineSettings(fp16=True), trt=trt)
    assert engine.read_bytes() == b"fake-engine:images"
    record = json.loads(engine_metadata_path(engine).read_text())
    assert record["classes"] == list(result.meta.classes)
    assert record["method"] == "cam" and record["map_size"] == list(result.meta.map_size)
    assert record["extra"]["fp16"] == "true" and record["extra"]["batch_range"] == "1,8,32"
    assert record["extra"]["trt_version"] == "10.9.0"


def test_missing_tensorrt_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        import_tensorrt()


def test_cli_without_tensorrt_exits_1_with_one_line(graphs_dir, tmp_path, capsys, monkeypatch):
    from miner.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = exported("resnet18-cam", graphs_dir).path
    code = main(["export", "trt", str(path), str(tmp_path / "m.engine"), "--fp16"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "TensorRT is not installed" in err
    assert not (tmp_path / "m.engine").exists()


def test_cli_int8_without_qdq_is_a_usage_error(graphs_dir, tmp_path, capsys, monkeypatch):
    """Checked before any build: refused with exit code 2 even where TensorRT exists."""
    import miner.export.trt as trt_module
    from miner.cli import main

    fake = make_fake_tensorrt()
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(trt_module, "require_gpu", lambda: None)
    code = main(["export", "trt", str(exported("resnet18-cam", graphs_dir).path), str(tmp_path / "m.plan"), "--int8"])
    assert code == 2
    assert "explicit Q/DQ" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18-cam", "mlp-gradcam", "unet-seg-gradcam"])
def test_engine_matches_eager(name, graphs_dir, tmp_path):
    """Real TensorRT build (fp32, TF32 off) and engine-vs-eager parity at batch 1 and 7."""
    from miner.backends.tensorrt_backend import TensorRTBackend
    from miner.cam import class_maps

    case = CASES[name]
    engine = build_engine(exported(name, graphs_dir).path, tmp_path / f"{name}.engine",
                          EngineSettings(tf32=False, min_batch=1, opt_batch=4, max_batch=8))
    backend = TensorRTBackend(engine)
    model = model_for(name).cuda()
    for batch in (1, 7):
        images = torch.rand(batch, 1, case.size, case.size, device="cuda")
        logits, maps = backend.run(images)
        want_logits, want_maps = class_maps(model, images, method=case.method, layer=case.layer)
        assert logits.device.type == "cuda"
        assert float((logits - want_logits).abs().max()) <= 1e-4 * max(1.0, float(want_logits.abs().max()))
        assert float((maps - want_maps).abs().max()) <= 1e-4 * max(1.0, float(want_maps.abs().max()))


@pytest.mark.gpu
def test_int8_engine_builds_and_runs(int8_graph, tmp_path):
    from miner.backends.tensorrt_backend import TensorRTBackend

    engine = build_engine(int8_graph, tmp_path / "int8.engine", EngineSettings(int8=True, max_batch=8))
    logits, maps = TensorRTBackend(engine).run(torch.rand(3, 1, 64, 64, device="cuda"))
    assert logits.shape == (3, 3) and torch.isfinite(maps).all()


def test_tensorrt_qdq_graph_is_symmetric_int8(int8_graph):
    """TensorRT takes signed int8 Q/DQ with zero point 0, at the convolutions' inputs."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(int8_graph))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantizers
    for q in quantizers:
        zero_point = inits[q.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    for n in model.graph.node:
        if n.op_type == "Conv":
            assert produced[n.input[0]].op_type == "DequantizeLinear"

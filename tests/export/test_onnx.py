"""ONNX graphs of logits + all class maps: parity with eager `miner.cam.class_maps` through one dynamic-batch graph."""
from __future__ import annotations

import onnx
import pytest
import torch

from miner.cam import class_maps
from miner.cam.graph import MapGraph, default_method
from miner.errors import ModelError, UsageError
from miner.export.onnx import check_graph, export_model
from miner.export.parity import DEFAULT_ATOL, ort_session, run_session
from miner.models.meta import ModelMeta, file_hash, parse_size, read_onnx_metadata, state_dict_hash
from tests.export.graphs import CASES, CLASSES, checkpoint_for, exported, model_for

PARITY_CASES = list(CASES)


def _bound(reference: torch.Tensor) -> float:
    """1e-4, scaled by the output's magnitude above 1 (segmentation pixel-set scores reach ~1e3)."""
    return DEFAULT_ATOL * max(1.0, float(reference.abs().max()))


@pytest.mark.parametrize("name", PARITY_CASES)
def test_graph_matches_class_maps_at_batch_1_and_7(name, graphs_dir):
    case = CASES[name]
    result = exported(name, graphs_dir)
    assert result.parity is not None and result.parity.ok, result.parity.line()
    model = model_for(name)
    session = ort_session(result.path)
    gen = torch.Generator().manual_seed(7)
    for batch in (1, 7):
        images = torch.rand(batch, 1, case.size, case.size, generator=gen)
        logits, maps = run_session(session, images)
        want_logits, want_maps = class_maps(model, images, method=case.method, layer=case.layer)
        assert logits.shape == tuple(want_logits.shape) == (batch, len(CLASSES))
        assert maps.shape == tuple(want_maps.shape)
        assert maps.shape[:2] == (batch, len(CLASSES))
        assert float((torch.from_numpy(logits) - want_logits).abs().max()) <= _bound(want_logits)
        assert float((torch.from_numpy(maps) - want_maps).abs().max()) <= _bound(want_maps)
        assert float(want_maps.abs().max()) > 0  # the comparison is not between two zero maps


@pytest.mark.parametrize("name", ["mlp-gradcam", "mlp-hirescam"])
def test_masks_input_gives_maps_of_erased_features(name, graphs_dir):
    """Non-linear head: the masks input recomputes each class's map on X * M_c (ClassMapper.erased_maps)."""
    case = CASES[name]
    result = exported(name, graphs_dir)
    assert result.meta.masks_input
    assert [i.name for i in ort_session(result.path).get_inputs()] == ["images", "masks"]
    model = model_for(name)
    mapper = MapGraph(model, method=case.method).mapper
    session = ort_session(result.path)
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 7):
        images = torch.rand(batch, 1, case.size, case.size, generator=gen)
        masks = (torch.rand(batch, len(CLASSES), *result.meta.map_size, generator=gen) > 0.4).float()
        _, maps = run_session(session, images, masks)
        want = mapper.erased_maps(mapper.features(images), masks)
        assert float((torch.from_numpy(maps) - want).abs().max()) <= DEFAULT_ATOL
        # erasure matters for this head: the maps differ from the un-erased ones
        _, plain = run_session(session, images, torch.ones_like(masks))
        assert float((torch.from_numpy(plain) - torch.from_numpy(maps)).abs().max()) > 1e-3


def test_linear_head_graph_has_no_masks_input_and_no_backward(graphs_dir):
    result = exported("resnet18-cam", graphs_dir)
    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits", "maps"]
    ops = {n.op_type for n in model.graph.node}
    assert "ConvTranspose" not in ops  # maps from features and branch weights, no gradient pass
    # batch dimension symbolic on inputs and outputs, everything else fixed
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
        assert all(d.HasField("dim_value") for d in dims[1:])


def test_gradient_graph_holds_the_backward_convolutions(graphs_dir):
    result = exported("unet-seg-gradcam", graphs_dir)
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "ConvTranspose" in ops  # convolution_backward -> ConvTranspose
    assert "Conv" in ops


def test_metadata_records_the_model(graphs_dir):
    result = exported("msa-deconv-cam", graphs_dir)
    meta = read_onnx_metadata(result.path)
    model = model_for("msa-deconv-cam")
    assert meta == result.meta
    assert meta.classes == CLASSES
    assert meta.method == "cam" and meta.layer == "msa"
    assert meta.input_size == (64, 64) and meta.in_chans == 1
    assert meta.map_size == (4, 4)  # stride 16 of the MSA features
    assert meta.mean == pytest.approx(model.mean) and meta.std == pytest.approx(model.std)
    assert meta.head_is_linear is True and meta.masks_input is False
    assert meta.arch == "resnet18_msa"
    assert meta.model_hash == state_dict_hash(model)
    import miner

    assert meta.miner_version == miner.__version__
    # the record is plain metadata_props with the miner. prefix
    props = {p.key: p.value for p in onnx.load(str(result.path), load_external_data=False).metadata_props}
    assert props["miner.classes"] == '["Atelectasis", "Effusion", "Nodule"]'
    assert props["miner.method"] == "cam"


def test_single_file_when_small(graphs_dir):
    result = exported("resnet18-cam", graphs_dir)
    assert not result.path.with_name(result.path.name + ".data").exists()
    assert result.size_bytes == result.path.stat().st_size


def test_failed_check_reports_the_difference(graphs_dir):
    """A graph checked against a different model fails, and says by how much in one line."""
    result = exported("resnet18-cam", graphs_dir)
    import copy

    changed = copy.deepcopy(model_for("resnet18-cam"))
    with torch.no_grad():
        changed.fc.weight.add_(0.01)
    report = check_graph(result.path, MapGraph(changed, method="cam"), result.meta)
    assert not report.ok
    line = report.line()
    assert "\n" not in line and "logits max|diff|" in line and "maps max|diff|" in line
    assert report.max_abs["maps"] > DEFAULT_ATOL


def test_default_methods():
    assert default_method(model_for("resnet18-cam")) == "cam"
    assert default_method(model_for("mlp-gradcam")) == "gradcam"
    assert default_method(model_for("unet-seg-gradcam")) == "seg-gradcam"
    assert default_method(model_for("dcfpn-pyramid-gradcam")) == "pyramid-gradcam"


def test_parse_size():
    assert parse_size("512") == (512, 512)
    assert parse_size("512x384") == (512, 384)
    assert parse_size(256) == (256, 256)
    assert parse_size([64, 32]) == (64, 32)
    assert parse_size(None) is None
    with pytest.raises(UsageError):
        parse_size("big")
    with pytest.raises(UsageError):
        parse_size("4x4")


def test_bad_options_are_usage_errors(tmp_path):
    model = model_for("mlp-gradcam")
    with pytest.raises(UsageError, match="opset"):
        export_model(model, tmp_path / "x.onnx", input_size=64, opset=12)
    with pytest.raises(UsageError):  # CAM needs a linear head
        export_model(model, tmp_path / "x.onnx", input_size=64, method="cam")
    with pytest.raises(UsageError, match="masks input"):  # erasure needs the feature layer
        export_model(model_for("unet-seg-gradcam"), tmp_path / "x.onnx", input_size=32, masks_input=True)


def test_cli_exports_a_checkpoint(graphs_dir, tmp_path, capsys):
    from miner.cli import main

    ckpt = checkpoint_for("resnet18-cam", tmp_path)
    out = tmp_path / "cli.onnx"
    assert main(["export", "onnx", str(ckpt), str(out), "--opset", "18"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(out)) and "check ok" in line and "cam maps at layer4" in line
    meta = read_onnx_metadata(out)
    assert meta.model_hash == file_hash(ckpt)  # a checkpoint records its file's hash
    assert meta.input_size == (64, 64)
    assert onnx.load(str(out)).opset_import[0].version == 18


def test_cli_failed_check_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    import miner.export.onnx as onnx_export
    from miner.cli import main
    from miner.export.parity import ParityReport

    def failing(path, graph, meta, *, atol):
        report = ParityReport(atol=atol)
        import numpy as np

        report.add("random batch 3", "logits", np.zeros(2), np.zeros(2))
        report.add("random batch 3", "maps", np.full(2, 0.5), np.zeros(2))
        return report

    monkeypatch.setattr(onnx_export, "check_graph", failing)
    ckpt = checkpoint_for("resnet18-cam", tmp_path)
    code = main(["export", "onnx", str(ckpt), str(tmp_path / "bad.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "parity check failed" in err and "maps max|diff| 0.5" in err


def test_cli_missing_checkpoint_is_one_line(tmp_path, capsys):
    from miner.cli import main

    assert main(["export", "onnx", str(tmp_path / "none.pt"), str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint not found" in err


def test_graph_meta_round_trips_through_json_and_props():
    meta = ModelMeta(
        classes=("A", "B"), method="gradcam", layer="layer4", input_size=(64, 48), in_chans=3,
        mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), head_is_linear=False, map_size=(2, 2), masks_input=True,
        arch="resnet18", model_hash="sha256:00", miner_version="0.1.0", extra={"quantization": "int8-static"},
    )
    assert ModelMeta.from_props(meta.to_props()) == meta
    assert ModelMeta.from_json(meta.to_json()) == meta
    with pytest.raises(ModelError, match="no miner metadata"):
        ModelMeta.from_props({}, source="foreign.onnx")


def test_float64_reference_decides_when_float32_rounding_exceeds_atol(graphs_dir):
    """A float32 reference off by 1e-3 (as a deep U-Net's own float32 rounding can be): float64 eager decides."""
    result = exported("resnet18-cam", graphs_dir)

    class NoisyFloat32(MapGraph):
        def reference(self, images, masks=None):
            logits, maps = super().reference(images, masks)
            return logits, maps + 1e-3 if maps.dtype == torch.float32 else maps

    report = check_graph(result.path, NoisyFloat32(model_for("resnet18-cam"), method="cam"), result.meta)
    assert report.ok and report.reference == "eager float64"
    assert report.max_abs["maps"] < 1e-5
    assert "eager float32: logits max|diff|" in report.line() and "maps max|diff| 0.001" in report.line()


def test_caller_model_keeps_its_dtype_and_mode(tmp_path):
    """Export moves the model to float32 on the CPU, then back: the caller's model keeps its dtype, mode and flags,
    and weights that float32 represents (those of any float32-trained model) come back unchanged."""
    import copy

    model = copy.deepcopy(model_for("resnet18-cam")).double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, tmp_path / "m.onnx", input_size=CASES["resnet18-cam"].size, check=False)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

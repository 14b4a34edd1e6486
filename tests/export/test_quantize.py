"""INT8 QDQ graphs: explicit Q/DQ nodes, metadata kept, maps close to fp32; the rank correlation helper."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from miner.errors import UsageError
from miner.export.metadata import read_onnx_metadata
from miner.export.parity import ort_session, run_session
from miner.export.quantize import calibration_images, quantize_onnx, rank_correlation
from tests.export.graphs import exported


@pytest.fixture(scope="module")
def quantized(graphs_dir):
    src = exported("msa-bilinear-cam", graphs_dir).path
    dst = graphs_dir / "msa-bilinear-cam.int8.onnx"
    kind = quantize_onnx(src, dst, images=calibration_images((64, 64), 1, count=8))
    return src, dst, kind


def test_static_qdq_on_the_backbone_not_the_head(quantized):
    _, dst, kind = quantized
    assert kind == "static"
    model = onnx.load(str(dst))
    nodes = model.graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    # every Conv reads dequantized inputs and weights; the head's Gemm/MatMul reads float values
    produced = {o: n for n in nodes for o in n.output}
    for n in nodes:
        if n.op_type == "Conv":
            assert produced[n.input[0]].op_type == "DequantizeLinear"
            assert produced[n.input[1]].op_type == "DequantizeLinear"
        if n.op_type in ("Gemm", "MatMul"):
            assert all(i not in produced or produced[i].op_type != "DequantizeLinear" for i in n.input)
    # CPU target: unsigned int8 activations (U8S8), signed int8 weights
    inits = {t.name: t for t in model.graph.initializer}
    activation_zero_points = [inits[n.input[2]] for n in nodes if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert activation_zero_points and all(t.data_type == onnx.TensorProto.UINT8 for t in activation_zero_points)


def test_metadata_survives_and_names_the_quantization(quantized):
    src, dst, kind = quantized
    before, after = read_onnx_metadata(src), read_onnx_metadata(dst)
    assert after.classes == before.classes and after.map_size == before.map_size
    assert after.extra["quantization"] == "int8-static"
    assert after.extra["quantization_target"] == "cpu"


def test_int8_maps_stay_close_to_fp32(quantized):
    src, dst, _ = quantized
    images = torch.cat([torch.from_numpy(a) for a in calibration_images((64, 64), 1, count=4, seed=77)])
    _, fp32 = run_session(ort_session(src), images)
    _, int8 = run_session(ort_session(dst), images)
    fp32, int8 = torch.from_numpy(fp32), torch.from_numpy(int8)
    rel = float((int8 - fp32).abs().max() / fp32.abs().max())
    assert 0 < rel < 0.25  # quantized (not identical), but the same maps
    assert float(rank_correlation(int8.flatten(0, 1), fp32.flatten(0, 1)).mean()) > 0.8


def test_bad_target(graphs_dir, tmp_path):
    with pytest.raises(UsageError):
        quantize_onnx(exported("resnet18-cam", graphs_dir).path, tmp_path / "x.onnx", target="gpu")


def test_rank_correlation_against_hand_cases():
    a = torch.arange(9.0).view(1, 3, 3)
    assert rank_correlation(a, a).item() == pytest.approx(1.0)
    assert rank_correlation(a, -a).item() == pytest.approx(-1.0)
    assert rank_correlation(a, a ** 3 + 5).item() == pytest.approx(1.0)  # monotone: ranks unchanged
    # one swapped pair among 4 values: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    y = torch.tensor([[[2.0, 1.0], [3.0, 4.0]]])
    assert rank_correlation(x, y).item() == pytest.approx(0.8)
    np.testing.assert_allclose(rank_correlation(torch.cat([a, -a]), torch.cat([a, a])).numpy(), [1.0, -1.0])

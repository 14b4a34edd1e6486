"""Backends: one interface, opened by file type, same logits and maps as eager `miner.cam`."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from miner.backends import backend_for_path, open_backend
from miner.backends.onnxruntime_backend import OnnxRuntimeBackend, available_threads
from miner.backends.torch_backend import TorchBackend
from miner.cam import class_maps
from miner.errors import BackendUnavailable, ModelError, UsageError
from tests.export.graphs import CASES, CLASSES, checkpoint_for, exported, model_for

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of a machine without CUDA")


@pytest.fixture(scope="module")
def files(graphs_dir):
    out = {}
    for name in ("resnet18-cam", "mlp-gradcam"):
        out[name] = (checkpoint_for(name, graphs_dir), exported(name, graphs_dir).path)
    return out


def test_file_types_pick_the_backend(tmp_path):
    assert backend_for_path("m.pt") == "torch"
    assert backend_for_path("m.onnx") == "onnxruntime"
    assert backend_for_path("m.engine") == "tensorrt" and backend_for_path("m.plan") == "tensorrt"
    with pytest.raises(UsageError, match="unknown model file type"):
        backend_for_path("m.h5")


@no_cuda
def test_auto_opens_each_file_with_its_backend(files):
    ckpt, graph = files["resnet18-cam"]
    torch_backend = open_backend(ckpt)
    ort_backend = open_backend(graph)
    assert isinstance(torch_backend, TorchBackend) and torch_backend.provider == "torch eager"
    assert isinstance(ort_backend, OnnxRuntimeBackend)
    assert ort_backend.provider == "CPUExecutionProvider"  # auto on a machine without CUDA
    assert ort_backend.device == torch.device("cpu")
    assert "onnxruntime (CPUExecutionProvider) on cpu" in ort_backend.describe()
    for b in (torch_backend, ort_backend):
        assert b.meta.classes == CLASSES and b.meta.input_size == (64, 64) and b.meta.method == "cam"


@pytest.mark.parametrize("name", ["resnet18-cam", "mlp-gradcam"])
def test_torch_and_onnxruntime_agree_with_class_maps(files, name):
    ckpt, graph = files[name]
    backends = [open_backend(ckpt), open_backend(graph, backend="onnxruntime", provider="cpu")]
    images = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    want_logits, want_maps = class_maps(model_for(name), images, method=CASES[name].method)
    for b in backends:
        logits, maps = b.run(images)
        assert logits.shape == (5, 3) and maps.shape == want_maps.shape
        assert float((logits - want_logits).abs().max()) <= 1e-4
        assert float((maps - want_maps).abs().max()) <= 1e-4
        assert b.meta.map_size == tuple(want_maps.shape[-2:])
    # one description of the model for both: what the ONNX file records is what the torch backend reports
    torch_meta, onnx_meta = (dataclasses.asdict(b.meta) for b in backends)
    for meta in (torch_meta, onnx_meta):
        meta.pop("model_hash"), meta.pop("extra")
    assert torch_meta == onnx_meta


def test_recompute_for_nonlinear_head_only(files):
    """Linear head: None (mining masks the first map). MLP head: maps of erased features, same in both backends."""
    ckpt, graph = files["resnet18-cam"]
    images = torch.rand(2, 1, 64, 64)
    assert open_backend(ckpt).recompute(images) is None
    assert open_backend(graph).recompute(images) is None
    with pytest.raises(UsageError, match="no erasure masks"):
        open_backend(graph).run(images, masks=torch.ones(2, 3, 2, 2))

    ckpt, graph = files["mlp-gradcam"]
    tb, ob = open_backend(ckpt), open_backend(graph)
    assert tb.meta.masks_input and ob.meta.masks_input
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(9))
    masks = (torch.rand(4, 3, *ob.meta.map_size, generator=torch.Generator().manual_seed(10)) > 0.5).float()
    mapper = tb.mapper
    want = mapper.erased_maps(mapper.features(images), masks)
    for b in (tb, ob):
        got = b.recompute(images)(masks)
        assert float((got - want).abs().max()) <= 1e-4
        # all ones = nothing erased = the first maps
        assert float((b.recompute(images)(torch.ones_like(masks)) - b.run(images)[1]).abs().max()) <= 1e-4
    with pytest.raises(UsageError, match="masks must be"):
        ob.recompute(images)(torch.ones(4, 3, 1, 1))


def test_recompute_drives_attention_mining(files):
    from miner.mining import attention_mining

    ckpt, graph = files["mlp-gradcam"]
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    results = []
    for b in (open_backend(ckpt), open_backend(graph)):
        _, maps = b.run(images)
        results.append(attention_mining(maps, steps=2, recompute=b.recompute(images)))
    assert torch.equal(results[0].masks, results[1].masks)
    assert float((results[0].fused - results[1].fused).abs().max()) <= 1e-4


def test_images_are_checked_and_grey_replicated(files):
    ckpt, graph = files["resnet18-cam"]
    b = open_backend(graph)
    with pytest.raises(UsageError, match=r"images must be \[B, 1, 64, 64\]"):
        b.run(torch.rand(2, 1, 32, 32))
    logits3, _ = b.run(torch.rand(2, 64, 64))  # [B, H, W] accepted as one channel
    assert logits3.shape == (2, 3)


def test_explicit_mismatch_and_missing_files(files, tmp_path):
    ckpt, graph = files["resnet18-cam"]
    with pytest.raises(UsageError, match="needs an .onnx graph"):
        open_backend(ckpt, backend="onnxruntime")
    with pytest.raises(UsageError, match="unknown backend"):
        open_backend(graph, backend="openvino")
    with pytest.raises(ModelError, match="not found"):
        open_backend(tmp_path / "none.onnx")
    with pytest.raises(UsageError, match="fixed in the onnxruntime model"):
        open_backend(graph, method="gradcam")
    with pytest.raises(UsageError, match="unknown onnxruntime provider"):
        open_backend(graph, provider="rocm")


@no_cuda
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_named_gpu_provider_that_does_not_run_is_an_error(files, provider):
    """ONNX Runtime silently falls back to CPU; asking for a GPU provider by name must not."""
    _, graph = files["resnet18-cam"]
    with pytest.raises(BackendUnavailable, match="runs"):
        OnnxRuntimeBackend(graph, provider=provider)


def test_provider_check_uses_what_the_session_reports(files, monkeypatch):
    """With a session that reports another provider than asked: error when named, accepted under auto."""
    import onnxruntime as ort

    real = ort.InferenceSession

    class Session(real):
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _, graph = files["resnet18-cam"]
    calls = []
    monkeypatch.setattr(Session, "__init__", lambda self, path, sess_options=None, providers=None:
                        (calls.append([p if isinstance(p, str) else p[0] for p in providers]),
                         real.__init__(self, path, sess_options=sess_options, providers=["CPUExecutionProvider"]))[1])
    with pytest.raises(BackendUnavailable,
                       match="TensorrtExecutionProvider was asked for but CUDAExecutionProvider runs"):
        OnnxRuntimeBackend(graph, provider="tensorrt")
    assert calls[-1] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    b = OnnxRuntimeBackend(graph, provider="auto")
    assert b.provider == "CUDAExecutionProvider" and b.requested_provider == "auto"
    assert calls[-1] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cpu_threads(files):
    _, graph = files["resnet18-cam"]
    assert OnnxRuntimeBackend(graph, provider="cpu").intra_op_threads == available_threads()
    assert OnnxRuntimeBackend(graph, provider="cpu", intra_op_threads=1).intra_op_threads == 1
    assert available_threads() == len(os.sched_getaffinity(0))


def test_tensorrt_backend_without_tensorrt(files, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        open_backend(engine)


@pytest.mark.slow
def test_torch_compile_matches_eager(files):
    ckpt, _ = files["mlp-gradcam"]
    eager, compiled = open_backend(ckpt), open_backend(ckpt, compile=True)
    assert compiled.provider == "torch.compile"
    images = torch.rand(3, 1, 64, 64)
    for a, b in zip(eager.run(images), compiled.run(images)):
        assert float((a - b).abs().max()) <= 1e-4


@pytest.mark.gpu
def test_onnxruntime_cuda_keeps_tensors_on_the_gpu(files):
    _, graph = files["mlp-gradcam"]
    b = OnnxRuntimeBackend(graph, provider="cuda")
    images = torch.rand(2, 1, 64, 64, device="cuda")
    logits, maps = b.run(images)
    assert logits.device.type == "cuda" and maps.device.type == "cuda"
    want = class_maps(model_for("mlp-gradcam").cuda(), images, method="gradcam")
    assert float((maps - want[1]).abs().max()) <= 1e-4


def test_torch_backend_under_inference_mode(files):
    """The mining pipeline calls backends inside torch.inference_mode(): gradient maps must still work."""
    ckpt, _ = files["mlp-gradcam"]
    b = open_backend(ckpt)
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    masks = (torch.rand(3, 3, 2, 2, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    want_maps = b.run(images)[1]
    want_erased = b.recompute(images)(masks)
    with torch.inference_mode():
        _, maps = b.run(images)
        erased = b.recompute(images)(masks)
    assert torch.equal(maps, want_maps) and torch.equal(erased, want_erased)


def test_config_gives_the_defaults(files):
    from miner.config import BackendConfig

    _, graph = files["resnet18-cam"]
    b = open_backend(graph, config=BackendConfig(provider="cpu", intra_op_threads=1))
    assert b.provider == "CPUExecutionProvider" and b.intra_op_threads == 1
    assert open_backend(graph, config=BackendConfig(intra_op_threads=1), intra_op_threads=2).intra_op_threads == 2
    with pytest.raises(UsageError, match="needs a checkpoint"):
        open_backend(graph, config=BackendConfig(backend="torch"))


def test_integer_images_are_refused(files):
    _, graph = files["resnet18-cam"]
    with pytest.raises(UsageError, match="float in"):
        open_backend(graph).run(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))


def test_mining_refused_where_neither_shortcut_nor_recompute_is_exact(files):
    """Maps at an inner layer change under feature erasure and cannot be recomputed: one step only."""
    from miner.pipeline import Pipeline

    ckpt, graph = files["resnet18-cam"]
    for b in (open_backend(ckpt), open_backend(graph)):
        assert b.meta.shortcut_exact and not b.meta.masks_input
        Pipeline(b, mining={"steps": 3})  # exact shortcut: accepted
    ckpt, graph = files["mlp-gradcam"]
    for b in (open_backend(ckpt), open_backend(graph)):
        assert not b.meta.shortcut_exact and b.meta.masks_input
        Pipeline(b, mining={"steps": 3})  # exact recompute: accepted
    inner = open_backend(files["resnet18-cam"][0], method="gradcam", layer="layer3")
    assert (not inner.meta.shortcut_exact and not inner.meta.masks_input
            and inner.recompute(torch.rand(1, 1, 64, 64)) is None)
    Pipeline(inner, mining={"steps": 1})
    with pytest.raises(UsageError, match="--steps 1"):
        Pipeline(inner, mining={"steps": 3})

"""Stage weights of the class maps (`miner.cam.ClassMapper(stage_weights=...)`, `stage_scale`): values against a
literal per-stage CAM, erasure, every map path, the record through the backends and the ONNX graph, and errors."""
from __future__ import annotations

import pytest
import torch

from miner.cam import ClassMapper, class_maps, stage_scale
from miner.errors import UsageError
from miner.models import create_model
from tests.cam.tiny import randomise_bn

CLASSES = ("Atelectasis", "Mass", "Nodule")


def msa_model(**options):
    torch.manual_seed(0)
    model = create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8, **options)
    return randomise_bn(model)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 1, 64, 64)


def test_feature_stages_name_the_msa_parts():
    """ResNet-18 MSA at width 0.125: layer4 -> 64 channels, layer3 -> 32, layer2 -> 16 (512/256/128 x 0.125)."""
    assert msa_model().feature_stages == {"layer4": (0, 64), "layer3": (64, 96), "layer2": (96, 112)}
    assert create_model("resnet18_msa", classes=CLASSES, width=0.125).feature_stages == {
        "layer4": (0, 64), "layer3": (64, 96)}
    assert create_model("resnet18", classes=CLASSES, width=0.125).feature_stages == {"layer4": (0, 64)}
    # a fusion conv mixes the stages: no split
    assert create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8, msa_fuse=64).feature_stages == {}


def test_stage_scale_by_hand():
    model = msa_model()
    scale = stage_scale(model, [2, 0], {"Nodule": {"layer4": 0.25, "layer2": 2.0}, "Mass": {"layer3": 0.0}})
    assert scale.shape == (2, 112)
    expected_nodule = torch.cat([torch.full((64,), 0.25), torch.ones(32), torch.full((16,), 2.0)])
    assert torch.equal(scale[0], expected_nodule)
    assert torch.equal(scale[1], torch.ones(112))  # Atelectasis: not named


@pytest.mark.parametrize("method", ["cam", "layercam", "gradcam", "hirescam"])
def test_weighted_map_is_the_weighted_sum_of_per_stage_cams(images, method):
    """GAP + linear head: CAM_c = sum_s CAM_c^(s) with CAM_c^(s) = sum over stage s's channels of w_ck X_k; the
    gradient methods are ReLU(.) / (h w) of the same sum (LayerCAM over positive weights only). Literal
    einsum over sliced features and weights, no miner.cam code."""
    model = msa_model()
    weights = {"Nodule": {"layer4": 0.5, "layer3": 0.0}, "Atelectasis": {"layer2": 3.0}}
    logits, maps = class_maps(model, images, method=method, stage_weights=weights)
    plain_logits, _ = class_maps(model, images, method=method)
    assert torch.equal(logits, plain_logits)  # the classifier is untouched
    with torch.no_grad():
        x = model.forward_features(images)
    w = model.head_weight.detach()
    if method == "layercam":
        w = w.clamp(min=0)
    alpha = {c: {"layer4": 1.0, "layer3": 1.0, "layer2": 1.0} for c in CLASSES}
    for c, stages in weights.items():
        alpha[c].update(stages)
    parts = {"layer4": slice(0, 64), "layer3": slice(64, 96), "layer2": slice(96, 112)}
    h, wd = x.shape[-2:]
    for i, c in enumerate(CLASSES):
        ref = sum(alpha[c][s] * torch.einsum("bkhw,k->bhw", x[:, sl], w[i, sl]) for s, sl in parts.items())
        if method != "cam":
            ref = torch.relu(ref) / (h * wd)
        torch.testing.assert_close(maps[:, i], ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_weight_one_and_no_weights_are_the_plain_maps(images):
    model = msa_model()
    _, plain = class_maps(model, images, method="layercam")
    _, ones = class_maps(model, images, method="layercam", stage_weights={c: {"layer4": 1.0} for c in CLASSES})
    _, empty = class_maps(model, images, method="layercam", stage_weights={})
    assert torch.equal(plain, ones) and torch.equal(plain, empty)


def test_erasure_shortcut_stays_exact(images):
    """CAM(X * M) = M * CAM(X) for any channel weights: erased maps recomputed equal the masked first map."""
    model = msa_model()
    mapper = ClassMapper(model, method="layercam", stage_weights={"Mass": {"layer4": 0.25}})
    assert mapper.shortcut_exact
    with torch.no_grad():
        _, maps = mapper(images)
        features = mapper.features(images)
        masks = torch.rand(maps.shape) > 0.3
        erased = mapper.erased_maps(features, masks)
    torch.testing.assert_close(erased, maps * masks, rtol=1e-5, atol=1e-7)


def test_split_mode_scales_each_channel_of_the_gradient(images):
    """An mlp head (gradients by autograd, ``split`` mode): HiRes-CAM with stage weights is
    ReLU(sum_k a_k G_k A_k), G from a literal autograd call; erased maps the same on X * M_c."""
    model = msa_model(head="mlp")
    weights = {"Nodule": {"layer4": 0.3}}
    mapper = ClassMapper(model, method="hirescam", stage_weights=weights)
    assert mapper.mode == "split"
    model.eval()
    _, maps = mapper(images)
    with torch.no_grad():
        x = model.forward_features(images)
    a = torch.ones(112)
    a[:64] = 0.3
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.forward_head(leaf)[:, 2].sum(), leaf)
    ref = torch.relu((a.view(1, -1, 1, 1) * g * x).sum(1))
    torch.testing.assert_close(maps[:, 2], ref, rtol=1e-5, atol=1e-7)
    (g0,) = torch.autograd.grad(model.forward_head(leaf)[:, 0].sum(), leaf)
    torch.testing.assert_close(maps[:, 0], torch.relu((g0 * x).sum(1)), rtol=1e-5, atol=1e-7)  # not named: plain
    masks = torch.rand(2, 3, *x.shape[-2:]) > 0.4
    erased = mapper.erased_maps(x, masks)
    xe = (x * masks[:, 2:3]).clone().requires_grad_(True)
    (ge,) = torch.autograd.grad(model.forward_head(xe)[:, 2].sum(), xe)
    torch.testing.assert_close(erased[:, 2], torch.relu((a.view(1, -1, 1, 1) * ge * xe.detach()).sum(1)),
                               rtol=1e-5, atol=1e-7)


def test_errors(images):
    model = msa_model()
    with pytest.raises(UsageError, match="feature layer"):
        ClassMapper(model, method="gradcam", layer="layer3", stage_weights={"Mass": {"layer4": 0.5}})
    with pytest.raises(UsageError, match="gradcam\\+\\+ is not"):
        ClassMapper(model, method="gradcam++", stage_weights={"Mass": {"layer4": 0.5}})
    with pytest.raises(UsageError, match="finding\\(s\\) Effusion that the model does not have"):
        ClassMapper(model, method="cam", stage_weights={"Effusion": {"layer4": 0.5}})
    with pytest.raises(UsageError, match="no stage 'layer1'"):
        ClassMapper(model, method="cam", stage_weights={"Mass": {"layer1": 0.5}})
    with pytest.raises(UsageError, match=">= 0"):
        ClassMapper(model, method="cam", stage_weights={"Mass": {"layer4": -1.0}})
    fused = create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8, msa_fuse=64)
    with pytest.raises(UsageError, match="do not split by backbone stage"):
        ClassMapper(fused, method="cam", stage_weights={"Mass": {"layer4": 0.5}})


def test_record_reaches_every_backend_and_the_graph(tmp_path, images):
    """A checkpoint that records stage weights: the torch backend's maps are class_maps with them (plain_maps:
    without), the ONNX graph has them built in (parity <= 1e-4) and says so; a graph refuses plain_maps."""
    pytest.importorskip("onnxruntime")
    from miner.backends import open_backend
    from miner.export.onnx import export_checkpoint
    from miner.models import save_checkpoint

    model = msa_model()
    weights = {"Nodule": {"layer4": 0.25}, "Mass": {"layer4": 0.0}}
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta={"input_size": 64, "recipe": "peaks", "method": "layercam",
                                       "stage_weights": weights})
    torch_backend = open_backend(path, backend="torch", device="cpu")
    _, maps = torch_backend.run(images)
    _, ref = class_maps(model, images, method="layercam", stage_weights=weights)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-6)
    assert torch_backend.meta.inference["stage_weights"] == weights
    plain = open_backend(path, backend="torch", device="cpu", plain_maps=True)
    _, plain_maps = plain.run(images)
    torch.testing.assert_close(plain_maps, class_maps(model, images, method="layercam")[1], rtol=1e-4, atol=1e-6)
    assert "stage_weights" not in plain.meta.inference

    graph = export_checkpoint(path, tmp_path / "m.onnx")
    onnx_backend = open_backend(tmp_path / "m.onnx", provider="cpu")
    _, onnx_maps = onnx_backend.run(images)
    assert float((onnx_maps - maps).abs().max()) <= 1e-4 * max(1.0, float(maps.abs().max()))
    assert graph.meta.inference["stage_weights"] == weights == onnx_backend.meta.inference["stage_weights"]
    with pytest.raises(UsageError, match="export the checkpoint again with --plain-maps"):
        open_backend(tmp_path / "m.onnx", provider="cpu", plain_maps=True)
    bare = export_checkpoint(path, tmp_path / "plain.onnx", plain_maps=True)
    assert "stage_weights" not in bare.meta.inference
    _, bare_maps = open_backend(tmp_path / "plain.onnx", provider="cpu").run(images)
    assert float((bare_maps - plain_maps).abs().max()) <= 1e-4 * max(1.0, float(plain_maps.abs().max()))

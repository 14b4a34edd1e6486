"""The engine: all classes in one call, the three computation modes, erased maps, tracing, errors."""
from __future__ import annotations

import pytest
import torch

from miner.cam import ClassMapper, class_maps, inference_state, list_methods, maps_function
from miner.errors import UsageError
from tests.cam.tiny import TinyClassifier

GRADIENT_METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(7))


def test_registry_lists_every_method():
    assert list_methods() == sorted(
        ["cam", "gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "seg-gradcam", "seg-hirescam",
         "pyramid-gradcam"]
    )


@pytest.mark.parametrize("head, layer", [("linear", None), ("mlp", None), ("linear", "layer1"), ("mlp", "layer1")])
@pytest.mark.parametrize("method", ["cam"] + GRADIENT_METHODS)
def test_all_classes_in_one_call_equal_one_by_one(images, head, layer, method):
    model = TinyClassifier(head=head, seed=11)
    if method == "cam" and (head != "linear" or layer is not None):
        with pytest.raises(UsageError, match="linear head"):
            class_maps(model, images, method=method, layer=layer)
        return
    logits, maps = class_maps(model, images, method=method, layer=layer)
    assert maps.shape[:2] == (2, len(model.classes))
    for c, name in enumerate(model.classes):
        one_logits, one = class_maps(model, images, method=method, layer=layer, classes=[name])
        torch.testing.assert_close(one[:, 0], maps[:, c], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(one_logits, logits)
    torch.testing.assert_close(logits, model(images), atol=1e-5, rtol=1e-5)
    # a subset in a different order is the matching slice
    _, sub = class_maps(model, images, method=method, layer=layer, classes=[3, 1])
    torch.testing.assert_close(sub, maps[:, [3, 1]], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_modes_agree_at_feature_layer(images, method):
    """analytic (no backward), split (autograd on the head) and hook (autograd from a forward hook) agree."""
    model = TinyClassifier(head="linear", seed=2)
    mapper = ClassMapper(model, method=method)
    assert mapper.mode == "analytic"
    out = {}
    with inference_state(model):
        for mode in ("analytic", "split", "hook"):
            mapper.mode = mode
            out[mode] = mapper(images)
    for mode in ("split", "hook"):
        torch.testing.assert_close(out[mode][0], out["analytic"][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out[mode][1], out["analytic"][1], atol=1e-6, rtol=1e-4)
    assert ClassMapper(TinyClassifier(head="mlp"), method=method).mode == "split"
    assert ClassMapper(model, method=method, layer="layer1").mode == "hook"


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("method", ["cam"] + GRADIENT_METHODS)
def test_erased_maps_equal_maps_of_erased_features(images, head, method):
    """erased_maps(X, M)[:, c] is the method's map when branch c sees X * M_c (Cai et al. Eq. 1, 7)."""
    model = TinyClassifier(head=head, seed=4)
    if method == "cam" and head == "mlp":
        return  # CAM has no non-linear-head form (covered by the UsageError test)
    mapper = ClassMapper(model, method=method)
    with inference_state(model):
        x = mapper.features(images)
        masks = (torch.rand(2, len(model.classes), *x.shape[-2:], generator=torch.Generator().manual_seed(0)) > 0.4)
        got = mapper.erased_maps(x, masks.float())
        for c in range(len(model.classes)):
            # literal reference: a model whose forward_features returns X * M_c, maps of class c
            xc = x * masks[:, c : c + 1]
            ref_mapper = ClassMapper(_Fixed(model, xc), method=method, classes=[c])
            _, ref = ref_mapper(images)
            torch.testing.assert_close(got[:, c], ref[:, 0], atol=1e-6, rtol=1e-4)


class _Fixed(torch.nn.Module):
    """The same head on fixed features (for a literal reference of erased maps)."""

    def __init__(self, model: TinyClassifier, features: torch.Tensor) -> None:
        super().__init__()
        self.inner = model
        self.features = features
        self.classes = model.classes
        self.feature_layer = model.feature_layer
        self.task = "classification"

    head_is_linear = property(lambda self: self.inner.head_is_linear)
    head_weight = property(lambda self: self.inner.head_weight)
    layer2 = property(lambda self: self.inner.layer2)

    def forward_features(self, x):
        return self.features

    def forward_head(self, f, *, masks=None):
        return self.inner.forward_head(f, masks=masks)


def test_shortcut_flag():
    lin, mlp = TinyClassifier(head="linear"), TinyClassifier(head="mlp")
    assert ClassMapper(lin, method="cam").shortcut_exact
    assert ClassMapper(lin, method="gradcam").shortcut_exact
    assert not ClassMapper(lin, method="xgradcam").shortcut_exact  # weights normalised by sums of A
    assert not ClassMapper(mlp, method="gradcam").shortcut_exact
    assert not ClassMapper(lin, method="gradcam", layer="layer1").shortcut_exact


@pytest.mark.parametrize("method, layer, head", [("gradcam", None, "mlp"), ("hirescam", "layer1", "linear")])
def test_maps_function_traces_with_make_fx(images, method, layer, head):
    """The export route: make_fx(symbolic) records the autograd calls as ops; the graph reproduces eager."""
    from torch.fx.experimental.proxy_tensor import make_fx

    model = TinyClassifier(head=head, seed=9)
    fn = maps_function(model, method, layer)
    with inference_state(model), torch._dispatch.python.enable_python_dispatcher():
        gm = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(images)
    other = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(5))  # another batch size
    with inference_state(model):
        ref_logits, ref_maps = fn(other)
    logits, maps = gm(other)
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps, ref_maps, atol=1e-6, rtol=1e-5)
    assert any("convolution_backward" in str(n.target) for n in gm.graph.nodes)  # the backward is in the graph


def test_class_maps_restores_model_state(images):
    model = TinyClassifier(head="mlp")
    model.train()
    class_maps(model, images, method="gradcam", layer="layer1")
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_gradient_maps_work_under_inference_mode(images):
    model = TinyClassifier(head="mlp")
    ref = class_maps(model, images, method="gradcam")[1]
    with torch.inference_mode():
        got = class_maps(model, images, method="gradcam")[1]
    torch.testing.assert_close(got, ref)


def test_usage_errors(images):
    model = TinyClassifier()
    with pytest.raises(UsageError, match="unknown class-map method"):
        class_maps(model, images, method="scorecam")
    with pytest.raises(UsageError, match="no layer 'layer9'"):
        class_maps(model, images, method="gradcam", layer="layer9")
    with pytest.raises(UsageError, match="unknown class 'Nodule'"):
        class_maps(model, images, classes=["Nodule"])
    with pytest.raises(UsageError, match="segmentation net"):
        class_maps(model, images, method="seg-gradcam")
    with pytest.raises(UsageError, match="more than once"):
        class_maps(model, images, method="gradcam", layer="layer1.relu")  # the block's ReLU runs twice
    with pytest.raises(UsageError, match="pyramid"):
        class_maps(model, images, method="pyramid-gradcam")


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_erased_maps_under_inference_mode(images, head):
    """Backends call recompute inside torch.inference_mode(): the gradient path must still work there."""
    model = TinyClassifier(head=head, seed=1)
    mapper = ClassMapper(model, method="xgradcam")
    masks = (torch.rand(2, len(model.classes), 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    with inference_state(model):
        ref = mapper.erased_maps(mapper.features(images), masks)
        with torch.inference_mode():
            got = mapper.erased_maps(mapper.features(images), masks)
    torch.testing.assert_close(got, ref)

"""class_maps on the real `miner.models` architectures (small widths): modes, consistency, pyramid scales."""
from __future__ import annotations

import pytest
import torch

from miner.cam import ClassMapper, class_maps, inference_state
from miner.models import create_model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch, options, mode", [
    ("resnet18", {"width": 0.125}, "analytic"),
    ("resnet18_msa", {"width": 0.125}, "analytic"),
    ("resnet18_msa", {"width": 0.125, "head": "mlp"}, "split"),
])
def test_feature_layer_modes_and_one_by_one(images, arch, options, mode):
    model = create_model(arch, num_classes=4, **options).eval()
    mapper = ClassMapper(model, method="gradcam")
    assert mapper.mode == mode
    logits, maps = class_maps(model, images, method="gradcam")
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images), atol=1e-5, rtol=1e-5)
    for c in range(4):
        torch.testing.assert_close(class_maps(model, images, method="gradcam", classes=[c])[1][:, 0], maps[:, c],
                                   atol=1e-6, rtol=1e-5)
    # the same maps through hooks and autograd (no analytic shortcut, no split)
    hooked = ClassMapper(model, method="gradcam")
    hooked.mode = "hook"
    with inference_state(model):
        torch.testing.assert_close(hooked(images)[1], maps, atol=1e-6, rtol=1e-4)


def test_dcfpn_pyramid_is_sum_of_upsampled_gradcams(images):
    from torch.nn import functional as F

    model = create_model("dcfpn", num_classes=3, channels=4, depth=3).eval()
    _, pyr = class_maps(model, images, method="pyramid-gradcam", scales=(1, 3))
    parts = [class_maps(model, images, method="gradcam", layer=name)[1] for name in ("dec1", "enc3")]
    ref = parts[0] + F.interpolate(parts[1], size=parts[0].shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(pyr, ref, atol=1e-6, rtol=1e-5)


def test_unet_seg_maps_at_bottleneck(images):
    model = create_model("unet", classes=("background", "lesion"), channels=4, depth=2).eval()
    scores, maps = class_maps(model, images, method="seg-gradcam", target="all")
    with torch.no_grad():
        torch.testing.assert_close(scores, model(images).sum(dim=(2, 3)), atol=1e-4, rtol=1e-5)
    assert maps.shape == (2, 2, 16, 16) and bool((maps >= 0).all())

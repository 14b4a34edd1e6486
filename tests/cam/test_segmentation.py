"""Seg-Grad-CAM and Seg-HiRes-Grad-CAM against a direct autograd transcription of Rheude et al. Eq. 5-6."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from miner.cam import class_maps, normalize_maps
from miner.cam.segmentation import pixel_set_weights
from miner.errors import UsageError
from tests.cam.pgc_shim import import_pytorch_grad_cam
from tests.cam.tiny import TinySegNet


@pytest.fixture(scope="module")
def net() -> TinySegNet:
    return TinySegNet(seed=6)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))


def _direct(net: TinySegNet, images: torch.Tensor, pixel_set: torch.Tensor, hires: bool) -> torch.Tensor:
    """y^c = sum_{(u,v) in P_c} y_c(u, v); weights mean (Eq. 5) or element-wise (Eq. 6) gradients at the bottleneck."""
    e1 = net.enc1(images)
    a = net.bottleneck(F.max_pool2d(e1, 2)).detach().requires_grad_(True)
    out = net.decode(e1.detach(), a)
    maps = []
    for c in range(out.shape[1]):
        y = (out[:, c] * pixel_set[:, c]).sum()
        (g,) = torch.autograd.grad(y, a, retain_graph=True)
        m = (g * a).sum(1) if hires else (g.mean(dim=(2, 3), keepdim=True) * a).sum(1)
        maps.append(torch.relu(m))
    return torch.stack(maps, 1).detach()


def _sets(out: torch.Tensor) -> dict[str, tuple[object, torch.Tensor]]:
    b, k, h, w = out.shape
    pred = out.argmax(1)
    predicted = torch.stack([(pred == c).float() for c in range(k)], 1)
    mask = torch.zeros(b, h, w)
    mask[:, 3:9, 4:12] = 1
    pixel = torch.zeros(b, k, h, w)
    pixel[:, :, 5, 7] = 1
    return {
        "predicted": ("predicted", predicted),
        "all": ("all", torch.ones(b, k, h, w)),
        "mask": (mask.bool(), mask[:, None].expand(b, k, h, w)),
        "pixel": ((5, 7), pixel),
    }


@pytest.mark.parametrize("method, hires", [("seg-gradcam", False), ("seg-hirescam", True)])
@pytest.mark.parametrize("which", ["predicted", "all", "mask", "pixel"])
def test_seg_methods_equal_direct_transcription(net, images, method, hires, which):
    with torch.no_grad():
        out = net(images)
    target, pixel_set = _sets(out)[which]
    scores, maps = class_maps(net, images, method=method, target=target)
    ref = _direct(net, images, pixel_set, hires)
    assert maps.shape == (2, 3, 8, 8) and float(ref.max()) > 0
    torch.testing.assert_close(maps, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scores, (out * pixel_set).sum(dim=(2, 3)), atol=1e-5, rtol=1e-5)


def test_seg_gradcam_matches_pytorch_grad_cam(net, images):
    try:
        pgc = import_pytorch_grad_cam()
    except ImportError as err:
        pytest.skip(f"pytorch-grad-cam not installed ({err}); the direct transcription covers the formula")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    with torch.no_grad():
        pred = net(images).argmax(1)
    _, maps = class_maps(net, images, method="seg-gradcam", target="predicted")
    compared = 0
    with pgc.GradCAM(model=net, target_layers=[net.bottleneck]) as cam:
        for c in range(3):
            targets = [SemanticSegmentationTarget(c, (pred[b] == c).float().numpy()) for b in range(2)]
            ref = cam(input_tensor=images, targets=targets)
            for b in range(2):
                m = np.maximum(maps[b, c].numpy(), 0)
                if m.max() == 0:
                    continue  # pytorch-grad-cam returns an all-zero map; nothing to compare
                m = (m - m.min()) / (1e-7 + (m - m.min()).max())
                m = cv2.resize(np.float32(m), (16, 16))
                m = (m - m.min()) / (1e-7 + m.max() - m.min())
                np.testing.assert_allclose(m, ref[b], atol=1e-5)
                compared += 1
    assert compared >= 2


def test_pixel_set_validation(images):
    out = torch.zeros(2, 3, 16, 16)
    with pytest.raises(UsageError, match="inside 16x16"):
        pixel_set_weights(out, (20, 3))
    with pytest.raises(UsageError, match="mask must be"):
        pixel_set_weights(out, torch.ones(2, 8, 8))
    with pytest.raises(UsageError, match="'predicted', 'all'"):
        pixel_set_weights(out, "largest")


def test_seg_maps_normalise_without_nan(net):
    _, maps = class_maps(net, torch.zeros(1, 1, 16, 16), method="seg-hirescam", target=(0, 0))
    assert torch.isfinite(normalize_maps(maps)).all()

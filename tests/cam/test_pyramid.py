"""Pyramid Grad-CAM against a direct autograd transcription of Lee et al. Eq. 3."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from miner.cam import class_maps
from miner.cam.pyramid import select_scales
from miner.errors import UsageError
from tests.cam.tiny import TinyPyramid


def _direct(net: TinyPyramid, images: torch.Tensor, scales: list[int]) -> torch.Tensor:
    """sum over the chosen scales of ReLU(sum_k mean_ij(dy_c/dA^p_k) A^p_k), upsampled (bilinear) to the finest."""
    e1, e2, e3 = net.scales(images)
    e3 = e3.detach().requires_grad_(True)
    d2 = net.dec2(torch.cat([e2.detach(), net.up2(e3)], dim=1))
    d1 = net.dec1(torch.cat([e1.detach(), net.up1(d2)], dim=1))
    logits = net.finish(e1.detach(), d2, e3, d1)
    acts = [d1, d2, e3]  # scale 1 (finest) .. 3 (coarsest)
    chosen = [acts[s - 1] for s in scales]
    size = chosen[0].shape[-2:] if 1 in scales else max((a.shape[-2:] for a in chosen), key=lambda s: s[0])
    out = []
    for c in range(logits.shape[1]):
        grads = torch.autograd.grad(logits[:, c].sum(), chosen, retain_graph=True)
        total = 0
        for a, g in zip(chosen, grads):
            m = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
            total = total + F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        out.append(total[:, 0])
    return torch.stack(out, 1).detach()


@pytest.mark.parametrize("scales", [None, (1, 3), (2, 3), (2,)])
def test_pyramid_gradcam_equals_direct_transcription(scales):
    net = TinyPyramid(seed=8)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    logits, maps = class_maps(net, images, method="pyramid-gradcam", scales=scales)
    ref = _direct(net, images, list(scales or (1, 2, 3)))
    assert maps.shape == ref.shape and float(ref.max()) > 0
    torch.testing.assert_close(maps, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, net(images))


def test_single_scale_is_gradcam_at_that_layer():
    net = TinyPyramid(seed=1)
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    _, pyr = class_maps(net, images, method="pyramid-gradcam", scales=(2,))
    _, grad = class_maps(net, images, method="gradcam", layer="dec2")
    torch.testing.assert_close(pyr, grad)


def test_scale_selection():
    layers = ("dec1", "dec2", "dec3", "enc4")
    assert select_scales(layers, None) == list(layers)
    assert select_scales(layers, (1, 4)) == ["dec1", "enc4"]
    assert select_scales(layers, "1&4") == ["dec1", "enc4"]
    with pytest.raises(UsageError, match="out of range"):
        select_scales(layers, (5,))

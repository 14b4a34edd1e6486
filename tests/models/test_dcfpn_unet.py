from __future__ import annotations

import pytest
import torch
from torch import nn

from miner.models import create_model, load_checkpoint, save_checkpoint


def hooked(model, names, x):
    seen = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
               for n in names]
    out = model(x)
    for h in handles:
        h.remove()
    return out, seen


def test_dcfpn_pyramid_scales_finest_first_and_dense_to_classifier():
    torch.manual_seed(0)
    model = create_model("dcfpn", channels=4, depth=4, num_classes=3)
    assert model.pyramid_layers == ("dec1", "dec2", "dec3", "enc4")
    x = torch.rand(2, 1, 32, 32)
    logits, seen = hooked(model, model.pyramid_layers + ("fuse",), x)
    assert logits.shape == (2, 3)
    sizes = [tuple(seen[n].shape[1:]) for n in model.pyramid_layers]
    assert sizes == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]
    assert seen["fuse"].shape == (2, 4 + 8 + 16 + 32, 32, 32)  # every scale concatenated at full resolution
    assert model.forward_features(x).shape == seen["fuse"].shape
    # concatenation joints are followed by BatchNorm
    assert isinstance(model.fuse.bn, nn.BatchNorm2d) and model.fuse.bn.num_features == 60
    assert model.join1.bn.num_features == 8
    # the logits depend on every scale
    feats = [seen[n] for n in model.pyramid_layers]
    grads = torch.autograd.grad(logits.sum(), feats, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    # the part of `fuse` that is scale p is a bilinear upsampling of scale p (direct link)
    model.eval()
    with torch.no_grad():
        scales = model.pyramid(model.normalise(x))
        fused = model.fuse(*scales)
        bn = model.fuse.bn
        raw = (fused - bn.bias.view(1, -1, 1, 1)) / bn.weight.view(1, -1, 1, 1)
        raw = raw * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps) + bn.running_mean.view(1, -1, 1, 1)
        up = torch.nn.functional.interpolate(scales[3], size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(raw[:, 28:], up, atol=1e-4)


def test_unet_segmentation_logits_and_named_layers(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", classes=("background", "lesion"), channels=4, depth=3)
    assert model.task == "segmentation" and model.feature_layer == "bottleneck"
    x = torch.rand(2, 1, 40, 40)
    out, seen = hooked(model, model.map_layers, x)
    assert out.shape == (2, 2, 40, 40)
    assert seen["bottleneck"].shape == (2, 32, 5, 5)
    assert seen["dec1"].shape == (2, 4, 40, 40) and seen["enc2"].shape == (2, 8, 20, 20)
    model.eval()
    path = save_checkpoint(tmp_path / "u.pt", model, meta={"input_size": 40})
    loaded, meta = load_checkpoint(path)
    assert meta["task"] == "segmentation" and meta["arch"] == "unet"
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("size", [31, 50])
def test_odd_sizes(size):
    for name, opts in [("dcfpn", {"channels": 2, "depth": 3}), ("unet", {"channels": 2, "depth": 2})]:
        model = create_model(name, num_classes=2, **opts).eval()
        with torch.no_grad():
            out = model(torch.rand(1, 1, size, size))
        assert out.shape == ((1, 2) if name == "dcfpn" else (1, 2, size, size))

"""Pooling of per-position class scores (log-sum-exp, top-k) and the stride-8 MSA: formulas, erasure, CAM."""
from __future__ import annotations

import math

import pytest
import torch

from miner.cam import ClassMapper, class_maps
from miner.errors import UsageError
from miner.models import create_model
from miner.models.pooling import pool_scores, topk_count
from miner.models.resnet import upsample_cells
from tests.models.test_head import reference_head


def test_lse_pooling_hand_computed():
    s = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    r = 2.0
    want = math.log((math.exp(0) + math.exp(2) + math.exp(4) + math.exp(6)) / 4) / r
    assert pool_scores(s, "lse", r=r).item() == pytest.approx(want, rel=1e-6)
    # between the mean (r -> 0) and the maximum (r -> inf)
    assert pool_scores(s, "lse", r=1e-4).item() == pytest.approx(1.5, abs=1e-3)
    assert pool_scores(s, "lse", r=1e4).item() == pytest.approx(3.0, abs=1e-3)


def test_topk_pooling_hand_computed():
    s = torch.arange(10.0).view(1, 1, 2, 5)  # 0..9
    assert topk_count(10, 0.2) == 2
    assert pool_scores(s, "topk", k=0.2).item() == pytest.approx((9 + 8) / 2)
    # WILDCAT: mean of the k highest plus alpha times the mean of the k lowest
    assert pool_scores(s, "topk", k=0.2, alpha=0.5).item() == pytest.approx(8.5 + 0.5 * (0 + 1) / 2)
    assert pool_scores(s, "topk", k=0.01).item() == 9.0  # at least one position
    assert pool_scores(s, "avg").item() == pytest.approx(4.5)


@pytest.mark.parametrize("pooling", ["lse", "topk"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_pooled_head_with_masks_equals_per_class_erasure(pooling, head):
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, head=head, num_classes=4, pooling=pooling, pool_r=3.0,
                         pool_k=0.2).eval()
    feats = torch.randn(2, model.feature_dim, 6, 6)
    masks = (torch.rand(2, 4, 6, 6) > 0.4).float()
    assert torch.allclose(model.forward_head(feats, masks=masks), reference_head(model, feats, masks), atol=1e-5)
    assert torch.allclose(model.forward_head(feats, masks=torch.ones_like(masks)), model.forward_head(feats),
                          atol=1e-5)


def test_lse_linear_head_is_pooled_cam_plus_bias():
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125, num_classes=3, pooling="lse", pool_r=4.0)
    feats = torch.randn(2, model.feature_dim, 4, 4)
    cams = torch.einsum("bdhw,cd->bchw", feats, model.head_weight)
    flat = cams.flatten(2)
    want = (torch.logsumexp(4.0 * flat, dim=-1) - math.log(16)) / 4.0 + model.head_bias
    assert torch.allclose(model.forward_head(feats), want, atol=1e-5)


@pytest.mark.parametrize("pooling", ["avg", "lse", "topk"])
def test_cam_stays_exact_and_the_erasure_shortcut_holds(pooling):
    """CAM is the per-position class score w_c . X whatever the pooling, so CAM(X * M) == M * CAM(X)."""
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, num_classes=3, msa_stride=8, pooling=pooling).eval()
    images = torch.rand(2, 1, 64, 64)
    mapper = ClassMapper(model, method="cam")
    assert mapper.mode == "analytic" and mapper.shortcut_exact
    logits, maps = class_maps(model, images, method="cam")
    with torch.no_grad():
        feats = model.forward_features(images)
        assert torch.allclose(logits, model(images), atol=1e-5)
        assert torch.allclose(maps, torch.einsum("bdhw,cd->bchw", feats, model.head_weight), atol=1e-5)
        masks = (torch.rand(2, 3, *maps.shape[-2:]) > 0.5).float()
        assert torch.allclose(mapper.erased_maps(feats, masks), maps * masks, atol=1e-5)


def test_gradient_methods_with_lse_use_autograd_not_the_gap_shortcut():
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, num_classes=2, pooling="lse", pool_r=5.0).eval()
    mapper = ClassMapper(model, method="gradcam")
    assert mapper.mode == "split"  # dy/dX depends on the scores: w_c / (h w) holds for GAP only
    images = torch.rand(2, 1, 64, 64)
    _, maps = class_maps(model, images, method="gradcam")
    x = model.forward_features(images).detach().requires_grad_(True)
    logits = model.forward_head(x)
    for c in range(2):
        (g,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=True)
        want = torch.relu((g.mean(dim=(2, 3), keepdim=True) * x).sum(1))
        assert torch.allclose(maps[:, c], want.detach(), atol=1e-6)


def test_pooling_options_are_checked():
    with pytest.raises(UsageError, match="pooling"):
        create_model("resnet18", pooling="max")
    with pytest.raises(UsageError, match="pool_k"):
        create_model("resnet18", pooling="topk", pool_k=0.0)
    with pytest.raises(UsageError, match="msa_stride"):
        create_model("resnet18_msa", msa_stride=4)
    with pytest.raises(UsageError, match="bilinear"):
        create_model("resnet18_msa", msa_stride=8, upsample="deconv")


def test_upsample_cells_keeps_cell_centres():
    x = torch.tensor([[[[1.0, 3.0, 5.0]]]])  # 1 x 3
    up = upsample_cells(x, (1, 6))
    # output cell m reads input cell m / 2: 0, 0.5, 1, 1.5, 2, 2.5 (held at the last cell)
    assert up.flatten().tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    up4 = upsample_cells(torch.tensor([[[[0.0], [4.0]]]]), (8, 4))  # 2 x 1 -> 8 x 4, factor 4 down the rows
    assert up4[0, 0, :, 0].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0])


def test_stride8_msa_cells_sit_on_their_receptive_field_centres():
    """The gradient's centre of mass of a stride-8 feature cell lies on input pixel 8 i (within 2 px)."""
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.25, msa_stride=8).eval()
    assert model.cell_origin == "corner"
    x = torch.rand(1, 1, 128, 128, requires_grad=True)
    feats = model.forward_features(x)
    assert feats.shape[-2:] == (16, 16)
    i = 8
    (g,) = torch.autograd.grad(feats[0, :, i, i].sum(), x)
    g = g.abs()[0, 0]
    ys = torch.arange(128.0)
    cy = float((g.sum(1) * ys).sum() / g.sum())
    cx = float((g.sum(0) * ys).sum() / g.sum())
    assert abs(cy - 8 * i) < 2.5 and abs(cx - 8 * i) < 2.5

"""The binary branches: forward_head with class-wise erasure (Cai et al. Eq. 1-3)."""
from __future__ import annotations

import pytest
import torch

from miner.errors import ModelError
from miner.models import create_model


def reference_head(model, feats, masks):
    """Eq. 1-2 literally: for each class, erase X with M_c, run the whole head, keep logit c."""
    out = []
    for c in range(model.num_classes):
        logits = model.forward_head(feats * masks[:, c : c + 1])
        out.append(logits[:, c])
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_masked_head_equals_per_class_erasure(head):
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, head=head, num_classes=5).eval()
    feats = torch.randn(3, model.feature_dim, 6, 6)
    masks = (torch.rand(3, 5, 6, 6) > 0.4).float()
    got = model.forward_head(feats, masks=masks)
    assert torch.allclose(got, reference_head(model, feats, masks), atol=1e-5)
    # all-ones masks == no masks
    assert torch.allclose(model.forward_head(feats, masks=torch.ones_like(masks)), model.forward_head(feats), atol=1e-5)


def test_linear_head_is_gap_then_branches():
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125, num_classes=4)
    feats = torch.randn(2, model.feature_dim, 3, 3)
    ref = feats.mean(dim=(2, 3)) @ model.head_weight.T + model.head_bias
    assert torch.allclose(model.forward_head(feats), ref, atol=1e-6)
    assert model.head_is_linear


def test_mlp_head_is_not_linear_and_has_no_cam_weights():
    model = create_model("resnet18", width=0.125, head="mlp", head_hidden=16)
    assert not model.head_is_linear
    assert model.head_conv.out_channels == 16
    with pytest.raises(ModelError, match="non-linear head"):
        _ = model.head_weight


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_no_gradient_reaches_erased_positions(head):
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, head=head, num_classes=3)
    feats = torch.randn(2, model.feature_dim, 5, 5, requires_grad=True)
    masks = torch.ones(2, 3, 5, 5)
    masks[:, 1, 1:3, 2:5] = 0  # erase a block for branch 1 only
    masks[0, 2, 0, 0] = 0
    logits = model.forward_head(feats, masks=masks)
    for c in range(3):
        (grad,) = torch.autograd.grad(logits[:, c].sum(), feats, retain_graph=True)
        erased = masks[:, c] == 0  # [B, h, w]
        g = grad.abs().sum(dim=1)  # [B, h, w]
        assert torch.all(g[erased] == 0), f"branch {c} leaks gradient to erased positions"
        assert torch.all(g[~erased] > 0)


def test_bool_masks_and_shape_check():
    model = create_model("resnet18", width=0.125, num_classes=2)
    feats = torch.randn(1, model.feature_dim, 2, 2)
    m = torch.tensor([[[[True, False], [True, True]], [[False, False], [False, True]]]])
    assert torch.allclose(model.forward_head(feats, masks=m), model.forward_head(feats, masks=m.float()))
    with pytest.raises(ValueError, match="masks must be"):
        model.forward_head(feats, masks=torch.ones(1, 3, 2, 2))

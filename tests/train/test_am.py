"""Attention-mining training: erasure masks, KP-Vanilla batch split, knowledge preservation."""
from __future__ import annotations

import pytest
import torch

from miner.config import TrainConfig
from miner.models import create_model
from miner.train.erasure import erasure_masks, head_class_maps, normalise_maps
from miner.train.step import KnowledgePreservation, TrainForward, erased_count, training_losses
from miner.train.trainer import set_train_mode


def two_blob_model():
    """A 1-class linear model whose CAM is feature channel 0, and features with two blobs there."""
    model = create_model("resnet18_msa", width=0.125, num_classes=1)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.weight[0, 0] = 1.0
    feats = torch.zeros(1, model.feature_dim, 6, 6)
    feats[0, 0, 1, 1:3] = 1.0  # blob A (holds the maximum)
    feats[0, 0, 4, 4] = 0.8  # blob B
    feats[0, 0, 3, 0] = 0.2  # below threshold after normalisation
    return model, feats


def test_masks_follow_the_inference_rule():
    model, feats = two_blob_model()
    m1 = erasure_masks(model, feats, steps=1)
    expected = torch.ones(1, 1, 6, 6)
    expected[0, 0, 1, 1:3] = 0
    assert torch.equal(m1, expected)
    m2 = erasure_masks(model, feats, steps=2)  # step 2 sees X * M_1: blob B is now the maximum
    expected[0, 0, 4, 4] = 0
    assert torch.equal(m2, expected)
    m3 = erasure_masks(model, feats, steps=3)  # then only the 0.2 pixel is left, normalised to 1: erased
    expected[0, 0, 3, 0] = 0
    assert torch.equal(m3, expected)


def test_normalise_maps():
    maps = torch.tensor([[[[2.0, 4.0], [6.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    out = normalise_maps(maps)
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    assert torch.equal(out[0, 1], torch.zeros(2, 2))  # flat map: nothing to erase


def test_nonlinear_head_maps_are_hires_cam():
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125, head="mlp", num_classes=2)
    feats = torch.rand(2, model.feature_dim, 3, 3)
    masks = (torch.rand(2, 2, 3, 3) > 0.3).float()
    got = head_class_maps(model, feats, masks)
    for c in range(2):
        x = feats.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.forward_head(x, masks=masks)[:, c].sum(), x)
        assert torch.allclose(got[:, c], (g * x).sum(1), atol=1e-6)
    # and for a linear head, HiRes-CAM == CAM / (h w): the same map after normalisation
    lin = create_model("resnet18", width=0.125, num_classes=2)
    cam = head_class_maps(lin, feats)
    assert torch.allclose(cam, torch.einsum("bdhw,cd->bchw", feats, lin.head_weight.detach()), atol=1e-6)


def test_erased_count():
    assert erased_count(64, kp="kp", fraction=0.125) == 8
    assert erased_count(16, kp="vanilla", fraction=0.125) == 2
    assert erased_count(7, kp="vanilla", fraction=0.125) == 1
    assert erased_count(16, kp="none", fraction=0.125) == 16


def test_kp_vanilla_erases_exactly_n_of_n():
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, num_classes=3).eval()
    forward = TrainForward(model)
    images = torch.rand(16, 1, 64, 64)
    n = erased_count(16, kp="vanilla", fraction=0.125)
    with torch.no_grad():
        logits, masks = forward(images, n, 1)
        plain = model(images)
    assert masks.shape == (n, 3, 4, 4)
    assert torch.all((masks == 0).flatten(1).any(dim=1))  # every erased image lost a component per class
    assert torch.equal(logits[n:], plain[n:])  # the other N - n images are untouched
    assert not torch.allclose(logits[:n], plain[:n])
    with torch.no_grad():
        feats = model.forward_features(images[:n])
        assert torch.allclose(logits[:n], model.forward_head(feats, masks=masks), atol=1e-6)


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_kp_loss_zero_at_first_am_step_then_positive(freeze_bn):
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, num_classes=2)
    model.train()
    model(torch.rand(8, 1, 64, 64))  # non-trivial BN statistics
    set_train_mode(model, "am", TrainConfig(am_freeze_bn=freeze_bn))  # batch-statistics BN, or frozen
    kp = KnowledgePreservation(model, ("layer3", "layer4", "msa", "logits"))
    reference_before = {k: v.clone() for k, v in kp.reference.state_dict().items()}
    forward = TrainForward(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    images, targets = torch.rand(16, 1, 64, 64), (torch.rand(16, 2) > 0.5).float()
    kw = dict(am=True, kp_mode="kp", fraction=0.125, depth=1, kp=kp, kp_lambda=0.5)
    first = training_losses(forward, images, targets, **kw)
    assert first.n_erased == 2
    assert first.kp.item() == 0.0
    assert first.loss.item() == first.cls.item()
    first.loss.backward()
    opt.step()
    second = training_losses(forward, images, targets, **kw)
    assert second.kp.item() > 0
    assert second.loss.item() == pytest.approx(second.cls.item() + 0.5 * second.kp.item(), rel=1e-6)
    # the reference N_A did not move (weights and BatchNorm statistics)
    assert all(not q.requires_grad for q in kp.reference.parameters())
    for key, value in kp.reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, reference_before[key]), key
    kp.remove()


def test_kp_layers_resolution():
    from miner.errors import UsageError
    from miner.train.step import resolve_kp_layers

    default = TrainConfig().kp_layers
    assert resolve_kp_layers(create_model("resnet18", width=0.125), default, explicit=False) == (
        "layer3", "layer4", "logits")
    dc = create_model("dcfpn", channels=2, depth=3)
    assert resolve_kp_layers(dc, default, explicit=False) == ("dec1", "dec2", "enc3", "fuse", "logits")
    with pytest.raises(UsageError, match="no module 'msa'"):
        resolve_kp_layers(create_model("resnet18", width=0.125), ("msa",), explicit=True)

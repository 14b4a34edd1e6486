"""prepare_for_inference: BatchNorm folded, channels_last, same outputs, caller's model untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from miner.cam import class_maps
from miner.models import create_model, fold_batchnorm, prepare_for_inference
from tests.cam.tiny import randomise_bn


# stem + 2 per basic block (8 blocks) + 3 downsamples; stem + 3 per bottleneck (16) + 4 downsamples; MSA's two 1x1
@pytest.mark.parametrize("name,options,expected", [
    ("resnet18", {}, 1 + 16 + 3),
    ("resnet50", {}, 1 + 48 + 4),
    ("resnet18_msa", {"upsample": "bilinear"}, 1 + 16 + 3 + 2),
    ("resnet18_msa", {"upsample": "deconv"}, 1 + 16 + 3 + 2),
])
def test_fold_count_and_outputs(name, options, expected):
    model = randomise_bn(create_model(name, num_classes=3, width=0.125, **options))
    copy = randomise_bn(create_model(name, num_classes=3, width=0.125, **options))
    copy.load_state_dict(model.state_dict())
    assert fold_batchnorm(copy) == expected
    assert not any(isinstance(m, nn.BatchNorm2d) for n, m in copy.named_modules()
                   if not n.startswith("msa.up"))  # the deconv's BN follows a ConvTranspose2d: kept
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), copy(x)
    assert float((want - got).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))


def test_prepare_for_inference_keeps_maps_and_leaves_the_caller_alone():
    model = randomise_bn(create_model("resnet18_msa", num_classes=4, width=0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = prepare_for_inference(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and model.layer1[0].bn1.num_features > 0
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in fast.parameters())
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    for method in ("cam", "gradcam", "hirescam"):
        want_logits, want_maps = class_maps(model, x, method=method)
        got_logits, got_maps = class_maps(fast, x.contiguous(memory_format=torch.channels_last), method=method)
        assert float((want_logits - got_logits).abs().max()) <= 1e-5
        assert float((want_maps - got_maps).abs().max()) <= 1e-5 * max(1.0, float(want_maps.abs().max()))


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(create_model("resnet18", num_classes=2, width=0.125).train())
